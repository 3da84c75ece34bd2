"""INT8 on the TensorRT adapter: Q/DQ models build their Q/DQ graph and report by the float
counterpart's names, INT8 layers' marked outputs are read back as floats, implicit INT8 reuses its
calibration cache and checks its batches, and weakly typed Q/DQ networks get the INT8 flag.

Fake tests (trt_fake: names checked against tensorrt-stubs 10.13) cover the calls; the real
TensorRT-RTX test covers that the parser takes the Q/DQ graph and the builder builds it marked.
Nothing here runs an engine on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import trt_fake
from qdq_models import INPUT_SHAPE, qdq_conv_model

from fixtures import planted
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.ban_list import BanEntry, BanList
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.quantized.qdq import QuantizedModel
from trtdebug.core.reference import ort_sessions
from trtdebug.engines.base import Marking
from trtdebug.engines.tensorrt.builder import NetworkBuilder
from trtdebug.engines.tensorrt.engine import TensorRTEngine
from trtdebug.errors import UserError

DETECTION_PROBES = trt_fake.DETECTION_PROBES


@pytest.fixture
def qdq() -> QuantizedModel:
    return QuantizedModel(Model.from_proto(qdq_conv_model()))


def qdq_feeds() -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(1).uniform(-1, 1, INPUT_SHAPE).astype(np.float32)}


def parsed_protos(recorder: trt_fake.Recorder) -> list:
    return [info.proto for info in recorder.plans.values()]


def flags_of(recorder: trt_fake.Recorder) -> list[str]:
    return [a[0] for a in recorder.called("IBuilderConfig", "set_flag")]


# -- 1. Q/DQ models build their Q/DQ graph ---------------------------------------------------------

def test_qdq_model_builds_its_qdq_graph_and_reports_float_names(fake: trt_fake.Recorder,
                                                                cudart: trt_fake.FakeCudart,
                                                                qdq: QuantizedModel) -> None:
    # The input's pair is taken out of INT8 (a plan key naming a pair); conv2 is kept in FP32.
    plan = PrecisionPlan("int8", {"input_QuantizeLinear": "fp16", "conv2": "fp32"})
    built = TensorRTEngine("tensorrt").build(qdq, plan, None, Marking("outputs"))
    proto = parsed_protos(fake)[-1]
    quantizers = {n.name for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    assert quantizers == {"w1_QuantizeLinear", "relu1_QuantizeLinear", "w2_QuantizeLinear"}
    # A pair key is a graph edit, not a layer precision: only conv2's layer is constrained.
    assert {a[0] for a in fake.called("ILayer", "precision")} == {"conv2"}
    assert built.marking_notes["marked"] == ["conv1", "relu1_dq"]  # relu1 asked for by its DequantizeLinear
    values = built.run(qdq_feeds())
    session = ort_sessions.session(ort_sessions.with_outputs(proto, ["relu1_dq", "conv1"]))
    expected = ort_sessions.run(session, qdq_feeds())
    np.testing.assert_array_equal(values["relu1"], expected["relu1_dq"])  # by its float name
    np.testing.assert_array_equal(values["conv1"], expected["conv1"])
    scale = float(qdq.pairs["relu1_QuantizeLinear"].params.scale)
    assert np.allclose(values["relu1"] / scale, np.rint(values["relu1"] / scale), atol=1e-3)
    assert "relu1_dq" not in values and set(values) >= {"conv1", "relu1", "output"}


def test_dequantize_output_that_breaks_the_build_is_marked_by_its_source(fake: trt_fake.Recorder,
                                                                         cudart: trt_fake.FakeCudart,
                                                                         qdq: QuantizedModel) -> None:
    fake.fail_when_marked = {"relu1_dq"}  # as when TensorRT fuses the DequantizeLinear into conv2
    built = TensorRTEngine("tensorrt").build(qdq, PrecisionPlan("int8"), None, Marking("outputs"))
    notes = built.marking_notes
    assert [d["tensor"] for d in notes["dropped"]] == [] and notes["marked"] == ["conv1", "relu1"]
    values = built.run(qdq_feeds())
    pair = qdq.pairs["relu1_QuantizeLinear"]
    session = ort_sessions.session(ort_sessions.with_outputs(parsed_protos(fake)[-1], ["relu1"]))
    raw = ort_sessions.run(session, qdq_feeds())
    np.testing.assert_array_equal(values["relu1"], pair.params.fake_quantize(raw["relu1"]))


@pytest.mark.rtx
def test_real_rtx_parses_the_qdq_graph_and_builds_it_marked(qdq: QuantizedModel) -> None:
    pytest.importorskip("tensorrt_rtx_bindings")
    from trtdebug.engines.tensorrt.network import create_network, parse_onnx
    from trtdebug.engines.tensorrt.support import make_logger

    engine = TensorRTEngine("tensorrt-rtx", compute_capabilities=("SM89",))
    builder = NetworkBuilder(engine.context(), qdq, PrecisionPlan("int8"), None)
    trt = engine.trt
    logger = make_logger(trt)
    network = create_network(trt, trt.Builder(logger), engine.features, strong=True)
    _parser = parse_onnx(trt, network, logger, builder.proto, builder.modified)
    types = {network.get_layer(i).type for i in range(network.num_layers)}
    assert {trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE} <= types
    built = engine.build(qdq, PrecisionPlan("int8"), None, Marking("outputs"))
    assert built.serialized and built.marking_notes["dropped"] == []
    assert built.marking_notes["marked"] == ["conv1", "relu1_dq"]
    assert any(layer.precision == "int8" for layer in built.layers)
    assert {"conv1", "conv2"} <= {n for layer in built.layers for n in layer.onnx_nodes}


# -- 2. marked outputs of INT8 layers come back as floats ---------------------------------------

def test_marked_output_of_an_int8_layer_is_read_back_as_float(fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart
                                                              ) -> None:
    model = Model.from_proto(planted.overflow()[0])
    feeds = {"input": np.random.default_rng(0).uniform(-1, 1, planted.INPUT_SHAPE).astype(np.float32)}
    engine = TensorRTEngine("tensorrt", calibration_feeds=[feeds])
    built = engine.build(model, PrecisionPlan("fp16", {"conv1": "int8"}), None, Marking("outputs"))
    int8, float32 = trt_fake.dt("INT8"), trt_fake.dt("FLOAT")
    assert ("conv1", 0, int8) in fake.called("ILayer", "set_output_type")  # the layer computes in INT8 ...
    assert [a[1] for a in fake.called("ITensor", "dtype") if a[0] == "conv1"] == [float32]  # ... read as FLOAT
    values = built.run(feeds)
    assert values["conv1"].dtype == np.float32


# -- 3. the calibration cache outlives the calibrator ------------------------------------------------

def test_second_build_reads_the_calibration_cache_instead_of_calibrating(fake: trt_fake.Recorder,
                                                                         cudart: trt_fake.FakeCudart) -> None:
    model = Model.from_proto(planted.overflow()[0])
    feeds = {"input": np.zeros(planted.INPUT_SHAPE, np.float32)}
    engine = TensorRTEngine("tensorrt", calibration_feeds=[feeds, feeds])
    engine.build(model, PrecisionPlan("int8"), None, Marking("none"))
    assert len(fake.called("IInt8EntropyCalibrator2", "batch")) == 2
    engine.build(model, PrecisionPlan("int8", {"conv1": "fp16"}), None, Marking("none"))
    assert len(fake.called("IInt8EntropyCalibrator2", "batch")) == 2  # get_batch never called again
    assert len(fake.called("IInt8EntropyCalibrator2", "cache_read")) == 1


def test_rebuild_after_a_timing_cache_ban_reuses_the_calibration(fake: trt_fake.Recorder,
                                                                 cudart: trt_fake.FakeCudart) -> None:
    model = Model.from_proto(planted.overflow()[0])
    feeds = {"input": np.zeros(planted.INPUT_SHAPE, np.float32)}
    engine = TensorRTEngine("tensorrt", calibration_feeds=[feeds], record_tactics=True)
    first = engine.build(model, PrecisionPlan("int8"), None, Marking("none"))
    conv = next(layer for layer in first.layers if layer.onnx_nodes == ("conv_amplify",))
    assert first.marking_notes["tactic_control"] == "timing-cache"
    engine.calibration_caches.clear()  # calibrate afresh: the ban's rebuild must not calibrate again
    ban = BanEntry(layer=conv.extra["tactic_layer"], tactic=conv.tactic, cache_key=conv.extra["cache_key"])
    second = engine.build(model, PrecisionPlan("int8"), BanList((ban,)), Marking("none"))
    assert second.serialized  # the rebuild with the edited cache read the calibration it wrote
    assert fake.timing_cache_updates and len(fake.called("IInt8EntropyCalibrator2", "cache_read")) == 1


@pytest.mark.parametrize("control", ["selector", "timing-cache"])
def test_calibration_network_tactics_stay_out_of_the_records(fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart,
                                                             control: str) -> None:
    """Implicit INT8 builds and autotunes a calibration network before the engine, in the same
    build_serialized_network call: only the engine's tactics are recorded."""
    model = Model.from_proto(planted.overflow()[0])
    feeds = {"input": np.zeros(planted.INPUT_SHAPE, np.float32)}
    engine = TensorRTEngine("tensorrt", calibration_feeds=[feeds], record_tactics=True, tactic_control=control)
    built = engine.build(model, PrecisionPlan("int8"), None, Marking("none"))
    assert len(fake.called("IInt8EntropyCalibrator2", "batch")) == 1  # it did calibrate
    conv = next(layer for layer in built.layers if layer.onnx_nodes == ("conv_amplify",))
    assert len(conv.alternatives) == 2 and "calibration" not in conv.tactic
    records = built.chunks[0].result.records
    assert records and not any("calibration" in k for r in records for k in (r.chosen, *r.kernels.values()))
    assert len(records) == len({r.layer for r in records})  # one per engine op: none of the calibration network


