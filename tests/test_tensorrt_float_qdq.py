"""FP8 and INT4 Q/DQ models on the TensorRT adapter: built strongly typed (10.x with the
STRONGLY_TYPED flag, 11.x and TensorRT-RTX by nature) with no precision builder flag, the plan's
removed pairs taken out of the parsed graph; refused in one line where TensorRT cannot build them
(8.6, or weak typing asked for).

Fake tests (trt_fake: names checked against tensorrt-stubs 10.13, or against the real TensorRT-RTX
module) cover the calls; the `rtx` tests build fixtures.float_qdq_models' FP8 CNN and INT4 encoder
for real with TensorRT-RTX on the CPU, and assert RTX's refusal of the INT4 CNN (its conv weights
are blocked along a dimension TensorRT does not block). Nothing here runs an engine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import trt_fake

from fixtures import float_qdq_models as fx
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.quantized.qdq import QuantizedModel
from trtdebug.engines.base import Marking
from trtdebug.engines.tensorrt.engine import TensorRTEngine
from trtdebug.errors import UserError

PRECISION_FLAGS = {"FP16", "BF16", "INT8", "FP8", "INT4", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"}
# The planted tensors' pairs: the CNN's FP8 activation pair and its INT4 weight pair.
PLANTED_PAIR = {"fp8": f"{fx.CNN_FP8_TENSOR}_QuantizeLinear", "int4": f"{fx.CNN_INT4_WEIGHT}_QuantizeLinear"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("float_qdq")


def quantized(folder: Path, kind: str, quant_format: str) -> QuantizedModel:
    return QuantizedModel(Model.load(fx.quantized(kind, quant_format, folder)))


def flags_of(recorder: trt_fake.Recorder) -> set[str]:
    return {a[0] for a in recorder.called("IBuilderConfig", "set_flag")}


def network_flags(recorder: trt_fake.Recorder) -> list[int]:
    return [a[0] for a in recorder.called("Builder", "create_network")]


def quantizers(proto: onnx.ModelProto) -> set[str]:
    return {n.name for n in proto.graph.node if n.op_type == "QuantizeLinear"}


# -- TensorRT 10.x: strongly typed whatever the typing option's default ------------------------------

@pytest.mark.parametrize("quant_format", ["fp8", "int4"])
def test_tensorrt_10_builds_float_qdq_strongly_typed_without_precision_flags(fake: trt_fake.Recorder, folder: Path,
                                                                             quant_format: str) -> None:
    model = quantized(folder, "cnn", quant_format)
    built = TensorRTEngine("tensorrt").build(model, PrecisionPlan(quant_format), None, Marking("none"))
    strongly_typed = 1 << int(trt_fake.enum("NetworkDefinitionCreationFlag")._members["STRONGLY_TYPED"])
    assert network_flags(fake) and all(f & strongly_typed for f in network_flags(fake))
    assert not flags_of(fake) & PRECISION_FLAGS and not fake.called("ILayer", "precision")
    notes = built.marking_notes
    assert notes["typing"] == "strong" and notes["precision"]["flags"] == []
    parsed = list(fake.plans.values())[-1].proto
    assert quantizers(parsed) == quantizers(model.qdq.proto)  # the whole Q/DQ graph: nothing taken out
    assert any(layer.precision == quant_format for layer in built.layers)  # the QuantizeLinear layers' code type


@pytest.mark.parametrize("quant_format", ["fp8", "int4"])
def test_a_plan_naming_a_pair_takes_it_out_of_the_parsed_graph(fake: trt_fake.Recorder, folder: Path,
                                                               quant_format: str) -> None:
    model = quantized(folder, "cnn", quant_format)
    pair = PLANTED_PAIR[quant_format]
    assert pair in quantizers(model.qdq.proto)
    TensorRTEngine("tensorrt").build(model, PrecisionPlan(quant_format, {pair: "fp16"}), None, Marking("none"))
    parsed = list(fake.plans.values())[-1].proto
    assert quantizers(parsed) == quantizers(model.qdq.proto) - {pair}
    assert not flags_of(fake) & PRECISION_FLAGS  # a pair key is a graph edit, never a layer precision


def test_fp8_activation_is_marked_by_its_dequantize_output_and_reported_by_its_float_name(
        fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart, folder: Path) -> None:
    model = quantized(folder, "cnn", "fp8")
    built = TensorRTEngine("tensorrt").build(model, PrecisionPlan("fp8"), None, Marking("outputs"))
    dequantized = model.pairs[PLANTED_PAIR["fp8"]].dequantized[0]
    assert dequantized in built.marking_notes["marked"]
    feeds = {"input": np.random.default_rng(0).uniform(-1, 1, fx.planted.INPUT_SHAPE).astype(np.float32)}
    values = built.run(feeds)
    assert fx.CNN_FP8_TENSOR in values and dequantized not in values  # reported by its float name


# -- refusals: one line naming the version -----------------------------------------------------------

@pytest.mark.parametrize("quant_format", ["fp8", "int4"])
def test_tensorrt_8_6_refuses_float_qdq_naming_its_version(monkeypatch: pytest.MonkeyPatch, no_cuda_python: None,
                                                           folder: Path, quant_format: str) -> None:
    import sys

    module, recorder = trt_fake.activate(missing=trt_fake.TENSORRT_8_6_LACKS)
    module.__version__ = "8.6.1"  # type: ignore[misc]
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    label = {"fp8": "FP8", "int4": "INT4 weight-only"}[quant_format]
    with pytest.raises(UserError, match=f"^tensorrt 8.6.1 cannot build {label} Q/DQ models: they need a strongly "
                                        r"typed network \(TensorRT 10.0 or later"):
        TensorRTEngine("tensorrt").build(quantized(folder, "cnn", quant_format), PrecisionPlan(quant_format), None,
                                         Marking("none"))
    assert recorder.builds == 0 and not recorder.misses - trt_fake.DETECTION_PROBES


def test_weak_typing_asked_for_is_refused(fake: trt_fake.Recorder, folder: Path) -> None:
    with pytest.raises(UserError, match=r"^FP8 Q/DQ models build strongly typed only; use typing=strong \(or auto\) "
                                        r"with tensorrt 10.13"):
        TensorRTEngine("tensorrt", typing="weak").build(quantized(folder, "cnn", "fp8"), PrecisionPlan("fp8"), None,
                                                        Marking("none"))
    assert fake.builds == 0


def test_fp8_qdq_layers_reaching_a_weakly_typed_build_are_refused(fake: trt_fake.Recorder, folder: Path) -> None:
    """A Q/DQ ONNX built as a float model (no format): its FP8 QuantizeLinear layers cannot get the INT8 flag."""
    plain = Model.load(fx.quantized("cnn", "fp8", folder))
    with pytest.raises(UserError, match=r"^FP8 Q/DQ layer 'input_QuantizeLinear' builds strongly typed only"):
        TensorRTEngine("tensorrt").build(plain, PrecisionPlan("fp16"), None, Marking("none"))
    assert "INT8" not in flags_of(fake) and fake.builds == 0


# -- TensorRT 11-like surface (names both tensorrt-stubs 10.13 and TensorRT-RTX have) -----------------

@pytest.mark.rtx
def test_strongly_typed_api_builds_fp8_without_the_flag(rtx_checked: trt_fake.Recorder, folder: Path) -> None:
    built = TensorRTEngine("tensorrt").build(quantized(folder, "cnn", "fp8"), PrecisionPlan("fp8"), None,
                                             Marking("none"))
    assert built.marking_notes["typing"] == "strong" and network_flags(rtx_checked) == [0]
    assert not flags_of(rtx_checked) & PRECISION_FLAGS


# -- real TensorRT-RTX builds on the CPU ---------------------------------------------------------------

@pytest.fixture(scope="module")
def rtx() -> TensorRTEngine:
    pytest.importorskip("tensorrt_rtx_bindings")
    return TensorRTEngine("tensorrt-rtx", compute_capabilities=("SM89",))


@pytest.mark.rtx
def test_real_rtx_builds_the_fp8_cnn_marked(rtx: TensorRTEngine, folder: Path) -> None:
    model = quantized(folder, "cnn", "fp8")
    built = rtx.build(model, PrecisionPlan("fp8"), None, Marking("outputs"))
    assert built.serialized and built.marking_notes["dropped"] == []
    assert model.pairs[PLANTED_PAIR["fp8"]].dequantized[0] in built.marking_notes["marked"]
    assert any(layer.precision == "fp8" for layer in built.layers)  # RTX reports FP8 outputs in its build log
    assert {"conv1", "conv2"} <= {n for layer in built.layers for n in layer.onnx_nodes}


@pytest.mark.rtx
def test_real_rtx_builds_the_fp8_cnn_without_a_planned_pair(rtx: TensorRTEngine, folder: Path) -> None:
    model = quantized(folder, "cnn", "fp8")
    built = rtx.build(model, PrecisionPlan("fp8", {PLANTED_PAIR["fp8"]: "fp16"}), None, Marking("none"))
    assert built.serialized and built.marking_notes["typing"] == "strong"


@pytest.mark.rtx
def test_real_rtx_builds_the_int4_weight_only_encoder(rtx: TensorRTEngine, folder: Path) -> None:
    model = quantized(folder, "encoder", "int4")
    built = rtx.build(model, PrecisionPlan("int4"), None, Marking("outputs"))
    assert built.serialized and built.marking_notes["dropped"] == []
    covered = {n for layer in built.layers for n in layer.onnx_nodes}
    assert {"mlp_up_matmul", "mlp_down_matmul", "query_matmul"} <= covered


@pytest.mark.rtx
def test_real_rtx_refuses_the_int4_cnn_naming_the_blocking_dimension(rtx: TensorRTEngine, folder: Path) -> None:
    """The CNN's conv weights [out, in, kh, kw] are blocked along `in` (axis 1); TensorRT-RTX 1.7 blocks
    only the last two dimensions of a weight."""
    with pytest.raises(UserError, match=r"^TensorRT cannot parse the model: In node 0 with name: "
                                        r"conv1.weight_QuantizeLinear .*INVALID_NODE.*\(The blocking dimension must "
                                        r"be the last or second to last dimension\)"):
        rtx.build(quantized(folder, "cnn", "int4"), PrecisionPlan("int4"), None, Marking("none"))
