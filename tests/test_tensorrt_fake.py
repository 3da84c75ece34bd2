"""The TensorRT engine's weak-typing, tactic and run paths, through a fake `tensorrt` module whose
every used name is checked against tensorrt-stubs 10.13 (and, for the strong-typing and timing
cache paths, against the real TensorRT-RTX bindings): a misspelt TensorRT API fails here.

What the fake cannot tell: whether real TensorRT *behaves* as faked (fusions, kernel choices).
Those are covered by the TensorRT-RTX build tests and `trtdebug selfcheck` on a GPU machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import trt_fake
from onnx import TensorProto, helper

from fixtures import planted
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.ban_list import BanEntry, BanList
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.reference.fp32_run import run_reference
from trtdebug.engines.base import BuildError, Marking
from trtdebug.engines.tensorrt.cuda_buffers import CudaError, CudaRuntime, device_arena
from trtdebug.engines.tensorrt.engine import TensorRTEngine
from trtdebug.engines.tensorrt.host_types import HOST_TYPES, host_input
from trtdebug.engines.tensorrt.marking import bisect_markable
from trtdebug.engines.tensorrt.support import Features, load_tensorrt
from trtdebug.engines.tensorrt.tactics import parse_profiling_log
from trtdebug.errors import UserError

DETECTION_PROBES = trt_fake.DETECTION_PROBES
OLDER_TENSORRT = trt_fake.TENSORRT_8_6_LACKS  # what 8.6 lacks of the 10.13 API


@pytest.fixture(scope="module")
def overflow_model() -> Model:
    return Model.from_proto(planted.overflow()[0])


def feeds_for(model: Model) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(0).uniform(-1, 1, planted.INPUT_SHAPE).astype(np.float32)}


# -- the checking itself ---------------------------------------------------------------------------

def test_fake_rejects_a_misspelt_name(fake: trt_fake.Recorder) -> None:
    config = trt_fake.IBuilderConfig()
    with pytest.raises(AttributeError, match="IBuilderConfig.set_flags"):
        getattr(config, "set_flags")  # noqa: B009 - the access is the test
    with pytest.raises(AttributeError):
        getattr(sys.modules["tensorrt"].BuilderFlag, "FP61")  # noqa: B009
    assert ("IBuilderConfig", "set_flags") in fake.misses
    fake.misses.clear()  # deliberate misses: the fixture's final check is for the code under test


def test_stubs_are_parsed_with_inheritance_and_enum_values() -> None:
    api = trt_fake.load_stub_api()
    assert {"precision", "set_output_type", "metadata", "type"} <= api.classes["IConvolutionLayer"]
    assert api.enums["ILogger.Severity"] == {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4}
    assert {"queryKeys", "query", "update"} <= api.classes["ITimingCache"]
    assert "select_algorithms" in api.classes["IAlgorithmSelector"]


# -- feature detection ------------------------------------------------------------------------------

def test_features_of_tensorrt_10_13(fake: trt_fake.Recorder) -> None:
    features = Features.detect(load_tensorrt("tensorrt"))
    assert features.weak_typing and features.strong_flag and features.bf16_flag
    assert features.debug_tensors and features.unfused_debug and features.editable_timing_cache
    assert features.algorithm_selector and features.calibrators and features.layer_metadata
    assert not features.is_rtx and not features.need_explicit_batch and not features.compute_capability
    assert features.marking_modes() == ("none", "outputs", "debug", "unfused")


def test_features_of_an_older_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    module, recorder = trt_fake.activate(missing=OLDER_TENSORRT)
    module.__version__ = "8.6.1"  # type: ignore[misc]
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    features = Features.detect(load_tensorrt("tensorrt"))
    assert features.weak_typing and features.algorithm_selector and features.calibrators
    assert features.need_explicit_batch  # the 8.x ONNX parser needs EXPLICIT_BATCH
    assert not (features.debug_tensors or features.unfused_debug or features.editable_timing_cache
                or features.strong_flag or features.bf16_flag)
    assert features.layer_metadata  # 8.6 has ILayer.metadata
    assert features.marking_modes() == ("none", "outputs")
    engine = TensorRTEngine("tensorrt")
    with pytest.raises(UserError, match="--mark debug needs a newer TensorRT"):
        engine.build(Model.from_proto(planted.clean()[0]), PrecisionPlan("fp16"), None, Marking("debug"))
    with pytest.raises(UserError, match="no BF16 builder flag"):
        engine.build(Model.from_proto(planted.clean()[0]), PrecisionPlan("bf16"), None, Marking("none"))


def test_tensorrt_8_6_builds_and_runs_int64_models_as_int32(monkeypatch: pytest.MonkeyPatch,
                                                           cudart: trt_fake.FakeCudart) -> None:
    module, recorder = trt_fake.activate(missing=OLDER_TENSORRT)
    module.__version__ = "8.6.1"  # type: ignore[misc]
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    proto = shape_model().proto
    proto.graph.output.append(helper.make_tensor_value_info("shape", TensorProto.INT64, [2]))
    plan = PrecisionPlan("fp16", {"relu": "fp32"})
    built = TensorRTEngine("tensorrt").build(Model.from_proto(proto), plan, None, Marking("outputs"))
    assert ("ILayer", "metadata") in recorder.used  # layers mapped by metadata, as on 8.6
    values = built.run({"x": np.ones((2, 3), np.float32)})
    assert values["shape"].dtype == np.int32 and list(values["shape"]) == [2, 3]
    assert recorder.misses <= DETECTION_PROBES


def test_features_of_the_strongly_typed_api(rtx_checked: trt_fake.Recorder) -> None:
    features = Features.detect(load_tensorrt("tensorrt"))
    assert not features.weak_typing and not features.algorithm_selector and not features.calibrators
    assert features.strong_flag and features.editable_timing_cache and features.debug_tensors


def test_missing_tensorrt_names_the_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(UserError, match=r"pip install tensorrt-cu12 .*trtdebug\[tensorrt\]"):
        TensorRTEngine("tensorrt")
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", None)
    with pytest.raises(UserError, match=r"trtdebug\[rtx\]"):
        TensorRTEngine("tensorrt-rtx")


def test_stub_only_tensorrt_package_is_not_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """tensorrt-stubs installs an importable `tensorrt` folder of .pyi files: not TensorRT."""
    import types

    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    with pytest.raises(UserError, match="TensorRT is not installed"):
        load_tensorrt("tensorrt")


# -- weak typing --------------------------------------------------------------------------------------

def test_weak_typing_constrains_planned_layers_with_prefer(fake: trt_fake.Recorder, overflow_model: Model) -> None:
    plan = PrecisionPlan("fp16", {"conv_amplify": "fp32", "relu_amplify": "fp32", "logits": "fp32",
                                  "flatten": "fp32"})
    built = TensorRTEngine("tensorrt").build(overflow_model, plan, None, Marking("none"))
    flags = [args[0] for args in fake.called("IBuilderConfig", "set_flag")]
    assert "FP16" in flags and "PREFER_PRECISION_CONSTRAINTS" in flags and "OBEY_PRECISION_CONSTRAINTS" not in flags
    assert ("TF32",) in fake.called("IBuilderConfig", "clear_flag")
    constrained = {(name, value.name) for name, value in fake.called("ILayer", "precision")}
    # A Gemm parses into two layers (matrix multiply + bias add); both carry its metadata.
    # The Flatten (a SHUFFLE: data movement) is held too, or the builder could move FP32 data in FP16.
    assert constrained == {("conv_amplify", "FLOAT"), ("relu_amplify", "FLOAT"), ("logits", "FLOAT"),
                           ("logits_0", "FLOAT"), ("flatten", "FLOAT")}
    assert {(name, i) for name, i, _ in fake.called("ILayer", "set_output_type")} == {
        ("conv_amplify", 0), ("relu_amplify", 0), ("logits", 0), ("logits_0", 0), ("flatten", 0)}
    # `logits` is a network output: set_output_type does not reach it, tensor.dtype does.
    assert [(name, value.name) for name, value in fake.called("ITensor", "dtype")] == [("logits", "FLOAT")]
    assert built.marking_notes["precision"]["skipped_layers"] == []
    assert built.marking_notes["typing"] == "weak"


def test_fp32_default_with_fp16_layers_holds_every_other_layer_to_fp32(fake: trt_fake.Recorder,
                                                                       overflow_model: Model) -> None:
    """BuilderFlag.FP16 lets every layer use FP16: only the planned layer may, the rest are held to FP32."""
    plan = PrecisionPlan("fp32", {"conv_amplify": "fp16"})
    built = TensorRTEngine("tensorrt").build(overflow_model, plan, None, Marking("none"))
    flags = [a[0] for a in fake.called("IBuilderConfig", "set_flag")]
    assert "FP16" in flags and "PREFER_PRECISION_CONSTRAINTS" in flags
    constrained = dict((name, value.name) for name, value in fake.called("ILayer", "precision"))
    assert constrained.pop("conv_amplify") == "HALF"
    compute = {layer.name for layer in overflow_model.nodes if layer.op_type not in ("Flatten", "Constant")}
    assert set(constrained) >= (compute - {"conv_amplify"}) | {"logits_0"}
    assert set(constrained.values()) == {"FLOAT"}
    assert constrained["flatten"] == "FLOAT"  # data movement inside the FP32 region is held too
    assert built.marking_notes["precision"]["others_held_to"] == "fp32"


@pytest.mark.parametrize("suffix", [" | Local Function: block",  # 10.x parsers, 8.6 with a local function
                                    " | computes the logits | Local Function: block"])  # 8.6: doc string lines
def test_layer_metadata_with_properties_maps_to_its_node(fake: trt_fake.Recorder, overflow_model: Model,
                                                         suffix: str) -> None:
    """'[ONNX Layer: logits | ...]' (onnx-tensorrt processMetadata): the Gemm's bias-add layer
    `logits_0`, whose name names no node, is planned and reported by its metadata."""
    fake.metadata_suffix = suffix
    built = TensorRTEngine("tensorrt").build(overflow_model, PrecisionPlan("fp16", {"logits": "fp32"}), None,
                                             Marking("none"))
    assert {name for name, _ in fake.called("ILayer", "precision")} == {"logits", "logits_0"}
    assert next(la for la in built.layers if la.name == "logits_0").onnx_nodes == ("logits",)


def test_metadata_names_the_calling_node_of_a_local_function() -> None:
    from trtdebug.engines.tensorrt.layers import NodeResolver, metadata_nodes

    # Newer parsers list the call stack, innermost first: "<calling node> (<function>)".
    metadata = "[ONNX Layer: inner_add | block_call (Block)]\x1e[ONNX Layer: relu1]"
    assert NodeResolver(["block_call", "relu1"]).known(metadata_nodes(metadata)) == ("block_call", "relu1")


def test_empty_plan_sets_only_the_builder_flag(fake: trt_fake.Recorder, overflow_model: Model) -> None:
    TensorRTEngine("tensorrt").build(overflow_model, PrecisionPlan("fp16"), None, Marking("none"))
    assert [a[0] for a in fake.called("IBuilderConfig", "set_flag")] == ["FP16"]
    assert not fake.called("ILayer", "precision")


def test_obey_constraints_fail_the_build_when_unsatisfiable(fake: trt_fake.Recorder, overflow_model: Model) -> None:
    plan = PrecisionPlan("fp16", {"relu_amplify": "fp32"})
    with pytest.raises(BuildError, match="obeys the requested constraints"):
        TensorRTEngine("tensorrt", obey_constraints=True).build(overflow_model, plan, None, Marking("none"))
    assert "OBEY_PRECISION_CONSTRAINTS" in [a[0] for a in fake.called("IBuilderConfig", "set_flag")]


def test_strong_typing_on_10x_uses_the_flag_and_casts(fake: trt_fake.Recorder, overflow_model: Model) -> None:
    plan = PrecisionPlan("fp16", {"conv_amplify": "fp32"})
    built = TensorRTEngine("tensorrt", typing="strong").build(overflow_model, plan, None, Marking("none"))
    strongly_typed = 1 << 1  # STRONGLY_TYPED is 1 in 10.13 (the fake's value comes from the stubs)
    assert fake.called("Builder", "create_network")[-1] == (strongly_typed,)
    assert not fake.called("ILayer", "precision") and not fake.called("IBuilderConfig", "set_flag")
    proto = next(iter(fake.plans.values())).proto
    assert any(n.op_type == "Cast" for n in proto.graph.node)
    assert built.marking_notes["typing"] == "strong"


def test_int8_without_qdq_needs_calibration_data(fake: trt_fake.Recorder, overflow_model: Model) -> None:
    with pytest.raises(UserError, match="needs calibration data"):
        TensorRTEngine("tensorrt").build(overflow_model, PrecisionPlan("int8"), None, Marking("none"))


def test_int8_calibration_feeds_reach_the_calibrator(fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart,
                                                     overflow_model: Model, tmp_path: Path) -> None:
    batches = [feeds_for(overflow_model), feeds_for(overflow_model)]
    cache = tmp_path / "calibration.cache"
    engine = TensorRTEngine("tensorrt", calibration_feeds=batches, calibration_cache=str(cache))
    engine.build(overflow_model, PrecisionPlan("int8"), None, Marking("none"))
    assert "INT8" in [a[0] for a in fake.called("IBuilderConfig", "set_flag")]
    assert len(fake.called("IInt8EntropyCalibrator2", "batch")) == 2
    assert cache.read_bytes() == b"calibration-cache"
    assert not cudart.buffers  # each batch's device memory was freed


# -- marking ------------------------------------------------------------------------------------------

def shape_model() -> Model:
    """x -> relu -> Shape -> Reshape(relu, shape) -> sigmoid: a SHAPE output must not be marked."""
    nodes = [helper.make_node("Relu", ["x"], ["relu"], name="relu"),
             helper.make_node("Shape", ["relu"], ["shape"], name="shape"),
             helper.make_node("Reshape", ["relu", "shape"], ["reshaped"], name="reshape"),
             helper.make_node("Sigmoid", ["reshaped"], ["y"], name="sigmoid")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    return Model.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_marking_skips_shape_outputs(fake: trt_fake.Recorder) -> None:
    built = TensorRTEngine("tensorrt").build(shape_model(), PrecisionPlan("fp16"), None, Marking("outputs"))
    assert built.marking_notes["marked"] == ["relu", "reshaped"]
    assert [a[0] for a in fake.called("INetworkDefinition", "mark_output")][-2:] == ["relu", "reshaped"]


def test_shape_tensor_outputs_are_read_from_host_memory(fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart) -> None:
    proto = shape_model().proto
    proto.graph.output.append(helper.make_tensor_value_info("shape", TensorProto.INT64, [2]))
    built = TensorRTEngine("tensorrt").build(Model.from_proto(proto), PrecisionPlan("fp16"), None, Marking("none"))
    values = built.run({"x": np.ones((2, 3), np.float32)})
    assert values["shape"].dtype == np.int64 and list(values["shape"]) == [2, 3]
    assert len(cudart.copies) == 2  # the input and `y` went through the device; `shape` did not


def test_tensor_that_breaks_the_build_is_bisected_out(fake: trt_fake.Recorder, overflow_model: Model) -> None:
    fake.fail_when_marked = {"relu_amplify", "pool"}
    built = TensorRTEngine("tensorrt").build(overflow_model, PrecisionPlan("fp16"), None, Marking("outputs"))
    notes = built.marking_notes
    assert [d["tensor"] for d in notes["dropped"]] == ["relu_amplify", "pool"]
    assert "requires bool or uint8" in notes["dropped"][0]["reason"]
    assert set(notes["marked"]) == set(overflow_model.intermediate_tensors()) - {"relu_amplify", "pool", "logits"}
    assert notes["builds"] < 2 * len(overflow_model.intermediate_tensors())  # bisection, not one build per tensor


def test_a_plan_that_never_builds_is_a_build_error_not_a_marking_problem(fake: trt_fake.Recorder,
                                                                         overflow_model: Model) -> None:
    engine = TensorRTEngine("tensorrt", obey_constraints=True)
    with pytest.raises(BuildError):
        engine.build(overflow_model, PrecisionPlan("fp16", {"relu1": "fp32"}), None, Marking("outputs"))


def test_chunked_marking_builds_each_chunk(fake: trt_fake.Recorder, overflow_model: Model) -> None:
    built = TensorRTEngine("tensorrt").build(overflow_model, PrecisionPlan("fp16"), None,
                                             Marking("outputs", chunk_size=4))
    candidates = [t for t in overflow_model.intermediate_tensors() if t != "logits"]
    assert built.marking_notes["chunks"] == -(-len(candidates) // 4)
    assert [c.marked for c in built.chunks] == [candidates[i:i + 4] for i in range(0, len(candidates), 4)]
    # The fake fuses nothing, so every chunk has the same layers: each is listed once.
    names = [layer.name for layer in built.layers]
    assert len(names) == len(set(names)) and all(layer.extra["build"] == 0 for layer in built.layers)


def test_bisect_finds_culprits_and_respects_the_budget() -> None:
    culprits = {"c", "f"}
    tried: list[list[str]] = []

    def attempt(tensors: list[str]) -> str | None:
        tried.append(tensors)
        return None if culprits & set(tensors) else "built:" + ",".join(tensors)

    kept, dropped, result = bisect_markable(attempt, list("abcdefgh"), lambda: False)
    assert dropped == ["c", "f"] and kept == ["a", "b", "d", "e", "g", "h"]
    assert result == "built:" + ",".join(kept)
    kept, dropped, _ = bisect_markable(attempt, list("abcdefgh"), lambda: True)
    assert kept == [] and dropped == list("abcdefgh")  # out of budget: drop rather than loop


# -- tactics --------------------------------------------------------------------------------------------

def test_algorithm_selector_records_and_excludes_banned_tactics(fake: trt_fake.Recorder,
                                                                overflow_model: Model) -> None:
    engine = TensorRTEngine("tensorrt", record_tactics=True, tactic_control="selector")
    plan = PrecisionPlan("fp16")
    first = engine.build(overflow_model, plan, None, Marking("none"))
    assert ("DISABLE_TIMING_CACHE",) in fake.called("IBuilderConfig", "set_flag")
    conv = next(layer for layer in first.layers if layer.name == "conv_amplify")
    assert conv.tactic.count(":") == 1 and len(conv.alternatives) == 2
    assert conv.extra["kernel"] == "sm80_kernel_conv_amplify_a"
    ban = BanEntry(layer="conv_amplify", tactic=conv.tactic, onnx_nodes=("conv_amplify",))
    second = engine.build(overflow_model, plan, BanList((ban,)), Marking("none"))
    conv2 = next(layer for layer in second.layers if layer.name == "conv_amplify")
    assert conv2.tactic == conv.alternatives[0] and conv2.extra["excluded"] == [conv.tactic]
    others = {la.name: la.tactic for la in first.layers if la.name != "conv_amplify"}
    assert others == {la.name: la.tactic for la in second.layers if la.name != "conv_amplify"}


def test_unknown_or_total_bans_never_fail_the_build(fake: trt_fake.Recorder, overflow_model: Model) -> None:
    engine = TensorRTEngine("tensorrt", record_tactics=True, tactic_control="selector")
    first = engine.build(overflow_model, PrecisionPlan("fp16"), None, Marking("none"))
    conv = next(layer for layer in first.layers if layer.name == "conv_amplify")
    everything = tuple(BanEntry(layer="conv_amplify", tactic=t) for t in (conv.tactic, *conv.alternatives))
    unknown = (BanEntry(layer="conv_amplify", tactic="0xdead:0xbeef"),)
    for bans in (everything, unknown):
        again = engine.build(overflow_model, PrecisionPlan("fp16"), BanList(bans), Marking("none"))
        assert next(la for la in again.layers if la.name == "conv_amplify").tactic == conv.tactic


README_LOG = """Autotuning op matMul1(key: 0x1814870c44ff0f8574df6e3dda04cbd7):
Sorted table of all evaluated tactics:
tactic_id, cost(in ms), cost/fastest_cost, prediction_correlation, kernel_name, tactic_hash, tunable_parameter
   3, 0.0112640, 1.00000, 0.50673, sm80_xmma_gemm_f32f32_tf32f32_f32_nn_n_tilesize32x32x64_stage3, 0x665ded9abbf88,
   5, 0.0118784, 1.05455, 0.51157, sm80_xmma_gemm_f32f32_tf32f32_f32_nn_n_tilesize64x32x64_stage4, 0x393e4ef8ad243,