# -- 4. weakly typed Q/DQ networks get the INT8 (and FP16) flags ---------------------------------

def test_weakly_typed_qdq_network_sets_int8_and_fp16_flags(fake: trt_fake.Recorder, qdq: QuantizedModel) -> None:
    # A Q/DQ model built under an FP16 plan (not loaded as a QuantizedModel): its Q/DQ layers still need INT8.
    TensorRTEngine("tensorrt").build(Model.from_proto(qdq_conv_model()), PrecisionPlan("fp16"), None,
                                     Marking("none"))
    assert {"INT8", "FP16"} <= set(flags_of(fake))
    fake.calls.clear()
    built = TensorRTEngine("tensorrt").build(qdq, PrecisionPlan("int8"), None, Marking("none"))
    assert {"INT8", "FP16"} <= set(flags_of(fake)) and not fake.called("IInt8EntropyCalibrator2", "batch")
    assert built.marking_notes["precision"]["flags"] == ["INT8", "FP16"]


def test_qdq_model_built_at_fp32_gets_no_fp16_flag(fake: trt_fake.Recorder, qdq: QuantizedModel) -> None:
    built = TensorRTEngine("tensorrt").build(qdq, PrecisionPlan("fp32"), None, Marking("none"))
    assert "INT8" in flags_of(fake) and "FP16" not in flags_of(fake)
    assert built.marking_notes["precision"]["flags"] == ["INT8"]


