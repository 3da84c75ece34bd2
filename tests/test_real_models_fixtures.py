"""Real-model fixtures: each loads and runs in FP32; the planted detector keeps its FP32 outputs and
overflows in FP16 where planted; the encoder's reference goes non-finite with trtdebug's default
integer inputs (attention_mask in 0..7)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from fixtures import real_models as rm
from trtdebug.core.analysis.metrics import Tolerance
from trtdebug.core.model.feeds import generate_feeds, resolve_shapes
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.engines.emulator.engine import EmulatorEngine
from trtdebug.workflows.compare import run_compare
from trtdebug.workflows.problem import Problem

FP16_MAX = 65504.0


def _feeds(path, shapes, ranges=None, seed=0):
    model = Model.load(path)
    return generate_feeds(model, resolve_shapes(model, shapes), ranges, seed=seed)


def _session(model: str | onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # ddddocr declares an output shape it does not produce
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _run(path, feeds) -> dict[str, np.ndarray]:
    session = _session(str(path))
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


class _Exposed:
    """A session with every node output exposed (intermediate tensors of a real model)."""

    def __init__(self, path):
        model = onnx.load(str(path))
        self.order = [(n.name, t) for n in model.graph.node for t in n.output if t and n.op_type != "Constant"]
        del model.graph.output[:]
        model.graph.output.extend(onnx.ValueInfoProto(name=t) for _, t in self.order)
        self.session = _session(model)

    def run(self, feeds) -> dict[str, np.ndarray]:
        return dict(zip([t for _, t in self.order], self.session.run(None, feeds), strict=True))


def _run_all(path, feeds) -> tuple[list[tuple[str, str]], dict[str, np.ndarray]]:
    exposed = _Exposed(path)
    return exposed.order, exposed.run(feeds)


def _first_nonfinite(order, values) -> tuple[str, str] | None:
    return next(((n, t) for n, t in order if values[t].dtype.kind == "f" and not np.isfinite(values[t]).all()),
                None)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return rm.detector_with_planted_overflow(tmp_path_factory.mktemp("planted_detector"))


# --- encoder --------------------------------------------------------------------------------------

def test_encoder_runs_finite_on_its_stated_inputs():
    path = rm.text_encoder()
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == list(rm.ENCODER_INPUTS)
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in model.graph.input)
    assert sum(n.op_type == "Softmax" for n in model.graph.node) == 3  # three attention layers
    feeds = _feeds(path, rm.ENCODER_SHAPES, rm.ENCODER_RANGES)
    assert (feeds["attention_mask"] == 1).all()
    outputs = _run(path, feeds)
    assert outputs["onnx::Shape_422"].shape == (1, 16, 384) and outputs["461"].shape == (1, 384)
    assert all(np.isfinite(outputs[name]).all() for name in rm.ENCODER_OUTPUTS)


def test_encoder_mask_out_of_range_gives_nonfinite_reference():
    """trtdebug's default integer inputs (0..7) put 3..7 in attention_mask: (1 - mask) * float32's
    lowest value overflows FP32 at the extended-mask Mul, and NaN reaches every float output."""
    path = rm.text_encoder()
    feeds = _feeds(path, rm.ENCODER_SHAPES)  # the default generator: integers in [0, 7]
    assert feeds["attention_mask"].max() >= 3
    exposed = _Exposed(path)
    order, values = exposed.order, exposed.run(feeds)
    assert _first_nonfinite(order, values) == (rm.ENCODER_MASK_NONFINITE_NODE, rm.ENCODER_MASK_NONFINITE_TENSOR)
    assert np.isfinite(values[rm.ENCODER_MASK_SUB_NODE + "_output_0"]).all()  # 1 - mask is still finite
    assert all(np.isnan(values[name]).any() for name in rm.ENCODER_OUTPUTS)
    # A 0/1 mask, all ones, and even 2 everywhere stay finite; 3 does not.
    for ranges in ({"attention_mask": (0, 1)}, rm.ENCODER_RANGES, {"attention_mask": (2, 2)}):
        assert _first_nonfinite(order, exposed.run(_feeds(path, rm.ENCODER_SHAPES, ranges))) is None, ranges
    values = exposed.run(_feeds(path, rm.ENCODER_SHAPES, {"attention_mask": (3, 3)}))
    assert _first_nonfinite(order, values) == (rm.ENCODER_MASK_NONFINITE_NODE, rm.ENCODER_MASK_NONFINITE_TENSOR)


# --- detector -------------------------------------------------------------------------------------

def test_detector_runs_finite():
    path = rm.text_detector()
    out = _run(path, _feeds(path, rm.DETECTOR_SHAPES, rm.DETECTOR_RANGES))[rm.DETECTOR_OUTPUT]
    assert out.shape == (1, 1, 128, 128) and np.isfinite(out).all()


def test_planted_detector_keeps_fp32_outputs(planted):
    path, culprit, decoy = planted
    assert (culprit, decoy) == (rm.DETECTOR_OVERFLOW_NODE, rm.DETECTOR_DECOY_NODE)
    for seed in (0, 1):
        feeds = _feeds(path, rm.DETECTOR_SHAPES, rm.DETECTOR_RANGES, seed=seed)
        original = _run(rm.text_detector(), feeds)[rm.DETECTOR_OUTPUT]
        out = _run(path, feeds)[rm.DETECTOR_OUTPUT]
        np.testing.assert_allclose(out, original, rtol=1e-3, atol=1e-6)


def test_planted_overflow_is_in_the_culprits_output_not_its_weights(planted):
    path, culprit, _ = planted
    feeds = _feeds(path, rm.DETECTOR_SHAPES, rm.DETECTOR_RANGES)
    order, values = _run_all(path, feeds)
    assert (culprit, rm.DETECTOR_OVERFLOW_TENSOR) in order
    reference = values[rm.DETECTOR_OVERFLOW_TENSOR]
    assert np.isfinite(reference).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        as_fp16 = reference.astype(np.float16)
    assert np.isinf(as_fp16).mean() > 0.5
    # Every activation upstream of the culprit, and its weights and bias, fit in FP16.
    upstream = [t for _, t in order[:order.index((culprit, rm.DETECTOR_OVERFLOW_TENSOR))]]
    assert all(np.abs(values[t]).max(initial=0) <= FP16_MAX for t in upstream if values[t].dtype == np.float32)
    model = onnx.load(str(path))
    conv = rm._node(model, culprit)
    constants = rm._constants(model)
    assert all(np.abs(numpy_helper.to_array(constants[name])).max() < FP16_MAX for name in conv.input[1:])


def test_emulated_fp16_compare_sees_the_overflow_and_an_earlier_small_decoy(planted):
    """What trtdebug's emulator reports: the decoy's restoring conv introduces a few out-of-tolerance
    elements early; the culprit introduces an overflow far later. (The real, unplanted model also
    has small natural FP16 errors in hardswish Clips before both: see DETECTOR_NATURAL_SMALL_ERRORS.)"""
    path, culprit, _ = planted
    model = Model.load(path)
    feeds = generate_feeds(model, resolve_shapes(model, rm.DETECTOR_SHAPES), rm.DETECTOR_RANGES, seed=0)
    result = run_compare(Problem.prepare(model, feeds, Tolerance.for_precision("fp16")), EmulatorEngine(),
                         PrecisionPlan("fp16"))
    assert not result.passed
    overflow = result.tensor(rm.DETECTOR_OVERFLOW_TENSOR)
    assert overflow.status == "introduced" and overflow.node == culprit
    assert [d.kind for d in overflow.defects][0] == "overflow"
    decoy = result.tensor(rm.DETECTOR_DECOY_TENSOR)
    assert decoy.status == "introduced" and decoy.node == rm.DETECTOR_DECOY_RESTORING
    outside = round(decoy.accumulated.frac_outside * int(np.prod(decoy.shape)))
    assert 1 <= outside <= 20
    assert decoy.index < overflow.index
    assert overflow.accumulated.frac_outside > 0.5


# --- recognizer -----------------------------------------------------------------------------------

@pytest.mark.slow  # ddddocr's wheel is 76 MB
def test_recognizer_has_a_bidirectional_lstm_and_runs_finite():
    path = rm.text_recognizer()
    model = onnx.load(str(path))
    lstms = [n for n in model.graph.node if n.op_type == "LSTM"]
    assert tuple(n.name for n in lstms) == rm.RECOGNIZER_LSTM_NODES
    assert onnx.helper.get_attribute_value(next(a for a in lstms[0].attribute if a.name == "direction")) \
        == b"bidirectional"
    out = next(iter(_run(path, _feeds(path, rm.RECOGNIZER_SHAPES, rm.RECOGNIZER_RANGES)).values()))
    assert out.shape == (20, 1, 8210) and np.isfinite(out).all()
