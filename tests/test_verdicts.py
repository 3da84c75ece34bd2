"""Verdicts users can trust: never PASS on non-finite data, a headline that names what explains the
failure, outputs judged the same way everywhere, and masks the model handles left alone."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures import real_models as rm
from tests.cli import run_cli
from trtdebug.core.analysis.defects import detect
from trtdebug.core.model.feeds import generate_feeds
from trtdebug.core.model.graph import Model


def _shape_args(shapes: dict) -> list[str]:
    return [a for name, shape in shapes.items() for a in ("--input-shape", f"{name}:{'x'.join(map(str, shape))}")]


def _range_args(ranges: dict) -> list[str]:
    return [a for name, (low, high) in ranges.items() for a in ("--input-range", f"{name}:{low:g},{high:g}")]


# -- non-finite data --------------------------------------------------------------------------------

def test_nan_or_inf_in_an_inputs_file_is_refused(planted_models, tmp_path):
    model, _ = planted_models["clean"]
    values = np.random.default_rng(0).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    values[0, 1, 2, :3] = [np.nan, np.inf, -np.inf]
    np.savez(tmp_path / "feeds.npz", input=values)
    for command in ("compare", "fallback"):
        run = run_cli(command, model, "--inputs", tmp_path / "feeds.npz", "--out" if command == "fallback" else
                      "--top", tmp_path / "p.json" if command == "fallback" else 5, cwd=tmp_path)
        assert run.returncode == 2, run.stdout + run.stderr
        assert "input 'input'" in run.stderr and "3 NaN/inf" in run.stderr and run.stderr.count("\n") == 1
    assert not (tmp_path / "p.json").exists()


@pytest.mark.slow
def test_encoder_whose_generated_mask_makes_the_reference_nan_is_refused_with_a_hint_that_works():
    path = rm.text_encoder()
    shapes = _shape_args(rm.ENCODER_SHAPES)
    run = run_cli("compare", path, *shapes, timeout=600)  # default integers in [0, 7]: mask values the model never sees
    assert run.returncode == 2, run.stdout + run.stderr
    assert "reference itself is not finite" in run.stderr and rm.ENCODER_MASK_NONFINITE_TENSOR in run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    hint = run.stderr.split("e.g. ")[1].split(" (or")[0]
    assert hint == "--input-range attention_mask:0,1"
    # The hint is accepted as written and gives a reference that is finite: a verdict (0 or 1), not exit 2.
    fixed = run_cli("compare", path, *shapes, *shlex.split(hint), "--input-range", "input_ids:0,30521",
                    timeout=600)
    assert fixed.returncode in (0, 1), fixed.stderr


# -- the headline ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_detector_headline_names_the_overflow_not_an_earlier_small_rounding(tmp_path):
    path, culprit, decoy = rm.detector_with_planted_overflow(tmp_path)
    run = run_cli("compare", path, *_shape_args(rm.DETECTOR_SHAPES), *_range_args(rm.DETECTOR_RANGES),
                  "--json", tmp_path / "report.json", timeout=600)
    assert run.returncode == 1, run.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["culprits"][0]["node"] == culprit == rm.DETECTOR_OVERFLOW_NODE
    assert report["first_introduced"] == rm.DETECTOR_OVERFLOW_TENSOR
    assert f"Culprit: {culprit} (Conv)" in run.stdout
    # The planted decoy and the model's own small FP16 errors come earlier in the graph but explain little.
    statuses = {t["node"]: t["status"] for t in report["tensors"]}
    assert statuses["p2o.Conv.4"] == "introduced"
    named = [c["node"] for c in report["culprits"]]
    assert decoy not in named and "p2o.Conv.4" not in named
    assert report["culprits_explain"] > 0.5


def test_pass_prints_no_culprit_line(planted_models):
    path, _ = planted_models["clean"]
    run = run_cli("compare", path)
    assert run.returncode == 0 and "PASS" in run.stdout
    assert "Culprit" not in run.stdout and "introduced" not in run.stdout.split("Worst layers")[0]


@pytest.mark.parametrize("fixture", ["clean", "overflow", "underflow", "all_zero"])
def test_json_outputs_agree_with_the_verdict_at_its_tolerance(planted_models, tmp_path, fixture):
    path, _ = planted_models[fixture]
    run = run_cli("compare", path, "--json", tmp_path / "r.json", "--output-tol", "logits:0.05,0.05")
    report = json.loads((tmp_path / "r.json").read_text())
    output = report["outputs"]["logits"]
    assert (output["atol"], output["rtol"]) == (0.05, 0.05)
    metrics = output["metrics"]
    assert output["passed"] == (metrics["frac_outside"] == 0 and metrics["new_nonfinite"] == 0)
    assert report["passed"] == output["passed"] == (run.returncode == 0)
    logits = next(t for t in report["tensors"] if t["tensor"] == "logits")
    assert logits["accumulated"] == metrics  # the table row is the verdict's measurement


def test_compare_check_uses_the_users_criterion(planted_models, tmp_path):
    path, _ = planted_models["overflow"]
    metric = tmp_path / "metric.py"
    metric.write_text("import sys, numpy as np\n"
                      "out = np.load(sys.argv[1])['logits']\n"
                      "sys.exit(0 if np.isfinite(out).all() else 1)\n")
    failing = run_cli("compare", path, "--check", f"{sys.executable} {metric} {{outputs}}")
    assert failing.returncode == 1 and "--check exited 1" in failing.stdout
    assert "Culprit: conv_amplify" in failing.stdout
    lenient = tmp_path / "lenient.py"
    lenient.write_text("import sys\nsys.exit(0)\n")
    passing = run_cli("compare", path, "--check", f"{sys.executable} {lenient} {{outputs}}")
    assert passing.returncode == 0 and "pass the --check command" in passing.stdout and "Culprit" not in passing.stdout


# -- masks the model absorbs -----------------------------------------------------------------------

def _masked_attention(path: Path) -> None:
    """scores = x @ W; softmax(scores + mask_bias): masked positions carry -1e9, FP16's -inf."""
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((8, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["scores"], name="scores"),
         helper.make_node("Add", ["scores", "mask_bias"], ["masked"], name="add_mask"),
         helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
         helper.make_node("MatMul", ["probs", "x"], ["y"], name="context")],
        "masked_attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8]),
         helper.make_tensor_value_info("mask_bias", TensorProto.FLOAT, [1, 1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_an_additive_mask_that_becomes_inf_in_fp16_is_not_a_defect(tmp_path):
    _masked_attention(tmp_path / "attn.onnx")
    bias = np.zeros((1, 1, 8), np.float32)
    bias[..., 5:] = -1e9  # beyond FP16: -inf there, and Softmax gives 0 either way
    np.savez(tmp_path / "feeds.npz", x=np.random.default_rng(2).uniform(-1, 1, (1, 8, 8)).astype(np.float32),
             mask_bias=bias)
    run = run_cli("compare", tmp_path / "attn.onnx", "--inputs", tmp_path / "feeds.npz", "--json",
                  tmp_path / "r.json")
    assert run.returncode == 0, run.stdout
    statuses = {t["tensor"]: t["status"] for t in json.loads((tmp_path / "r.json").read_text())["tensors"]}
    assert statuses["masked"] == "absorbed" and statuses["probs"] == "ok"


def test_an_overflow_whose_input_was_already_inf_says_so():
    ref = np.array([1.0, 2.0, 3.0], np.float32)
    cand = np.array([np.inf, 2.0, 3.0], np.float32)
    outside = np.array([True, False, False])
    (defect,) = detect(ref, cand, outside, "fp16", 1e-2, 1e-2, inputs_nonfinite=True)
    assert defect.kind == "overflow" and "an input was already inf" in defect.message
    assert "reaches" not in defect.message  # the tensor itself never left FP16's range


# -- generated inputs --------------------------------------------------------------------------------

def test_integer_and_bool_ranges_are_inclusive_and_defaults_documented():
    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
         helper.make_node("Cast", ["flag"], ["flag_f"], to=TensorProto.FLOAT)],
        "ints", [helper.make_tensor_value_info("ids", TensorProto.INT64, [4096]),
                 helper.make_tensor_value_info("flag", TensorProto.BOOL, [4096])],
        [helper.make_tensor_value_info("ids_f", TensorProto.FLOAT, [4096]),
         helper.make_tensor_value_info("flag_f", TensorProto.FLOAT, [4096])])
    model = Model.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    shapes = {"ids": (4096,), "flag": (4096,)}
    defaults = generate_feeds(model, shapes)
    assert set(np.unique(defaults["ids"])) == set(range(8)) and set(np.unique(defaults["flag"])) == {False, True}
    ones = generate_feeds(model, shapes, {"ids": (1, 1), "flag": (1, 1)})
    assert (ones["ids"] == 1).all() and ones["flag"].all()
    binary = generate_feeds(model, shapes, {"ids": (0, 1)})
    assert set(np.unique(binary["ids"])) == {0, 1}


