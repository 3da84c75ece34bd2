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
    ref, cand = (np.abs(np.asarray(a).reshape(-1)) for a in (reference, candidate))
    ref_values, cand_values = ref[np.isfinite(ref) & (ref > 0)], cand[np.isfinite(cand) & (cand > 0)]
    present = [v for v in (ref_values, cand_values) if v.size]
    if present:
        low = math.floor(math.log10(min(float(v.min()) for v in present)))
        high = math.ceil(math.log10(max(float(v.max()) for v in present)))
    else:
        low, high = -1, 1
    if high <= low:
        high = low + 1
    edges = np.linspace(low, high, bins + 1)
    # equal-width bins given as a count and range: numpy's fast path (explicit edges sort every block)
    ref_counts, _ = np.histogram(np.log10(ref_values, dtype=np.float64), bins, (low, high))
    cand_counts, _ = np.histogram(np.log10(cand_values, dtype=np.float64), bins, (low, high))
    special = {
        "zero": (int(np.count_nonzero(ref == 0)), int(np.count_nonzero(cand == 0))),
        "inf": (int(np.count_nonzero(np.isinf(ref))), int(np.count_nonzero(np.isinf(cand)))),
        "nan": (int(np.count_nonzero(np.isnan(ref))), int(np.count_nonzero(np.isnan(cand)))),
    }
    return ValueHistogram(tensor, tuple(float(e) for e in edges), tuple(int(c) for c in ref_counts),
                          tuple(int(c) for c in cand_counts), special)


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
