"""FP32 fallback search: the fewest nodes to keep in higher precision so the final outputs pass.

Every strategy works over one question, asked of a set of *kept* nodes (the nodes computed in
the higher precision; all other candidates stay in the build's reduced precision): does the
build pass? `Evaluator` answers it through an `evaluate(plan) -> Verdict` callable, memoizes the
answer by the kept set (so no build is ever repeated, within a run or, through the journal,
across runs), and counts builds. Nothing here knows which engine builds the plans.

The strategies:

- ``ranked`` (ours): rank the candidates by how suspicious one compare run makes them (local
  error, introduced defects, constants beyond FP16's range, FP16-fragile ops); bisect for the
  shortest ranked prefix that passes; isolate the nodes of that prefix that matter by splitting
  it recursively (QuickXplain: about 2k builds when most of a short prefix is needed); then
  prove the set 1-minimal with delta debugging (every single node is put back into reduced
  precision and must fail). When the prefix holds most of the graph the ranking has misled: the
  needed nodes are then few among many, and one bisection each over the graph's topological
  order (regions ending at a needed node) finds them in about k*log2(n/k) builds.
- ``linear`` and ``bisect``: what Polygraphy's ``debug precision`` does, as baselines: keep the
  first K candidates in topological order, with K found by stepping one at a time or by binary
  search. Their sets are prefixes, not minimal sets.

Passing is assumed to be mostly monotone (keeping more nodes in FP32 does not break a passing
build); where it is not, the delta-debugging step still guarantees 1-minimality of the answer.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from trtdebug.core.analysis.metrics import CompareResult, Metrics, Verdict, share_text
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan

STRATEGIES = ("ranked", "linear", "bisect")
DEFAULT_STRATEGY = "ranked"

# Ops whose FP16 inputs or outputs commonly leave FP16's range or lose what matters: powers and
# exponentials overflow, reductions and normalizations sum many values, divisions and roots
# amplify small denominators.
FRAGILE_OPS = frozenset({
    "Pow", "Exp", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2",
    "ReduceLogSumExp", "LayerNormalization", "InstanceNormalization", "GroupNormalization", "Div",
    "Sqrt", "Reciprocal", "Log", "Erf",
})

# When the shortest passing ranked prefix holds more than this share of the candidates, the
# ranking did not separate culprits from bystanders: isolate over graph regions instead.
REGION_THRESHOLD = 0.5

# The evaluation budget when none is given: this many times the documented bound
# (`target_builds`) for a set of DEFAULT_BUDGET_SHARE of the candidates (at least
# DEFAULT_BUDGET_MIN_KEPT nodes). A search within its bound never reaches it; one misled by
# a pass function far from monotone stops there with its best passing plan instead of running on.
BUDGET_HEADROOM = 2.0
DEFAULT_BUDGET_SHARE = 1 / 16
DEFAULT_BUDGET_MIN_KEPT = 16

# Sets of generated inputs every plan is judged on when no --inputs are given (workflows.input_sets):
# a plan is kept only when it passes on all of them.
DEFAULT_INPUT_SEEDS = 2

Kept = frozenset[str]
# Answers several kept sets at once: each one's verdict and the seconds its evaluation took.
BatchCheck = Callable[[Sequence[Kept]], list[tuple[Verdict, float]]]


@dataclass(frozen=True)
class Evaluation:
    """One build of one kept set, and whether its outputs passed."""

    kept: Kept
    passed: bool
    reason: str = ""
    build_failed: bool = False
    phase: str = ""
    seconds: float = 0.0
    replayed: bool = False  # read back from a journal, not built in this run
    verdict: Verdict | None = field(default=None, compare=False, repr=False)


class Evaluator:
    """Memoized pass/fail of kept sets; every new evaluation is handed to the listeners (the
    journal, progress output) before the search sees its result.

    `check_many` answers several kept sets at once (worker processes, a Ray cluster) and returns,
    for each, its verdict and the seconds its evaluation took; with `jobs` above 1, `run_strategy`
    asks it for up to `jobs` kept sets per round (see `speculate`). `rounds` counts the batches
    that built something: the sequential rounds a search took."""

    def __init__(self, check: Callable[[Kept], Verdict], known: Iterable[Evaluation] = (),
                 listeners: Sequence[Callable[[Evaluation], None]] = (),
                 check_many: BatchCheck | None = None, jobs: int = 1, max_evaluations: int | None = None):
        self._check = check
        self.max_evaluations = max_evaluations  # distinct kept sets, replayed ones included; None: no limit
        self._check_many = check_many
        self.jobs = max(1, int(jobs))
        self._memo: dict[Kept, Evaluation] = {}
        for evaluation in known:
            self._memo.setdefault(evaluation.kept, evaluation)
        self.replayed = len(self._memo)
        self.builds = 0  # evaluations built in this run
        self.rounds = 0  # batches of evaluations built in this run, one after the other
        self.phase = ""
        self.listeners = list(listeners)

    def evaluate(self, kept: Iterable[str]) -> Evaluation:
        key = frozenset(kept)
        known = self._memo.get(key)
        if known is not None:
            return known
        return self.evaluate_many([(key, self.phase)])[0]

    def evaluate_many(self, questions: Sequence[tuple[Kept, str]]) -> list[Evaluation]:
        """Evaluate (kept set, phase) pairs in one round; listeners hear of them in this order."""
        todo: dict[Kept, str] = {}
        for key, phase in questions:
            if key not in self._memo:
                todo.setdefault(key, phase)
        if todo:
            keys = list(todo)
            if self.max_evaluations is not None:
                keys = keys[:max(0, self.max_evaluations - len(self._memo))]
                if not keys:
                    raise BudgetExhausted(self.max_evaluations)
            self.rounds += 1
            answers = self._check_many(keys) if self._check_many is not None else [_timed_check(self._check, k)
                                                                                   for k in keys]
            for key, (verdict, seconds) in zip(keys, answers, strict=True):
                evaluation = Evaluation(key, verdict.passed, verdict.reason, verdict.build_failed,
                                        todo[key], seconds, verdict=verdict)
                self._memo[key] = evaluation
                self.builds += 1
                for listener in self.listeners:
                    listener(evaluation)
        if any(key not in self._memo for key, _ in questions):  # the budget cut this round short
            assert self.max_evaluations is not None
            raise BudgetExhausted(self.max_evaluations)
        return [self._memo[key] for key, _ in questions]

    def smallest_passing(self) -> Evaluation | None:
        """The passing kept set with the fewest nodes evaluated so far (the first such, by journal
        order), or None: what a search cut off by its budget has to offer."""
        passing = [e for e in self._memo.values() if e.passed]
        return min(passing, key=lambda e: len(e.kept)) if passing else None

    def passes(self, kept: Iterable[str]) -> bool:
        return self.evaluate(kept).passed

    def known(self, kept: Iterable[str]) -> Evaluation | None:
        return self._memo.get(frozenset(kept))

    @property
    def evaluations(self) -> int:
        """Distinct kept sets evaluated, in this run and in the runs it resumes."""
        return len(self._memo)

    def pass_probability(self, kept: Kept, phase: str, assumed: Mapping[Kept, bool]) -> float:
        """How likely `kept` is to pass, for choosing what to evaluate ahead: a known (or assumed)
        passing subset or failing superset says so if passing is monotone; otherwise the share of
        passes among this phase's evaluations so far."""
        answers = [(e.kept, e.passed) for e in self._memo.values()] + list(assumed.items())
        passing = [other for other, passed in answers if passed]
        if passing:  # every needed node lies in each passing set, so in their intersection
            needed_within = frozenset.intersection(*passing)
            if needed_within <= kept:
                return MONOTONE_CONFIDENCE
            if any(not passed and kept & needed_within <= other for other, passed in answers):
                return 1.0 - MONOTONE_CONFIDENCE
        elif any(not passed and kept <= other for other, passed in answers):
            return 1.0 - MONOTONE_CONFIDENCE
        in_phase = [e.passed for e in self._memo.values() if e.phase == phase]
        return (sum(in_phase) + 1) / (len(in_phase) + 2)


