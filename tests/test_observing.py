"""Observing a TensorRT engine without changing it: compare's default `--mark auto` exposes unfused
tensors as debug tensors on TensorRT >= 10.12 (fusions kept) and falls back to marking outputs on an
older TensorRT; the report says which, and whether the observed build reproduces the deployed one.
A compare on TensorRT also checks every exposed layer for a kernel fault (the fake's engines compute
FP32 through onnxruntime: no layer may be called a kernel error). Through the recording fake."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import trt_fake

from fixtures import planted
from trtdebug.core.analysis.metrics import Tolerance
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.reference.fp32_run import run_reference
from trtdebug.engines.base import COMPARE_MARKING, Marking
from trtdebug.engines.tensorrt.engine import TensorRTEngine
from trtdebug.workflows.compare import run_compare
from trtdebug.workflows.problem import Problem


def _model() -> Model:
    return Model.from_proto(planted.clean()[0])


def test_auto_marks_unfused_tensors_on_tensorrt_10_13(fake: trt_fake.Recorder) -> None:
    built = TensorRTEngine("tensorrt").build(_model(), PrecisionPlan("fp16"), None, Marking(COMPARE_MARKING))
    assert built.marking_notes["mode"] == "unfused"
    assert "every fusion kept" in built.marking_notes["observed_by"]
    assert fake.called("INetworkDefinition", "mark_unfused_tensors_as_debug_tensors")


def test_auto_marks_outputs_where_tensorrt_has_no_unfused_debug_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    module, _ = trt_fake.activate(missing=trt_fake.TENSORRT_8_6_LACKS)
    module.__version__ = "8.6.1"  # type: ignore[misc]
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    built = TensorRTEngine("tensorrt").build(_model(), PrecisionPlan("fp16"), None, Marking(COMPARE_MARKING))
    assert built.marking_notes["mode"] == "outputs" and built.marking_notes["marked"]
    assert "has no mark_unfused_tensors_as_debug_tensors" in built.marking_notes["observed_by"]


def test_compare_on_tensorrt_reports_observation_reproduction_and_no_false_kernel_error(
        fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart) -> None:
    model = _model()
    feeds = {"input": np.random.default_rng(0).uniform(-1, 1, planted.INPUT_SHAPE).astype(np.float32)}
    problem = Problem(model, feeds, run_reference(model, feeds), Tolerance.for_precision("fp16"))
    result = run_compare(problem, TensorRTEngine("tensorrt"), PrecisionPlan("fp16"), mark=Marking("outputs"))
    assert "mark_output" in str(result.marking["observed_by"])
    assert result.reproduction is not None and result.reproduction.reproduces
    kernels = result.diagnosis["kernels"]
    assert isinstance(kernels, dict) and kernels["layers"] and kernels["kernel_errors"] == []
    assert "realized_precision" in result.diagnosis