# -- fidelity limits are said where they apply --------------------------------------------------------

def test_recurrent_layers_are_marked_fp32_inside(tmp_path):
    rng = np.random.default_rng(3)
    hidden, features = 8, 4
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)
               for name, shape in (("W", (1, 4 * hidden, features)), ("R", (1, 4 * hidden, hidden)))]
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x", "W", "R"], ["seq", "h_last"], name="lstm", hidden_size=hidden),
         helper.make_node("Relu", ["h_last"], ["y"], name="relu")],
        "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 1, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, hidden])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "lstm.onnx")
    run = run_cli("compare", tmp_path / "lstm.onnx", "--json", tmp_path / "r.json")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 layer(s) run in FP32 inside (lstm)" in run.stdout
    fidelity = {t["tensor"]: t["fidelity"] for t in json.loads((tmp_path / "r.json").read_text())["tensors"]}
    assert fidelity["h_last"].startswith("FP32 inside") and fidelity["y"] == ""


@pytest.mark.parametrize("fixture", ["overflow", "underflow", "all_zero"])
def test_compares_first_culprit_is_a_node_fallback_keeps(planted_models, tmp_path, fixture):
    from trtdebug.workflows.compare import compare_case
    from trtdebug.workflows.fallback import run_fallback
    from trtdebug.workflows.problem import ProblemSpec, prepare

    path, truth = planted_models[fixture]
    case = prepare(ProblemSpec(str(path)))
    result = compare_case(case)
    assert not result.passed and result.culprits[0].node == truth.node
    outcome = run_fallback(ProblemSpec(str(path)), tmp_path / "plan.json")
    assert outcome.search.kept is not None and result.culprits[0].node in outcome.search.kept