def _timed_check(check: Callable[[Kept], Verdict], kept: Kept) -> tuple[Verdict, float]:
    started = time.perf_counter()
    verdict = check(kept)
    return verdict, time.perf_counter() - started


# -- parallel rounds --------------------------------------------------------------------------------
#
# The strategies ask one question at a time. With several workers, `speculate` runs a strategy
# unchanged over the answers known so far; where it reaches a question nobody has answered, it
# looks ahead: it replays the strategy under assumed answers (pass, then fail) to find the
# questions it would ask next, and evaluates the most likely ones together, as one round. The
# search is then replayed over the real answers, so it returns exactly what the sequential search
# returns; speculative evaluations on branches not taken cost builds but never change the answer.

MONOTONE_CONFIDENCE = 0.95
# A look-ahead question is evaluated only if the search reaches it with at least this probability.
MIN_SPECULATION = 0.45


class BudgetExhausted(Exception):
    """The search asked for more evaluations than its budget allows."""

    def __init__(self, max_evaluations: int):
        super().__init__(f"the evaluation budget ({max_evaluations}) is spent")
        self.max_evaluations = max_evaluations


class _Unanswered(Exception):
    def __init__(self, kept: Kept, phase: str):
        super().__init__(f"{len(kept)} nodes kept")
        self.kept, self.phase = kept, phase


