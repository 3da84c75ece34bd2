"""compare names exactly the planted node and defect kind, and passes the clean model."""

from __future__ import annotations

import pytest

from trtdebug.core.analysis.metrics import Tolerance
from trtdebug.core.model.feeds import generate_feeds, resolve_shapes
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.engines.emulator.engine import EmulatorEngine
from trtdebug.workflows.compare import run_compare
from trtdebug.workflows.problem import Problem


def _compare(path, precision="fp16", plan=None):
    model = Model.load(path)
    feeds = generate_feeds(model, resolve_shapes(model, {}), seed=0)
    problem = Problem.prepare(model, feeds, Tolerance.for_precision(precision))
    return run_compare(problem, EmulatorEngine(), plan or PrecisionPlan(precision))


@pytest.mark.parametrize("name", ["overflow", "underflow", "all_zero"])
def test_first_introduced_is_the_planted_node_and_kind(planted_models, name):
    path, truth = planted_models[name]
    result = _compare(path)
    assert not result.passed
    first = result.first_introduced
    assert first is not None
    assert (first.node, first.tensor) == (truth.node, truth.tensor)
    assert [d.kind for d in first.defects][0] == truth.kind
    # Everything upstream of the planted node is within tolerance.
    assert all(t.status == "ok" for t in result.tensors if t.index < first.index and t.status != "missing")


def test_clean_model_passes_with_no_introduced_error(planted_models):
    path, _ = planted_models["clean"]
    result = _compare(path)
    assert result.passed
    assert result.introduced == []


def test_batchnorm_variance_beyond_fp16_is_folded_not_reported(planted_models):
    """The clean net's BatchNorm variances exceed 65504; TensorRT folds them in FP32, and so must
    the emulator: no overflow anywhere, and the static check marks them harmless."""
    path, _ = planted_models["clean"]
    result = _compare(path)
    assert not any(d.kind == "overflow" for t in result.tensors for d in t.defects)
    violations = {v.tensor: v for v in result.range_violations}
    assert violations["bn1.var"].folded_by_builder
    conv_layer = next(layer for layer in result.layers if "bn1" in layer.onnx_nodes)
    assert conv_layer.onnx_nodes == ("conv1", "bn1")


def test_keeping_the_planted_node_in_fp32_repairs_the_overflow(planted_models):
    path, truth = planted_models["overflow"]
    repaired = _compare(path, plan=PrecisionPlan("fp16", {truth.node: "fp32", "relu_amplify": "fp32",
                                                          "rescale": "fp32"}))
    assert repaired.passed


def test_fp32_build_of_a_planted_model_passes(planted_models):
    path, _ = planted_models["overflow"]
    assert _compare(path, precision="fp32").passed


def test_fp16_range_check_reads_constants_past_their_masks():
    """A constant may hold -inf/NaN (an additive mask); its finite values decide whether it exceeds FP16."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from trtdebug.core.model.graph import Model

    def model_with(values: dict[str, list[float]]) -> Model:
        inits = [numpy_helper.from_array(np.array(v, np.float32), name) for name, v in values.items()]
        nodes, last = [], "x"
        for name in values:
            nodes.append(helper.make_node("Add", [last, name], [f"{name}_out"], name=f"add_{name}"))
            last = f"{name}_out"
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                                  [helper.make_tensor_value_info(last, onnx.TensorProto.FLOAT, [2])], inits)
        return Model.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))

    violations = {v.tensor: v.max_abs for v in model_with({
        "mask": [-np.inf, 1.0], "big_mask": [np.inf, -1e5], "nan_big": [np.nan, 7e4], "plain_big": [1e6, 0.0],
        "fine": [65504.0, -3.0], "all_inf": [np.inf, -np.inf]}).fp16_range_violations()}
    assert violations == {"big_mask": 1e5, "nan_big": 7e4, "plain_big": 1e6}
