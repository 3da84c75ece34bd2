"""What quantizing one tensor with its scale does to its reference values: saturation (scale too
small), coarse steps (scale too large), and the signal left (SQNR)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trtdebug.core.analysis.defects import Defect
from trtdebug.core.quantized.qdq import QuantParams

SATURATION_SHARE = 0.01  # a calibrated range clips outliers only: more than 1% clipped is a wrong scale
COARSE_ZERO_SHARE = 0.5  # most nonzero values becoming 0 means the steps are too large for the data
COARSE_SQNR_DB = 20.0  # ... and then the quantized tensor keeps little of the signal


@dataclass(frozen=True)
class QuantizationStats:
    """How one tensor's reference values fare under its quantization."""

    clipped_share: float  # values beyond the range the scale can represent (saturated)
    zeroed_share: float  # nonzero values that quantize to 0
    sqnr_db: float  # signal to quantization noise of the reference itself, fake-quantized
    clip_low: float
    clip_high: float
    ref_max_abs: float


def _sqnr_db(ref: np.ndarray, quantized: np.ndarray) -> float:
    signal = float(np.dot(ref.reshape(-1), ref.reshape(-1)))
    noise = float(np.sum((quantized - ref) ** 2))
    if noise == 0:
        return float("inf")
    return 10 * float(np.log10(signal / noise)) if signal > 0 else float("-inf")


def quantization_stats(ref: np.ndarray, params: QuantParams) -> QuantizationStats:
    ref64 = np.asarray(ref, np.float64)
    low, high = params.clip_range(ref64.ndim)
    clipped = (ref64 < low - 1e-12) | (ref64 > high + 1e-12)
    codes = params.quantize(ref64)
    zero = np.broadcast_to(params.broadcast(params.zero_point.astype(np.float64), ref64.ndim), ref64.shape)
    nonzero = ref64 != 0
    zeroed = nonzero & (codes == zero)
    size = max(ref64.size, 1)
    return QuantizationStats(
        clipped_share=float(np.count_nonzero(clipped)) / size,
        zeroed_share=float(np.count_nonzero(zeroed)) / max(int(np.count_nonzero(nonzero)), 1),
        sqnr_db=_sqnr_db(ref64, params.fake_quantize(ref64).astype(np.float64)),
        clip_low=float(np.min(low)), clip_high=float(np.max(high)),
        ref_max_abs=float(np.abs(ref64).max()) if ref64.size else 0.0)


def detect_saturation(stats: QuantizationStats, params: QuantParams) -> Defect | None:
    """The scale is too small: a share of the values lies beyond the INT8 range and is clipped."""
    if stats.clipped_share < SATURATION_SHARE:
        return None
    return Defect("saturation",
                  f"INT8 saturation: {stats.clipped_share:.1%} of values clipped to "
                  f"[{stats.clip_low:.4g}, {stats.clip_high:.4g}] but the reference reaches "
                  f"{stats.ref_max_abs:.4g} ({params.describe()}; quantization SQNR {stats.sqnr_db:.1f} dB)",
                  {"clipped_share": stats.clipped_share, "clip_low": stats.clip_low, "clip_high": stats.clip_high,
                   "reference_max_abs": stats.ref_max_abs, "quantization_sqnr_db": stats.sqnr_db})


def detect_coarse_scale(stats: QuantizationStats, params: QuantParams) -> Defect | None:
    """The scale is too large: most values quantize to zero and little signal survives."""
    if stats.zeroed_share < COARSE_ZERO_SHARE or stats.sqnr_db >= COARSE_SQNR_DB:
        return None
    return Defect("coarse_scale",
                  f"INT8 scale too coarse: {stats.zeroed_share:.0%} of nonzero values quantize to 0 "
                  f"(reference max {stats.ref_max_abs:.4g}, {params.describe()}; quantization SQNR "
                  f"{stats.sqnr_db:.1f} dB)",
                  {"zeroed_share": stats.zeroed_share, "reference_max_abs": stats.ref_max_abs,
                   "quantization_sqnr_db": stats.sqnr_db})
