"""The `fallback` workflow: rank, search, journal, and write the plan, its artefacts and a report.

`run_fallback` ties the engine-agnostic search (core.search) to a Case: it judges each candidate
plan through the one evaluation path (workflows.evaluate: tolerance or a `--check` command),
replays and extends the journal, and on success writes the precision plan, a final compare report
and the rebuilt artefacts (workflows.build). It returns a FallbackOutcome; the CLI renders it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from trtdebug import __version__
from trtdebug.artifacts.compare_report import write_compare_report
from trtdebug.core.analysis.metrics import CompareResult
from trtdebug.core.model.feeds import feeds_sha256
from trtdebug.core.plans.ban_list import BanList
from trtdebug.core.plans.cost import CostModel, shapes_of
from trtdebug.core.plans.precision_plan import PrecisionPlan, eligible_nodes
from trtdebug.core.quantized.format import format_for, format_of
from trtdebug.core.search.journal import Journal, JournalLock, journal_path, lock_path
from trtdebug.core.search.strategies import (
    STRATEGIES,
    Evaluation,
    Evaluator,
    SearchResult,
    kept_set_check,
    plan_keeping,
    rank_nodes,
    run_strategy,
)
from trtdebug.core.search.user_check import CheckCommand
from trtdebug.engines.base import BuildError, Engine, Marking
from trtdebug.errors import UserError
from trtdebug.workflows.build import write_plan_artifacts
from trtdebug.workflows.compare import run_compare
from trtdebug.workflows.evaluate import evaluate_plan
from trtdebug.workflows.parallel import Judge
from trtdebug.workflows.problem import Case, Problem
from trtdebug.workflows.progress import SILENT, Progress

# What a node falls back to: FP32 from FP16/BF16 builds, FP16 from INT8 builds.
FALLBACK_PRECISION = {"fp16": "fp32", "bf16": "fp32", "fp8": "fp16", "int8": "fp16", "int4": "fp16"}


@dataclass
class FallbackOutcome:
    search: SearchResult
    candidates: list[str]
    keep_precision: str
    builds: int  # engine builds the search took, over every run of this journal
    builds_this_run: int
    journal: Path
    rounds_this_run: int
    resumed: bool
    plan: PrecisionPlan | None = None
    plan_path: Path | None = None
    compare: CompareResult | None = None
    compare_path: Path | None = None
    artifacts: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reasons: Mapping[str, Any] = field(default_factory=dict)  # why each node was suspected
    op_types: Mapping[str, str] = field(default_factory=dict)
    flops_share: float = 0.0
    params_share: float = 0.0
    ranking_compare: CompareResult | None = None  # the base plan's compare that ranked suspects (this run)
    history: list[Evaluation] = field(default_factory=list)  # every evaluation, journal order

    @property
    def found(self) -> bool:
        return self.search.kept is not None


def output_paths(plan_path: Path) -> dict[str, Path]:
    """Everything a fallback run writes, named after the plan: plan.json -> plan.journal.jsonl,
    plan.compare.json, plan.mixed.onnx, plan.engine."""
    stem = plan_path.with_name(plan_path.stem)
    return {"journal": journal_path(plan_path), "compare": Path(f"{stem}.compare.json"),
            "onnx": Path(f"{stem}.mixed.onnx"), "engine": Path(f"{stem}.engine")}


def fallback_outputs(plan_path: Path) -> dict[str, Path]:
    """Every file a fallback run may write, labelled for messages."""
    paths = output_paths(plan_path)
    return {"--out plan": plan_path, "journal": paths["journal"], "compare report": paths["compare"],
            "mixed-precision ONNX": paths["onnx"], "its external data": Path(f"{paths['onnx']}.data"),
            "engine file": paths["engine"], "journal lock": lock_path(paths["journal"])}


def run_fallback(case: Case, out: str | Path, strategy: str = "ranked", resume: bool = False,
                 check: CheckCommand | None = None, progress: Progress = SILENT,
                 judge: Judge | None = None) -> FallbackOutcome:
    """The search; one run at a time per --out (a second one is refused naming the first's pid).
    `judge` (workflows.parallel) evaluates each search round's candidates at once, in worker
    processes or on Ray; the plan is the one the sequential search finds."""
    with JournalLock(output_paths(Path(out))["journal"]):
        return _run_fallback(case, out, strategy, resume, check, progress, judge)


def _run_fallback(case: Case, out: str | Path, strategy: str, resume: bool, check: CheckCommand | None,
                  progress: Progress, judge: Judge | None) -> FallbackOutcome:
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    problem, engine, base, bans = case.problem, case.engine, case.plan, case.bans
    model = problem.model
    if not engine.capabilities.rebuilds:
        raise UserError("--engine results replays saved outputs, which no precision plan changes; run "
                        "fallback with an engine that builds: --engine emulator, tensorrt or tensorrt-rtx")
    if base.default not in FALLBACK_PRECISION:
        raise UserError(f"a --precision {base.default} build has nothing to fall back from; "
                        "use --precision fp16, bf16, fp8, int8 or int4")
    keep = FALLBACK_PRECISION[base.default]
    quantized = format_for(model, base)
    if quantized is not None:  # Q/DQ pairs to remove, or (implicit INT8) layers to take out of INT8
        candidates = quantized.fallback_candidates(base)
    else:
        candidates = [n for n in eligible_nodes(model) if base.precision_of(n) == base.default]
    if check is not None:
        check.require_reference_passes(problem.reference_outputs())
    plan_path = Path(out)
    settings = journal_settings(problem, engine, base, bans, keep, check)
    earlier_journal = output_paths(plan_path)["journal"].is_file()
    with Journal(output_paths(plan_path)["journal"], settings, resume) as journal:
        counter = itertools.count(len(journal.evaluations))
        listeners: list[Callable[[Evaluation], None]] = [lambda e: journal.record_evaluation(e, next(counter)),
                                                         lambda e: progress.advance(describe_evaluation(e))]
        known = list(journal.evaluations)
        history = list(known)
        listeners.append(history.append)
        ranking: list[str] = candidates
        reasons: dict[str, Any] = {}
        ranking_builds = ranked_now = 0
        ranking_compare: CompareResult | None = None
        try:
            if strategy == "ranked":
                progress.begin("ranking suspects (one compare run)")
                ranking, reasons, ranking_builds, ranked_now, ranking_compare = _ranking(
                    journal, problem, engine, base, bans, candidates, check, known, listeners, progress)
                progress.end()
            evaluate = lambda plan: evaluate_plan(problem, engine, plan, bans, check)  # noqa: E731
            check_many = None if judge is None else (
                lambda sets: judge.judge([plan_keeping(base, kept, keep) for kept in sets]))
            evaluator = Evaluator(kept_set_check(evaluate, base, keep), known, listeners, check_many,
                                  judge.jobs if judge is not None else 1)
            jobs = f", {judge.jobs} at a time" if judge is not None else ""
            progress.begin(f"{strategy} search over {len(candidates)} candidate nodes{jobs}")
            result = run_strategy(strategy, ranking, candidates, evaluator)
            progress.end()
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"interrupted; the journal {journal.path} keeps every finished build: "
                                    "rerun with --resume to continue") from None
    outcome = FallbackOutcome(
        search=result, candidates=candidates, keep_precision=keep,
        builds=ranking_builds + evaluator.evaluations, builds_this_run=evaluator.builds + ranked_now,
        journal=journal.path, rounds_this_run=evaluator.rounds + ranked_now, resumed=journal.resumed,
        reasons=reasons, op_types={n.name: n.op_type for n in model.nodes}, ranking_compare=ranking_compare,
        history=history)
    if quantized is not None:
        outcome.op_types = {**outcome.op_types, **quantized.candidate_kinds()}
    if resume and not journal.resumed:
        outcome.notes.append(f"nothing to resume in {journal.path}; this was a new search")
    elif earlier_journal and not resume:
        outcome.notes.append(f"replaced the journal of an earlier search at {journal.path} (--resume continues one)")
    if result.kept is not None:
        progress.begin("writing the plan, a compare report and the artefacts")
        _write_outputs(outcome, case, plan_path, strategy, check, progress)
        progress.end()
    return outcome


def describe_evaluation(evaluation: Evaluation) -> str:
    verdict = "pass" if evaluation.passed else ("build failed" if evaluation.build_failed else "fail")
    return f"{evaluation.phase:<8} keep {len(evaluation.kept):>4} -> {verdict} ({evaluation.seconds:.2f}s)"


def journal_settings(problem: Problem, engine: Engine, base: PrecisionPlan, bans: BanList | None,
                     keep: str, check: CheckCommand | None) -> dict[str, Any]:
    """What every evaluation depends on; a resume must match all of it."""
    tolerance = problem.tolerance
    criterion: dict[str, Any] = {"check": check.template} if check else {
        "atol": tolerance.atol, "rtol": tolerance.rtol,
        "per_output": {k: list(v) for k, v in sorted(tolerance.per_output.items())}}
    settings = {"model_sha256": problem.model.sha256, "precision": base.default, "keep_precision": keep,
                "criterion": criterion, "engine": engine.name, "inputs_sha256": feeds_sha256(problem.feeds),
                "bans_sha256": _json_sha256(bans.to_json()) if bans else None,
                "base_plan": dict(sorted(base.nodes.items()))}
    quant_format = format_of(problem.model)
    if quant_format is not None:  # an implicit INT8 model's scales come from calibration
        settings["quantization"] = quant_format.identity()
    return settings


def _json_sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _ranking(journal: Journal, problem: Problem, engine: Engine, base: PrecisionPlan, bans: BanList | None,
             candidates: list[str], check: CheckCommand | None, known: list[Evaluation],
             listeners: list[Callable[[Evaluation], None]], progress: Progress = SILENT
             ) -> tuple[list[str], dict[str, Any], int, int, CompareResult | None]:
    """The suspicion ranking, from the journal or from one compare run (journaled at once).

    Returns (order, reasons, builds the ranking costs beyond the evaluations it recorded, builds
    made now, the compare run when one was made now)."""
    if journal.ranking is not None and sorted(journal.ranking["order"]) == sorted(candidates):
        return (list(journal.ranking["order"]), dict(journal.ranking.get("reasons", {})),
                int(journal.ranking.get("builds", 1)), 0, None)
    started = time.perf_counter()
    try:
        # every layer's local error: the ranking orders bystanders by it
        compare: CompareResult | None = run_compare(problem, engine, base, bans, Marking(), progress,
                                                    local_scope="all")
    except BuildError:
        compare = None  # rank by static signals only
    model = problem.model
    quantized = format_for(model, base)
    suspicions = quantized.rank(candidates, compare) if quantized else rank_nodes(model, candidates, compare)
    order = [s.node for s in suspicions]
    reasons = {s.node: list(s.reasons) for s in suspicions if s.reasons}
    # An exact-marking engine's compare run is the unmarked build of the empty kept set: its
    # verdict is that evaluation, so the search does not build it again.
    empty_set: Evaluation | None = None
    if compare is not None and check is None and engine.capabilities.exact_marking:
        empty_set = Evaluation(frozenset(), compare.passed, compare.verdict, False,
                               "rank", time.perf_counter() - started)
    builds = 0 if empty_set is not None else (1 if compare is not None else 0)
    journal.record_ranking(order, builds, empty_set is not None, reasons)
    if empty_set is not None:
        known.append(empty_set)
        for listener in listeners:
            listener(empty_set)
    return order, reasons, builds, 1 if compare is not None else 0, compare


def _write_outputs(outcome: FallbackOutcome, case: Case, plan_path: Path, strategy: str,
                   check: CheckCommand | None, progress: Progress = SILENT) -> None:
    problem, engine, bans = case.problem, case.engine, case.bans
    model = problem.model
    result = outcome.search
    assert result.kept is not None
    criterion = {"check": check.template} if check else journal_settings(
        problem, engine, case.plan, bans, outcome.keep_precision, None)["criterion"]
    provenance = {
        "tool": f"trtdebug {__version__} fallback", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "strategy": strategy, "engine": engine.name, "keep_precision": outcome.keep_precision,
        "candidates": len(outcome.candidates), "builds": outcome.builds, "evaluations": result.evaluations,
        "builds_this_run": outcome.builds_this_run, "resumed": outcome.resumed,
        "one_minimal": result.one_minimal, "prefix": result.prefix, "used_regions": result.used_regions,
        "criterion": criterion, "journal": outcome.journal.name, "kept": list(result.kept),
    }
    quantized = format_for(model, case.plan)
    if quantized is not None:
        provenance[quantized.precision] = quantized.provenance(result.kept)
    plan = plan_keeping(case.plan, result.kept, outcome.keep_precision)
    plan = PrecisionPlan(plan.default, plan.nodes, model.sha256, provenance)
    plan.save(plan_path)
    outcome.plan, outcome.plan_path = plan, plan_path
    paths = output_paths(plan_path)
    outcome.compare = run_compare(problem, engine, plan, bans, Marking(), progress, local_scope="all")
    outcome.compare_path = write_compare_report(outcome.compare, paths["compare"])
    outcome.artifacts, notes = write_plan_artifacts(engine, model, plan, bans, paths["onnx"], paths["engine"])
    outcome.notes.extend(notes)
    costs = CostModel(model, shapes_of(problem.reference))
    quant_format = format_of(model)
    kept_layers = quant_format.layers_of(result.kept) if quant_format else result.kept
    outcome.flops_share, outcome.params_share = costs.shares(kept_layers)
