"""Real TensorRT-RTX parses and builds of the strong-typing path, on the CPU.

TensorRT-RTX builds ahead of time without a GPU when given a target (SM89 here), so these tests
exercise the real parser, real marking and the real builder: layer names, metadata, marked tensors,
a plan's Cast nodes accepted by the builder, and the engine's layer information (which the builder
prints; the inspector itself needs a GPU to deserialize the engine). Running engines needs a GPU
of a supported architecture and is not tried here.
"""

from __future__ import annotations

import numpy as np
import pytest

from fixtures import planted
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.engines.base import Marking
from trtdebug.engines.tensorrt.engine import TensorRTEngine
from trtdebug.engines.tensorrt.selfcheck import tiny_model
from trtdebug.errors import UserError

pytestmark = pytest.mark.rtx
pytest.importorskip("tensorrt_rtx_bindings")

ISLAND = {"conv_amplify": "fp32", "relu_amplify": "fp32"}  # an FP32 island in an FP16 network


@pytest.fixture(scope="module")
def engine() -> TensorRTEngine:
    return TensorRTEngine("tensorrt-rtx", compute_capabilities=("SM89",))


@pytest.fixture(scope="module")
def overflow_model() -> Model:
    return Model.from_proto(planted.overflow()[0])


@pytest.fixture(scope="module")
def marked_island(engine: TensorRTEngine, overflow_model: Model):
    return engine.build(overflow_model, PrecisionPlan("fp16", ISLAND), None, Marking("outputs"))


def compute_nodes(model: Model) -> set[str]:
    return {n.name for n in model.nodes if n.op_type not in ("Flatten", "Constant")}


def test_features_are_the_strongly_typed_api(engine: TensorRTEngine) -> None:
    features = engine.features
    assert features.is_rtx and features.compute_capability and features.strong_flag
    assert not features.weak_typing and not features.algorithm_selector and not features.calibrators
    assert features.debug_tensors and features.unfused_debug and features.layer_metadata
    assert engine.strong_typing and engine.tactic_control(None) == "none"


def test_parser_names_layers_after_nodes_with_metadata(engine: TensorRTEngine, overflow_model: Model) -> None:
    names = engine.network_layer_names(overflow_model)
    assert names["conv_amplify"] == ["conv_amplify"] and names["relu_amplify"] == ["relu_amplify"]
    # The Gemm parses into a matrix multiply and a bias add, both carrying "[ONNX Layer: logits]".
    assert len(names["logits"]) == 2 and names["logits"][0] == "logits"
    assert names["flatten"][0].startswith("flatten")  # a shuffle (data movement) is held by plans too


def test_mixed_plan_casts_are_accepted_by_the_builder(marked_island) -> None:
    notes = marked_island.marking_notes
    assert notes["typing"] == "strong" and notes["engine"].startswith("tensorrt_rtx")
    assert notes["layer_info"] == "build log" and notes["builds"] == 1 and notes["dropped"] == []
    precision = {layer.onnx_nodes: layer.precision for layer in marked_island.layers}
    assert precision[("conv_amplify",)] == "fp32"  # the island computes in FP32 ...
    assert precision[("conv1",)] == "fp16"  # ... the rest in FP16
    assert any(p == "fp16" and "conv2" in nodes for nodes, p in precision.items())


def test_every_marked_tensor_is_written_by_an_engine_layer(marked_island, overflow_model: Model) -> None:
    marked = marked_island.marking_notes["marked"]
    assert set(marked) == set(overflow_model.intermediate_tensors()) - {"logits"}
    written = {t for layer in marked_island.layers for t in layer.outputs}
    assert set(marked) <= written and "logits" in written


def test_metadata_maps_every_node_to_engine_layers(marked_island, overflow_model: Model) -> None:
    covered = {n for layer in marked_island.layers for n in layer.onnx_nodes}
    assert compute_nodes(overflow_model) <= covered
    mapped = [layer for layer in marked_island.layers if layer.onnx_nodes]
    assert all(layer.extra["mapped_by"] == "metadata" for layer in mapped)
    # Myelin fuses several nodes into one kernel and lists them all in its metadata.
    assert any(len(layer.onnx_nodes) > 1 for layer in mapped)
    assert all(layer.tactic or layer.op_type for layer in mapped)