The selected tactic is (tactic hash, cost(in ms)):0x665ded9abbf88,  0.011264
Writing the best tactic (0x665ded9abbf88) to cache"""


def test_profiling_log_parses_like_the_sample() -> None:
    """The log excerpt of NVIDIA's sampleEditableTimingCache README."""
    table = parse_profiling_log(README_LOG.splitlines())
    (record,) = [r for r in table.values() if r.op == "matMul1"]
    assert record.key == "0x1814870c44ff0f8574df6e3dda04cbd7" and record.selected == "0x665ded9abbf88"
    assert [h for h, _ in record.tactics] == ["0x665ded9abbf88", "0x393e4ef8ad243"]
    assert record.tactics[1][1].endswith("tilesize64x32x64_stage4")


def test_editable_timing_cache_forces_the_next_best_tactic(rtx_checked: trt_fake.Recorder,
                                                           overflow_model: Model) -> None:
    engine = TensorRTEngine("tensorrt", record_tactics=True)  # auto: the editable timing cache
    plan = PrecisionPlan("fp16")
    first = engine.build(overflow_model, plan, None, Marking("none"))
    assert first.marking_notes["tactic_control"] == "timing-cache" and first.marking_notes["typing"] == "strong"
    conv = next(layer for layer in first.layers if layer.onnx_nodes == ("conv_amplify",))
    key = conv.extra["cache_key"]
    assert len(key) == 34 and len(conv.alternatives) == 2
    ban = BanEntry(layer=conv.extra["tactic_layer"], tactic=conv.tactic, cache_key=key)
    second = engine.build(overflow_model, plan, BanList((ban,)), Marking("none"))
    assert rtx_checked.timing_cache_updates == [(key, int(conv.alternatives[0], 16), 1.0)]
    conv2 = next(layer for layer in second.layers if layer.onnx_nodes == ("conv_amplify",))
    assert conv2.extra["cache_tactic"] == conv.alternatives[0]
    assert conv2.extra["forced_from"] == conv.extra["cache_tactic"]
    # The reported tactic is the engine's own kernel (inspector), as sampleEditableTimingCache checks it.
    assert conv2.tactic == conv2.extra["kernel"] == conv.extra["kernels"][conv.alternatives[0]]
    assert "note" not in conv2.extra