class _Replay(Evaluator):
    """An Evaluator over known and assumed answers that stops at the first unanswered question."""

    def __init__(self, real: Evaluator, assumed: Mapping[Kept, bool]):
        self._memo = real._memo
        self._assumed = assumed
        self._check = real._check
        self._check_many = None
        self.jobs = 1
        self.max_evaluations = None
        self.replayed = real.replayed
        self.builds = real.builds
        self.rounds = real.rounds
        self.phase = ""
        self.listeners = []

    def evaluate(self, kept: Iterable[str]) -> Evaluation:
        key = frozenset(kept)
        known = self._memo.get(key)
        if known is not None:
            return known
        if key in self._assumed:
            return Evaluation(key, self._assumed[key], phase=self.phase)
        raise _Unanswered(key, self.phase)


def speculate(search: Callable[[Evaluator], SearchResult], ev: Evaluator,
              min_probability: float | None = None) -> SearchResult:
    """Run `search` with up to `ev.jobs` evaluations per round; the same result as `search(ev)`."""
    if min_probability is None:
        min_probability = MIN_SPECULATION
    if ev.jobs <= 1:
        return search(ev)
    while True:
        try:
            return search(_Replay(ev, {}))
        except _Unanswered as first:
            ev.evaluate_many(_lookahead(search, ev, first, min_probability))


def _lookahead(search: Callable[[Evaluator], SearchResult], ev: Evaluator, first: _Unanswered,
               min_probability: float) -> list[tuple[Kept, str]]:
    """The next question and the likeliest questions after it, best first, `ev.jobs` at most."""
    chosen: dict[Kept, str] = {first.kept: first.phase}
    frontier: list[tuple[float, int, dict[Kept, bool]]] = []
    order = itertools.count()

    def branch(assumed: dict[Kept, bool], question: _Unanswered, reach: float) -> None:
        p = ev.pass_probability(question.kept, question.phase, assumed)
        for answer, likelihood in ((True, p), (False, 1.0 - p)):
            if reach * likelihood >= min_probability:
                heapq.heappush(frontier, (-reach * likelihood, next(order), {**assumed, question.kept: answer}))

    branch({}, first, 1.0)
    replays = 0
    while frontier and len(chosen) < ev.jobs and replays < 8 * ev.jobs:
        negative_reach, _, assumed = heapq.heappop(frontier)
        replays += 1
        try:
            search(_Replay(ev, assumed))
            continue  # the search ends on this branch
        except _Unanswered as question:
            chosen.setdefault(question.kept, question.phase)
            branch(assumed, question, -negative_reach)
    return list(chosen.items())


def plan_keeping(base: PrecisionPlan, kept: Iterable[str], keep_precision: str) -> PrecisionPlan:
    return base.with_precision(sorted(kept), keep_precision)


def kept_set_check(evaluate: Callable[[PrecisionPlan], Verdict], base: PrecisionPlan,
                   keep_precision: str) -> Callable[[Kept], Verdict]:
    """Adapt an `evaluate(plan)` callable to the kept-set question the strategies ask."""
    return lambda kept: evaluate(plan_keeping(base, kept, keep_precision))


@dataclass(frozen=True)
class SearchResult:
    strategy: str
    kept: tuple[str, ...] | None  # None: not even keeping every candidate passes
    candidates: int
    evaluations: int  # distinct kept sets evaluated, including those replayed from a journal
    builds: int  # evaluations built in this run
    prefix: int | None = None  # length of the shortest passing prefix (ranked, bisect, linear)
    used_regions: bool = False
    one_minimal: bool = False  # every kept node was shown to be needed
    message: str = ""
    budget_exhausted: bool = False  # stopped at the evaluation budget: `kept` passes but may not be minimal


