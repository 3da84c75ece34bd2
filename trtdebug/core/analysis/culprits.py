"""Which tensors explain a failure: the culprits the headline names.

The first tensor with any out-of-tolerance element is rarely the answer: a one-element rounding
early in a network says nothing about an overflow that turns 74% of a later tensor to inf. So:

1. Tensors whose error is introduced where values become inf/NaN (the reference being finite)
   come first: nothing downstream of them can be trusted.
2. The other introduced errors are ranked by how much of the final-output error each accounts for:
   the build is run again with that tensor replaced by its reference value, and the outputs'
   recovery is measured. Greedily, up to three independent culprits: each next one is measured
   with the earlier ones already replaced, and must explain a real share of what is left.
   Engines that cannot substitute a tensor get a ranking by severity instead (explained = None).

Only tensors of nodes a fallback can keep in higher precision are culprits, so compare's first
culprit is a node `trtdebug fallback` would keep.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np

from trtdebug.core.analysis.metrics import Culprit, TensorReport, Tolerance, measure
from trtdebug.core.model.graph import Model
from trtdebug.core.reference.fp32_run import values_of

MAX_CULPRITS = 3
MEASURED_CANDIDATES = 6  # substitution runs per round: the most severe introduced errors only
MIN_SHARE = 0.05  # a culprit must explain at least this share of the output error

# (replacements, every tensor the search may replace) -> final outputs
RunWithReference = Callable[[Mapping[str, np.ndarray], Collection[str]], Mapping[str, np.ndarray]]


def output_error(model: Model, reference: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                 tolerance: Tolerance) -> float:
    """One number for how wrong the final outputs are: per output, the share of elements outside
    tolerance plus the error energy relative to the signal (1 when non-finite), summed."""
    total = 0.0
    for spec in model.outputs:
        ref, cand = np.asarray(reference[spec.name]), outputs.get(spec.name)
        if cand is None or np.asarray(cand).size != ref.size:
            total += 2.0
            continue
        if ref.dtype.kind not in "fc":
            total += 0.0 if np.array_equal(ref.reshape(-1), np.asarray(cand).reshape(-1)) else 2.0
            continue
        atol, rtol = tolerance.for_output(spec.name)
        metrics, _ = measure(ref, np.asarray(cand), atol, rtol, relative_atol=False)
        energy = 1.0 if math.isinf(metrics.snr_db) and metrics.snr_db < 0 else min(
            1.0, 10 ** (-metrics.snr_db / 10) if math.isfinite(metrics.snr_db) else 0.0)
        total += metrics.frac_outside + energy
    return total


# Where no run can measure what a tensor explains, a named defect (overflow, INT8 saturation, a layout
# mismatch, ...) ranks above plain rounding, however many elements the rounding touches.
NAMED_DEFECTS = frozenset({"overflow", "nan", "saturation", "coarse_scale", "layout", "all_zero", "underflow",
                           "shape"})


def _severity(report: TensorReport) -> tuple[float, float, float, float]:
    named = 1.0 if any(d.kind in NAMED_DEFECTS for d in report.defects) else 0.0
    m = report.accumulated
    local_bad = 1.0 if report.local is not None and report.local.bad else 0.0
    if m is None:
        return (named, local_bad, 1.0, 0.0)
    return (named, local_bad, m.frac_outside, -m.snr_db if math.isfinite(m.snr_db) else math.inf)


def _describe(report: TensorReport) -> str:
    return "; ".join(d.message for d in report.defects) or "error introduced here"


def find_culprits(model: Model, reports: Sequence[TensorReport], keepable: set[str],
                  reference: Mapping[str, np.ndarray], tolerance: Tolerance,
                  run_with_reference: RunWithReference | None = None,
                  failed_outputs: Mapping[str, np.ndarray] | None = None) -> tuple[list[Culprit], float | None]:
    """Up to three culprits, most important first (module docstring), and the share of the output
    error they explain together (None: not measured). `run_with_reference(replacements, switchable)` reruns the
    build with tensors replaced by their reference values; `failed_outputs` are the final outputs of
    the build as it is."""
    introduced = [r for r in reports if r.status == "introduced" and r.node in keepable]
    nonfinite = [r for r in introduced if r.accumulated is not None and r.accumulated.new_nonfinite > 0]
    rest = sorted((r for r in introduced if r not in nonfinite), key=_severity, reverse=True)
    culprits: list[Culprit] = []
    if run_with_reference is None or failed_outputs is None:
        for report in [*nonfinite, *rest][:MAX_CULPRITS]:
            culprits.append(Culprit(report.tensor, report.node, report.op_type, report in nonfinite, None,
                                    _describe(report)))
        return culprits, None
    baseline = output_error(model, reference, failed_outputs, tolerance)
    if baseline == 0:
        return [], None
    replaced: dict[str, np.ndarray] = {}
    remaining = baseline

    switchable = [r.tensor for r in [*nonfinite[:MAX_CULPRITS], *rest[:MEASURED_CANDIDATES]]]
    substitutes = values_of(reference, switchable)  # one run where the reference is streamed

    def error_with(extra: TensorReport) -> float:
        trial = {**replaced, extra.tensor: substitutes[extra.tensor]}
        return output_error(model, reference, run_with_reference(trial, switchable), tolerance)

    for report in nonfinite[:MAX_CULPRITS]:  # non-finite values come first, whatever they explain
        after = error_with(report)
        culprits.append(Culprit(report.tensor, report.node, report.op_type, True,
                                max(0.0, (remaining - after) / baseline), _describe(report)))
        replaced[report.tensor] = substitutes[report.tensor]
        remaining = min(remaining, after)
    candidates = rest[:MEASURED_CANDIDATES]
    while len(culprits) < MAX_CULPRITS and candidates and remaining > 0:
        scored = [(error_with(report), report) for report in candidates]
        after, best = min(scored, key=lambda pair: pair[0])
        share = (remaining - after) / baseline
        if share < MIN_SHARE:
            break
        culprits.append(Culprit(best.tensor, best.node, best.op_type, False, share, _describe(best)))
        replaced[best.tensor] = substitutes[best.tensor]
        remaining = after
        candidates = [r for r in candidates if r is not best]
    if not culprits and rest:  # nothing explains much alone: name the biggest contributor, with its share
        after, best = min(((error_with(r), r) for r in rest[:MEASURED_CANDIDATES]), key=lambda pair: pair[0])
        culprits.append(Culprit(best.tensor, best.node, best.op_type, False, (baseline - after) / baseline,
                                _describe(best)))
        remaining = after
    return _origins_first(model, culprits, introduced), (baseline - remaining) / baseline if culprits else None


def _origins_first(model: Model, culprits: list[Culprit], introduced: Sequence[TensorReport]) -> list[Culprit]:
    """A defect often recurs down a chain: a tensor that underflowed is flushed again where the next layer
    reads it in FP16. Measuring picks the last link (replacing it repairs everything), but the defect
    starts at the first: put the chain's origin first, the measured culprit after it."""
    by_tensor = {r.tensor: r for r in introduced}
    ordered: list[Culprit] = []
    for culprit in culprits:
        chain = []
        current = by_tensor.get(culprit.tensor)
        kinds = {d.kind for d in current.defects} if current else set()
        while current is not None:
            upstream = [by_tensor[t] for t in model.node_by_name[current.node].input if t in by_tensor]
            current = next((u for u in upstream if kinds & {d.kind for d in u.defects}), None)
            if current is not None:
                chain.append(current)
        for origin in reversed(chain):
            if all(c.tensor != origin.tensor for c in [*ordered, *culprits]):
                ordered.append(Culprit(origin.tensor, origin.node, origin.op_type, culprit.creates_nonfinite,
                                       None, _describe(origin)))
        ordered.append(culprit)
    return ordered[:MAX_CULPRITS]
