"""Builds the FP32 fallback search needs, against Polygraphy-style baselines (run by hand, not in CI).

Generated chains (fixtures.chain_models) of N computing nodes with k planted culprit nodes, some
of them adjacent pairs whose junction overflows, are real ONNX models evaluated through the
emulator (onnxruntime). For each (N, k) it prints builds used and FP32-set size for:

- ranked: `trtdebug fallback` as shipped (one compare run ranks the nodes);
- static: the same search ranked without a compare run (constants and fragile ops only), as for
  an engine that cannot show per-layer error; the ranking then misleads and the search bisects
  graph regions;
- bisect / linear: Polygraphy's `debug precision --mode bisect|linear` (first K nodes).

and the target 2*log2(N) + k*log2(N). Linear needs K+1 builds; above --linear-limit nodes it is
not run but derived from bisect's K (exact here, since prefix passing is monotone), marked "*".

A second table gives the ranked search with --jobs 1, 2, 4, 8: builds and sequential rounds (one
round: a batch of candidates built at once; on TensorRT a round costs about one build's minutes).
Every job count must find the same set. Target: with 4 jobs, rounds <= half the builds 1 job
needs, and builds <= 1.25x (totals over the table).

    python -m benchmarks.fallback_builds [--sizes 50 200 1000 2000] [--culprits 1 3 8] [--linear-limit 1000]
                                         [--jobs 1 2 4 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from fixtures.chain_models import planted_chain
from trtdebug.core.analysis.metrics import Verdict
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.search.strategies import (
    Evaluator,
    SearchResult,
    bisect_search,
    kept_set_check,
    linear_search,
    rank_nodes,
    ranked_search,
    target_builds,
)
from trtdebug.workflows.evaluate import evaluate_plan
from trtdebug.workflows.fallback import run_fallback
from trtdebug.workflows.problem import Case, ProblemSpec, prepare


def _evaluator(session: Case) -> Evaluator:
    return Evaluator(kept_set_check(lambda plan: evaluate_plan(session.problem, session.engine, plan, None),
                                    session.plan, "fp32"))


def _timed(run: Callable[[], SearchResult]) -> tuple[SearchResult, float]:
    started = time.perf_counter()
    result = run()
    return result, time.perf_counter() - started


def _cell(builds: int | str, kept: tuple[str, ...] | None, exact: bool | None = None) -> str:
    size = "none" if kept is None else str(len(kept))
    mark = "" if exact is None else (" ok" if exact else " WRONG")
    return f"{builds:>5} / {size:<5}{mark}"


class InProcessJudge:
    """Judges a round's candidates one after the other in this process: counts rounds as a
    `--jobs N` run would, without N engines' worth of cores."""

    def __init__(self, case: Case, jobs: int):
        self.case, self.jobs = case, jobs

    def judge(self, plans: Sequence[PrecisionPlan]) -> list[tuple[Verdict, float]]:
        results = []
        for plan in plans:
            started = time.perf_counter()
            verdict = evaluate_plan(self.case.problem, self.case.engine, plan, self.case.bans)
            results.append((verdict, time.perf_counter() - started))
        return results

    def close(self) -> None:
        pass


def parallel_rounds(n: int, k: int, folder: Path, seed: int, job_counts: Sequence[int],
                    totals: dict[int, list[int]]) -> str:
    planted = planted_chain(n, k, seed=seed)
    path = planted.save(folder / f"chain_{n}_{k}.onnx")
    cells, kept = [], set()
    for jobs in job_counts:
        spec = ProblemSpec(str(path))
        case = prepare(spec)
        outcome = run_fallback(spec, folder / f"jobs{jobs}_{n}_{k}.json", prepared=case,
                               judge=InProcessJudge(case, jobs))
        kept.add(outcome.search.kept)
        cells.append(f"{outcome.builds:>4} / {outcome.rounds_this_run:<4}")
        totals.setdefault(jobs, [0, 0])
        totals[jobs][0] += outcome.builds
        totals[jobs][1] += outcome.rounds_this_run
    same = "same" if len(kept) == 1 else "DIFFERENT"
    return f"{n:>5} {k:>2} | " + " | ".join(cells) + f" | {same}"


