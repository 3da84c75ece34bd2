"""Defect detectors: what kind of wrong a wrong tensor is.

Each detector looks at one tensor (reference vs candidate) and says whether its defect is there.
They run in a fixed order, most specific first, and every matching defect is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trtdebug.core.model import FP16_MAX

FP16_MIN_NORMAL = 2.0**-14

KINDS = ("layout", "overflow", "nan", "all_zero", "underflow", "precision", "shape")


@dataclass(frozen=True)
class Defect:
    kind: str  # one of KINDS
    message: str
    details: dict[str, Any] = field(default_factory=dict)


def channels_last_permutations(ndim: int) -> dict[str, tuple[int, ...]]:
    """Permutations between channels-first (NCHW) and channels-last (NHWC) for rank >= 3."""
    if ndim < 3:
        return {}
    to_last = (0, *range(2, ndim), 1)
    to_first = (0, ndim - 1, *range(1, ndim - 1))
    return {"NHWC data in an NCHW tensor": to_last, "NCHW data in an NHWC tensor": to_first}


def detect_layout(ref: np.ndarray, cand: np.ndarray, atol: float, rtol: float) -> Defect | None:
    """The candidate holds the reference's values in the other memory layout."""
    if ref.size != cand.size or ref.size < 2 or ref.ndim < 3:
        return None
    flat = cand.reshape(-1)
    if np.allclose(flat, ref.reshape(-1), atol=atol, rtol=rtol, equal_nan=True):
        return None  # already matches as is
    for description, perm in channels_last_permutations(ref.ndim).items():
        permuted = np.transpose(ref, perm)
        if permuted.shape == ref.shape and np.array_equal(permuted, ref):
            continue  # permutation is a no-op for this shape (e.g. 1x1 spatial)
        if np.allclose(flat, permuted.reshape(-1), atol=atol, rtol=rtol, equal_nan=True):
            return Defect("layout", f"layout mismatch: candidate holds {description}",
                          {"permutation": list(perm), "candidate_shape": list(cand.shape)})
    return None


def detect(ref: np.ndarray, cand: np.ndarray, outside: np.ndarray, precision: str,
           atol: float, rtol: float, inputs_nonfinite: bool = False) -> list[Defect]:
    """Defects of a tensor already known to be out of tolerance (`outside` marks the elements).
    `inputs_nonfinite`: an input of its node was already inf/NaN in the candidate."""
    defects: list[Defect] = []
    layout = detect_layout(ref, cand, atol, rtol)
    if layout:
        return [layout]
    if cand.size != ref.size:
        return [Defect("shape", f"shape mismatch: candidate {list(cand.shape)}, reference {list(ref.shape)}")]
    cand = cand.reshape(ref.shape)
    ref64, cand64 = ref.astype(np.float64), cand.astype(np.float64)
    ref_finite = np.isfinite(ref64)
    became_inf = ref_finite & np.isinf(cand64)
    became_nan = ref_finite & np.isnan(cand64)
    ref_max = float(np.abs(ref64[ref_finite]).max()) if ref_finite.any() else 0.0
    beyond_fp16 = int(np.count_nonzero(np.abs(ref64[ref_finite]) > FP16_MAX))
    reduced = precision in ("fp16", "")
    details = {"reference_max_abs": ref_max, "elements_inf": int(became_inf.sum()),
               "reference_elements_beyond_fp16": beyond_fp16, "input_already_nonfinite": inputs_nonfinite}
    if beyond_fp16 and reduced:
        defects.append(Defect("overflow", f"FP16 overflow: this tensor reaches {ref_max:.4g} in the reference "
                                          f"(FP16 max 65504); {int(became_inf.sum())} elements became inf", details))
    elif became_inf.any() and inputs_nonfinite:
        defects.append(Defect("overflow", f"{int(became_inf.sum())} elements became inf because an input was "
                                          f"already inf (this tensor's reference stays within {ref_max:.4g})",
                              details))
    elif became_inf.any():
        defects.append(Defect("overflow", f"{int(became_inf.sum())} elements became inf although this tensor's "
                                          f"reference stays within {ref_max:.4g}: the layer overflowed FP16 "
                                          "inside (e.g. a sum of squares or an exponent)", details))
    if became_nan.any():
        defects.append(Defect("nan", f"{int(became_nan.sum())} elements became NaN where the reference is "
                                     "finite", {"elements_nan": int(became_nan.sum())}))
    if defects:
        return defects
    nonzero_ref = ref_finite & (ref64 != 0)
    if not cand64.any() and nonzero_ref.any():
        note = ""
        if ref_max < FP16_MIN_NORMAL:
            note = f" (reference max {ref_max:.3g} is below FP16's smallest normal {FP16_MIN_NORMAL:.3g})"
        return [Defect("all_zero", f"output is all zeros; reference max |x| is {ref_max:.4g}{note}",
                       {"reference_max_abs": ref_max})]
    flushed = outside & nonzero_ref & (cand64 == 0)
    if flushed.any() and flushed.sum() * 2 >= outside.sum():
        flushed_max = float(np.abs(ref64[flushed]).max())
        return [Defect("underflow",
                       f"underflow: {int(flushed.sum())} nonzero elements became 0 (largest "
                       f"{flushed_max:.3g}; FP16 smallest normal {FP16_MIN_NORMAL:.3g})",
                       {"elements_flushed": int(flushed.sum()), "largest_flushed": flushed_max})]
    return [Defect("precision", f"rounding error beyond tolerance in {int(outside.sum())} elements",
                   {"elements_outside": int(outside.sum())})]
