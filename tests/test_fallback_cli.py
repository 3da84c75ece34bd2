"""`trtdebug fallback` and `trtdebug build` as a user runs them: plan, artefact, report, exit codes,
--check, Ctrl-C and --resume, a real model repaired."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from pathlib import Path

import onnx
import pytest

from fixtures.chain_models import planted_chain
from fixtures.real_models import silero_vad_with_overflow
from tests.cli import run_cli, start_cli
from tests.conftest import SILERO_RANGES, SILERO_SHAPES
from trtdebug.core.search.journal import journal_path
from trtdebug.workflows.fallback import run_fallback
from trtdebug.workflows.problem import ProblemSpec

ROOT = Path(__file__).resolve().parent.parent


def _evaluations(plan: Path) -> list[dict]:
    path = journal_path(plan)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written right now
    return [r for r in records if r.get("type") == "evaluation"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chain")
    planted = planted_chain(60, 3, seed=21)
    return planted.save(folder / "chain.onnx"), planted


def test_fallback_writes_plan_artefact_and_report_and_build_reuses_the_plan(chain, tmp_path):
    model, planted = chain
    plan = tmp_path / "plan.json"
    run = run_cli("fallback", model, "--out", plan)
    assert run.returncode == 0, run.stderr
    assert "FOUND keep 3 of 60 eligible nodes in fp32, 1-minimal" in run.stdout
    assert "of FLOPs" in run.stdout and "of parameters" in run.stdout
    assert "prefix" in run.stderr and "-> pass" in run.stderr  # progress lines, one per build

    data = json.loads(plan.read_text())
    assert data["format"] == "trtdebug.precision-plan"
    assert set(data["nodes"]) == set(planted.culprits) and set(data["nodes"].values()) == {"fp32"}
    provenance = data["provenance"]
    assert provenance["strategy"] == "ranked" and provenance["one_minimal"] is True
    assert provenance["builds"] == len(_evaluations(plan))  # the compare run is the empty set's build
    assert provenance["criterion"] == {"atol": 0.01, "rtol": 0.01, "per_output": {}}

    report = json.loads((tmp_path / "plan.compare.json").read_text())
    assert report["passed"] is True
    mixed = onnx.load(str(tmp_path / "plan.mixed.onnx"))
    onnx.checker.check_model(mixed)
    assert any(n.op_type == "Cast" for n in mixed.graph.node)

    assert run_cli("compare", model, "--plan", plan).returncode == 0
    built = run_cli("build", model, "--plan", plan, "--out", tmp_path / "again.onnx")
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "again.onnx").read_bytes() == (tmp_path / "plan.mixed.onnx").read_bytes()
    no_engine = run_cli("build", model, "--plan", plan, "--out", tmp_path / "model.engine")
    assert no_engine.returncode == 2 and "no serialized form" in no_engine.stderr


def test_a_plan_for_another_model_is_refused_in_one_line(chain, tmp_path):
    model, _ = chain
    plan = tmp_path / "plan.json"
    assert run_cli("fallback", model, "--out", plan).returncode == 0
    other = planted_chain(50, 1, seed=22).save(tmp_path / "other.onnx")
    for args in (("compare", other, "--plan", plan), ("build", other, "--plan", plan, "--out", tmp_path / "x.onnx"),
                 ("fallback", other, "--plan", plan, "--out", tmp_path / "other.plan.json")):
        run = run_cli(*args)
        assert run.returncode == 2, (args, run.stderr)
        assert run.stderr.count("\n") == 1 and "was made for another model" in run.stderr


METRIC = """
import sys
import numpy as np
outputs, reference = np.load(sys.argv[1]), np.load(sys.argv[2])
worst = max(float(np.abs(outputs[k] - reference[k]).max()) for k in reference.files)
sys.exit(0 if np.isfinite(worst) and worst < 0.05 else 1)
"""

# Passes on its first call (trtdebug's sanity check on the FP32 reference), fails ever after.
FIRST_CALL_ONLY = """
import pathlib, sys
marker = pathlib.Path(sys.argv[1])
if marker.exists():
    sys.exit(1)
