"""The `fallback` workflow: rank, search, journal, and write the plan, its artefacts and a report.

`run_fallback` ties the engine-agnostic search (core.search) to a Case: it judges each candidate
plan through the one evaluation path (workflows.evaluate: tolerance or a `--check` command),
replays and extends the journal, and on success writes the precision plan, a final compare report
and the rebuilt artefacts (workflows.build). It returns a FallbackOutcome; the CLI renders it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from trtdebug import __version__
from trtdebug.artifacts.compare_report import write_compare_report
from trtdebug.core.analysis.metrics import CompareResult
from trtdebug.core.plans.ban_list import BanList
from trtdebug.core.plans.cost import CostModel, shapes_of
from trtdebug.core.plans.precision_plan import PrecisionPlan, eligible_nodes
from trtdebug.core.quantized.format import format_for, format_of
from trtdebug.core.search.journal import Journal, JournalLock, JournalSettings, journal_path, lock_path
from trtdebug.core.search.strategies import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    Evaluation,
    Evaluator,
    SearchResult,
    default_max_evaluations,
    kept_set_check,
    plan_keeping,
    rank_nodes,
    run_strategy,
)
from trtdebug.core.search.user_check import CheckCommand
from trtdebug.core.system.files import prepare_outputs
from trtdebug.engines.base import BuildError, Engine, Marking
from trtdebug.errors import UserError
from trtdebug.workflows.build import write_plan_artifacts
from trtdebug.workflows.compare import run_compare
from trtdebug.workflows.diagnose import with_unmarked_precision
from trtdebug.workflows.input_sets import (
    DEFAULT_INPUT_SEEDS,
    InputSet,
    JudgedSet,
    evaluate_on_sets,
    input_sets,
    prepare_extra_sets,
    sets_sha256,
)
from trtdebug.workflows.parallel import Judge, judging
from trtdebug.workflows.problem import Case, Problem, ProblemSpec, load_model, prepare
from trtdebug.workflows.progress import SILENT, Progress
from trtdebug.workflows.quantize import calibration_files

# What a node falls back to: FP32 from FP16/BF16 builds, FP16 from INT8 builds.
FALLBACK_PRECISION = {"fp16": "fp32", "bf16": "fp32", "fp8": "fp16", "int8": "fp16", "int4": "fp16"}


@dataclass(frozen=True)
class FallbackOutcome:
    """What a fallback run found and wrote: built once the search ends, then with its outputs
    (`dataclasses.replace`) once they are written; never changed after."""

    search: SearchResult
    candidates: tuple[str, ...]
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
    artifacts: tuple[Path, ...] = ()
    notes: tuple[str, ...] = ()
    reasons: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # why each node was suspected
    op_types: Mapping[str, str] = field(default_factory=dict)
    flops_share: float = 0.0
    params_share: float = 0.0
    ranking_compare: CompareResult | None = None  # the base plan's compare that ranked suspects (this run)
    history: tuple[Evaluation, ...] = ()  # every evaluation, journal order
    input_sets: tuple[str, ...] = ()  # every set each plan was judged on, the primary first
    max_evaluations: int | None = None  # the budget this run had (evaluations over every run of the journal)
    default_max_evaluations: int = 0  # what a resume adds to the budget by default

    @property
    def budget_exhausted(self) -> bool:
        return self.search.budget_exhausted

    @property
    def found(self) -> bool:
        return self.search.kept is not None

    def to_json(self) -> dict[str, Any]:
        """The run's facts as JSON-ready data: the search, what was kept and why, and the files written."""
        search = self.search
        return {
            "found": self.found, "strategy": search.strategy,
            "kept": None if search.kept is None else list(search.kept),
            "candidates": list(self.candidates), "keep_precision": self.keep_precision,
            "evaluations": search.evaluations, "builds": self.builds, "builds_this_run": self.builds_this_run,
            "rounds_this_run": self.rounds_this_run, "resumed": self.resumed, "one_minimal": search.one_minimal,
            "prefix": search.prefix, "used_regions": search.used_regions, "message": search.message,
            "budget_exhausted": search.budget_exhausted, "max_evaluations": self.max_evaluations,
            "default_max_evaluations": self.default_max_evaluations,
            "reasons": {node: list(why) for node, why in self.reasons.items()},
            "op_types": dict(self.op_types), "flops_share": self.flops_share, "params_share": self.params_share,
            "input_sets": list(self.input_sets), "notes": list(self.notes),
            "plan": None if self.plan is None else self.plan.to_json(),
            "compare_passed": None if self.compare is None else self.compare.passed,
            "files": {"plan": _shown(self.plan_path), "compare": _shown(self.compare_path),
                      "journal": str(self.journal), "artifacts": [str(p) for p in self.artifacts]},
            "history": [{"kept": sorted(e.kept), "passed": e.passed, "reason": e.reason,
                         "build_failed": e.build_failed, "phase": e.phase, "seconds": e.seconds,
                         "replayed": e.replayed} for e in self.history],
        }