def test_timing_cache_edit_the_engine_ignores_is_reported(rtx_checked: trt_fake.Recorder,
                                                          overflow_model: Model) -> None:
    engine = TensorRTEngine("tensorrt", record_tactics=True)
    first = engine.build(overflow_model, PrecisionPlan("fp16"), None, Marking("none"))
    conv = next(layer for layer in first.layers if layer.onnx_nodes == ("conv_amplify",))
    rtx_checked.ignore_cache_edits = True  # TensorRT re-times and keeps its kernel
    ban = BanEntry(layer=conv.extra["tactic_layer"], tactic=conv.tactic, cache_key=conv.extra["cache_key"])
    second = engine.build(overflow_model, PrecisionPlan("fp16"), BanList((ban,)), Marking("none"))
    conv2 = next(layer for layer in second.layers if layer.onnx_nodes == ("conv_amplify",))
    assert conv2.tactic == conv.tactic  # the engine's kernel, not the hash written into the cache
    assert "TensorRT ignored the edit" in conv2.extra["note"]


def test_a_ban_reaches_every_cache_key_of_an_op() -> None:
    """Weak typing autotunes one op under several keys (FP32 and FP16 formats): every key whose
    chosen tactic is banned is rewritten, not only the last one logged."""
    from trtdebug.engines.tensorrt.tactics import force_unbanned_tactics, records_from_profiling

    def block(key: str, first: str, second: str) -> list[str]:
        return [f"Autotuning op conv1(key: {key}):",
                "tactic_id, cost(in ms), cost/fastest_cost, prediction_correlation, kernel_name, tactic_hash, x",
                f"0, 0.1, 1.0, 0.5, kernel_{first}, {first},", f"1, 0.2, 2.0, 0.5, kernel_{second}, {second},",
                f"The selected tactic is (tactic hash, cost(in ms)):{first}, 0.1"]

    keys = [f"0x{1:032x}", f"0x{2:032x}"]
    records = records_from_profiling(parse_profiling_log([*block(keys[0], "0xa", "0xb"),
                                                          *block(keys[1], "0xa", "0xc")]))
    assert [r.cache_key for r in records] == keys

    class Cache:
        updates: list[tuple[str, int]] = []

        def update(self, key: object, value: object) -> bool:
            self.updates.append((str(key), value.tacticHash))  # type: ignore[attr-defined]
            return True

    class Api:
        class TimingCacheKey:
            @staticmethod
            def parse(text: str) -> str:
                return text

        class TimingCacheValue:
            def __init__(self, tactic: int, ms: float):
                self.tacticHash = tactic

    bans = BanList((BanEntry(layer="conv1", tactic="0xa"),))
    assert force_unbanned_tactics(Api, Cache(), records, bans, lambda name: ())
    assert Cache.updates == [(keys[0], 0xB), (keys[1], 0xC)]


