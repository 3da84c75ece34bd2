"""Shape-tensor inputs and data-dependent output shapes through the recording fake (names checked
against tensorrt-stubs 10.13): what the profile gets, where inputs live at run time, and the
IOutputAllocator for outputs whose shape is known only after the run (NonZero, NMS)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import trt_fake
from onnx import TensorProto, helper

from fixtures import odd_models
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.reference.fp32_run import run_reference
from trtdebug.engines.base import Marking
from trtdebug.engines.tensorrt.engine import TensorRTEngine
from trtdebug.errors import UserError


def reshape_model() -> Model:
    return Model.from_proto(odd_models.shape_tensor_input())


def test_shape_tensor_input_values_reach_the_profile_and_run_from_host_memory(
        fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart) -> None:
    feeds = {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 12, "shape": np.array([6, 4], np.int64)}
    engine = TensorRTEngine("tensorrt", shape_input_values=feeds)
    built = engine.build(reshape_model(), PrecisionPlan("fp16"), None, Marking("none"))
    assert fake.called("IOptimizationProfile", "set_shape_input") == [("shape", (6, 4), (6, 4), (6, 4))]
    assert [c[0] for c in fake.called("IOptimizationProfile", "set_shape")] == ["x"]  # not the shape tensor
    values = built.run(feeds)
    np.testing.assert_array_equal(values["y"], np.maximum(feeds["x"].reshape(6, 4), 0))
    assert len(cudart.copies) == 2  # x in, y out: the shape values were read from host memory


def test_shape_tensor_input_without_values_names_the_input(fake: trt_fake.Recorder) -> None:
    with pytest.raises(UserError, match="'shape' is a shape tensor"):
        TensorRTEngine("tensorrt").build(reshape_model(), PrecisionPlan("fp16"), None, Marking("none"))


def test_inputs_whose_shapes_cannot_be_computed_are_one_line(fake: trt_fake.Recorder,
                                                            cudart: trt_fake.FakeCudart) -> None:
    feeds = {"x": np.zeros((2, 3, 4), np.float32), "shape": np.array([5, 5], np.int64)}  # 24 values into 5x5
    built = TensorRTEngine("tensorrt", shape_input_values=feeds).build(reshape_model(), PrecisionPlan("fp16"), None,
                                                                      Marking("none"))
    with pytest.raises(UserError, match=r"cannot compute the engine's shapes for these inputs \(infer_shapes "
                                        r"error code: -1\): check the input shapes and shape-tensor values"):
        built.run(feeds)
    assert not cudart.buffers  # the inputs' device memory was freed


def nonzero_model() -> Model:
    """x -> NonZero -> Cast(float) -> Relu -> y: every tensor after NonZero has a data-dependent shape."""
    nodes = [helper.make_node("NonZero", ["x"], ["nz"], name="nonzero"),
             helper.make_node("Cast", ["nz"], ["nz_f"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Relu", ["nz_f"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "nonzero", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return Model.from_proto(model)


@pytest.mark.parametrize("mode", ["none", "outputs"])
def test_data_dependent_outputs_come_back_through_an_output_allocator(
        fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart, mode: str) -> None:
    model = nonzero_model()
    x = np.array([[0, 1, 0, 2], [3, 0, 0, 0], [0, 0, 4, 5]], np.float32)
    built = TensorRTEngine("tensorrt").build(model, PrecisionPlan("fp32"), None, Marking(mode))  # type: ignore[arg-type]
    values = built.run({"x": x})
    reference = run_reference(model, {"x": x})
    np.testing.assert_array_equal(values["y"], reference["y"])
    assert values["y"].shape == (2, 5)
    if mode == "outputs":  # marked intermediates after NonZero have data-dependent shapes too
        assert {"nz", "nz_f"} <= set(values)
        np.testing.assert_array_equal(values["nz"], reference["nz"])
    assert not cudart.buffers  # what the allocator took is freed with the run


def test_zero_sized_data_dependent_output(fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart) -> None:
    built = TensorRTEngine("tensorrt").build(nonzero_model(), PrecisionPlan("fp32"), None, Marking("none"))
    values = built.run({"x": np.zeros((3, 4), np.float32)})
    assert values["y"].shape == (2, 0)


def test_user_shape_ranges_shape_every_build_and_the_saved_engine(fake: trt_fake.Recorder) -> None:
    """TensorRTEngine(shape_ranges={name: (min, opt, max)}): the one profile of every build (marked
    chunks included) and of the serialized engine, instead of min = opt = max = the feed's shape."""
    from fixtures import planted

    proto = planted.clean()[0]
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model = Model.from_proto(proto)
    ranges = {"input": ((1, 3, 16, 16), (2, 3, 16, 16), (8, 3, 16, 16))}
    engine = TensorRTEngine("tensorrt", shape_ranges=ranges, input_shapes={"input": (2, 3, 16, 16)})
    engine.build(model, PrecisionPlan("fp16"), None, Marking("outputs", chunk_size=2))
    profiles = fake.called("IOptimizationProfile", "set_shape")
    assert profiles and all(p == ("input", *ranges["input"]) for p in profiles)
    saved = engine.build(model, PrecisionPlan("fp16"), None, Marking("none")).serialize()
    runtime = sys.modules["tensorrt"].Runtime(None)
    deserialized = runtime.deserialize_cuda_engine(saved)
    assert [tuple(s) for s in deserialized.get_tensor_profile_shape("input", 0)] == list(ranges["input"])


def test_shape_range_outside_the_model_is_refused(fake: trt_fake.Recorder) -> None:
    from fixtures import planted

    model = Model.from_proto(planted.clean()[0])  # static [1, 3, 16, 16]
    engine = TensorRTEngine("tensorrt", shape_ranges={"input": ((1, 3, 16, 16), (2, 3, 16, 16), (4, 3, 16, 16))})
    with pytest.raises(UserError, match="does not fit the model's shape"):
        engine.build(model, PrecisionPlan("fp16"), None, Marking("none"))


def test_chunked_marking_holds_one_engine_at_a_time(fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart) -> None:
    from fixtures import planted

    model = Model.from_proto(planted.overflow()[0])
    built = TensorRTEngine("tensorrt").build(model, PrecisionPlan("fp16"), None, Marking("outputs", chunk_size=2))
    assert built.marking_notes["chunks"] > 2 and built.marking_notes["layer_info"] == "engine inspector"
    assert fake.most_live_engines == 1 and len(fake.live_engines) == 0  # inspected, then released
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    built.run(feeds)
    built.run(feeds)
    assert fake.most_live_engines == 1 and len(fake.live_engines) == 0
