"""The Python API: the same results as the CLI, typed and immutable, and the CLI's one-line errors."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import onnx
import pytest

import trtdebug
import trtdebug.api
from tests.cli import run_cli
from trtdebug.cli.app import cli

ROOT = Path(__file__).resolve().parent.parent
CONVNET = ROOT / "examples" / "overflow_convnet.onnx"


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_docs_api_example_runs(tmp_path):
    block = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S)
    assert block
    run = subprocess.run([sys.executable, "-c", block.group(1)], capture_output=True, text=True, cwd=ROOT,
                         timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    assert "passed: False" in run.stdout and "culprit:" in run.stdout and "found: True" in run.stdout
    assert "error: model file not found: no/such/model.onnx" in run.stdout


def test_compare_equals_the_cli_json_and_a_model_proto_equals_the_path(tmp_path):
    report = tmp_path / "report.json"
    # the same memory budget: by default it is a share of the memory available at the moment
    assert _cli("compare", str(CONVNET), "--memory-budget", "1GiB", "--json", str(report)).returncode == 1
    from_path = trtdebug.compare(str(CONVNET), memory_budget="1GiB")
    cli = json.loads(report.read_text())
    assert from_path.to_json() == cli
    from_proto = trtdebug.compare(onnx.load(str(CONVNET)), memory_budget=2**30).to_json()
    assert {k: v for k, v in from_proto.items() if k != "model"} == {k: v for k, v in cli.items() if k != "model"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        from_path.passed = True  # type: ignore[misc]


@pytest.mark.parametrize(("options", "args"), [
    ({"output_tol": {"nope": (0.1, 0.1)}}, ["--output-tol", "nope:0.1,0.1"]),
    ({"plan": "missing.plan.json"}, ["--plan", "missing.plan.json"]),
])
def test_bad_options_raise_the_user_error_the_cli_prints(options, args):
    with pytest.raises(trtdebug.UserError) as raised:
        trtdebug.compare(str(CONVNET), **options)
    run = _cli("compare", str(CONVNET), *args)
    assert run.returncode == 2
    assert run.stderr.strip() == f"trtdebug: error: {raised.value}"


def test_a_bad_option_value_is_a_user_error():
    with pytest.raises(trtdebug.UserError, match="--precision 'fp4' is not one of"):
        trtdebug.compare(str(CONVNET), precision="fp4")
    with pytest.raises(trtdebug.UserError, match="--atol"):
        trtdebug.compare(str(CONVNET), atol=-1.0)


# Keywords the API has and the CLI does not: a progress display, and the histograms compare's --html implies.
API_ONLY = {("compare", "progress"), ("compare", "histograms"), ("fallback", "progress"), ("tactics", "progress")}


def _cli_default(option: click.Option) -> object:
    """The option's default as a command sees it: a flag without one is off (click 8.5 reports its
    'no default' sentinel there, earlier versions False)."""
    if option.is_flag and not isinstance(option.default, bool):
        return False
    return option.default


def _no_value(default: object) -> bool:
    """None, an empty repeatable option, and click's 'no default' all mean: not given."""
    return default is None or default == () or default is getattr(click.core, "UNSET", None)


@pytest.mark.parametrize("name", ["compare", "fallback", "tactics", "build", "quantize"])
def test_every_api_keyword_defaults_to_the_cli_option_it_mirrors(name):
    options = {param.opts[0].removeprefix("--").replace("-", "_"): param
               for param in cli.commands[name].params if isinstance(param, click.Option)}
    keywords = dict(inspect.signature(getattr(trtdebug.api, name)).parameters)
    if name in ("compare", "fallback", "tactics"):  # their **options are problem_spec's
        keywords |= dict(inspect.signature(trtdebug.api.problem_spec).parameters)
    checked = 0
    for keyword, parameter in keywords.items():
        if parameter.default is inspect.Parameter.empty or (name, keyword) in API_ONLY:
            continue
        assert keyword in options, f"trtdebug.{name}({keyword}=...) mirrors no option of `trtdebug {name}`"
        api_default, cli_default = parameter.default, _cli_default(options[keyword])
        if _no_value(api_default) and _no_value(cli_default):
            continue
        assert api_default == cli_default, (f"trtdebug.{name}({keyword}=) defaults to {api_default!r}, "
                                            f"`trtdebug {name} --{keyword.replace('_', '-')}` to {cli_default!r}")
        checked += 1
    assert checked >= 2  # real defaults compared, not only absent ones