def benchmark(n: int, k: int, folder: Path, linear_limit: int, seed: int) -> str:
    planted = planted_chain(n, k, seed=seed)
    path = planted.save(folder / f"chain_{n}_{k}.onnx")
    culprits = set(planted.culprits)
    started = time.perf_counter()
    ranked = run_fallback(ProblemSpec(str(path)), folder / f"plan_{n}_{k}.json")
    ranked_seconds = time.perf_counter() - started

    session = prepare(ProblemSpec(str(path)))
    candidates = [node.name for node in session.problem.model.nodes]
    static_order = [s.node for s in rank_nodes(session.problem.model, candidates, None)]
    static, _ = _timed(lambda: ranked_search(static_order, candidates, _evaluator(session)))
    bisect, _ = _timed(lambda: bisect_search(candidates, _evaluator(session)))
    if n <= linear_limit:
        linear, linear_seconds = _timed(lambda: linear_search(candidates, _evaluator(session)))
        linear_cell = _cell(linear.builds, linear.kept)
    else:
        prefix = bisect.prefix or 0
        linear_cell = _cell(f"{prefix + 1}*", tuple(candidates[:prefix]))
        linear_seconds = 0.0
    pairs = sum(kind.endswith("pair") for kind in planted.kinds)
    return (f"{n:>5} {k:>2} {pairs:>5} {target_builds(n, k):>7.1f} | "
            f"{_cell(ranked.builds, ranked.search.kept, set(ranked.search.kept or ()) == culprits)} | "
            f"{_cell(static.builds, static.kept, set(static.kept or ()) == culprits)}"
            f"{' R' if static.used_regions else '  '} | "
            f"{_cell(bisect.builds, bisect.kept)} | {linear_cell} | {ranked_seconds:6.1f}s {linear_seconds:6.1f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000, 2000])
    parser.add_argument("--culprits", type=int, nargs="+", default=[1, 3, 8])
    parser.add_argument("--linear-limit", type=int, default=1000,
                        help="largest N for which the linear baseline is run rather than derived")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--skip-baselines", action="store_true", help="only the --jobs table")
    args = parser.parse_args()
    print("builds / FP32-set size; ok: the set is exactly the planted culprits; R: region bisection used;")
    print("*: linear derived from bisect's K (K+1 builds), not run. Times: ranked run, linear run.")
    print(f"{'N':>5} {'k':>2} {'pairs':>5} {'target':>7} | {'ranked':<16} | {'static ranking':<18} | "
          f"{'bisect':<13} | {'linear':<13} | time")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trtdebug-bench-") as folder:
        for n in [] if args.skip_baselines else args.sizes:
            for k in args.culprits:
                print(benchmark(n, k, Path(folder), args.linear_limit, args.seed + n + k), flush=True)
    print()
    print("ranked search, builds / sequential rounds, by --jobs (rounds: batches built one after the other)")
    print(f"{'N':>5} {'k':>2} | " + " | ".join(f"{f'jobs {j}':<11}" for j in args.jobs) + " | plans")
    totals: dict[int, list[int]] = {}
    with tempfile.TemporaryDirectory(prefix="trtdebug-bench-") as folder:
        for n in args.sizes:
            for k in args.culprits:
                print(parallel_rounds(n, k, Path(folder), args.seed + n + k, args.jobs, totals), flush=True)
    base = totals[args.jobs[0]][0]
    print("totals: " + ", ".join(f"jobs {j}: {b} builds ({b / base:.2f}x), {r} rounds ({r / base:.2f}x of "
                                 f"jobs {args.jobs[0]} builds)" for j, (b, r) in totals.items()))
    print(f"total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