def test_timing_cache_ban_by_kernel_name(rtx_checked: trt_fake.Recorder, overflow_model: Model) -> None:
    engine = TensorRTEngine("tensorrt", record_tactics=True)
    first = engine.build(overflow_model, PrecisionPlan("fp16"), None, Marking("none"))
    conv = next(layer for layer in first.layers if layer.onnx_nodes == ("conv_amplify",))
    ban = BanEntry(layer=conv.extra["tactic_layer"], tactic=conv.extra["kernels"][conv.extra["cache_tactic"]])
    second = engine.build(overflow_model, PrecisionPlan("fp16"), BanList((ban,)), Marking("none"))
    conv2 = next(la for la in second.layers if la.onnx_nodes == ("conv_amplify",))
    assert conv2.extra["cache_tactic"] == conv.alternatives[0]
    assert conv2.tactic == conv.extra["kernels"][conv.alternatives[0]]


# A conv kernel of TensorRT 10.13's TREx example engines (tools/experimental/trt-engine-explorer/examples/
# pytorch/resnet/A100/qat-residual/resnet-qat-residual.onnx.engine.graph.json): 164 characters.
LONG_KERNEL = ("sm80_xmma_fprop_implicit_gemm_interleaved_i8f16_i8i32_f32_nchw_vect_c_32kcrs_vect_c_32_nchw_vect_c_32_"
               "tilesize128x128x64_stage4_warpsize2x2x1_g1_tensor16x8x32_t1r3s3")