def test_implicit_int8_baseline_gets_the_flags_of_its_candidates(fake: trt_fake.Recorder,
                                                                cudart: trt_fake.FakeCudart) -> None:
    model = Model.from_proto(planted.overflow()[0])
    engine = TensorRTEngine("tensorrt", calibration_feeds=[{"input": np.zeros(planted.INPUT_SHAPE, np.float32)}])
    flags = []
    for plan in (PrecisionPlan("int8"), PrecisionPlan("int8", {"conv_amplify": "fp16"}),
                 PrecisionPlan("int8", {"conv_amplify": "fp32"})):
        fake.calls.clear()
        engine.build(model, plan, None, Marking("none"))
        flags.append({f for f in flags_of(fake) if f in ("INT8", "FP16", "BF16")})
    assert flags == [{"INT8", "FP16"}] * 3


def test_strongly_typed_qdq_network_sets_no_precision_flag(fake: trt_fake.Recorder, qdq: QuantizedModel) -> None:
    TensorRTEngine("tensorrt", typing="strong").build(qdq, PrecisionPlan("int8"), None, Marking("none"))
    assert not {"INT8", "FP16"} & set(flags_of(fake))


# -- 5. calibration feeds: from --calib-inputs, cast and checked against the OPT shape --------------

def test_calibration_batches_are_cast_and_checked_against_the_opt_shape(fake: trt_fake.Recorder,
                                                                         cudart: trt_fake.FakeCudart) -> None:
    model = Model.from_proto(planted.overflow()[0])
    batch = {"input": np.zeros(planted.INPUT_SHAPE, np.float64)}  # float64: cast to the input's FLOAT
    TensorRTEngine("tensorrt", calibration_feeds=[batch]).build(model, PrecisionPlan("int8"), None, Marking("none"))
    assert len(fake.called("IInt8EntropyCalibrator2", "batch")) == 1
    wrong = {"input": np.zeros((2, *planted.INPUT_SHAPE[1:]), np.float32)}
    expected = f"input 'input' has shape {[2, *planted.INPUT_SHAPE[1:]]}, but TensorRT calibrates at the " \
               f"profile's OPT shape {list(planted.INPUT_SHAPE)}"
    with pytest.raises(UserError, match=expected.replace("[", r"\[").replace("(", r"\(")):
        TensorRTEngine("tensorrt", calibration_feeds=[wrong]).build(model, PrecisionPlan("int8"), None,
                                                                    Marking("none"))