def _shown(path: Path | None) -> str | None:
    return None if path is None else str(path)


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


def run_fallback(spec: ProblemSpec, out: str | Path, *, strategy: str = DEFAULT_STRATEGY, resume: bool = False,
                 check: CheckCommand | None = None, jobs: int | str = 1, ray_address: str | None = None,
                 progress: Progress = SILENT, other_outputs: Mapping[str, str | Path | None] | None = None,
                 prepared: Case | None = None, judge: Judge | None = None, inputs: Sequence[str | Path] = (),
                 input_seeds: int = DEFAULT_INPUT_SEEDS, max_evaluations: int | None = None) -> FallbackOutcome:
    """Search the fewest nodes to keep in higher precision for `spec`'s model; write the plan to `out`,
    its journal, a compare report and the rebuilt artefacts beside it.

    The run owns, from start to end, the lock on `out`'s journal (a second run on the same `out` is
    refused at once, naming the first's pid), the journal (`resume`: replay it, refused in one line
    when any JournalSettings differs) and the worker pool `jobs` opens (a count, or "ray";
    workflows.parallel); the plan is the one the sequential search finds. `other_outputs` (label ->
    path) are files the caller will write, checked with the run's own before any work. `prepared`:
    a Case already prepared from `spec` (e.g. with a substituted engine); `judge`: judges each
    round's candidates instead of the pool `jobs` would open.

    Every plan is judged on every input set (workflows.input_sets): `spec.inputs` and the files of
    `inputs` (folders expanded), or inputs generated at `input_seeds` seeds from `spec.seed` on.
    `max_evaluations`: the search stops after this many evaluations (over every run of the
    journal; default: strategies.default_max_evaluations of the candidate count) and writes the
    smallest passing plan found, marked `budget_exhausted`: it passes but may not be minimal."""
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if max_evaluations is not None and max_evaluations < 1:
        raise UserError(f"--max-evaluations {max_evaluations}: allow at least 1 evaluation")
    plan_path = Path(out)
    journal_file = output_paths(plan_path)["journal"]
    sets = input_sets(spec, inputs, input_seeds)
    spec = sets[0].spec
    outputs = {**fallback_outputs(plan_path), **(other_outputs or {})}
    model = None if prepared is not None else load_model(spec, outputs)
    prepare_outputs(outputs, {f"--inputs file {s.label}": s.spec.inputs for s in sets[1:]})  # the primary's: load_model
    with JournalLock(journal_file), contextlib.ExitStack() as closing:
        if prepared is None:
            on_sets = f" on {len(sets)} input sets" if len(sets) > 1 else ""
            progress.begin(f"loading the model and running the FP32 reference (onnxruntime){on_sets}")
            prepared = prepare(spec, model=model)
            extra = prepare_extra_sets(prepared, sets)
            progress.end()
        else:
            extra = prepare_extra_sets(prepared, sets)
        case = prepared
        keep, candidates = _fallback_candidates(case)
        if check is not None:
            for problem in [case.problem, *(judged.problem for judged in extra)]:
                check.require_reference_passes(problem.reference_outputs())
        settings = journal_settings(spec, case, keep, check, sets, extra)
        earlier_journal = journal_file.is_file()
        journal = closing.enter_context(Journal(journal_file, settings, resume))
        if judge is None:
            judge = closing.enter_context(judging(spec, case, jobs, check, ray_address, sets, extra))
        budget = max_evaluations if max_evaluations is not None else default_max_evaluations(len(candidates))
        return _search(case, journal, plan_path, strategy, keep, candidates, check, progress, judge,
                       resume, earlier_journal, sets, extra, budget)


def _fallback_candidates(case: Case) -> tuple[str, list[str]]:
    """The precision kept nodes fall back to, and the nodes that may fall back."""
    problem, engine, base = case.problem, case.engine, case.plan
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
    return keep, candidates