def _frozen_and_json(result: object, field: str) -> dict:
    """`result` refuses assignment to `field`; its to_json() survives json.dumps; the data read back."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(result, field, getattr(result, field))
    return json.loads(json.dumps(result.to_json()))  # type: ignore[attr-defined]


def test_fallback_build_and_quantize_results_are_immutable_and_json(tmp_path):
    outcome = trtdebug.fallback(str(CONVNET), out=tmp_path / "convnet.plan.json", memory_budget="1GiB")
    assert outcome.found and outcome.plan is not None and outcome.search.kept
    data = _frozen_and_json(outcome, "notes")
    assert data["found"] is True and data["kept"] == list(outcome.search.kept) == outcome.plan.kept()
    assert data["candidates"] == list(outcome.candidates) and data["keep_precision"] == "fp32"
    assert data["builds"] == outcome.builds and data["evaluations"] == outcome.search.evaluations
    assert data["files"]["plan"] == str(tmp_path / "convnet.plan.json") and data["compare_passed"] is True
    assert data["reasons"] == {node: list(why) for node, why in outcome.reasons.items()} and data["reasons"]
    assert len(data["history"]) == len(outcome.history) >= 1
    assert data["plan"]["default"] == "fp16"
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.search.kept = ()  # type: ignore[misc]

    built = trtdebug.build(str(CONVNET), plan=tmp_path / "convnet.plan.json", out=tmp_path / "mixed.onnx",
                           emit=("trtexec",))
    data = _frozen_and_json(built, "written")
    assert data["written"] == str(tmp_path / "mixed.onnx") and (tmp_path / "mixed.onnx").is_file()
    assert data["commands"]["trtexec"].startswith("trtexec ") and "--fp16" in data["commands"]["trtexec"]

    quantized = trtdebug.quantize(str(CONVNET), out=tmp_path / "convnet.qdq.onnx", calib_batches=2)
    data = _frozen_and_json(quantized, "pairs")
    assert data["path"] == str(tmp_path / "convnet.qdq.onnx") and data["format"] == "int8"
    assert data["pairs"] == quantized.pairs > 0 and data["batches"] == 2
    assert any("generated random batches" in note for note in data["notes"])


def test_tactic_search_result_is_immutable_and_json(tmp_path):
    from fixtures.tactic_models import faulty_accumulation

    model, truth = faulty_accumulation()
    search = trtdebug.tactics(model, precision="fp16", out=tmp_path / "bans.json")
    data = _frozen_and_json(search, "decisions")
    assert data["passed"] is True and data["baseline"]["passed"] is False and data["builds"] == search.builds
    [decision] = data["decisions"]
    assert decision["kept"] is True and decision["suspect"]["layer"] == truth.node
    assert decision["ban"]["tactic"] == truth.variant and decision["trials"] == list(search.decisions[0].trials)
    assert [e["layer"] for e in data["bans"]["entries"]] == [truth.node]
    with pytest.raises(dataclasses.FrozenInstanceError):
        search.decisions[0].kept = False  # type: ignore[misc]


def test_selfcheck_results_are_immutable_and_json(fake, cudart):
    from trtdebug.engines.tensorrt.selfcheck import run_selfcheck

    checks = run_selfcheck(("tensorrt",))
    data = [_frozen_and_json(check, "status") for check in checks]
    assert [c["name"] for c in data] == [c.name for c in checks] and {c["status"] for c in data} == {"ok"}
    assert data[0] == {"name": "cuda-python", "status": "ok", "detail": checks[0].detail,
                       "seconds": checks[0].seconds}