def test_problem_forwards_calib_inputs_to_the_tensorrt_engine(fake: trt_fake.Recorder, tmp_path: Path) -> None:
    from trtdebug.workflows.problem import open_engine

    feeds = {"input": np.ones(planted.INPUT_SHAPE, np.float32)}
    for i in range(2):
        np.savez(tmp_path / f"batch{i}.npz", input=np.full(planted.INPUT_SHAPE, i, np.float32))
    engine = open_engine("tensorrt", feeds=feeds, calib_inputs=(tmp_path,))
    batches = engine.options.calibration_feeds  # type: ignore[attr-defined]
    assert [float(b["input"].flat[0]) for b in batches] == [0.0, 1.0]
    fallback = open_engine("tensorrt", feeds=feeds).options.calibration_feeds  # type: ignore[attr-defined]
    assert len(fallback) == 1 and np.array_equal(fallback[0]["input"], feeds["input"])


def test_build_calibrates_as_compare_does(fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart,
                                          tmp_path: Path) -> None:
    """`build --engine tensorrt --out` takes compare's and fallback's calibration: the same
    --calib-inputs batches and --calib-method calibrator (problem.prepare -> open_engine)."""
    from trtdebug.workflows.build import build_artifact
    from trtdebug.workflows.problem import ProblemSpec

    model_path = tmp_path / "model.onnx"
    onnx.save(planted.overflow()[0], str(model_path))
    plan_path = tmp_path / "plan.json"
    PrecisionPlan("int8").save(plan_path)
    batches = tmp_path / "calibration"
    batches.mkdir()
    for i in range(3):
        np.savez(batches / f"batch{i}.npz", input=np.full(planted.INPUT_SHAPE, i, np.float32))
    spec = ProblemSpec(str(model_path), calib_inputs=(str(batches),), calib_method="minmax")
    outcome = build_artifact(model_path, plan_path, engine_name="tensorrt", out=tmp_path / "model.engine", inputs=spec)
    assert outcome.written == tmp_path / "model.engine"
    assert fake.called("IInt8MinMaxCalibrator", "__init__") and not fake.called("IInt8EntropyCalibrator2", "__init__")
    assert len(fake.called("IInt8EntropyCalibrator2", "batch")) == 3  # the three --calib-inputs batches