def _search(case: Case, journal: Journal, plan_path: Path, strategy: str, keep: str, candidates: list[str],
            check: CheckCommand | None, progress: Progress, judge: Judge | None, resume: bool,
            earlier_journal: bool, sets: Sequence[InputSet], extra: Sequence[JudgedSet],
            max_evaluations: int) -> FallbackOutcome:
    """Rank, search (replaying and extending the journal), and on success write the outputs."""
    problem, engine, base, bans = case.problem, case.engine, case.plan, case.bans
    model = problem.model
    counter = itertools.count(len(journal.evaluations))
    listeners: list[Callable[[Evaluation], None]] = [lambda e: journal.record_evaluation(e, next(counter)),
                                                     lambda e: progress.advance(describe_evaluation(e))]
    known = list(journal.evaluations)
    history = list(known)
    listeners.append(history.append)
    ranking: list[str] = candidates
    reasons: Mapping[str, Sequence[str]] = {}
    ranking_builds = ranked_now = 0
    ranking_compare: CompareResult | None = None
    try:
        if strategy == "ranked":
            progress.begin("ranking suspects (one compare run)")
            ranking, reasons, ranking_builds, ranked_now, ranking_compare = _ranking(
                journal, problem, engine, base, bans, candidates, check, known, listeners, progress,
                several_sets=bool(extra))
            progress.end()
        primary_label = sets[0].label
        evaluate = lambda plan: evaluate_on_sets(problem, extra, engine, plan, bans, check, primary_label)  # noqa: E731
        check_many = None if judge is None else (
            lambda kept_sets: judge.judge([plan_keeping(base, kept, keep) for kept in kept_sets]))
        evaluator = Evaluator(kept_set_check(evaluate, base, keep), known, listeners, check_many,
                              judge.jobs if judge is not None else 1, max_evaluations)
        at_once = f", {judge.jobs} at a time" if judge is not None else ""
        progress.begin(f"{strategy} search over {len(candidates)} candidate nodes{at_once}")
        result = run_strategy(strategy, ranking, candidates, evaluator)
        progress.end()
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted; the journal {journal.path} keeps every finished build: "
                                "rerun with --resume to continue") from None
    notes = list(problem.notes)  # e.g. what a strongly typed model's types decide over --precision
    if resume and not journal.resumed:
        notes.append(f"nothing to resume in {journal.path}; this was a new search")
    elif earlier_journal and not resume:
        notes.append(f"replaced the journal of an earlier search at {journal.path} (--resume continues one)")
    quantized = format_for(model, base)
    op_types = {n.name: n.op_type for n in model.nodes} | (quantized.candidate_kinds() if quantized else {})
    outcome = FallbackOutcome(
        search=result, candidates=tuple(candidates), keep_precision=keep,
        builds=ranking_builds + evaluator.evaluations, builds_this_run=evaluator.builds + ranked_now,
        journal=journal.path, rounds_this_run=evaluator.rounds + ranked_now, resumed=journal.resumed,
        notes=tuple(notes), reasons={node: tuple(why) for node, why in reasons.items()}, op_types=op_types,
        ranking_compare=ranking_compare, history=tuple(history), input_sets=tuple(s.label for s in sets),
        max_evaluations=max_evaluations, default_max_evaluations=default_max_evaluations(len(candidates)))
    if result.kept is not None:
        progress.begin("writing the plan, a compare report and the artefacts")
        outcome = _write_outputs(outcome, case, plan_path, strategy, check, progress)
        progress.end()
    return outcome


def describe_evaluation(evaluation: Evaluation) -> str:
    verdict = "pass" if evaluation.passed else ("build failed" if evaluation.build_failed else "fail")
    return f"{evaluation.phase:<8} keep {len(evaluation.kept):>4} -> {verdict} ({evaluation.seconds:.2f}s)"


