"""INT8, a quantized format (core.quantized.format.QuantFormat): findings per quantized tensor, and
what an INT8 fallback takes out of INT8 first.

For every tensor an INT8 build quantizes (a live Q/DQ pair), the reference values are quantized
with that pair's scale: the share clipped (saturation: scale too small), the share of nonzero
values that become 0 (scale too coarse), and the signal-to-quantization-noise ratio. A wrong
tensor gets the matching defect, so a report names the tensor where a bad scale introduces error.

A fallback takes Q/DQ pairs out of INT8 (explicit quantization) or, for a float model calibrated
here (implicit INT8), layers; pairs whose tensor has an INT8 defect are suspected first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import onnx

from trtdebug.core.analysis.defects import Defect
from trtdebug.core.analysis.metrics import CompareResult, TensorReport, share_text
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.quantized.qdq import QdqPair, QuantizedModel, QuantParams, qdq_for_plan, removal_for_plan
from trtdebug.core.quantized.scale_findings import (
    CodeFlips,
    QuantizationStats,
    code_flips,
    detect_coarse_scale,
    detect_code_flips,
    detect_saturation,
    quantization_stats,
)
from trtdebug.core.search.strategies import Suspicion

INT8_DEFECT_KINDS = ("saturation", "coarse_scale")
EXPLAINED_BY_INT8 = ("precision", "underflow", "all_zero")


def _db(value: float) -> float | None:
    return value if math.isfinite(value) else None


class Int8Format:
    """INT8 of one Q/DQ model (given as such, or calibrated here from a float model)."""

    precision = "int8"
    defect_kinds = INT8_DEFECT_KINDS

    def __init__(self, model: QuantizedModel):
        self.model = model

    @classmethod
    def of(cls, model: Model) -> Int8Format | None:
        """INT8 when the model is a Q/DQ model whose pairs have 8-bit integer codes (find_pairs)."""
        return cls(model) if isinstance(model, QuantizedModel) and model.precision == cls.precision else None

    def detect(self, stats: QuantizationStats, params: QuantParams) -> list[Defect]:
        """This format's defects of one quantized tensor, from its quantization statistics."""
        return [d for d in (detect_saturation(stats, params), detect_coarse_scale(stats, params)) if d]

    def tensors_of(self, pair: QdqPair) -> list[str]:
        """The reported tensors whose error tells how suspicious a pair is: the tensor it quantizes."""
        return [pair.source]

    def finding_fields(self, stats: QuantizationStats, params: QuantParams) -> dict[str, Any]:
        """What else than the shared statistics a quantized tensor's finding says."""
        return {}

    # -- findings ---------------------------------------------------------------------------------

    def code_flips(self, tensor: str, ref: np.ndarray, cand: np.ndarray) -> CodeFlips | None:
        """How a quantized tensor's candidate codes differ from its reference's (None: not quantized)."""
        pair = self.model.pair_of_tensor.get(tensor)
        return None if pair is None or pair.is_weight else code_flips(ref, cand, pair.params)

    def annotate(self, tensors: Sequence[TensorReport], plan: PrecisionPlan, reference: Mapping[str, np.ndarray],
                 flips: Mapping[str, CodeFlips] | None = None) -> dict[str, dict[str, Any]]:
        """Attach INT8 defects to the wrong quantized tensors' reports (first: they say why); returns the
        quantization statistics of each quantized tensor (the report's notes.marking.int8.tensors).
        `flips`: the wrong quantized tensors' code flips (`code_flips`), measured while their values lived."""
        model = self.model
        removed, _ = removal_for_plan(model, plan.nodes)
        gone = {p.quantize for p in removed}
        findings: dict[str, Any] = {}
        by_tensor = {r.tensor: r for r in tensors}
        for report in tensors:
            pair = model.pair_of_tensor.get(report.tensor)
            if pair is None or pair.quantize in gone or report.tensor not in reference:
                continue
            stats = quantization_stats(np.asarray(reference[report.tensor]), pair.params)
            findings[report.tensor] = {
                "pair": pair.quantize, "scale": pair.params.describe(), "clipped_share": stats.clipped_share,
                "zeroed_share": stats.zeroed_share, "quantization_sqnr_db": _db(stats.sqnr_db),
                "local_sqnr_db": _db(report.local.snr_db) if report.local else None,
                "accumulated_sqnr_db": _db(report.accumulated.snr_db) if report.accumulated else None,
                **self.finding_fields(stats, pair.params)}
            if report.status in ("ok", "missing"):
                continue
            absorber = absorbing_reader(model, report.tensor, np.asarray(reference[report.tensor]), pair.params)
            if absorber and stats.clipped_share:
                # Quantizers often take a following ReLU/Clip's range (onnxruntime does): what the
                # quantizer clips, the reader would clip the same way, so nothing the network computes
                # changes and nothing downstream inherits the difference.
                findings[report.tensor]["clipping_absorbed_by"] = absorber
                report.status, report.defects = "ok", []
                continue
            found = self.detect(stats, pair.params)
            if not found and flips and report.tensor in flips:
                upstream = _input_difference(model, report, by_tensor)
                flip = detect_code_flips(flips[report.tensor], pair.params, upstream)
                if flip is not None:
                    findings[report.tensor]["code_flips"] = flip.details
                    found = [flip]
                    if upstream:  # the rounding was right; what it rounded came in different
                        report.status = "propagated"
            for defect in found:
                defect.details.update(pair=pair.quantize, local_sqnr_db=findings[report.tensor]["local_sqnr_db"],
                                      accumulated_sqnr_db=findings[report.tensor]["accumulated_sqnr_db"])
            # An INT8 defect explains the generic ones (FP16 underflow, all zeros, rounding) it causes.
            report.defects = found + [d for d in report.defects if not found or d.kind not in EXPLAINED_BY_INT8]
        for spec in model.inputs:  # graph inputs have no report of their own, but may be quantized
            pair = model.pair_of_tensor.get(spec.name)
            if pair is not None and pair.quantize not in gone and spec.name in reference:
                stats = quantization_stats(np.asarray(reference[spec.name]), pair.params)
                findings[spec.name] = {"pair": pair.quantize, "scale": pair.params.describe(), "graph_input": True,
                                       "clipped_share": stats.clipped_share, "zeroed_share": stats.zeroed_share,
                                       "quantization_sqnr_db": _db(stats.sqnr_db),
                                       **self.finding_fields(stats, pair.params)}
        return findings

    def defects(self, result: CompareResult) -> list[tuple[str, Defect]]:
        """(tensor, defect) for every INT8 defect of a compare result, in topological order."""
        return [(t.tensor, d) for t in result.tensors for d in t.defects if d.kind in self.defect_kinds]

    # -- fallback: which pairs (explicit) or layers (implicit) to take out of INT8 first -------------

    def fallback_candidates(self, base: PrecisionPlan) -> list[str]:
        """What an INT8 fallback chooses from, in graph order: the Q/DQ pairs of a Q/DQ model, or the
        INT8 layers of an implicitly quantized one; only those the base plan leaves in INT8."""
        model = self.model
        if model.implicit:
            return [n for n in model.int8_layers() if base.precision_of(n) == self.precision]
        order = model.qdq.node_index
        return sorted((p for p in model.pairs if base.precision_of(p) == self.precision), key=order)

    def rank(self, candidates: list[str], compare: CompareResult | None) -> list[Suspicion]:
        """Candidates from most to least suspicious: a pair (or a layer reading it) whose tensor has an
        INT8 defect first, then those whose quantized tensor is wrong on its own, ordered by how wrong."""
        model = self.model
        reports = {t.tensor: t for t in compare.tensors} if compare else {}
        position = {name: i for i, name in enumerate(candidates)}
        suspicions = []
        for name in candidates:
            pairs = [model.pairs[name]] if name in model.pairs else model.pair_readers.get(name, [])
            tier, severity, reasons = 0, (0.0, 0.0), []
            for tensor in (t for pair in pairs for t in self.tensors_of(pair)):
                report = reports.get(tensor)
                if report is None:
                    continue
                kinds = [d.kind for d in report.defects if d.kind in self.defect_kinds]
                metrics = report.local or report.accumulated
                if kinds:
                    tier = max(tier, 3)
                    reasons.append(f"{', '.join(kinds)} at {tensor}")
                elif report.status == "introduced" and metrics is not None and metrics.bad:
                    tier = max(tier, 2)
                    reasons.append(f"{tensor} wrong on its own ({share_text(metrics.frac_outside)} out of tolerance)")
                if metrics is not None:
                    severity = max(severity, (metrics.frac_outside, _noise(metrics.snr_db)))
            suspicions.append(Suspicion(name, tier, severity, tuple(reasons)))
        return sorted(suspicions, key=lambda s: (-s.tier, -s.severity[0], -s.severity[1], position[s.node]))

    def layers_of(self, kept: Iterable[str]) -> list[str]:
        """The float-counterpart layers whose INT8 inputs the named pairs (or layers) are."""
        model = self.model
        chosen = set(kept)
        layers = {n for n in chosen if n in model.node_by_name}
        for node, pairs in model.pair_readers.items():
            if node in model.node_by_name and any(p.quantize in chosen for p in pairs):
                layers.add(node)
        return sorted(layers, key=model.node_index)

    def candidate_kinds(self) -> dict[str, str]:
        """A Q/DQ model's candidates are its pairs; an implicit one's are layers."""
        return {} if self.model.implicit else dict.fromkeys(self.model.pairs, "Q/DQ pair")

    def provenance(self, kept: Iterable[str]) -> dict[str, Any]:
        """What an INT8 plan takes out of INT8, in words a reader of the plan file can check."""
        model = self.model
        kept = list(kept)
        if model.implicit:
            return {"mode": "implicit", "layers_out_of_int8": kept, "calibration": model.calibration}
        return {"mode": "explicit (Q/DQ)",
                "removed_qdq_pairs": [{"quantize": p, "tensor": model.pairs[p].source,
                                       "dequantize": list(model.pairs[p].dequantize)}
                                      for p in kept if p in model.pairs]}

    def identity(self) -> dict[str, Any]:
        """The Q/DQ model and, for implicit INT8, the calibration (data and method) its scales come from."""
        return {"qdq_sha256": self.model.qdq.sha256, **self.model.calibration}

    # -- a plan made concrete -----------------------------------------------------------------------

    def plan_model(self, plan_nodes: Mapping[str, str]) -> onnx.ModelProto:
        return qdq_for_plan(self.model, plan_nodes)

    def live_pairs(self, plan_nodes: Mapping[str, str]) -> list[QdqPair]:
        gone = {p.quantize for p in removal_for_plan(self.model, plan_nodes)[0]}
        return [p for p in self.model.pairs.values() if p.quantize not in gone and not p.is_weight]

    def layer_plan(self, plan: PrecisionPlan) -> PrecisionPlan:
        return replace(plan, nodes={n: p for n, p in plan.nodes.items() if n not in self.model.pairs})


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


