"""One home per quantized format: the format is chosen once per model (a float model has none),
and what an INT8 fallback chooses from and suspects first is the format object's answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from tests.qdq_models import qdq_conv_model
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.quantized.format import format_for, format_of
from trtdebug.core.quantized.int8 import Int8Format
from trtdebug.core.quantized.qdq import QuantizedModel
from trtdebug.workflows.fallback import run_fallback
from trtdebug.workflows.problem import ProblemSpec, prepare

PAIRS = ["input_QuantizeLinear", "w1_QuantizeLinear", "relu1_QuantizeLinear", "w2_QuantizeLinear"]


def _saturating_qdq_model(path: Path) -> Path:
    """qdq_conv_model with relu1's activation scale 50x too small: relu1 saturates in INT8."""
    model = qdq_conv_model()
    for initializer in model.graph.initializer:
        if initializer.name == "relu1_scale":
            small = numpy_helper.to_array(initializer) / np.float32(50)
            initializer.CopyFrom(numpy_helper.from_array(small.astype(np.float32), initializer.name))
    onnx.save(model, str(path))
    return path


def test_a_qdq_model_has_one_int8_format_and_a_float_model_none():
    quantized = QuantizedModel(Model.from_proto(qdq_conv_model()))
    chosen = format_of(quantized)
    assert isinstance(chosen, Int8Format) and chosen.model is quantized and chosen.precision == "int8"
    assert format_of(quantized) is chosen  # chosen once: the same object (and its caches) every time
    assert format_for(quantized, PrecisionPlan("int8")) is chosen
    assert format_for(quantized, PrecisionPlan("fp16")) is None  # the plan does not build in INT8
    # The same graph without Q/DQ (the float counterpart, loaded as a plain model) has no format.
    assert format_of(Model.from_proto(quantized.proto)) is None
    assert format_of(Model.from_proto(qdq_conv_model())) is None  # Q/DQ nodes alone do not make it INT8


def test_problem_of_a_qdq_model_at_int8_carries_the_int8_format(tmp_path):
    path = tmp_path / "qdq.onnx"
    onnx.save(qdq_conv_model(), str(path))
    assert isinstance(format_of(prepare(ProblemSpec(str(path), precision="int8")).problem.model), Int8Format)
    assert format_of(prepare(ProblemSpec(str(path), precision="fp16")).problem.model) is None


def test_int8_fallback_chooses_among_the_formats_candidates_and_removes_the_saturating_pair(tmp_path):
    spec = ProblemSpec(str(_saturating_qdq_model(tmp_path / "qdq.onnx")), precision="int8")
    case = prepare(spec)
    quant_format = format_of(case.problem.model)
    assert quant_format is not None
    candidates = quant_format.fallback_candidates(case.plan)
    assert candidates == PAIRS  # the Q/DQ pairs, in graph order, not the layers conv1, relu1, conv2
    outcome = run_fallback(spec, tmp_path / "plan.json", prepared=case)
    assert outcome.candidates == tuple(candidates)
    assert {outcome.op_types[p] for p in PAIRS} == {"Q/DQ pair"}
    # The format's ranking suspects the saturating pair for its INT8 defect; the search keeps it alone.
    assert outcome.reasons["relu1_QuantizeLinear"] == ("saturation at relu1",)
    assert outcome.ranking_compare is not None
    assert [(t, d.kind) for t, d in quant_format.defects(outcome.ranking_compare)] == [("relu1", "saturation")]
    assert outcome.search.kept == ("relu1_QuantizeLinear",) and outcome.search.prefix == 1
    assert outcome.plan is not None and outcome.plan.nodes == {"relu1_QuantizeLinear": "fp16"}
    assert outcome.plan.provenance["int8"]["removed_qdq_pairs"][0]["tensor"] == "relu1"
