"""Commands `trtdebug build --emit` prints work when pasted: Polygraphy's through Polygraphy's own
argument parser, trtexec's against trtexec's option table (tests/data/trtexec_options.json: every
"--option" literal of samples/common/sampleOptions.cpp on NVIDIA's 8.6, 10.13 and 11 branches, with
the commits), and both build what trtdebug builds (a profile for dynamic inputs, TF32 off)."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.cli import run_cli
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan

TRTEXEC = json.loads((Path(__file__).parent / "data" / "trtexec_options.json").read_text())["versions"]


def _emit(*args: object) -> subprocess.CompletedProcess[str]:
    return run_cli("build", *args)


@pytest.fixture
def dynamic_model(tmp_path: Path) -> tuple[Path, Path]:
    """Two inputs, one with a dynamic batch and one static; a plan keeping one node in FP32."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    bias = helper.make_tensor_value_info("bias", TensorProto.FLOAT, [1, 4, 1, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                               helper.make_node("Add", ["c", "bias"], ["a"], name="add"),
                               helper.make_node("Relu", ["a"], ["y"], name="relu")], "dyn", [x, bias], [y], [w])
    path = tmp_path / "dyn model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    plan = tmp_path / "plan.json"
    PrecisionPlan("fp16", {"add": "fp32"}).for_model(Model.load(path)).save(plan)
    return path, plan


@pytest.mark.parametrize("shape", ["x:2x3x8x8", "x:1x3x8x8,2x3x8x8,4x3x8x8"])
def test_the_polygraphy_command_parses_in_polygraphy_as_printed(dynamic_model, shape):
    from polygraphy.tools.args import ModelArgs, TrtConfigArgs
    from polygraphy.tools.convert import Convert

    model, plan = dynamic_model
    run = _emit(model, "--plan", plan, "--emit", "polygraphy", "--input-shape", shape)
    assert run.returncode == 0, run.stderr
    words = shlex.split(run.stdout.strip())
    assert words[:2] == ["polygraphy", "convert"]
    tool = Convert()
    parsed = tool.setup_parser().parse_args(words[2:])  # exits (a test failure) on what Polygraphy refuses
    for group in tool.arg_groups.values():
        group.parse(parsed)
    assert parsed.output == str(model.with_suffix(".engine")) and parsed.fp16
    profile = tool.arg_groups[TrtConfigArgs].profile_dicts[0]
    low, opt, high = (shape.split(":")[1].split(",") * 3)[:3] if "," not in shape else shape.split(":")[1].split(",")
    assert [tuple(profile["x"][i]) for i in range(3)] == [tuple(map(int, s.split("x"))) for s in (low, opt, high)]
    assert "bias" not in profile  # static inputs need no profile
    assert tool.arg_groups[ModelArgs].path == str(model)


@pytest.mark.parametrize("target", ["8.6", "10"])
def test_the_trtexec_command_uses_only_options_that_trtexec_has(dynamic_model, target):
    model, plan = dynamic_model
    run = _emit(model, "--plan", plan, "--emit", "trtexec", "--target-version", target,
                "--input-shape", "x:1x3x8x8,2x3x8x8,4x3x8x8")
    assert run.returncode == 0, run.stderr
    words = shlex.split(run.stdout.strip())
    assert words[0] == "trtexec"
    options = {w.split("=", 1)[0] for w in words[1:]}
    assert all(w.startswith("--") for w in words[1:]), words
    assert options <= set(TRTEXEC[target]["options"]), options - set(TRTEXEC[target]["options"])
    flags = dict(w.split("=", 1) if "=" in w else (w, "") for w in words[1:])
    assert flags["--onnx"] == str(model) and flags["--saveEngine"] == str(model.with_suffix(".engine"))
    # trtdebug's builds keep TF32 off and build this profile; without the shapes trtexec sets N to 1.
    assert "--noTF32" in flags
    assert (flags["--minShapes"], flags["--optShapes"], flags["--maxShapes"]) == (
        "x:1x3x8x8", "x:2x3x8x8", "x:4x3x8x8")


def test_the_option_table_is_nvidias():
    """The table holds what the sources say, including what 11 removed (weak typing)."""
    assert {"--fp16", "--layerPrecisions", "--precisionConstraints", "--noTF32"} <= set(TRTEXEC["10"]["options"])
    assert not {"--fp16", "--layerPrecisions", "--precisionConstraints"} & set(TRTEXEC["11"]["options"])
    assert "--bf16" not in TRTEXEC["8.6"]["options"] and "--bf16" in TRTEXEC["10"]["options"]
    assert all(len(v["commit"]) == 40 for v in TRTEXEC.values())


def test_quantizes_next_line_runs_as_printed(dynamic_model, tmp_path):
    model, _ = dynamic_model
    out = tmp_path / "quantized model.qdq.onnx"
    run = run_cli("quantize", model, "--out", out, "--input-shape", "x:2x3x8x8", "--calib-batches", "2")
    assert run.returncode == 0, run.stderr
    [hint] = [line.removeprefix("next: ") for line in run.stdout.splitlines() if line.startswith("next: ")]
    words = shlex.split(hint)
    assert words[:2] == ["trtdebug", "compare"]
    pasted = run_cli(*words[1:])
    assert pasted.returncode in (0, 1), pasted.stderr  # a verdict, not a usage error