def test_kernel_names_longer_than_128_characters_get_alternatives_and_bans(rtx_checked: trt_fake.Recorder,
                                                                           overflow_model: Model) -> None:
    rtx_checked.kernel_prefix = LONG_KERNEL + "_"
    engine = TensorRTEngine("tensorrt", record_tactics=True)
    first = engine.build(overflow_model, PrecisionPlan("fp16"), None, Marking("none"))
    conv = next(layer for layer in first.layers if layer.onnx_nodes == ("conv_amplify",))
    kernel = conv.extra["kernels"][conv.extra["cache_tactic"]]
    assert len(kernel) > 128 and len(conv.alternatives) == 2
    ban = BanEntry(layer=conv.extra["tactic_layer"], tactic=kernel)
    second = engine.build(overflow_model, PrecisionPlan("fp16"), BanList((ban,)), Marking("none"))
    conv2 = next(la for la in second.layers if la.onnx_nodes == ("conv_amplify",))
    assert conv2.extra["cache_tactic"] == conv.alternatives[0] and conv2.tactic != kernel


# -- running (fake cuda-python: device memory is host memory) ---------------------------------------------

def test_run_returns_every_marked_tensor_and_frees_buffers(fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart,
                                                         overflow_model: Model) -> None:
    built = TensorRTEngine("tensorrt").build(overflow_model, PrecisionPlan("fp16"), None, Marking("outputs"))
    assert built.marking_notes["layer_info"] == "engine inspector"
    conv = next(layer for layer in built.layers if layer.name == "conv_amplify")
    assert conv.onnx_nodes == ("conv_amplify",) and conv.precision == "fp16"
    feeds = feeds_for(overflow_model)
    values = built.run(feeds)
    reference = run_reference(overflow_model, feeds)
    assert set(values) == set(overflow_model.intermediate_tensors())
    for name, value in values.items():
        np.testing.assert_allclose(value, reference[name], rtol=1e-5, atol=1e-5)
    assert not cudart.buffers and not cudart.streams  # all freed, stream destroyed


def test_a_tensor_mark_debug_refuses_is_not_expected(fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart,
                                                    overflow_model: Model) -> None:
    refused = overflow_model.intermediate_tensors()[0]
    fake.refuse_debug = {refused}  # mark_debug returns False: TensorRT did not mark it
    built = TensorRTEngine("tensorrt").build(overflow_model, PrecisionPlan("fp16"), None, Marking("debug"))
    assert refused not in built.marking_notes["marked"] and built.marking_notes["marked"]
    assert {"tensor": refused, "reason": "mark_debug returned False: TensorRT did not mark it as a debug tensor"} \
        in built.marking_notes["dropped"]
    assert refused not in built.run(feeds_for(overflow_model))


