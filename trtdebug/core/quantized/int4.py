"""INT4 weight-only, a quantized format (core.quantized.format.QuantFormat): block-wise Q/DQ pairs
on the weights of MatMul/Conv/Gemm (int4/uint4 codes, one scale per block of 32-128 values along
the reduction axis, as AWQ/RTN exports write them); activations stay float (FP16 in the build).

A weight has no report of its own (it is a constant): its findings go to the layers that read it.
Each block of each weight is quantized with its own scale exactly as QuantizeLinear does; a block
is bad when it saturates (more than 1% of its values beyond 7 x scale: the scale is too small) or
when its rounding error dominates its signal (its SQNR under ROUNDING_DOMINATES_DB and far under
the weight's typical block: the scale is too large). A wrong reader layer gets the defect naming
the weight, its pair and the worst blocks; a fallback takes weight pairs out of INT4 (their
layers then read the float weights: FP16), the pairs with bad blocks first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trtdebug.core.analysis.defects import Defect
from trtdebug.core.analysis.metrics import TensorReport
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.quantized.int8 import EXPLAINED_BY_INT8, Int8Format
from trtdebug.core.quantized.qdq import BlockParams, QdqPair, QuantizedModel, removal_for_plan
from trtdebug.core.quantized.scale_findings import SATURATION_SHARE, CodeFlips

ROUNDING_DOMINATES_DB = 6.0  # the rounding error is at least a quarter of the block's signal
TYPICAL_GAP_DB = 10.0  # ... and the block is this much worse than the weight's median block
SHOWN_BLOCKS = 5


@dataclass(frozen=True)
class BlockFinding:
    """How one block of a weight fares under its own scale."""

    index: tuple[int, ...]  # the block's index into the scale tensor
    scale: float
    clipped_share: float
    sqnr_db: float

    def to_json(self) -> dict[str, Any]:
        return {"block": list(self.index), "scale": self.scale, "clipped_share": self.clipped_share,
                "sqnr_db": self.sqnr_db if math.isfinite(self.sqnr_db) else None}


def block_findings(weight: np.ndarray, params: BlockParams) -> list[BlockFinding]:
    """Every block's clipped share and SQNR, in the scale tensor's order."""
    w = np.asarray(weight, np.float64)
    ids = params.broadcast(np.arange(params.scale.size).reshape(params.scale.shape), w.ndim).reshape(-1)
    low, high = params.clip_range(w.ndim)
    # Beyond half a step past the range: values within it round to the end code anyway (a block's amax
    # sits at 7 x scale up to float rounding), so only these lose more than rounding does.
    half_step = np.broadcast_to(params.broadcast(params.scale.astype(np.float64), w.ndim), w.shape) / 2
    clipped = (w < np.broadcast_to(low, w.shape) - half_step) | (w > np.broadcast_to(high, w.shape) + half_step)
    noise = (params.fake_quantize(w).astype(np.float64) - w) ** 2
    count = np.bincount(ids, minlength=params.scale.size)
    signal_sum = np.bincount(ids, (w ** 2).reshape(-1), minlength=params.scale.size)
    noise_sum = np.bincount(ids, noise.reshape(-1), minlength=params.scale.size)
    clipped_sum = np.bincount(ids, clipped.reshape(-1).astype(np.float64), minlength=params.scale.size)
    scales = params.scale.reshape(-1)
    found = []
    for flat in range(params.scale.size):
        with np.errstate(divide="ignore"):
            sqnr = (math.inf if noise_sum[flat] == 0 else
                    10 * math.log10(signal_sum[flat] / noise_sum[flat]) if signal_sum[flat] > 0 else -math.inf)
        found.append(BlockFinding(tuple(int(i) for i in np.unravel_index(flat, params.scale.shape)),
                                  float(scales[flat]), float(clipped_sum[flat]) / max(int(count[flat]), 1), sqnr))
    return found


def bad_blocks(blocks: Sequence[BlockFinding]) -> tuple[list[BlockFinding], list[BlockFinding]]:
    """(saturating blocks, blocks whose rounding error dominates), worst first."""
    finite = [b.sqnr_db for b in blocks if math.isfinite(b.sqnr_db)]
    typical = float(np.median(finite)) if finite else math.inf
    saturating = sorted((b for b in blocks if b.clipped_share >= SATURATION_SHARE), key=lambda b: -b.clipped_share)
    coarse = sorted((b for b in blocks if b.clipped_share < SATURATION_SHARE and b.sqnr_db < ROUNDING_DOMINATES_DB
                     and b.sqnr_db < typical - TYPICAL_GAP_DB), key=lambda b: b.sqnr_db)
    return saturating, coarse


def _where(blocks: Sequence[BlockFinding]) -> str:
    shown = ", ".join(str(list(b.index)) for b in blocks[:SHOWN_BLOCKS])
    return shown + (f" and {len(blocks) - SHOWN_BLOCKS} more" if len(blocks) > SHOWN_BLOCKS else "")


def weight_defects(weight: str, pair: QdqPair, blocks: Sequence[BlockFinding]) -> list[Defect]:
    """The INT4 defects of one weight: its saturating blocks and those whose rounding error dominates."""
    saturating, coarse = bad_blocks(blocks)
    params = pair.params
    size = params.block_size if isinstance(params, BlockParams) else 0
    found = []
    if saturating:
        worst = saturating[0]
        found.append(Defect(
            "saturation",
            f"INT4 block saturation in weight {weight} (pair {pair.quantize}): {len(saturating)} of {len(blocks)} "
            f"blocks of {size} clip beyond 7 x scale, worst block {list(worst.index)} "
            f"({worst.clipped_share:.0%} clipped, scale {worst.scale:.4g}, SQNR {worst.sqnr_db:.1f} dB); "
            f"blocks {_where(saturating)}",
            {"format": "int4", "weight": weight, "pair": pair.quantize,
             "blocks": [b.to_json() for b in saturating[:SHOWN_BLOCKS]], "bad_blocks": len(saturating)}))
    if coarse:
        worst = coarse[0]
        found.append(Defect(
            "coarse_scale",
            f"INT4 block scale too large in weight {weight} (pair {pair.quantize}): rounding error dominates "
            f"{len(coarse)} of {len(blocks)} blocks of {size}, worst block {list(worst.index)} "
            f"(SQNR {worst.sqnr_db:.1f} dB, scale {worst.scale:.4g}); blocks {_where(coarse)}",
            {"format": "int4", "weight": weight, "pair": pair.quantize,
             "blocks": [b.to_json() for b in coarse[:SHOWN_BLOCKS]], "bad_blocks": len(coarse)}))
    return found


class Int4Format(Int8Format):
    """INT4 weight-only of one Q/DQ model: block-wise pairs with int4/uint4 codes on its weights."""

    precision = "int4"

    @classmethod
    def of(cls, model: Model) -> Int4Format | None:
        """INT4 when the model is a Q/DQ model whose pairs have block-wise int4/uint4 codes."""
        return cls(model) if isinstance(model, QuantizedModel) and model.precision == cls.precision else None

    def reader_tensors(self, pair: QdqPair) -> list[str]:
        """The outputs of the float-counterpart layers that read the pair's weight."""
        model = self.model
        return [model.node_by_name[node].output[0] for node, pairs in model.pair_readers.items()
                if pair in pairs and node in model.node_by_name]

    def tensors_of(self, pair: QdqPair) -> list[str]:
        return self.reader_tensors(pair)

    def annotate(self, tensors: Sequence[TensorReport], plan: PrecisionPlan, reference: Mapping[str, np.ndarray],
                 flips: Mapping[str, CodeFlips] | None = None) -> dict[str, dict[str, Any]]:
        """Per-block findings of every weight left in INT4, keyed by weight; a wrong reader layer gets
        its weight's defects (first: they say why). Weights are constants: their codes cannot flip."""
        model = self.model
        gone = {p.quantize for p in removal_for_plan(model, plan.nodes)[0]}
        reports = {t.tensor: t for t in tensors}
        findings: dict[str, dict[str, Any]] = {}
        for pair in model.pairs.values():
            if pair.quantize in gone or not isinstance(pair.params, BlockParams):
                continue
            blocks = block_findings(model.qdq_constants[pair.source], pair.params)
            defects = weight_defects(pair.source, pair, blocks)
            finite = [b.sqnr_db for b in blocks if math.isfinite(b.sqnr_db)]
            readers = self.reader_tensors(pair)
            findings[pair.source] = {
                "pair": pair.quantize, "scale": pair.params.describe(), "layers": readers,
                "blocks": len(blocks), "block_size": pair.params.block_size,
                "median_block_sqnr_db": float(np.median(finite)) if finite else None,
                "worst_blocks": [b.to_json() for b in sorted(blocks, key=lambda b: b.sqnr_db)[:SHOWN_BLOCKS]],
                "defects": [{"kind": d.kind, "message": d.message} for d in defects]}
            for tensor in readers:
                report = reports.get(tensor)
                if report is None or report.status in ("ok", "missing") or not defects:
                    continue
                found = [Defect(d.kind, d.message, dict(d.details)) for d in defects]
                report.defects = found + [d for d in report.defects
                                          if d.kind not in EXPLAINED_BY_INT8 and d.kind not in self.defect_kinds]
        return findings

    def candidate_kinds(self) -> dict[str, str]:
        return dict.fromkeys(self.model.pairs, "INT4 weight (Q/DQ pair)")

    def provenance(self, kept: Iterable[str]) -> dict[str, Any]:
        model = self.model
        kept = [p for p in kept if p in model.pairs]
        return {"mode": "INT4 weight-only (block-wise Q/DQ)",
                "weights_out_of_int4": [{"quantize": p, "weight": model.pairs[p].source,
                                         "layers": self.reader_tensors(model.pairs[p])} for p in kept]}
