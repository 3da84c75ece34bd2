"""INT8 findings per tensor: how each quantized tensor's scale treats the reference's values.

For every tensor an INT8 build quantizes (a live Q/DQ pair), the reference values are quantized
with that pair's scale: the share clipped (saturation: scale too small), the share of nonzero
values that become 0 (scale too coarse), and the signal-to-quantization-noise ratio. A wrong
tensor gets the matching defect, so a report names the tensor where a bad scale introduces error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from trtdebug.core.detect import Defect, detect_coarse_scale, detect_saturation, quantization_stats
from trtdebug.core.metrics import CompareResult
from trtdebug.core.precision import PrecisionPlan
from trtdebug.core.quantization import QuantizedModel, removal_for_plan


def _db(value: float) -> float | None:
    return value if math.isfinite(value) else None


def annotate_int8(result: CompareResult, model: QuantizedModel, plan: PrecisionPlan,
                  reference: Mapping[str, np.ndarray]) -> None:
    """Attach quantization statistics to each quantized tensor's report and INT8 defects to the
    wrong ones (first: they say why)."""
    removed, _ = removal_for_plan(model, plan.nodes)
    gone = {p.quantize for p in removed}
    findings: dict[str, Any] = {}
    for report in result.tensors:
        pair = model.pair_of_tensor.get(report.tensor)
        if pair is None or pair.quantize in gone or report.tensor not in reference:
            continue
        stats = quantization_stats(np.asarray(reference[report.tensor]), pair.params)
        findings[report.tensor] = {
            "pair": pair.quantize, "scale": pair.params.describe(), "clipped_share": stats.clipped_share,
            "zeroed_share": stats.zeroed_share, "quantization_sqnr_db": _db(stats.sqnr_db),
            "local_sqnr_db": _db(report.local.snr_db) if report.local else None,
            "accumulated_sqnr_db": _db(report.accumulated.snr_db) if report.accumulated else None}
        if report.status in ("ok", "missing"):
            continue
        absorber = absorbing_reader(model, report.tensor, stats.clip_low, stats.clip_high)
        if absorber and stats.clipped_share:
            # Quantizers often take a following ReLU/Clip's range (onnxruntime does): what the
            # quantizer clips, the reader would clip the same way, so nothing the network computes
            # changes and nothing downstream inherits the difference.
            findings[report.tensor]["clipping_absorbed_by"] = absorber
            report.status, report.defects = "ok", []
            continue
        found = [d for d in (detect_saturation(stats, pair.params), detect_coarse_scale(stats, pair.params)) if d]
        for defect in found:
            defect.details.update(pair=pair.quantize, local_sqnr_db=findings[report.tensor]["local_sqnr_db"],
                                  accumulated_sqnr_db=findings[report.tensor]["accumulated_sqnr_db"])
        report.defects = found + [d for d in report.defects if d.kind != "precision" or not found]
    result.marking.setdefault("int8", {})["tensors"] = findings


def int8_defects(result: CompareResult) -> list[tuple[str, Defect]]:
    """(tensor, defect) for every INT8 defect of a compare result, in topological order."""
    return [(t.tensor, d) for t in result.tensors for d in t.defects if d.kind in ("saturation", "coarse_scale")]


def _clip_bounds(model: QuantizedModel, node_name: str) -> tuple[float, float] | None:
    node = model.node_by_name[node_name]
    if node.op_type == "Relu":
        return 0.0, math.inf
    if node.op_type != "Clip":
        return None
    constants = dict(model.constants())
    bounds = [-math.inf, math.inf]
    for attr in node.attribute:  # opset < 11
        if attr.name in ("min", "max"):
            bounds[attr.name == "max"] = attr.f
    for slot in (1, 2):
        if len(node.input) > slot and node.input[slot]:
            if node.input[slot] not in constants:
                return None
            bounds[slot - 1] = float(np.asarray(constants[node.input[slot]]).reshape(-1)[0])
    return bounds[0], bounds[1]


def absorbing_reader(model: QuantizedModel, tensor: str, low: float, high: float) -> str:
    """The ReLU/Clip reading `tensor` that clips at least as much as its quantization does, when it
    is the tensor's only reader (clipping by the quantizer then changes nothing); else ""."""
    readers = model.consumers.get(tensor, [])
    if len(readers) != 1 or tensor in {o.name for o in model.outputs}:
        return ""
    bounds = _clip_bounds(model, readers[0])
    if bounds is None:
        return ""
    slack = 1e-3 * max(abs(low), abs(high))  # the grid's last step may stop just short of the bound
    return readers[0] if low <= bounds[0] + slack and high >= bounds[1] - slack else ""
