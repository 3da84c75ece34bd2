"""What quantizing one tensor with its scale does to its reference values: saturation (scale too
small), coarse steps (scale too large), and the signal left (SQNR); and what a candidate's codes one
step off at rounding boundaries are (code flips: the quantizer rounded slightly different inputs)."""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from trtdebug.core.analysis.defects import Defect
from trtdebug.core.quantized.qdq import Float8Params, QuantParams

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


# A code flip: the reference lies this close (in steps) to a rounding boundary of the quantizer, so a
# slight upstream difference moves it to the neighbouring code. Further away the difference that moves
# it is no longer slight, and the flip says nothing the error itself does not.
FLIP_BOUNDARY_STEPS = 0.1


@dataclass(frozen=True)
class CodeFlips:
    """How a quantized tensor's candidate codes differ from the codes of its reference values."""

    flipped: int  # elements whose code differs from the reference's
    elements: int
    one_step: bool  # every differing code is a neighbour of the reference's code
    boundary_distance: float  # largest distance (in steps) of a flipped reference value from a rounding boundary
    step: float  # the largest grid step among the flipped elements (float units)

    @property
    def explained(self) -> bool:
        """Every difference is one step at a rounding boundary: the quantizer rounded a slightly different
        input the other way."""
        return bool(self.flipped) and self.one_step and self.boundary_distance <= FLIP_BOUNDARY_STEPS

    def to_json(self) -> dict[str, float | int]:
        return {"flipped_elements": self.flipped, "flipped_share": self.flipped / max(self.elements, 1),
                "step": self.step, "boundary_distance_steps": self.boundary_distance}


def _code_index(values: np.ndarray, params: QuantParams) -> np.ndarray:
    """Neighbouring codes differ by 1: integer codes are their own index; FP8 codes are ordered by their
    sign-magnitude bit pattern."""
    if isinstance(params, Float8Params):
        bits = np.asarray(values, np.float32).astype(ml_dtypes.float8_e4m3fn).view(np.uint8).astype(np.int64)
        magnitude = bits & 0x7F
        return np.where(bits & 0x80, -magnitude, magnitude)
    return np.asarray(values, np.float64)


def code_flips(ref: np.ndarray, cand: np.ndarray, params: QuantParams) -> CodeFlips | None:
    """The candidate's codes (a quantized tensor's candidate value is its dequantized codes) against the
    codes of the reference; None where the shapes differ or nothing is finite to compare."""
    ref64 = np.asarray(ref, np.float64)
    cand64 = np.asarray(cand, np.float64)
    if ref64.size != cand64.size or not ref64.size:
        return None
    cand64 = cand64.reshape(ref64.shape)
    finite = np.isfinite(ref64) & np.isfinite(cand64)
    ref_codes, cand_codes = params.quantize(ref64), params.quantize(cand64)
    flipped = finite & (ref_codes != cand_codes)
    count = int(np.count_nonzero(flipped))
    if not count:
        return CodeFlips(0, ref64.size, True, 0.0, 0.0)
    scale = np.broadcast_to(params.broadcast(np.abs(params.scale.astype(np.float64)), ref64.ndim), ref64.shape)
    zero = 0.0 if isinstance(params, Float8Params) else np.broadcast_to(
        params.broadcast(params.zero_point.astype(np.float64), ref64.ndim), ref64.shape)[flipped]
    r, c, s = ref_codes[flipped], cand_codes[flipped], scale[flipped]
    one_step = bool(np.all(np.abs(_code_index(c, params) - _code_index(r, params)) == 1))
    # The boundary between two neighbouring codes lies halfway between their values.
    spacing = np.abs(c - r)
    with np.errstate(divide="ignore", invalid="ignore"):
        position = ref64[flipped] / s + zero
        distance = np.abs(position - (r + c) / 2) / spacing
    return CodeFlips(count, ref64.size, one_step, float(np.nanmax(distance)) if one_step else float("inf"),
                     float(np.max(spacing * s)))


def detect_code_flips(flips: CodeFlips | None, params: QuantParams, upstream_difference: float | None
                      ) -> Defect | None:
    """A quantized tensor wrong only by codes one step off at rounding boundaries: its quantizer is not at
    fault (nothing saturates, the steps are not coarse), it rounded slightly different inputs the other way."""
    if flips is None or not flips.explained:
        return None
    share = flips.flipped / max(flips.elements, 1)
    came_from = "" if upstream_difference is None else \
        f"; its inputs already differ by up to {upstream_difference:.3g}"
    return Defect("code_flip",
                  f"{params.precision.upper()} code flips: {flips.flipped} elements ({share:.2%}) one step "
                  f"({flips.step:.4g}) off, each within {flips.boundary_distance:.2g} steps of a rounding "
                  f"boundary{came_from} ({params.describe()})",
                  {**flips.to_json(), "largest_input_difference": upstream_difference})
