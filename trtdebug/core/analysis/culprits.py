"""Which tensors explain a failure: the culprits the headline names.

The first tensor with any out-of-tolerance element is rarely the answer: a one-element rounding
early in a network says nothing about an overflow that turns 74% of a later tensor to inf, and a
box decode whose every tensor is within its own (relative) tolerance can still round the boxes by
0.3 px, beyond the outputs' tolerance. So what each layer contributes to the output error is measured:

1. Tensors whose error is introduced where values become inf/NaN (the reference being finite)
   come first: nothing downstream of them can be trusted.
2. Every other layer that could matter is measured, whatever its own tolerance says: with all
   layers before position k at their reference values (the tensors they hand to later layers
   replaced), the outputs keep error E(k); E(k) - E(k+1) is what layer k adds on exact inputs,
   what keeping it in FP32 would remove. A best-first bisection over the layers in topological
   order finds the layers that add most in few runs: at most MAX_RUNS, and at most MAX_WORK whole
   runs' worth of layers, as a trial runs the model from its cut on (the emulator prunes the layers
   before it): a failure that starts early makes every trial nearly a whole run.
3. Layers that each add a real share and feed one another are named together as a chain; each
   culprit's `explained` is measured by putting its tensors at their reference values (earlier
   culprits already replaced), so the named culprits at reference values remove that share.
   Layers named this way are `introduced`, even where their error is within their own tolerance.
   Engines that cannot substitute a tensor get a ranking by severity instead (explained = None).

Only tensors of nodes a fallback can keep in higher precision are culprits, so compare's first
culprit is a node `trtdebug fallback` would keep.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from trtdebug.core.analysis.defects import Defect
from trtdebug.core.analysis.metrics import DATA_MOVEMENT, Culprit, TensorReport, Tolerance, measure
from trtdebug.core.model.graph import Model
from trtdebug.core.reference.fp32_run import values_of

MAX_CULPRITS = 3
MEASURED_CANDIDATES = 6  # without the whole-network search: the most severe introduced errors measured
MIN_SHARE = 0.05  # a culprit must explain at least this share of the output error
MAX_RUNS = 32  # substitution runs of the contribution search (each one run of the build)
MAX_WORK = 12.0  # ... and whole runs' worth of layers they compute, measured by the elements the layers write
SPLIT_SHARE = 0.02  # a span of layers is split while it adds at least this share of the output error
CHAIN_SHARE = 0.04  # a layer joins a chain culprit when it adds at least this share
CHAIN_HOPS = 2  # layers of a chain are this close: one feeds the other, or both feed one layer
DEFAULT_SEARCH_BYTES = 1 << 30  # reference values the search holds at once

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
                  failed_outputs: Mapping[str, np.ndarray] | None = None,
                  max_bytes: int = DEFAULT_SEARCH_BYTES, whole_network: bool = True
                  ) -> tuple[list[Culprit], float | None]:
    """Up to three culprits, most important first (module docstring), and the share of the output
    error they explain together (None: not measured). `run_with_reference(replacements, switchable)` reruns the
    build with tensors replaced by their reference values; `failed_outputs` are the final outputs of
    the build as it is. `max_bytes` bounds the reference values the measuring holds at once.
    `whole_network` False measures only the introduced errors: where a substituted tensor is read
    unquantized (Q/DQ builds: INT8, FP8, INT4), a prefix at reference values also undoes quantization, so the
    bisection's steps do not add up.

    The reports of layers named by measurement are marked `introduced` (with the share they add)."""
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
    search = _ContributionSearch(model, reports if whole_network else [*nonfinite, *rest[:MEASURED_CANDIDATES]],
                                 reference, tolerance, run_with_reference, baseline, max_bytes,
                                 extra=[r.tensor for r in [*nonfinite[:MAX_CULPRITS], *rest[:MEASURED_CANDIDATES]]])
    replaced: list[str] = []
    remaining = baseline

    for report in nonfinite[:MAX_CULPRITS]:  # non-finite values come first, whatever they explain
        if culprits and remaining < MIN_SHARE * baseline:  # those named explain the failure: named, not measured
            culprits.append(Culprit(report.tensor, report.node, report.op_type, True, None, _describe(report)))
            replaced.append(report.tensor)  # (a run of the 1.1 B decoder each, 4 s, to measure 0%)
            continue
        after = search.error_with([*replaced, report.tensor])
        culprits.append(Culprit(report.tensor, report.node, report.op_type, True,
                                max(0.0, (remaining - after) / baseline), _describe(report)))
        replaced.append(report.tensor)
        remaining = min(remaining, after)
    # A named defect (underflow, all zeros, saturation, ...) that explains a real share comes before
    # plain rounding: it is where a fallback must keep the layer, even where substituting its producer
    # (whose values it cannot represent) removes as much.
    named = [r for r in rest if any(d.kind in NAMED_DEFECTS for d in r.defects)]
    if not whole_network or named:
        candidates = (rest if not whole_network else named)[:MEASURED_CANDIDATES]
        while len(culprits) < MAX_CULPRITS and candidates and remaining > 0:
            after, best = min(((search.error_with([*replaced, r.tensor]), r) for r in candidates),
                              key=lambda pair: pair[0])
            share = (remaining - after) / baseline
            if share < MIN_SHARE:
                break
            culprits.append(Culprit(best.tensor, best.node, best.op_type, False, share, _describe(best)))
            replaced.append(best.tensor)
            remaining = after
            candidates = [r for r in candidates if r is not best]
    # the bisection costs a run per step: made only where a group could still add MIN_SHARE (below, the
    # first group found would end the loop) and culprits are still wanted
    searched = whole_network and len(culprits) < MAX_CULPRITS and (not culprits or remaining >= MIN_SHARE * baseline)
    for group in search.groups(keepable) if searched else ():
        if len(culprits) >= MAX_CULPRITS or remaining <= 0:
            break
        tensors = [t for r in group.members for t in search.tensors_of(r)]
        if set(tensors) <= set(replaced):
            continue
        after = search.error_with([*replaced, *tensors])
        share = (remaining - after) / baseline
        if share < MIN_SHARE and culprits:
            break
        culprits.append(group.culprit(share))
        search.mark_introduced(group)
        replaced.extend(tensors)
        remaining = min(remaining, after)
    if not culprits and rest:  # nothing measured adds much: name the biggest introduced error, with its share
        after, best = min(((search.error_with([r.tensor]), r) for r in rest[:3]), key=lambda pair: pair[0])
        culprits.append(Culprit(best.tensor, best.node, best.op_type, False, (baseline - after) / baseline,
                                _describe(best)))
        remaining = after
    return _origins_first(model, culprits, introduced), (baseline - remaining) / baseline if culprits else None


@dataclass(frozen=True)
class _Group:
    """Layers that each add a share of the output error and feed one another (one layer, or a chain),
    or a span of layers the search did not split further."""

    members: tuple[TensorReport, ...]  # topological order
    adds: float  # share of the output error the members add on exact inputs (sum of their steps)
    span: bool = False

    def culprit(self, explained: float) -> Culprit:
        last = self.members[-1]
        if len(self.members) == 1 and not self.span:
            reason = _describe(last) if last.status == "introduced" else _adds(self.adds)
            return Culprit(last.tensor, last.node, last.op_type, False, explained, reason)
        nodes = tuple(r.node for r in self.members)
        kind = "span of layers" if self.span else "chain"
        return Culprit(last.tensor, last.node, last.op_type, False, explained,
                       f"{kind}: rounding spread over {len(nodes)} layers; {_adds(self.adds)}", chain=nodes)


def _adds(share: float) -> str:
    if share > 1:  # errors of other layers partly cancel its own: a share over 100% would read as a typo
        return "on exact inputs it adds more error than the outputs carry, which other layers partly cancel (measured)"
    return f"on exact inputs it adds {share:.0%} of the output error (measured)"


class _ContributionSearch:
    """E(k) of the module docstring, measured with the engine's switching session, and the layers (and
    chains) that add most. `units` are the compared layers in topological order (one per node)."""

    def __init__(self, model: Model, reports: Sequence[TensorReport], reference: Mapping[str, np.ndarray],
                 tolerance: Tolerance, run: RunWithReference, baseline: float, max_bytes: int,
                 extra: Sequence[str] = ()):
        self.model, self.tolerance, self.run, self.baseline = model, tolerance, run, baseline
        self.reference = reference
        units: dict[str, list[TensorReport]] = {}
        for r in reports:
            if r.accumulated is not None and r.status != "missing":
                units.setdefault(r.node, []).append(r)
        self.units = list(units.values())
        self.indices = [model.node_index(u[0].node) for u in self.units]
        outputs = {o.name for o in model.outputs}
        self.last_read = {r.tensor: max([model.node_index(n) for n in model.consumers.get(r.tensor, [])]
                                        + [len(model.nodes) if r.tensor in outputs else -1])
                          for u in self.units for r in u}
        self.start = self._window(max_bytes)  # units before it are measured as one span
        switchable = [r.tensor for u in self.units[self.start:] for r in u if self.last_read[r.tensor] >= 0]
        switchable = list(dict.fromkeys([*self.cut(self.start), *switchable, *extra]))
        self.switchable = switchable
        self.errors: dict[int, float] = {0: baseline}
        self.steps: dict[int, float] = {}  # unit -> what it adds on exact inputs
        self.spans: list[tuple[int, int, float]] = []  # unsplit (start, end, adds)
        self.runs = 0
        self.work = 0.0  # whole runs' worth of layers the bisection's trials computed
        self._searched = False

    def _window(self, max_bytes: int) -> int:
        """The first unit of the measured suffix: the values the search holds (the suffix's tensors and
        what crosses into it) stay within max_bytes."""
        held = 0
        for k in range(len(self.units) - 1, -1, -1):
            held += sum(4 * int(np.prod(r.shape)) for r in self.units[k])
            if held + sum(4 * int(np.prod(self._shape(t))) for t in self.cut(k)) > max_bytes:
                return k + 1
        return 0

    def _shape(self, tensor: str) -> tuple[int, ...]:
        return next(r.shape for u in self.units for r in u if r.tensor == tensor)

    def tensors_of(self, report: TensorReport) -> list[str]:
        return [r.tensor for r in self.units[self._position(report.node)]] if report.node in self._nodes else [
            report.tensor]

    @functools.cached_property
    def _nodes(self) -> dict[str, int]:
        return {u[0].node: k for k, u in enumerate(self.units)}

    def _position(self, node: str) -> int:
        return self._nodes[node]

    def cut(self, k: int) -> list[str]:
        """The tensors layers before unit k hand to unit k and later (or to the outputs)."""
        if k <= 0:
            return []
        boundary = self.indices[k] if k < len(self.units) else len(self.model.nodes)
        return [r.tensor for u in self.units[:k] for r in u if self.last_read[r.tensor] >= boundary]

    def error_with(self, tensors: Sequence[str]) -> float:
        """Output error with these tensors at their reference values."""
        self.runs += 1
        known = self.__dict__.get("substitutes", {})  # taken once the bisection needs them
        values = {t: known[t] if t in known else values_of(self.reference, [t])[t]
                  for t in tensors}
        return output_error(self.model, self.reference, self.run(values, self.switchable), self.tolerance)

    @functools.cached_property
    def substitutes(self) -> Mapping[str, np.ndarray]:
        """The reference values of every switchable tensor: one run where the reference is streamed,
        taken only when the bisection starts (culprits that make NaN need just their own)."""
        return values_of(self.reference, self.switchable)

    @functools.cached_property
    def _suffix_work(self) -> list[float]:
        """What a trial cut before unit k computes, as a share of a whole run: the elements the units
        from k on write (the last entry, n, is 0)."""
        written = [float(sum(int(np.prod(r.shape)) for r in unit)) for unit in self.units]
        total = sum(written) or 1.0
        suffix = [0.0] * (len(written) + 1)
        for k in range(len(written) - 1, -1, -1):
            suffix[k] = suffix[k + 1] + written[k] / total
        return suffix

    def _error(self, k: int) -> float:
        if k not in self.errors:
            _ = self.substitutes  # the prefixes' values, at once
            self.work += self._suffix_work[k]
            self.errors[k] = self.error_with(self.cut(k))
        return self.errors[k]

    def _affordable(self, k: int) -> bool:
        return k in self.errors or (self.runs < MAX_RUNS and self.work + self._suffix_work[k] <= MAX_WORK)

    def _search(self) -> None:
        """Best-first bisection: the span adding most is split first, until single layers or the budget."""
        if self._searched:
            return
        self._searched = True
        n = len(self.units)
        if n == 0:
            return
        if self.start > 0:
            self.spans.append((0, self.start, self.baseline - self._error(self.start)))
        heap = [(-(self._error(self.start) - self._error(n)), self.start, n)]
        while heap:
            adds, a, b = -heap[0][0], heap[0][1], heap[0][2]
            heapq.heappop(heap)
            if b - a == 1:
                self.steps[a] = adds
            elif adds < SPLIT_SHARE * self.baseline or not self._affordable((a + b) // 2):
                self.spans.append((a, b, adds))
            else:
                m = (a + b) // 2
                heapq.heappush(heap, (-(self._error(a) - self._error(m)), a, m))
                heapq.heappush(heap, (-(self._error(m) - self._error(b)), m, b))

    def groups(self, keepable: set[str]) -> list[_Group]:
        """Layers adding at least CHAIN_SHARE of the output error, joined into chains where one feeds
        another (directly or through layers that only move data); then spans left unsplit. Most first."""
        self._search()
        adding = {k for k, adds in self.steps.items()
                  if adds >= CHAIN_SHARE * self.baseline and self.units[k][0].node in keepable}
        parent = {k: k for k in adding}

        def root(k: int) -> int:
            while parent[k] != k:
                k = parent[k]
            return k

        for a, b in self._joined(adding):
            parent[root(b)] = root(a)
        chains: dict[int, list[int]] = {}
        for k in sorted(adding):
            chains.setdefault(root(k), []).append(k)
        found = [_Group(tuple(self.units[k][0] for k in ks), sum(self.steps[k] for k in ks) / self.baseline)
                 for ks in chains.values()]
        for a, b, adds in self.spans:
            members = tuple(u[0] for u in self.units[a:b] if u[0].node in keepable)
            if members and adds >= MIN_SHARE * self.baseline:
                found.append(_Group(members, adds / self.baseline, span=True))
        return sorted(found, key=lambda g: -g.adds)

    def _reach(self, k: int) -> set[str]:
        """Nodes unit k feeds within CHAIN_HOPS computing layers (data movement is free)."""
        reached: set[str] = set()
        frontier = [(t, 0) for t in (r.tensor for r in self.units[k])]
        while frontier:
            tensor, hops = frontier.pop()
            for name in self.model.consumers.get(tensor, []):
                node = self.model.node_by_name[name]
                cost = hops + (0 if node.op_type in DATA_MOVEMENT else 1)
                if name in reached or cost > CHAIN_HOPS:
                    continue
                reached.add(name)
                frontier.extend((t, cost) for t in node.output if t)
        return reached

    def _joined(self, adding: set[int]) -> list[tuple[int, int]]:
        """Pairs of adding units of one chain: one feeds the other, or both feed the same layer nearby
        (a box decode's anchor - d and anchor + d meet in x2 - x1)."""
        reach = {k: self._reach(k) for k in adding}
        nodes = {k: self.units[k][0].node for k in adding}
        return [(a, b) for a in adding for b in adding if a < b
                and (nodes[b] in reach[a] or nodes[a] in reach[b] or reach[a] & reach[b])]

    def mark_introduced(self, group: _Group) -> None:
        """A named layer introduces error, even where its tensor is within its own tolerance. Its measured
        share joins the rounding defect the tensor has, or becomes one."""
        for report in group.members:
            k = self._nodes.get(report.node)
            adds = self.steps.get(k, 0.0) / self.baseline if k is not None else group.adds
            if group.span:  # the span was not split: what its layers add is known together only
                measured = f"one of {len(group.members)} layers that {_adds(group.adds).replace('it adds', 'add')}"
            else:
                measured = _adds(adds)
            for r in self.units[k] if k is not None else [report]:
                if (group.span or adds >= CHAIN_SHARE) and not any("adds" in d.details for d in r.defects):
                    r.status = "introduced"
                    r.defects = _with_share(r, measured, group.adds if group.span else adds)


def _with_share(report: TensorReport, measured: str, adds: float) -> list[Defect]:
    """The tensor's rounding defect with the measured share joined to it, or a new one saying so."""
    defects = report.defects
    rounding = next((d for d in defects if d.kind == "precision"), None)
    if rounding is None:
        within = report.accumulated is not None and not report.accumulated.bad
        what = "rounding within this tensor's tolerance" if within else "rounding"
        return [*defects, Defect("precision", f"{what}; {measured}", {"adds": adds})]
    joined = Defect("precision", f"{rounding.message}; {measured}", {**rounding.details, "adds": adds})
    return [joined if d is rounding else d for d in defects]


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