def absorbing_reader(model: QuantizedModel, tensor: str, ref: np.ndarray, params: QuantParams) -> str:
    """The ReLU/Clip that is the only reader of `tensor` and clips the reference's values to what
    it would make of the quantizer's clipped values (the clipping then changes nothing); else ""."""
    readers = model.consumers.get(tensor, [])
    if len(readers) != 1 or tensor in {o.name for o in model.outputs}:
        return ""
    bounds = _clip_bounds(model, readers[0])
    if bounds is None:
        return ""
    low, high = params.clip_range(ref.ndim)
    ref64 = ref.astype(np.float64)
    step = float(np.max(params.scale))
    after_quantizer = np.clip(np.clip(ref64, low, high), *bounds)
    return readers[0] if np.allclose(after_quantizer, np.clip(ref64, *bounds), rtol=0, atol=step) else ""


def _input_difference(model: QuantizedModel, report: TensorReport, reports: Mapping[str, TensorReport]
                      ) -> float | None:
    """The largest difference from the reference of the inputs of the tensor's layer (0: none differ;
    None: none was compared)."""
    measured = [r.accumulated.max_abs for t in model.node_by_name[report.node].input
                if (r := reports.get(t)) is not None and r.accumulated is not None]
    return max(measured) if measured else None


def _noise(snr_db: float) -> float:
    return 0.0 if snr_db == math.inf else (math.inf if snr_db == -math.inf else 10 ** (-snr_db / 10))