def test_unmarked_build_fuses_more_than_the_marked_one(engine: TensorRTEngine, overflow_model: Model,
                                                       marked_island) -> None:
    unmarked = engine.build(overflow_model, PrecisionPlan("fp16", ISLAND), None, Marking("none"))
    assert len(unmarked.layers) < len(marked_island.layers)
    assert max(len(la.onnx_nodes) for la in unmarked.layers) >= 3


@pytest.mark.parametrize("mode", ["debug", "unfused"])
def test_debug_marking_modes_build(engine: TensorRTEngine, mode: str) -> None:
    model = Model.from_proto(tiny_model())
    built = engine.build(model, PrecisionPlan("fp16", {"conv_b": "fp32"}), None, Marking(mode))
    assert built.marking_notes["mode"] == mode
    if mode == "debug":
        assert set(built.marking_notes["marked"]) == {"conv_a", "relu_a", "conv_b", "input_proj", "residual"}
    assert {"conv_a", "conv_b", "output"} <= {n for la in built.layers for n in la.onnx_nodes}


def test_chunked_marking_builds_one_engine_per_chunk(engine: TensorRTEngine) -> None:
    model = Model.from_proto(tiny_model())
    built = engine.build(model, PrecisionPlan("fp16"), None, Marking("outputs", chunk_size=2))
    assert built.marking_notes["chunks"] == 3 and built.marking_notes["builds"] == 3
    assert [c.marked for c in built.chunks] == [["conv_a", "relu_a"], ["conv_b", "input_proj"], ["residual"]]
    for chunk in built.chunks:
        written = {t for layer in chunk.result.layers for t in layer.outputs}
        assert set(chunk.marked) <= written


def test_subset_of_tensors_can_be_requested(engine: TensorRTEngine, overflow_model: Model) -> None:
    built = engine.build(overflow_model, PrecisionPlan("fp16"), None,
                         Marking("outputs", tensors=("conv_amplify", "pool", "not_a_tensor")))
    assert built.marking_notes["marked"] == ["conv_amplify", "pool"]


def test_running_needs_a_gpu(engine: TensorRTEngine) -> None:
    model = Model.from_proto(tiny_model())
    built = engine.build(model, PrecisionPlan("fp16"), None, Marking("none"))
    assert built.serialized and built.serialized[0][:4]  # a real serialized engine
    if engine.device_available():
        pytest.skip("a GPU is present: selfcheck covers running there")
    with pytest.raises(UserError):
        built.run({"input": np.zeros((1, 3, 8, 8), np.float32)})


def test_weak_typing_is_refused(overflow_model: Model) -> None:
    with pytest.raises(UserError, match="has no weak typing"):
        TensorRTEngine("tensorrt-rtx", typing="weak", compute_capabilities=("SM89",)).build(
            overflow_model, PrecisionPlan("fp16"), None, Marking("none"))


def test_unknown_compute_capability_lists_the_known_ones(overflow_model: Model) -> None:
    with pytest.raises(UserError, match=r"unknown compute capability 'SM90'; use one of .*SM89"):
        TensorRTEngine("tensorrt-rtx", compute_capabilities=("SM90",)).build(
            overflow_model, PrecisionPlan("fp16"), None, Marking("none"))


def test_selfcheck_builds_every_rtx_path() -> None:
    from trtdebug.engines.tensorrt.selfcheck import run_selfcheck, selfcheck_exit_code

    checks = run_selfcheck(("tensorrt-rtx",))
    tried = [c for c in checks if c.name.startswith("tensorrt-rtx: strong typing")]
    assert [c.name.split("--mark ")[1] for c in tried] == ["none", "outputs", "debug", "unfused", "outputs --chunk 2",
                                                           "auto"]
    assert all(c.status == "ok" for c in tried), [c for c in tried if c.status != "ok"]
    tactics = [c for c in checks if "tactics" in c.name]
    assert [c.status for c in tactics] == ["skipped", "skipped"]  # TensorRT-RTX does no autotuning
    assert selfcheck_exit_code(checks, ("tensorrt-rtx",)) == 0