def journal_settings(spec: ProblemSpec, case: Case, keep: str, check: CheckCommand | None,
                     sets: Sequence[InputSet] = (), extra: Sequence[JudgedSet] = ()) -> JournalSettings:
    """Everything that decides this run's verdicts (core.search.journal); a resume must match all of it.
    `sets`: every input set judged on, `extra` the problems of those after the primary."""
    problem, base = case.problem, case.plan
    model = problem.model
    int8 = "int8" in {base.default, *base.nodes.values()}
    quant_format = format_of(model)
    explicit = quant_format is not None and not quant_format.model.implicit  # scales in the model: no calibration
    calibrates = int8 and not explicit
    tolerance = problem.tolerance
    judged_by_tolerance = check is None
    return JournalSettings(
        model_sha256=model.sha256,
        quantized_sha256=_json_sha256(quant_format.identity()) if quant_format is not None else None,
        precision=base.default, keep_precision=keep, engine=case.engine.name,
        obey=spec.obey, calib_method=spec.calib_method if calibrates else None,
        calib_inputs_sha256=_files_sha256(calibration_files(spec.calib_inputs)) if calibrates and spec.calib_inputs
        else None,
        check=check.template if check is not None else None,
        atol=tolerance.atol if judged_by_tolerance else None, rtol=tolerance.rtol if judged_by_tolerance else None,
        output_tolerances=_named(tolerance.per_output) if judged_by_tolerance else None,
        input_shapes=_named({name: "x".join(map(str, shape)) for name, shape in spec.input_shapes.items()}
                            | {name: ",".join("x".join(map(str, s)) for s in shapes)
                               for name, shapes in spec.input_profiles.items()}),
        input_ranges=None if spec.inputs else _named(spec.input_ranges),
        seed=None if spec.inputs else spec.seed,
        input_sets=" ".join(s.label.replace(" ", ":") for s in sets) or None,
        feeds_sha256=sets_sha256(problem, extra),
        base_plan_sha256=_json_sha256({"default": base.default, "nodes": dict(sorted(base.nodes.items()))}),
        bans_sha256=_json_sha256(case.bans.to_json()) if case.bans else None)


def _named(values: Mapping[str, Any]) -> str | None:
    """NAME:VALUE pairs as the options take them, sorted; None for none."""
    def shown(value: Any) -> str:
        return ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else str(value)
    return " ".join(f"{name}:{shown(value)}" for name, value in sorted(values.items())) or None


def _files_sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _criterion(problem: Problem, check: CheckCommand | None) -> dict[str, Any]:
    """The pass criterion, as the plan's provenance records it."""
    if check is not None:
        return {"check": check.template}
    tolerance = problem.tolerance
    return {"atol": tolerance.atol, "rtol": tolerance.rtol,
            "per_output": {k: list(v) for k, v in sorted(tolerance.per_output.items())}}


def _json_sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _ranking(journal: Journal, problem: Problem, engine: Engine, base: PrecisionPlan, bans: BanList | None,
             candidates: list[str], check: CheckCommand | None, known: list[Evaluation],
             listeners: list[Callable[[Evaluation], None]], progress: Progress = SILENT, several_sets: bool = False
             ) -> tuple[list[str], dict[str, list[str]], int, int, CompareResult | None]:
    """The suspicion ranking, from the journal or from one compare run (journaled at once).

    Returns (order, reasons, builds the ranking costs beyond the evaluations it recorded, builds
    made now, the compare run when one was made now)."""
    if journal.ranking is not None and sorted(journal.ranking["order"]) == sorted(candidates):
        return (list(journal.ranking["order"]),
                {str(node): [str(why) for why in whys] for node, whys in journal.ranking.get("reasons", {}).items()},
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
    # verdict is that evaluation, so the search does not build it again. It ran on the primary
    # input set only: with several, only its failure settles the question.
    empty_set: Evaluation | None = None
    if (compare is not None and check is None and engine.capabilities.exact_marking
            and (not several_sets or not compare.passed)):
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
                   check: CheckCommand | None, progress: Progress = SILENT) -> FallbackOutcome:
    """Write the plan, its compare report and artefacts; `outcome` with them."""
    problem, engine, bans = case.problem, case.engine, case.bans
    model = problem.model
    result = outcome.search
    assert result.kept is not None
    criterion = _criterion(problem, check)
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
    paths = output_paths(plan_path)
    compare = run_compare(problem, engine, plan, bans, Marking(), progress, local_scope="all")
    compare = with_unmarked_precision(compare, problem, engine, plan, bans)
    compare_path = write_compare_report(compare, paths["compare"])
    artifacts, notes = write_plan_artifacts(engine, model, plan, bans, paths["onnx"], paths["engine"])
    costs = CostModel(model, shapes_of(problem.reference))
    quant_format = format_of(model)
    kept_layers = quant_format.layers_of(result.kept) if quant_format else result.kept
    flops_share, params_share = costs.shares(kept_layers)
    return dataclasses.replace(outcome, plan=plan, plan_path=plan_path, compare=compare, compare_path=compare_path,
                               artifacts=tuple(artifacts), notes=(*outcome.notes, *notes),
                               flops_share=flops_share, params_share=params_share)