def _result(strategy: str, kept: Sequence[str] | None, candidates: Sequence[str], ev: Evaluator,
            **extra: object) -> SearchResult:
    order = {name: i for i, name in enumerate(candidates)}
    ordered = None if kept is None else tuple(sorted(kept, key=lambda n: order.get(n, len(order))))
    return SearchResult(strategy, ordered, len(candidates), ev.evaluations, ev.builds, **extra)  # type: ignore[arg-type]


# -- building blocks --------------------------------------------------------------------------------

def shortest_passing_prefix(order: Sequence[str], ev: Evaluator, failing: int = 0, passing: int | None = None,
                            background: Sequence[str] = ()) -> int:
    """Binary search for the shortest prefix of `order` that passes (kept together with
    `background`), given that the prefix of length `failing` fails (-1: nothing known) and the
    one of length `passing` (default: all of it) passes."""
    low, high = failing, len(order) if passing is None else passing
    while high - low > 1:
        middle = (low + high) // 2
        if ev.passes([*background, *order[:middle]]):
            high = middle
        else:
            low = middle
    return high


def bisect_regions(candidates: Sequence[str], ev: Evaluator, known_needed: Sequence[str] = ()) -> list[str]:
    """The needed nodes of a passing set, one binary search each over the graph order: the
    shortest passing prefix ends in a needed node, and everything after it can go back to
    reduced precision. Costs about k*log2(n/k) + 2k builds for k needed nodes spread over n,
    fewer than `isolate` when they are few and far apart (a ranking that misled).

    Right after a needed node is found, the node just before it is tried first: an overflow
    between a producer and its consumer needs both, and in graph order they are neighbours."""
    needed = list(known_needed)
    remaining = list(candidates)
    found: list[str] = []
    neighbour_first = bool(needed)
    while remaining:
        passing = None
        if neighbour_first and len(remaining) > 1:
            if not ev.passes([*needed, *remaining[:-1]]):
                found.append(remaining[-1])
                needed.append(remaining.pop())
                continue
            passing = len(remaining) - 1
        length = shortest_passing_prefix(remaining, ev, failing=-1, passing=passing, background=needed)
        if length == 0:  # the nodes found so far suffice
            break
        found.append(remaining[length - 1])
        needed.append(remaining[length - 1])
        remaining = remaining[:length - 1]
        neighbour_first = True
    return found[::-1]


def isolate(candidates: Sequence[str], ev: Evaluator, known_needed: Iterable[str] = ()) -> list[str]:
    """The nodes of a passing set that are needed, found by recursive halving (Junker's
    QuickXplain): a half is dropped with one build when the rest passes without it. Returns a
    minimal set if passing is monotone; costs about k*log2(n/k) + 2k builds for k needed nodes.
    `known_needed` nodes (not among the candidates) are kept throughout and not returned."""

    def needed(background: frozenset[str], background_changed: bool, items: Sequence[str]) -> list[str]:
        if background_changed and ev.passes(background):
            return []
        if len(items) == 1:
            return list(items)
        half = len(items) // 2
        first, second = items[:half], items[half:]
        from_second = needed(background | set(first), True, second)
        from_first = needed(background | set(from_second), bool(from_second), first)
        return from_first + from_second

    return needed(frozenset(known_needed), False, list(candidates)) if candidates else []


def ddmin(items: Sequence[str], ev: Evaluator, granularity: int = 2, subsets: bool = True) -> list[str]:
    """Zeller's delta debugging: shrink a passing set until no chunk (and finally no single
    node) can be removed without failing. The result is 1-minimal whatever the pass function.
    `subsets=False` skips the "does this chunk alone pass" tests, for sets already isolated;
    starting at `granularity=len(items)` then just proves (or restores) 1-minimality."""
    current = list(items)
    n = max(2, min(granularity, len(current)))
    start = 0  # the chunk to try removing first: where the last removal happened
    while len(current) >= 2:
        chunks = _split(current, n)
        reduced = False
        if subsets and n > 2:  # with two chunks, each subset is the other's complement
            for chunk in chunks:
                if ev.passes(chunk):
                    current, n, reduced, start = chunk, 2, True, 0
                    break
        if not reduced:
            # Go on from the last removal rather than from the first chunk: the chunks before it
            # were tried a moment ago, and trying them again after every removal costs k builds
            # per removal at single-node granularity. They are tried again (wrapping around) before
            # the set is declared minimal, so the result is 1-minimal whatever the pass function.
            for step in range(len(chunks)):
                i = (start + step) % len(chunks)
                complement = [x for j, chunk in enumerate(chunks) if j != i for x in chunk]
                if ev.passes(complement):
                    single = n >= len(current)
                    current, reduced = complement, True
                    n = len(current) if single else max(n - 1, 2)
                    start = i % max(1, min(n, len(current)))
                    break
        if not reduced:
            if n >= len(current):
                break
            n, start = min(2 * n, len(current)), 0
    return current


