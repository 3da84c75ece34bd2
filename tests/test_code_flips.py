"""INT8 code flips, as a user meets them: a Q/DQ model whose quantized tensor `y` is read from a layer kept
in FP32 whose input an FP16 layer rounded. Three reference values lie just below a rounding boundary of
y's quantizer; the FP16 rounding moves them onto it and the quantizer takes the code above. The scale is
sound (nothing saturates, nothing flushes): compare names y's error a code flip, carried in by its
input, not a defect of y's layer or of its scale."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.cli import run_cli
from tests.qdq_models import CODE_FLIP_SCALE, CODE_FLIP_VALUES, code_flip_model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.quantized.qdq import QuantParams
from trtdebug.core.quantized.scale_findings import code_flips

TIGHT = ("--atol", "0.01", "--rtol", "0.01")  # tighter than one step of y: a flipped code is out of tolerance


def _compare(tmp_path, *extra):
    model, values = code_flip_model()
    path, inputs, plan, report = (tmp_path / "flip.onnx", tmp_path / "in.npz", tmp_path / "plan.json",
                                  tmp_path / "report.json")
    onnx.save(model, str(path))
    np.savez(inputs, input=values)
    # strongly typed, layers outside INT8 run FP32: `round` is put in FP16 to round `a` before the quantizer
    PrecisionPlan("int8", {"round": "fp16", "add": "fp32"}).save(plan)
    run = run_cli("compare", path, "--precision", "int8", "--inputs", inputs, "--plan", plan, "--json", report,
                  *extra)
    return run, json.loads(report.read_text())


def test_flipped_codes_at_a_rounding_boundary_are_named_code_flips_carried_in(tmp_path):
    run, report = _compare(tmp_path, *TIGHT)
    assert run.returncode == 1, run.stdout + run.stderr
    y = next(t for t in report["tensors"] if t["tensor"] == "y")
    kinds = [d["kind"] for d in y["defects"]]
    assert kinds == ["code_flip"], y["defects"]
    assert y["status"] == "propagated"  # its input `a` already differed (FP16 rounding)
    details = y["defects"][0]["details"]
    assert details["flipped_elements"] == len(CODE_FLIP_VALUES)
    assert details["step"] == CODE_FLIP_SCALE and details["boundary_distance_steps"] < 0.01
    assert 0 < details["largest_input_difference"] < 1e-3
    assert report["notes"]["marking"]["int8"]["tensors"]["y"]["code_flips"]["flipped_elements"] == 3
    assert "saturation" not in run.stdout and "coarse_scale" not in run.stdout
    table_row = next(line for line in run.stdout.splitlines() if " add " in line)
    assert "code_flip" in table_row and "propagated" in table_row and "introduced" not in table_row


def test_codes_far_from_a_boundary_or_more_than_a_step_off_are_no_code_flips():
    params = QuantParams(np.float32(CODE_FLIP_SCALE), np.int8(0), None, -128, 127)
    ref = np.array([1.5 / 8 - 2.0**-15, 1 / 8, 2 / 8], np.float32)
    at_boundary = code_flips(ref, np.array([2 / 8, 1 / 8, 2 / 8], np.float32), params)
    assert at_boundary is not None and at_boundary.explained and at_boundary.flipped == 1
    two_steps = code_flips(ref, np.array([3 / 8, 1 / 8, 2 / 8], np.float32), params)
    assert two_steps is not None and not two_steps.explained  # a wrong value, not a rounding the other way
    mid_step = code_flips(ref, np.array([1.5 / 8 - 2.0**-15, 2 / 8, 2 / 8], np.float32), params)
    assert mid_step is not None and not mid_step.explained  # 1/8 lies a whole half step from any boundary


def _amplified_after_qdq() -> onnx.ModelProto:
    """input -> Q/DQ -> Mul by 2^17 ("amplify", outside INT8: FP16 would overflow) -> output."""
    from tests.qdq_models import _pair

    nodes: list = []
    inits = [numpy_helper.from_array(np.float32(2.0**17), "gain")]
    x = _pair(nodes, inits, "input", np.float32(1 / 64))
    nodes.append(helper.make_node("Mul", [x, "gain"], ["output"], name="amplify"))
    graph = helper.make_graph(nodes, "amplified", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_layers_outside_a_given_qdq_model_run_at_its_own_type(tmp_path):
    """A Q/DQ model is strongly typed (TensorRT 11, --stronglyTyped): the FP32 Mul after the pair runs
    in FP32, so no FP16 overflow is invented there."""
    path = tmp_path / "amplified.onnx"
    onnx.save(_amplified_after_qdq(), str(path))
    run = run_cli("compare", path, "--precision", "int8", "--json", tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    kinds = {d["kind"] for t in report["tensors"] for d in t["defects"]}
    assert "overflow" not in kinds, run.stdout
    assert "other layers FP32" in json.dumps(report["notes"]), report["notes"]
