"""Model classes users bring, through real TensorRT-RTX parses and builds (CPU, ahead of time):
models over protobuf's 2 GiB limit (external data), shape-tensor inputs, and user shape ranges.

The 2 GiB limit is lowered for the test (network.PROTOBUF_LIMIT) so that a small model takes the
same path a big one does.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures import odd_models
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.engines.base import Marking
from trtdebug.engines.tensorrt import network
from trtdebug.engines.tensorrt.engine import TensorRTEngine

pytestmark = pytest.mark.rtx
pytest.importorskip("tensorrt_rtx_bindings")


@pytest.fixture(scope="module")
def engine() -> TensorRTEngine:
    return TensorRTEngine("tensorrt-rtx", compute_capabilities=("SM89",))


def matmul_model() -> onnx.ModelProto:
    """x[4,32] @ w[32,32] + b -> relu: a 4 KiB weight, beyond onnx's 1 KiB external-data threshold."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal((32,)).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "b"], ["biased"], name="bias"),
             helper.make_node("Relu", ["biased"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_model_over_the_protobuf_limit_parses_through_a_file_and_stays_whole(
        engine: TensorRTEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(network, "PROTOBUF_LIMIT", 1024)  # this model now counts as "over 2 GiB"
    model = Model.from_proto(matmul_model())
    before = model.proto.SerializeToString()
    first = engine.build(model, PrecisionPlan("fp32"), None, Marking("outputs"))
    # The caller's proto is untouched: weights still inline, no pointer to a deleted file.
    assert model.proto.SerializeToString() == before
    assert all(t.HasField("raw_data") and not t.external_data for t in model.proto.graph.initializer)
    # Every later parse works (the first build parses twice already: candidates, then the build).
    second = engine.build(model, PrecisionPlan("fp16", {"mm": "fp32"}), None, Marking("none"))
    assert first.serialized and second.serialized
    assert model.proto.SerializeToString() == before


def reshape_model() -> onnx.ModelProto:
    return odd_models.shape_tensor_input()


def test_shape_tensor_input_gets_its_values_in_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    model = Model.from_proto(reshape_model())
    engine = TensorRTEngine("tensorrt-rtx", compute_capabilities=("SM89",),
                            shape_input_values={"shape": np.array([6, 4], np.int64),
                                                "x": np.zeros((2, 3, 4), np.float32)})
    calls: list[tuple] = []
    original = network.add_profile

    def spy(builder, config, profile):  # type: ignore[no-untyped-def]
        calls.append((dict(profile.shapes), dict(profile.values)))
        return original(builder, config, profile)

    monkeypatch.setattr("trtdebug.engines.tensorrt.builder.add_profile", spy)
    built = engine.build(model, PrecisionPlan("fp16"), None, Marking("outputs"))
    assert built.serialized
    shapes, values = calls[-1]
    assert values == {"shape": ((6, 4), (6, 4), (6, 4))}
    assert shapes == {"x": ((2, 3, 4), (2, 3, 4), (2, 3, 4))}


def test_shape_tensor_input_without_values_is_a_clear_error() -> None:
    from trtdebug.errors import UserError

    engine = TensorRTEngine("tensorrt-rtx", compute_capabilities=("SM89",))
    with pytest.raises(UserError, match="'shape' is a shape tensor"):
        engine.build(Model.from_proto(reshape_model()), PrecisionPlan("fp16"), None, Marking("none"))


def test_shape_tensor_value_range_is_a_user_profile() -> None:
    engine = TensorRTEngine("tensorrt-rtx", compute_capabilities=("SM89",),
                            shape_ranges={"shape": ((2, 2), (6, 4), (12, 12))})
    built = engine.build(Model.from_proto(reshape_model()), PrecisionPlan("fp32"), None, Marking("none"))
    assert built.serialized


def test_user_shape_range_builds_one_engine_for_every_batch() -> None:
    from trtdebug.engines.tensorrt.selfcheck import tiny_model

    proto = tiny_model()
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    ranges = {"input": ((1, 3, 8, 8), (2, 3, 8, 8), (8, 3, 8, 8))}
    engine = TensorRTEngine("tensorrt-rtx", compute_capabilities=("SM89",), shape_ranges=ranges)
    built = engine.build(Model.from_proto(proto), PrecisionPlan("fp16"), None, Marking("none"))
    assert built.serialize()