def _split(items: Sequence[str], n: int) -> list[list[str]]:
    size, extra = divmod(len(items), n)
    chunks, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        chunks.append(list(items[start:end]))
        start = end
    return [c for c in chunks if c]


# -- strategies -------------------------------------------------------------------------------------

def ranked_search(ranking: Sequence[str], topological: Sequence[str], ev: Evaluator,
                  region_threshold: float = REGION_THRESHOLD) -> SearchResult:
    """Ranked prefix, isolation, 1-minimality (see the module docstring)."""
    ranking = list(ranking)
    ev.phase = "bounds"
    if ev.passes(()):
        return _result("ranked", (), topological, ev, prefix=0, one_minimal=True,
                       message="the build passes with no node in higher precision")
    ev.phase = "prefix"
    # Taken to pass until the bisection says otherwise; built only if every shorter prefix fails.
    prefix = shortest_passing_prefix(ranking, ev)
    if prefix == len(ranking) and not ev.passes(ranking):
        return _result("ranked", None, topological, ev, message=_nothing_passes(ev, ranking))
    # The prefix one shorter fails, so its last node is needed (if passing is monotone).
    anchor, candidates = ranking[prefix - 1], ranking[:prefix - 1]
    used_regions = prefix > region_threshold * len(ranking) and prefix > 2
    if used_regions:
        position = {name: i for i, name in enumerate(topological)}
        candidates.sort(key=lambda n: position[n])
    if used_regions:
        ev.phase = "regions"
        found = [anchor, *bisect_regions(candidates, ev, known_needed=[anchor])]
    else:
        ev.phase = "isolate"
        found = [anchor, *isolate(candidates, ev, known_needed=[anchor])]
    if not ev.passes(found):  # passing is not monotone here: shrink the whole prefix instead
        found = ranking[:prefix]
    ev.phase = "minimize"
    found = ddmin(found, ev, granularity=len(found), subsets=False)
    return _result("ranked", found, topological, ev, prefix=prefix, used_regions=used_regions,
                   one_minimal=True)


def linear_search(topological: Sequence[str], ev: Evaluator) -> SearchResult:
    """Polygraphy's `debug precision --mode linear`: the first K nodes, K = 0, 1, 2, ..."""
    ev.phase = "linear"
    for k in range(len(topological) + 1):
        if ev.passes(topological[:k]):
            return _result("linear", topological[:k], topological, ev, prefix=k)
    return _result("linear", None, topological, ev, message=_nothing_passes(ev, topological))


def bisect_search(topological: Sequence[str], ev: Evaluator) -> SearchResult:
    """Polygraphy's `debug precision --mode bisect`: every node first, then a binary search for
    the shortest passing prefix, taking the empty prefix as failing without building it."""
    ev.phase = "bisect"
    if not ev.passes(topological):
        return _result("bisect", None, topological, ev, message=_nothing_passes(ev, topological))
    prefix = shortest_passing_prefix(topological, ev)
    return _result("bisect", topological[:prefix], topological, ev, prefix=prefix)


def run_strategy(strategy: str, ranking: Sequence[str], topological: Sequence[str],
                 ev: Evaluator) -> SearchResult:
    """Run a strategy; with `ev.jobs` above 1, several evaluations per round (same result).

    A search that reaches `ev.max_evaluations` stops there: its result is the smallest passing
    kept set evaluated so far (None if none passed), marked `budget_exhausted`, not 1-minimal."""
    searches: dict[str, Callable[[Evaluator], SearchResult]] = {
        "ranked": lambda e: ranked_search(ranking, topological, e),
        "linear": lambda e: linear_search(topological, e),
        "bisect": lambda e: bisect_search(topological, e),
    }
    if strategy not in searches:
        raise ValueError(f"unknown strategy {strategy!r}")
    try:
        return speculate(searches[strategy], ev)
    except BudgetExhausted as stop:
        best = ev.smallest_passing()
        if best is None:
            return _result(strategy, None, topological, ev, budget_exhausted=True,
                           message=f"no kept set passed within the budget of {stop.max_evaluations} evaluations")
        return _result(strategy, sorted(best.kept), topological, ev, budget_exhausted=True,
                       message=f"stopped at the budget of {stop.max_evaluations} evaluations: the plan passes "
                               "but is not shown to be minimal")


