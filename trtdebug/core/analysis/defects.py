"""Defect detectors: what kind of wrong a wrong tensor is.

Each detector looks at one tensor (reference vs candidate) and says whether its defect is there.
They run in a fixed order, most specific first, and every matching defect is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trtdebug.core.analysis import blockwise
from trtdebug.core.model.graph import FP16_MAX

FP16_MIN_NORMAL = 2.0**-14

KINDS = ("layout", "overflow", "nan", "all_zero", "underflow", "saturation", "coarse_scale", "code_flip", "precision",
         "shape", "kernel_error")


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
    # A layout mismatch moves every value, so a few hundred spread-out elements that do not match
    # the permuted reference rule it out without permuting the whole tensor.
    sample = np.arange(0, ref.size, max(1, ref.size // LAYOUT_SAMPLE))
    sampled = ref.size > LAYOUT_SAMPLE
    if (not sampled or all_close(flat[sample], ref.reshape(-1)[sample], atol, rtol)) \
            and all_close(flat, ref.reshape(-1), atol, rtol):
        return None  # already matches as is
    for description, perm in channels_last_permutations(ref.ndim).items():
        permuted = np.transpose(ref, perm)
        if permuted.shape == ref.shape and np.array_equal(permuted, ref):
            continue  # permutation is a no-op for this shape (e.g. 1x1 spatial)
        if sampled and not all_close(flat[sample], permuted[np.unravel_index(sample, permuted.shape)], atol, rtol):
            continue
        if all_close(flat, permuted.reshape(-1), atol, rtol):
            return Defect("layout", f"layout mismatch: candidate holds {description}",
                          {"permutation": list(perm), "candidate_shape": list(cand.shape)})
    return None


LAYOUT_SAMPLE = 512


def all_close(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> bool:
    """np.allclose(a, b, atol, rtol, equal_nan=True), without its overhead on the common answer."""
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.abs(a - b) <= atol + rtol * np.abs(b)
        if ok.all():
            return True
        return bool((ok | (a == b) | (np.isnan(a) & np.isnan(b))).all())  # the same inf, or NaN on both sides


def detect(ref: np.ndarray, cand: np.ndarray, outside: np.ndarray, precision: str,
           atol: float, rtol: float, inputs_nonfinite: bool = False, candidate_finite: bool = False) -> list[Defect]:
    """Defects of a tensor already known to be out of tolerance (`outside` marks the elements).
    `inputs_nonfinite`: an input of its node was already inf/NaN in the candidate; `candidate_finite`: every
    candidate value is known to be finite (the metrics saw it)."""
    defects: list[Defect] = []
    layout = detect_layout(ref, cand, atol, rtol)
    if layout:
        return [layout]
    if cand.size != ref.size:
        return [Defect("shape", f"shape mismatch: candidate {list(cand.shape)}, reference {list(ref.shape)}")]
    cand = cand.reshape(ref.shape)
    r, c = blockwise.flat_float(ref), blockwise.flat_float(cand)
    o = (outside if outside.shape == ref.shape else np.broadcast_to(outside, ref.shape)).reshape(-1)
    scan = blockwise.reduce(r.size, lambda a, b: _scan(r[a:b], c[a:b], o[a:b], candidate_finite))
    ref_max = scan.ref_max
    reduced = precision in ("fp16", "")
    details = {"reference_max_abs": ref_max, "elements_inf": scan.became_inf,
               "reference_elements_beyond_fp16": scan.beyond_fp16, "input_already_nonfinite": inputs_nonfinite}
    if scan.beyond_fp16 and reduced:
        defects.append(Defect("overflow", f"FP16 overflow: this tensor reaches {ref_max:.4g} in the reference "
                                          f"(FP16 max 65504); {scan.became_inf} elements became inf", details))
    elif scan.became_inf and inputs_nonfinite:
        defects.append(Defect("overflow", f"{scan.became_inf} elements became inf because an input was "
                                          f"already inf (this tensor's reference stays within {ref_max:.4g})",
                              details))
    elif scan.became_inf:
        defects.append(Defect("overflow", f"{scan.became_inf} elements became inf although this tensor's "
                                          f"reference stays within {ref_max:.4g}: the layer overflowed FP16 "
                                          "inside (e.g. a sum of squares or an exponent)", details))
    if scan.became_nan:
        defects.append(Defect("nan", f"{scan.became_nan} elements became NaN where the reference is "
                                     "finite", {"elements_nan": scan.became_nan}))
    if defects:
        return defects
    if not scan.candidate_nonzero and scan.reference_nonzero:
        note = ""
        if ref_max < FP16_MIN_NORMAL:
            note = f" (reference max {ref_max:.3g} is below FP16's smallest normal {FP16_MIN_NORMAL:.3g})"
        return [Defect("all_zero", f"output is all zeros; reference max |x| is {ref_max:.4g}{note}",
                       {"reference_max_abs": ref_max})]
    if scan.flushed and scan.flushed * 2 >= scan.outside:
        return [Defect("underflow",
                       f"underflow: {scan.flushed} nonzero elements became 0 (largest "
                       f"{scan.flushed_max:.3g}; FP16 smallest normal {FP16_MIN_NORMAL:.3g})",
                       {"elements_flushed": scan.flushed, "largest_flushed": scan.flushed_max})]
    return [Defect("precision", f"rounding error beyond tolerance in {scan.outside} elements",
                   {"elements_outside": scan.outside})]


@dataclass
class _Scan:
    """What `detect` counts over a tensor, a block at a time (core.analysis.blockwise), merged in block order."""

    ref_max: float = 0.0  # over finite reference values
    beyond_fp16: int = 0  # finite reference values beyond FP16's range
    became_inf: int = 0  # finite in the reference, inf in the candidate
    became_nan: int = 0
    candidate_nonzero: bool = False
    reference_nonzero: bool = False  # some finite nonzero reference value
    flushed: int = 0  # out of tolerance: a finite nonzero reference value that became 0
    flushed_max: float = 0.0
    outside: int = 0

    def merge(self, other: _Scan) -> _Scan:
        return _Scan(max(self.ref_max, other.ref_max), self.beyond_fp16 + other.beyond_fp16,
                     self.became_inf + other.became_inf, self.became_nan + other.became_nan,
                     self.candidate_nonzero or other.candidate_nonzero,
                     self.reference_nonzero or other.reference_nonzero,
                     self.flushed + other.flushed, max(self.flushed_max, other.flushed_max),
                     self.outside + other.outside)


def _scan(r: np.ndarray, c: np.ndarray, outside: np.ndarray, candidate_finite: bool = False) -> _Scan:
    """`candidate_finite`: the caller knows every candidate value is finite (nothing became inf/NaN).
    The common block (finite reference, within FP16) skips the passes that only count exceptions."""
    magnitude = np.abs(r)
    ref_max = float(magnitude.max(initial=0.0))
    finite = None  # None: every reference value is finite
    if not math.isfinite(ref_max):
        finite = np.isfinite(r)
        magnitude[~finite] = 0  # inf/NaN references count nowhere
        ref_max = float(magnitude.max(initial=0.0))
    became_inf = became_nan = 0
    if not candidate_finite:
        inf, nan = np.isinf(c), np.isnan(c)
        if finite is not None:
            inf &= finite
            nan &= finite
        became_inf, became_nan = int(np.count_nonzero(inf)), int(np.count_nonzero(nan))
    flushed = outside & (c == 0)
    flushed &= magnitude != 0
    return _Scan(ref_max=ref_max,
                 beyond_fp16=int(np.count_nonzero(magnitude > FP16_MAX)) if ref_max > FP16_MAX else 0,
                 became_inf=became_inf, became_nan=became_nan,
                 candidate_nonzero=bool(c.any()), reference_nonzero=ref_max > 0,
                 flushed=int(np.count_nonzero(flushed)),
                 flushed_max=float(magnitude[flushed].max(initial=0.0)),
                 outside=int(np.count_nonzero(outside)))