marker.write_text("called")
"""


def test_check_command_is_the_pass_criterion(chain, tmp_path):
    model, planted = chain
    metric = tmp_path / "metric.py"
    metric.write_text(METRIC)
    plan = tmp_path / "plan.json"
    run = run_cli("fallback", model, "--out", plan, "--check", f"{sys.executable} {metric} {{outputs}} {{reference}}")
    assert run.returncode == 0, run.stderr
    data = json.loads(plan.read_text())
    assert set(data["nodes"]) == set(planted.culprits)
    assert data["provenance"]["criterion"]["check"].endswith("{outputs} {reference}")


def test_no_plan_exits_1_and_says_even_all_fp32_fails(chain, tmp_path):
    model, _ = chain
    script = tmp_path / "first_only.py"
    script.write_text(FIRST_CALL_ONLY)
    run = run_cli("fallback", model, "--out", tmp_path / "plan.json", "--input-seeds", 1,  # one reference check
                  "--check", f"{sys.executable} {script} {tmp_path / 'marker'} {{outputs}}")
    assert run.returncode == 1, run.stderr
    assert "NO PLAN" in run.stdout and "even with all 60 candidate nodes in higher precision" in run.stdout
    assert not (tmp_path / "plan.json").exists()


def test_bad_check_commands_are_usage_errors(chain, tmp_path):
    model, _ = chain
    no_field = run_cli("fallback", model, "--check", "python metric.py", "--out", tmp_path / "p.json")
    assert no_field.returncode == 2 and "{outputs}" in no_field.stderr
    failing = run_cli("fallback", model, "--check", "exit 3 # {outputs}", "--out", tmp_path / "p.json")
    assert failing.returncode == 2 and "fails on the FP32 reference" in failing.stderr


@pytest.mark.slow
def test_sigint_mid_search_then_resume_repeats_no_evaluation(tmp_path):
    planted = planted_chain(1000, 8, seed=23)
    model = planted.save(tmp_path / "chain.onnx")
    plan = tmp_path / "plan.json"
    process = start_cli("fallback", model, "--out", plan)
    deadline = time.monotonic() + 120
    while len(_evaluations(plan)) < 4:
        assert process.poll() is None, "the search ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "rerun with --resume" in stderr
    interrupted = len(_evaluations(plan))

    resumed = run_cli("fallback", model, "--out", plan, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    records = _evaluations(plan)
    kept_sets = [frozenset(r["kept"]) for r in records]
    assert len(kept_sets) == len(set(kept_sets)), "an evaluation was repeated after --resume"
    provenance = json.loads(plan.read_text())["provenance"]
    assert provenance["resumed"] is True
    assert provenance["builds"] == len(records)
    assert provenance["builds_this_run"] == len(records) - interrupted
    assert set(provenance["kept"]) == set(planted.culprits)
    uninterrupted = run_fallback(ProblemSpec(str(model)), tmp_path / "reference.json")
    assert uninterrupted.builds == provenance["builds"]


def test_real_silero_vad_with_a_planted_overflow_is_repaired(tmp_path):
    model, planted_nodes = silero_vad_with_overflow(tmp_path)
    options = [a for s in SILERO_SHAPES for a in ("--input-shape", s)]
    options += [a for r in SILERO_RANGES for a in ("--input-range", r)]
    broken = run_cli("compare", model, *options)
    assert broken.returncode == 1, broken.stderr  # the planted overflow breaks the FP16 build
    plan = tmp_path / "plan.json"
    run = run_cli("fallback", model, *options, "--out", plan)
    assert run.returncode == 0, run.stderr
    data = json.loads(plan.read_text())
    assert set(data["nodes"]) == set(planted_nodes)
    assert json.loads((tmp_path / "plan.compare.json").read_text())["passed"] is True
    assert run_cli("compare", model, *options, "--plan", plan).returncode == 0


def test_why_a_node_was_suspected_prints_the_share_compare_prints(tmp_path):
    """A share under 0.5% out of tolerance read "0%" in fallback's table while compare showed 0.4%."""
    model = ROOT / "examples" / "overflow_convnet.onnx"
    compared = run_cli("compare", model)
    share = re.search(r"│ conv_amplify │ Conv .*? (\S+%) ", compared.stdout)
    assert share and share.group(1) != "0.0%", compared.stdout
    run = run_cli("fallback", model, "--out", tmp_path / "plan.json", "--input-seeds", 1)
    assert run.returncode == 0, run.stderr
    assert f"{share.group(1)} of conv_amplify out of tolerance" in run.stdout, run.stdout
