"""Value histograms of the culprit tensors, reference against candidate, for reports.

Magnitudes on a log10 scale: what goes wrong in reduced precision is magnitude (values beyond
FP16's 65504 become inf, values below its smallest subnormal become 0), and a log axis shows both
ends of a tensor at once. Zeros, infinities and NaNs are counted apart. Only counts are kept, so
a report can show the values of a tensor without keeping the tensor alive.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from trtdebug.core.analysis import blockwise

BINS = 60
MAX_CULPRITS = 12  # histograms per compare: the first culprits in topological order

# Where each reduced precision stops representing magnitudes: (smallest subnormal, largest finite).
REPRESENTABLE = {"fp16": (2.0 ** -24, 65504.0), "bf16": (2.0 ** -133, 3.3895313892515355e38)}


@dataclass(frozen=True)
class ValueHistogram:
    tensor: str
    edges: tuple[float, ...]  # log10(|value|) bin edges, len(bins) + 1
    reference: tuple[int, ...]
    candidate: tuple[int, ...]
    special: Mapping[str, tuple[int, int]]  # "zero" / "inf" / "nan" -> (reference count, candidate count)

    def to_json(self) -> dict[str, object]:
        return {"tensor": self.tensor, "log10_abs_edges": list(self.edges), "reference": list(self.reference),
                "candidate": list(self.candidate), "special": {k: list(v) for k, v in self.special.items()}}


def value_histogram(tensor: str, reference: np.ndarray, candidate: np.ndarray, bins: int = BINS) -> ValueHistogram:
    ref, cand = blockwise.flat_float(reference), blockwise.flat_float(candidate)
    extent = blockwise.reduce(ref.size, lambda a, b: _Extent.of(ref[a:b]).merge(_Extent.of(cand[a:b]))) \
        if ref.size == cand.size else _Extent.of(ref).merge(_Extent.of(cand))
    if extent.high > 0:
        low, high = math.floor(math.log10(extent.low)), math.ceil(math.log10(extent.high))
    else:
        low, high = -1, 1
    if high <= low:
        high = low + 1
    edges = np.linspace(low, high, bins + 1)
    ref_counts, cand_counts = (_Counts.over(a, bins, low, high) for a in (ref, cand))
    special = {
        "zero": (ref_counts.zero, cand_counts.zero),
        "inf": (ref_counts.inf, cand_counts.inf),
        "nan": (ref_counts.nan, cand_counts.nan),
    }
    return ValueHistogram(tensor, tuple(float(e) for e in edges), tuple(int(c) for c in ref_counts.bins),
                          tuple(int(c) for c in cand_counts.bins), special)


def _positive_finite(magnitude: np.ndarray) -> np.ndarray:
    """The magnitudes a log axis can place (zeros, infinities and NaNs are counted apart)."""
    return magnitude[np.isfinite(magnitude) & (magnitude > 0)]


@dataclass(frozen=True)
class _Extent:
    """Smallest and largest finite nonzero magnitude (high 0: none)."""

    low: float = math.inf
    high: float = 0.0

    @classmethod
    def of(cls, values: np.ndarray) -> _Extent:
        kept = _positive_finite(np.abs(values))
        return cls(float(kept.min()), float(kept.max())) if kept.size else cls()

    def merge(self, other: _Extent) -> _Extent:
        return _Extent(min(self.low, other.low), max(self.high, other.high))


@dataclass(frozen=True)
class _Counts:
    bins: np.ndarray
    zero: int
    inf: int
    nan: int

    @classmethod
    def of(cls, values: np.ndarray, bins: int, low: float, high: float) -> _Counts:
        magnitude = np.abs(values)
        kept = _positive_finite(magnitude)
        # np.histogram spends ~2 ms on a block; equal-width bins of log10 are a scale and a bincount.
        # The top edge belongs to the last bin, as in np.histogram; rounding below the bottom edge, to the first.
        position = np.log10(kept)
        position -= low
        position *= bins / (high - low)
        index = position.astype(np.intp)
        np.clip(index, 0, bins - 1, out=index)
        counts = np.bincount(index, minlength=bins)
        return cls(counts, int(np.count_nonzero(magnitude == 0)), int(np.count_nonzero(np.isinf(magnitude))),
                   int(np.count_nonzero(np.isnan(magnitude))))

    @classmethod
    def over(cls, values: np.ndarray, bins: int, low: float, high: float) -> _Counts:
        return blockwise.reduce(values.size, lambda start, stop: cls.of(values[start:stop], bins, low, high))

    def merge(self, other: _Counts) -> _Counts:
        return _Counts(self.bins + other.bins, self.zero + other.zero, self.inf + other.inf, self.nan + other.nan)


def culprit_histograms(culprits: Iterable[str], reference: Mapping[str, np.ndarray],
                       candidate: Mapping[str, np.ndarray], limit: int = MAX_CULPRITS) -> dict[str, ValueHistogram]:
    """Histograms of the first `limit` culprit tensors that both runs computed."""
    found: dict[str, ValueHistogram] = {}
    for tensor in culprits:
        if len(found) >= limit:
            break
        if tensor in reference and tensor in candidate and np.asarray(candidate[tensor]).size:
            found[tensor] = value_histogram(tensor, reference[tensor], candidate[tensor])
    return found