def _nothing_passes(ev: Evaluator, everything: Sequence[str]) -> str:
    known = ev.known(everything)
    reason = f" ({known.reason})" if known and known.reason else ""
    return f"even with all {len(everything)} candidate nodes in higher precision the outputs fail{reason}"


def target_builds(n: int, k: int) -> float:
    """The documented bound (docs/fallback.md) on evaluations for a 1-minimal set of k of N
    candidates: 2*log2(N) + k*log2(N)."""
    return (2 + k) * math.log2(max(n, 2))


def default_max_evaluations(n: int) -> int:
    """The evaluation budget a search over n candidates gets unless told otherwise (see BUDGET_HEADROOM)."""
    kept = max(DEFAULT_BUDGET_MIN_KEPT, math.ceil(n * DEFAULT_BUDGET_SHARE))
    return math.ceil(BUDGET_HEADROOM * target_builds(n, kept))


# -- ranking ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Suspicion:
    node: str
    tier: int  # 4 non-finite local error, 3 wrong on its own / bad constant, 2 fragile op, 1 feeds one
    severity: tuple[float, float]  # share of elements out of tolerance, noise-to-signal ratio
    reasons: tuple[str, ...]


def rank_nodes(model: Model, candidates: Sequence[str], compare: CompareResult | None = None) -> list[Suspicion]:
    """Candidates ordered from most to least likely to need higher precision."""
    position = {name: i for i, name in enumerate(candidates)}
    tier: dict[str, int] = dict.fromkeys(candidates, 0)
    severity: dict[str, tuple[float, float]] = dict.fromkeys(candidates, (0.0, 0.0))
    reasons: dict[str, list[str]] = {name: [] for name in candidates}

    def raise_to(node: str, level: int, reason: str) -> None:
        if node in tier:
            tier[node] = max(tier[node], level)
            if reason not in reasons[node]:
                reasons[node].append(reason)

    for node in candidates:
        op = model.node_by_name[node].op_type
        if op in FRAGILE_OPS:
            raise_to(node, 2, f"FP16-fragile op {op}")
            for tensor in model.node_by_name[node].input:
                if tensor in model.producer:
                    raise_to(model.producer[tensor], 1, f"feeds FP16-fragile {op}")
    for violation in model.fp16_range_violations():
        if not violation.folded_by_builder:
            for consumer in violation.consumers:
                raise_to(consumer, 3, f"reads {violation.tensor} (|x| up to {violation.max_abs:.3g}, "
                                      "beyond FP16)")
    if compare is not None:
        for report in compare.tensors:
            if report.node not in tier:
                continue
            metrics = report.local if report.local is not None else (
                report.accumulated if report.status == "introduced" else None)
            if metrics is None or not metrics.bad:
                if report.local is not None:  # ordinary noise still orders the bystanders
                    severity[report.node] = max(severity[report.node], _severity(report.local))
                continue
            kinds = ", ".join(d.kind for d in report.defects) or "error"
            where = "own" if report.local is not None else "introduced"
            level = 4 if metrics.new_nonfinite else 3
            raise_to(report.node, level, f"{where} {kinds}: {share_text(metrics.frac_outside)} of {report.tensor} "
                                         "out of tolerance")
            severity[report.node] = max(severity[report.node], _severity(metrics))
        for culprit in compare.culprits:  # what compare's headline names is tried first
            explained = "" if culprit.explained is None else f", explains {culprit.explained:.0%} of the output error"
            raise_to(culprit.node, 5, f"compare's culprit ({culprit.tensor}{explained})")
    ordered = sorted(candidates, key=lambda n: (-tier[n], -severity[n][0], -severity[n][1], position[n]))
    return [Suspicion(n, tier[n], severity[n], tuple(reasons[n])) for n in ordered]


def _severity(metrics: Metrics) -> tuple[float, float]:
    if metrics.new_nonfinite or math.isinf(metrics.snr_db) and metrics.snr_db < 0:
        noise = math.inf
    elif math.isinf(metrics.snr_db):
        noise = 0.0
    else:
        noise = 10 ** (-metrics.snr_db / 10)
    return metrics.frac_outside, noise