@pytest.mark.parametrize("mode", ["debug", "unfused"])
def test_debug_tensors_come_back_through_the_listener(fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart,
                                                      overflow_model: Model, mode: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    built = TensorRTEngine("tensorrt").build(overflow_model, PrecisionPlan("fp16"), None, Marking(mode))
    feeds = feeds_for(overflow_model)
    copied: list[int] = []
    original_copy = CudaRuntime.copy_to_host
    monkeypatch.setattr(CudaRuntime, "copy_to_host",
                        lambda self, host, pointer, stream: copied.append(host.size) or original_copy(
                            self, host, pointer, stream))
    values = built.run(feeds)
    reference = run_reference(overflow_model, feeds)
    assert "conv_amplify" in values and "logits" in values
    np.testing.assert_allclose(values["conv_amplify"], reference["conv_amplify"], rtol=1e-5)
    for name in set(values) & set(reference) - {"input"}:  # host- and device-located debug tensors alike
        np.testing.assert_allclose(values[name], reference[name], rtol=1e-5, err_msg=name)
    outputs = len(overflow_model.outputs)
    assert len(copied) > outputs  # device-located debug tensors were copied from the GPU, not read in place
    if mode == "unfused":
        assert built.marking_notes["unmatched_debug_tensors"] == ["__myl_internal_tensor"]
        assert "conv_amplify" in built.marking_notes["marked"]


def test_dynamic_input_needs_a_shape_and_gets_a_profile(fake: trt_fake.Recorder) -> None:
    model_proto = planted.clean()[0]
    model_proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model = Model.from_proto(model_proto)
    with pytest.raises(UserError, match=r"input 'input' has dynamic shape .* --input-shape input:1x3x16x16 "):
        TensorRTEngine("tensorrt").build(model, PrecisionPlan("fp16"), None, Marking("none"))
    ranges = {"input": ((1, 3, 16, 16), (2, 3, 16, 16), (4, 3, 16, 16))}
    TensorRTEngine("tensorrt", shape_ranges=ranges).build(model, PrecisionPlan("fp16"), None, Marking("none"))
    assert fake.called("IOptimizationProfile", "set_shape")[-1] == ("input", *ranges["input"])


def test_cuda_errors_are_one_line_and_free_what_was_taken(cudart: trt_fake.FakeCudart) -> None:
    cudart.limit = 1024
    runtime = CudaRuntime()
    with (pytest.raises(CudaError, match=r"cudaMalloc\(4096 bytes\): cudaErrorMemoryAllocation \(out of memory\)"),
          device_arena(runtime) as arena):
        arena.upload(np.zeros(16, np.float32))
        arena.alloc(4096)
    assert not cudart.buffers and not cudart.streams


def test_host_input_conversions() -> None:
    int32 = HOST_TYPES["INT32"]
    assert host_input("ids", np.array([1, 2], np.int64), int32).dtype == np.int32  # TensorRT 8.6: no INT64
    with pytest.raises(UserError, match="outside the engine's int32 range"):
        host_input("ids", np.array([2**40], np.int64), int32)
    with pytest.raises(UserError, match="is float32, but the engine wants int32"):
        host_input("x", np.zeros(2, np.float32), int32)
    bits = host_input("x", np.array([1.0, -2.5], np.float32), HOST_TYPES["BF16"])
    assert bits.dtype == np.uint16 and list(bits) == [0x3F80, 0xC020]


def test_unparseable_model_is_a_user_error(fake: trt_fake.Recorder) -> None:
    proto = planted.clean()[0]
    proto.graph.node.append(helper.make_node("Unsupported", ["logits"], ["odd"], name="odd", domain="custom"))
    proto.graph.output.append(helper.make_tensor_value_info("odd", TensorProto.FLOAT, None))
    proto.opset_import.append(helper.make_opsetid("custom", 1))
    with pytest.raises(UserError, match="TensorRT cannot parse the model: In node 0"):
        TensorRTEngine("tensorrt").build(Model.from_proto(proto), PrecisionPlan("fp16"), None, Marking("none"))


def test_network_layer_names_for_export(fake: trt_fake.Recorder, overflow_model: Model) -> None:
    names = TensorRTEngine("tensorrt").network_layer_names(overflow_model)
    assert names["logits"] == ["logits", "logits_0"] and names["conv_amplify"] == ["conv_amplify"]
    assert names["flatten"] == ["flatten"]  # a shuffle (data movement) is held by plans too



# -- mypy against the stubs -----------------------------------------------------------------------------

TENSORRT_PACKAGE = Path(__file__).resolve().parent.parent / "trtdebug" / "engines" / "tensorrt"
ENGINE_MODULES = sorted(str(p) for p in TENSORRT_PACKAGE.glob("*.py") if p.name not in ("__init__.py", "selfcheck.py"))


def run_mypy(tmp_path: Path, files: list[str]) -> tuple[int, str]:
    mypy_api = pytest.importorskip("mypy.api")
    stubs = trt_fake.write_sanitized_stubs(tmp_path / "stubs")
    config = tmp_path / "mypy.ini"
    config.write_text(f"""[mypy]
python_version = 3.11
mypy_path = {stubs}
ignore_missing_imports = True
check_untyped_defs = True
follow_imports = silent

[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
ignore_errors = True
""")
    root = Path(__file__).resolve().parent.parent
    paths = [f if Path(f).is_absolute() else str(root / f) for f in files]
    out, err, status = mypy_api.run(["--config-file", str(config), "--cache-dir", str(tmp_path / "cache"), *paths])
    return status, out + err


@pytest.mark.slow
def test_engine_code_type_checks_against_tensorrt_stubs(tmp_path: Path) -> None:
    canary = tmp_path / "canary.py"
    canary.write_text("import tensorrt as trt\n\ndef f(n: trt.INetworkDefinition) -> None:\n    n.get_layerz(0)\n")
    status, report = run_mypy(tmp_path, [str(canary)])
    assert status == 1 and 'has no attribute "get_layerz"' in report  # the stubs are really in use
    status, report = run_mypy(tmp_path, ENGINE_MODULES)
    assert status == 0, report


# -- layer information: real formats --------------------------------------------------------------------

# Two layers of an engine inspector JSON that NVIDIA's TensorRT Engine Explorer tests use
# (tools/experimental/trt-engine-explorer/tests/inputs/mobilenet_v2_residuals.qat.onnx.engine.graph.json,
# TensorRT 8.x: no Metadata, fused names).
TREX_JSON = """{"Layers": [{
  "Name": "QuantizeLinear_2", "LayerType": "Reformat",
  "Inputs": [{"Name": "inputs.1", "Location": "Device", "Dimensions": [1,3,224,224],
              "Format/Datatype": "Row major linear FP32"}],
  "Outputs": [{"Name": "433", "Location": "Device", "Dimensions": [1,3,224,224],
               "Format/Datatype": "Four wide channel vectorized row major Int8 format"}],
  "ParameterType": "Reformat", "Origin": "QDQ", "TacticValue": "0x0000000000000000"
},{
  "Name": "features.0.0.weight + QuantizeLinear_7 + Conv_9 + PWN(Clip_13)", "LayerType": "CaskConvolution",
  "Inputs": [{"Name": "433", "Location": "Device", "Dimensions": [1,3,224,224],
              "Format/Datatype": "Four wide channel vectorized row major Int8 format"}],
  "Outputs": [{"Name": "449", "Location": "Device", "Dimensions": [1,32,112,112],
               "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
  "ParameterType": "Convolution",
  "TacticName": "volta_int8x4_icudnn_int8x4_128x32_relu_xregs_small_c32_nn_v1", "TacticValue": "0xa65a77b0f5044138"
}], "Bindings": ["inputs.1", "449"]}"""

# A layer line of sampleEditableTimingCache's README (the inspector's ONELINE format).
SAMPLE_ONELINE = (
    "Name: matMul1_myl0_0, LayerType: gemm, Inputs: [ { Name: input, Dimensions: [128,128], Format/Datatype: Float "
    "}, { Name: weight1, Dimensions: [128,128], Format/Datatype: Float }, { Name: __mye34matMul1_alpha, Dimensions: "
    "[1], Format/Datatype: Float }, { Name: __mye35matMul1_beta, Dimensions: [1], Format/Datatype: Float }], "
    "Outputs: [ { Name: __myln_k_arg__bb1_4, Dimensions: [128,128], Format/Datatype: Float }], TacticName: "
    "sm80_xmma_gemm_f32f32_tf32f32_f32_nn_n_tilesize32x32x64_stage3_warpsize2x1x2_tensor16x8x8, StreamId: 0, Metadata:")


def test_inspector_json_of_tensorrt_8_maps_fused_names() -> None:
    from trtdebug.engines.tensorrt.layers import NodeResolver, parse_inspector_json, to_layer_infos

    resolver = NodeResolver(["QuantizeLinear_2", "DequantizeLinear_5", "QuantizeLinear_7", "Conv_9", "Clip_13"])
    reformat, conv = to_layer_infos(parse_inspector_json(TREX_JSON), resolver, "engine inspector")
    assert reformat.onnx_nodes == ("QuantizeLinear_2",) and reformat.extra["mapped_by"] == "name"
    assert conv.onnx_nodes == ("QuantizeLinear_7", "Conv_9", "Clip_13") and conv.extra["mapped_by"] == "fused name"
    assert conv.precision == "int8" and conv.tactic.startswith("volta_int8x4") and conv.outputs == ("449",)
    assert conv.extra["tactic_value"] == "0xa65a77b0f5044138" and conv.op_type == "CaskConvolution"


def test_inspector_metadata_and_foreign_nodes() -> None:
    from trtdebug.engines.tensorrt.layers import NodeResolver, parse_inspector_json, to_layer_infos

    text = json_layers([
        {"Name": "{ForeignNode[/attn/MatMul.../attn/Softmax]}", "LayerType": "Myelin",
         "Outputs": [{"Name": "soft", "Format/Datatype": "Row major linear FP16 format"}],
         "Metadata": "[ONNX Layer: /attn/MatMul]\x1e[ONNX Layer: /attn/Div]\x1e[ONNX Layer: /attn/Softmax]"},
        {"Name": "{ForeignNode[/ffn/MatMul.../ffn/Add]}", "LayerType": "Myelin", "Outputs": []},
        "conv1 + relu1",  # ProfilingVerbosity.LAYER_NAMES_ONLY: names only
    ])
    order = ["/attn/MatMul", "/attn/Div", "/attn/Softmax", "/ffn/MatMul", "/ffn/Gelu", "/ffn/Add", "conv1", "relu1"]
    attn, ffn, conv = to_layer_infos(parse_inspector_json(text), NodeResolver(order), "engine inspector")
    assert attn.onnx_nodes == ("/attn/MatMul", "/attn/Div", "/attn/Softmax") and attn.precision == "fp16"
    assert ffn.onnx_nodes == ("/ffn/MatMul", "/ffn/Gelu", "/ffn/Add")
    assert ffn.extra["mapped_by"] == "foreign-node range"
    assert conv.onnx_nodes == ("conv1", "relu1") and conv.precision == ""


def json_layers(layers: list) -> str:
    import json

    return json.dumps({"Layers": layers, "Bindings": []})


def test_oneline_layer_of_the_sample_and_its_tactic_record() -> None:
    from trtdebug.engines.tensorrt.builder import attach_tactics
    from trtdebug.engines.tensorrt.layers import NodeResolver, parse_oneline_layers, to_layer_infos
    from trtdebug.engines.tensorrt.tactics import records_from_profiling

    resolver = NodeResolver(["matMul1", "softmax", "matMul2"])
    (layer,) = to_layer_infos(parse_oneline_layers([SAMPLE_ONELINE]), resolver, "build log")
    assert layer.name == "matMul1_myl0_0" and layer.op_type == "gemm" and layer.precision == "fp32"
    assert layer.onnx_nodes == ("matMul1",) and layer.extra["mapped_by"] == "myelin name"
    assert layer.outputs == ("__myln_k_arg__bb1_4",)
    records = records_from_profiling(parse_profiling_log(README_LOG.splitlines()))
    attach_tactics([layer], records, lambda name: resolver.from_name(name)[0])
    # The layer's tactic is the kernel the engine reports; the cache entry is kept beside it.
    assert layer.tactic == layer.extra["kernel"] and layer.extra["cache_tactic"] == "0x665ded9abbf88"
    assert layer.alternatives == ("0x393e4ef8ad243",)
    assert layer.extra["cache_key"] == "0x1814870c44ff0f8574df6e3dda04cbd7"
    assert layer.extra["kernel"].startswith("sm80_xmma_gemm_f32f32_tf32f32_f32_nn_n_tilesize32x32x64_stage3")


# -- selfcheck and the command line -------------------------------------------------------------------

def test_selfcheck_tries_every_path_of_tensorrt_10(fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart) -> None:
    from trtdebug.engines.tensorrt.selfcheck import selfcheck_exit_code
    from trtdebug.workflows.selfcheck import run_selfcheck

    checks = run_selfcheck(("tensorrt",))
    by_name = {c.name: c for c in checks}
    expected = [f"tensorrt: {typing} typing, --mark {mode}" for typing in ("weak", "strong")
                for mode in ("none", "outputs", "debug", "unfused", "outputs --chunk 2", "auto")]
    expected += ["tensorrt: inspect (realized precision from the engine inspector)",
                 "tensorrt: tactics via selector", "tensorrt: tactics via timing-cache",
                 "tensorrt: rounding or kernel (kernel check on an engine capture)",
                 "tensorrt: A/B (FP32 and FP16 captures, layer by layer)"]
    assert [c.name for c in checks] == ["cuda-python", "tensorrt", *expected]
    assert all(c.status == "ok" for c in checks), [c for c in checks if c.status != "ok"]
    assert "ran, final output within" in by_name["tensorrt: weak typing, --mark outputs"].detail
    assert "engine kernel sm80_kernel_" in by_name["tensorrt: tactics via timing-cache"].detail
    assert "observed by unfused" in by_name["tensorrt: weak typing, --mark auto"].detail
    assert "layers report a precision (fp16" in by_name["tensorrt: inspect (realized precision from the engine "
                                                         "inspector)"].detail
    assert "all within what rounding predicts" in by_name[
        "tensorrt: rounding or kernel (kernel check on an engine capture)"].detail
    assert "follows A (FP32) within rounding" in by_name[
        "tensorrt: A/B (FP32 and FP16 captures, layer by layer)"].detail
    assert selfcheck_exit_code(checks, ("tensorrt",)) == 0


def test_selfcheck_fails_when_the_engine_ignores_a_ban(fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart) -> None:
    from trtdebug.engines.tensorrt.selfcheck import run_selfcheck, selfcheck_exit_code

    fake.ignore_cache_edits = True
    checks = {c.name: c for c in run_selfcheck(("tensorrt",))}
    check = checks["tensorrt: tactics via timing-cache"]
    assert check.status == "failed" and "still uses kernel" in check.detail
    assert selfcheck_exit_code(checks.values(), ("tensorrt",)) == 1


def test_selfcheck_fails_when_no_tactic_was_recorded(fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart) -> None:
    from trtdebug.engines.tensorrt.selfcheck import run_selfcheck

    fake.log_autotuning = False  # a TensorRT whose verbose log has no autotuning tables
    check = {c.name: c for c in run_selfcheck(("tensorrt",))}["tensorrt: tactics via timing-cache"]
    assert check.status == "failed" and "no tactic was recorded" in check.detail


def test_selfcheck_report_names_versions_and_gpu(fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart) -> None:
    from rich.console import Console

    from trtdebug.cli.render.selfcheck import render_selfcheck
    from trtdebug.engines.tensorrt.selfcheck import Check, environment

    checks = [Check("tensorrt", "ok", "tensorrt 10.13.0.35"), Check("tensorrt-rtx", "skipped", "not installed")]
    info = environment(checks)
    assert info["tensorrt"] == "tensorrt 10.13.0.35" and info["tensorrt-rtx"] == "not installed"
    assert info["gpu"] == "Fake GPU H200" and info["compute capability"] == "9.0"
    assert info["CUDA driver"] == "12.8" and info["CUDA runtime"] == "12.6"
    console = Console(record=True, width=200)
    render_selfcheck(checks, console)
    text = console.export_text()
    assert "compute capability: 9.0" in text and "trtdebug selfcheck" in text and "tensorrt 10.13.0.35" in text


def test_selfcheck_reports_a_broken_path(fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart) -> None:
    from trtdebug.engines.tensorrt.selfcheck import selfcheck_exit_code
    from trtdebug.workflows.selfcheck import run_selfcheck

    fake.fail_when_marked = {"conv_a", "relu_a", "conv_b", "input_proj", "residual"}
    checks = run_selfcheck(("tensorrt",))
    broken = {c.name: c for c in checks if c.status == "failed"}
    assert "tensorrt: weak typing, --mark outputs" in broken  # nothing could be exposed
    assert "exposed no intermediate tensor" in broken["tensorrt: weak typing, --mark outputs"].detail
    assert selfcheck_exit_code(checks, ("tensorrt",)) == 1


def test_selfcheck_workflow_rows_fail_with_their_one_line_reason(monkeypatch: pytest.MonkeyPatch,
                                                                 cudart: trt_fake.FakeCudart) -> None:
    """A kernel check that reaches no layer, and A/B on captures that share none, are failures: on a
    TensorRT without unfused debug tensors whose builds fail whenever a tensor is marked."""
    from trtdebug.workflows.selfcheck import run_selfcheck

    module, recorder = trt_fake.activate(missing=frozenset({("INetworkDefinition",
                                                            "mark_unfused_tensors_as_debug_tensors")}))
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    recorder.fail_when_marked = {"conv_a", "relu_a", "conv_b", "input_proj", "residual"}
    checks = {c.name: c for c in run_selfcheck(("tensorrt",))}
    kernel = checks["tensorrt: rounding or kernel (kernel check on an engine capture)"]
    ab = checks["tensorrt: A/B (FP32 and FP16 captures, layer by layer)"]
    assert kernel.status == "failed" and kernel.detail.startswith("no layer was checked")
    assert ab.status == "failed" and ab.detail == "the two captures have no checkable layer in common"
    assert all("\n" not in c.detail for c in (kernel, ab))
    assert checks["tensorrt: weak typing, --mark none"].status == "ok"


def test_cli_without_tensorrt_exits_2_naming_the_extra(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import onnx

    from trtdebug.cli.app import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    model_path = tmp_path / "model.onnx"
    onnx.save(planted.clean()[0], model_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(model_path), "--engine", "tensorrt"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "TensorRT is not installed" in error and "trtdebug[tensorrt]" in error
    with pytest.raises(SystemExit) as exit_info:
        main(["selfcheck", "--flavor", "tensorrt"])
    assert exit_info.value.code == 2  # nothing to check: no TensorRT of any flavor
    assert "trtdebug[tensorrt]" in capsys.readouterr().out


def test_calibration_method_picks_tensorrts_calibrator(fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart,
                                                        overflow_model: Model) -> None:
    batches = [feeds_for(overflow_model)]
    engine = TensorRTEngine("tensorrt", calibration_feeds=batches, calibration_method="minmax")
    engine.build(overflow_model, PrecisionPlan("int8"), None, Marking("none"))
    assert fake.called("IInt8MinMaxCalibrator", "__init__")
    with pytest.raises(UserError, match="--calib-method percentile has no TensorRT calibrator"):
        TensorRTEngine("tensorrt", calibration_feeds=batches, calibration_method="percentile").build(
            overflow_model, PrecisionPlan("int8"), None, Marking("none"))
