"""FP8 E4M3, a quantized format (core.quantized.format.QuantFormat): Q/DQ pairs whose codes are
float8_e4m3fn, as ModelOpt places them on the activation and weight inputs of MatMul/Conv/Gemm
(per-tensor or per-channel scales).

FP8 is a floating-point grid: its error is relative (3 mantissa bits) until values fall below the
normal range, so what goes wrong with a scale differs from INT8. For every tensor an FP8 build
quantizes, the reference values are quantized with the pair's scale exactly as QuantizeLinear
does (saturating at 448 x scale, round to nearest even), and the finding says:

- saturation: the share of values beyond 448 x scale (the scale is too small);
- headroom: 448 x scale over the tensor's amax (below 1 saturates; far above it wastes the range);
- underflow: the share of nonzero values that become 0 (the scale is far too large: the values
  fall below FP8's smallest subnormal, 2^-9 x scale);
- the quantization SQNR (about 30 dB for a well-scaled tensor).

Everything else (pairs as fallback candidates, ranking, provenance) is INT8's: `Fp8Format` is an
`Int8Format` with FP8's precision, claim and findings.
"""

from __future__ import annotations

import math
from typing import Any

from trtdebug.core.analysis.defects import Defect
from trtdebug.core.model.graph import Model
from trtdebug.core.quantized.int8 import Int8Format
from trtdebug.core.quantized.qdq import FP8_E4M3_MAX, QuantizedModel, QuantParams
from trtdebug.core.quantized.scale_findings import (
    COARSE_SQNR_DB,
    COARSE_ZERO_SHARE,
    SATURATION_SHARE,
    QuantizationStats,
)

# Headroom beyond which a tensor that also lost its signal is called coarse: its values sit far
# below FP8's normal range (2^-6 x scale) instead of near 448 x scale.
WASTED_HEADROOM = 2.0 ** 8


def headroom(stats: QuantizationStats) -> float:
    """448 x scale over the reference's amax: the factor the range leaves above the data (inf for all 0)."""
    return stats.clip_high / stats.ref_max_abs if stats.ref_max_abs else math.inf


def detect_fp8_saturation(stats: QuantizationStats, params: QuantParams) -> Defect | None:
    """The scale is too small: values beyond 448 x scale saturate."""
    if stats.clipped_share < SATURATION_SHARE:
        return None
    return Defect("saturation",
                  f"FP8 saturation: {stats.clipped_share:.1%} of values beyond 448 x scale = {stats.clip_high:.4g} "
                  f"(the reference reaches {stats.ref_max_abs:.4g}: headroom {headroom(stats):.3g}x; "
                  f"{params.describe()}; quantization SQNR {stats.sqnr_db:.1f} dB)",
                  {"format": "fp8", "clipped_share": stats.clipped_share, "clip_high": stats.clip_high,
                   "reference_max_abs": stats.ref_max_abs, "headroom": headroom(stats),
                   "quantization_sqnr_db": stats.sqnr_db})


def detect_fp8_underflow(stats: QuantizationStats, params: QuantParams) -> Defect | None:
    """The scale is far too large: values fall below FP8's subnormals and flush to zero, or keep too
    few bits to carry the signal."""
    flushed = stats.zeroed_share >= COARSE_ZERO_SHARE
    wasted = headroom(stats) >= WASTED_HEADROOM and stats.sqnr_db < COARSE_SQNR_DB
    if not (flushed or wasted) or stats.clipped_share >= SATURATION_SHARE:
        return None
    return Defect("coarse_scale",
                  f"FP8 scale too large: {stats.zeroed_share:.0%} of nonzero values underflow to 0 "
                  f"(448 x scale = {stats.clip_high:.4g} but the reference reaches only {stats.ref_max_abs:.4g}: "
                  f"headroom {headroom(stats):.3g}x; {params.describe()}; quantization SQNR {stats.sqnr_db:.1f} dB)",
                  {"format": "fp8", "zeroed_share": stats.zeroed_share, "reference_max_abs": stats.ref_max_abs,
                   "headroom": headroom(stats), "quantization_sqnr_db": stats.sqnr_db})


class Fp8Format(Int8Format):
    """FP8 E4M3 of one Q/DQ model: pairs with float8_e4m3fn zero points."""

    precision = "fp8"

    @classmethod
    def of(cls, model: Model) -> Fp8Format | None:
        """FP8 when the model is a Q/DQ model whose pairs have float8_e4m3fn codes."""
        return cls(model) if isinstance(model, QuantizedModel) and model.precision == cls.precision else None

    def detect(self, stats: QuantizationStats, params: QuantParams) -> list[Defect]:
        return [d for d in (detect_fp8_saturation(stats, params), detect_fp8_underflow(stats, params)) if d]

    def finding_fields(self, stats: QuantizationStats, params: QuantParams) -> dict[str, Any]:
        room = headroom(stats)
        return {"format": "fp8 e4m3", "fp8_max": FP8_E4M3_MAX, "headroom": room if math.isfinite(room) else None}

    def provenance(self, kept: Any) -> dict[str, Any]:
        return {**super().provenance(kept), "format": "fp8 e4m3"}
