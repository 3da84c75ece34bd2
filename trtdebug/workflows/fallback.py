"""The `fallback` workflow: rank, search, journal, and write the plan, artefact and report.

`run_fallback` ties the engine-agnostic search (trtdebug.core.search) to a Session: it builds the
`evaluate(plan) -> Verdict` callable (tolerance or a `--check` command), replays and extends the
journal, and on success writes the precision plan, the rebuilt artefact and a final compare
report. `render_fallback` prints the summary; `write_artifact` serves `trtdebug build` too.
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

import numpy as np
from rich.console import Console
from rich.table import Table

from trtdebug import __version__
from trtdebug.cli.render.compare import compare_to_json, write_json
from trtdebug.core.bans import BanList
from trtdebug.core.cost import CostModel, shapes_of
from trtdebug.core.criterion import CheckCommand
from trtdebug.core.journal import Journal, journal_path
from trtdebug.core.metrics import CompareResult, Verdict
from trtdebug.core.model import Model
from trtdebug.core.precision import PrecisionPlan, eligible_nodes
from trtdebug.core.search import (
    STRATEGIES,
    Evaluation,
    Evaluator,
    SearchResult,
    kept_set_check,
    plan_keeping,
    rank_nodes,
    run_strategy,
)
from trtdebug.engines.base import BuildError, Engine, Marking, as_serializable
from trtdebug.errors import UserError
from trtdebug.workflows.compare import Problem, evaluate_plan, run_compare
from trtdebug.workflows.problem import Session

# What a node falls back to: FP32 from FP16/BF16 builds, FP16 from INT8 builds.
FALLBACK_PRECISION = {"fp16": "fp32", "bf16": "fp32", "int8": "fp16"}


@dataclass
class FallbackOutcome:
    search: SearchResult
    candidates: list[str]
    keep_precision: str
    builds: int  # engine builds the search took, over every run of this journal
    builds_this_run: int
    journal: Path
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

    @property
    def found(self) -> bool:
        return self.search.kept is not None


def output_paths(plan_path: Path) -> dict[str, Path]:
    """Everything a fallback run writes, named after the plan: plan.json -> plan.journal.jsonl,
    plan.compare.json, plan.mixed.onnx, plan.engine."""
    stem = plan_path.with_name(plan_path.stem)
    return {"journal": journal_path(plan_path), "compare": Path(f"{stem}.compare.json"),
            "onnx": Path(f"{stem}.mixed.onnx"), "engine": Path(f"{stem}.engine")}


def run_fallback(session: Session, out: str | Path, strategy: str = "ranked", resume: bool = False,
                 check: CheckCommand | None = None,
                 progress: Callable[[Evaluation], None] | None = None) -> FallbackOutcome:
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    problem, engine, base, bans = session.problem, session.engine, session.plan, session.bans
    model = problem.model
    if not engine.capabilities.rebuilds:
        raise UserError("--engine results replays saved outputs, which no precision plan changes; run "
                        "fallback with an engine that builds: --engine emulator, tensorrt or tensorrt-rtx")
    if base.default not in FALLBACK_PRECISION:
        raise UserError(f"a --precision {base.default} build has nothing to fall back from; "
                        "use --precision fp16, bf16 or int8")
    keep = FALLBACK_PRECISION[base.default]
    candidates = [n for n in eligible_nodes(model) if base.precision_of(n) == base.default]
    if check is not None:
        check.require_reference_passes({o.name: problem.reference[o.name] for o in model.outputs})
    evaluate = plan_evaluator(problem, engine, bans, check)
    plan_path = Path(out)
    settings = journal_settings(problem, engine, base, bans, keep, check)
    earlier_journal = output_paths(plan_path)["journal"].is_file()
    with Journal(output_paths(plan_path)["journal"], settings, resume) as journal:
        counter = itertools.count(len(journal.evaluations))
        listeners: list[Callable[[Evaluation], None]] = [lambda e: journal.record_evaluation(e, next(counter))]
        if progress is not None:
            listeners.append(progress)
        known = list(journal.evaluations)
        ranking: list[str] = candidates
        reasons: dict[str, Any] = {}
        ranking_builds = ranked_now = 0
        try:
            if strategy == "ranked":
                ranking, reasons, ranking_builds, ranked_now = _ranking(journal, problem, engine, base, bans,
                                                                        candidates, check, known, listeners)
            evaluator = Evaluator(kept_set_check(evaluate, base, keep), known, listeners)
            result = run_strategy(strategy, ranking, candidates, evaluator)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"interrupted; the journal {journal.path} keeps every finished build: "
                                    "rerun with --resume to continue") from None
    outcome = FallbackOutcome(
        search=result, candidates=candidates, keep_precision=keep,
        builds=ranking_builds + evaluator.evaluations, builds_this_run=evaluator.builds + ranked_now,
        journal=journal.path, resumed=journal.resumed, reasons=reasons,
        op_types={n.name: n.op_type for n in model.nodes})
    if resume and not journal.resumed:
        outcome.notes.append(f"nothing to resume in {journal.path}; this was a new search")
    elif earlier_journal and not resume:
        outcome.notes.append(f"replaced the journal of an earlier search at {journal.path} (--resume continues one)")
    if result.kept is not None:
        _write_outputs(outcome, session, plan_path, strategy, check)
    return outcome


def plan_evaluator(problem: Problem, engine: Engine, bans: BanList | None,
                   check: CheckCommand | None) -> Callable[[PrecisionPlan], Verdict]:
    """Build a plan, run it, and judge its final outputs by tolerance or by the --check command."""
    if check is None:
        return lambda plan: evaluate_plan(problem, engine, plan, bans)
    reference = {o.name: problem.reference[o.name] for o in problem.model.outputs}

    def judge(plan: PrecisionPlan) -> Verdict:
        try:
            built = engine.build(problem.model, plan, bans, Marking.final_outputs_only())
        except BuildError as exc:
            return Verdict(False, {}, f"build failed: {exc}")
        produced = built.run(problem.feeds)
        return check.verdict({name: produced[name] for name in reference if name in produced}, reference)

    return judge


def journal_settings(problem: Problem, engine: Engine, base: PrecisionPlan, bans: BanList | None,
                     keep: str, check: CheckCommand | None) -> dict[str, Any]:
    """What every evaluation depends on; a resume must match all of it."""
    tolerance = problem.tolerance
    criterion: dict[str, Any] = {"check": check.template} if check else {
        "atol": tolerance.atol, "rtol": tolerance.rtol,
        "per_output": {k: list(v) for k, v in sorted(tolerance.per_output.items())}}
    return {"model_sha256": problem.model.sha256, "precision": base.default, "keep_precision": keep,
            "criterion": criterion, "engine": engine.name, "inputs_sha256": _feeds_sha256(problem.feeds),
            "bans_sha256": _json_sha256(bans.to_json()) if bans else None,
            "base_plan": dict(sorted(base.nodes.items()))}


def _feeds_sha256(feeds: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(feeds):
        value = np.ascontiguousarray(feeds[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _json_sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _ranking(journal: Journal, problem: Problem, engine: Engine, base: PrecisionPlan, bans: BanList | None,
             candidates: list[str], check: CheckCommand | None, known: list[Evaluation],
             listeners: list[Callable[[Evaluation], None]]) -> tuple[list[str], dict[str, Any], int, int]:
    """The suspicion ranking, from the journal or from one compare run (journaled at once).

    Returns (order, reasons, builds the ranking costs beyond the evaluations it recorded, builds
    made now)."""
    if journal.ranking is not None and sorted(journal.ranking["order"]) == sorted(candidates):
        return (list(journal.ranking["order"]), dict(journal.ranking.get("reasons", {})),
                int(journal.ranking.get("builds", 1)), 0)
    started = time.perf_counter()
    try:
        compare: CompareResult | None = run_compare(problem, engine, base, bans, Marking())
    except BuildError:
        compare = None  # rank by static signals only
    suspicions = rank_nodes(problem.model, candidates, compare)
    order = [s.node for s in suspicions]
    reasons = {s.node: list(s.reasons) for s in suspicions if s.reasons}
    # An exact-marking engine's compare run is the unmarked build of the empty kept set: its
    # verdict is that evaluation, so the search does not build it again.
    empty_set: Evaluation | None = None
    if compare is not None and check is None and engine.capabilities.exact_marking:
        empty_set = Evaluation(frozenset(), compare.passed, str(compare.notes.get("verdict", "")), False,
                               "rank", time.perf_counter() - started)
    builds = 0 if empty_set is not None else (1 if compare is not None else 0)
    journal.record_ranking(order, builds, empty_set is not None, reasons)
    if empty_set is not None:
        known.append(empty_set)
        for listener in listeners:
            listener(empty_set)
    return order, reasons, builds, 1 if compare is not None else 0


def _write_outputs(outcome: FallbackOutcome, session: Session, plan_path: Path, strategy: str,
                   check: CheckCommand | None) -> None:
    problem, engine, bans = session.problem, session.engine, session.bans
    model = problem.model
    result = outcome.search
    assert result.kept is not None
    criterion = {"check": check.template} if check else journal_settings(
        problem, engine, session.plan, bans, outcome.keep_precision, None)["criterion"]
    provenance = {
        "tool": f"trtdebug {__version__} fallback", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "strategy": strategy, "engine": engine.name, "keep_precision": outcome.keep_precision,
        "candidates": len(outcome.candidates), "builds": outcome.builds, "evaluations": result.evaluations,
        "builds_this_run": outcome.builds_this_run, "resumed": outcome.resumed,
        "one_minimal": result.one_minimal, "prefix": result.prefix, "used_regions": result.used_regions,
        "criterion": criterion, "journal": outcome.journal.name, "kept": list(result.kept),
    }
    plan = plan_keeping(session.plan, result.kept, outcome.keep_precision)
    plan = PrecisionPlan(plan.default, plan.nodes, model.sha256, provenance)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan.save(plan_path)
    outcome.plan, outcome.plan_path = plan, plan_path
    paths = output_paths(plan_path)
    outcome.compare = run_compare(problem, engine, plan, bans, Marking())
    write_json(compare_to_json(outcome.compare), paths["compare"])
    outcome.compare_path = paths["compare"]
    outcome.artifacts, notes = write_artifacts(engine, model, plan, bans, paths["onnx"], paths["engine"])
    outcome.notes.extend(notes)
    costs = CostModel(model, shapes_of(problem.reference))
    outcome.flops_share, outcome.params_share = costs.shares(result.kept)


def write_artifacts(engine: Engine, model: Model, plan: PrecisionPlan, bans: BanList | None,
                    onnx_path: Path, engine_path: Path) -> tuple[list[Path], list[str]]:
    """The plan made concrete: a mixed-precision ONNX model (what strongly typed builders and the
    emulator take) and, where the engine can serialize what it built, the engine file."""
    written: list[Path] = []
    notes: list[str] = []
    try:
        written.append(write_mixed_onnx(model, plan, onnx_path))
    except UserError as exc:
        notes.append(f"mixed-precision ONNX not written: {exc}")
    try:
        if write_engine(engine, model, plan, bans, engine_path):
            written.append(engine_path)
    except BuildError as exc:
        notes.append(f"engine not written: the build failed ({exc})")
    return written, notes


def write_mixed_onnx(model: Model, plan: PrecisionPlan, path: Path) -> Path:
    import onnx

    from trtdebug.artifacts.mixed_onnx import to_mixed_precision_onnx

    onnx.save(to_mixed_precision_onnx(model, plan), str(path))
    return path


def write_engine(engine: Engine, model: Model, plan: PrecisionPlan, bans: BanList | None, path: Path) -> bool:
    """Build without marking and save the engine, if this engine has a serialized form."""
    built = engine.build(model, plan, bans, Marking.final_outputs_only())
    serializable = as_serializable(engine, built)
    if serializable is None:
        return False
    path.write_bytes(bytes(serializable.serialize()))
    return True


def build_artifact(model_path: str, plan_path: str, bans_path: str | None, engine_name: str, out: str) -> Path:
    """`trtdebug build`: a saved plan applied to its model, as mixed-precision ONNX or an engine."""
    from trtdebug.engines import get_engine
    from trtdebug.workflows.problem import load_plan

    model = Model.load(model_path)
    plan = load_plan(plan_path, model, "fp16")
    bans = BanList.load(bans_path, model_sha256=model.sha256) if bans_path else None
    path = Path(out)
    if path.suffix == ".onnx":
        return write_mixed_onnx(model, plan, path)
    engine = get_engine(engine_name)
    try:
        written = write_engine(engine, model, plan, bans, path)
    except BuildError as exc:
        raise UserError(f"the {engine_name} build with {plan_path} failed: {exc}") from None
    if not written:
        raise UserError(f"the {engine_name} engine has no serialized form; write the mixed-precision ONNX "
                        "model instead: --out NAME.onnx")
    return path


# -- terminal summary ---------------------------------------------------------------------------------

def render_fallback(outcome: FallbackOutcome, console: Console) -> None:
    result = outcome.search
    n = len(outcome.candidates)
    builds = f"{outcome.builds} builds" + (f" ({outcome.builds_this_run} in this run, the rest replayed from "
                                             "the journal)" if outcome.resumed else "")
    if result.kept is None:
        console.print(f"[bold red]NO PLAN[/] {result.message}. The error does not come from reduced "
                      "precision alone: check the inputs and the tolerance, or look for a bad kernel with "
                      f"`trtdebug tactics`. ({result.strategy} search, {builds})")
        for note in outcome.notes:
            console.print(f"[yellow]note[/]: {note}")
        console.print(f"journal: {outcome.journal}", style="dim")
        return
    kept = list(result.kept)
    keep = outcome.keep_precision
    if not kept:
        console.print(f"[bold green]PASS[/] without any fallback: all {n} eligible nodes can stay in "
                      f"reduced precision ({builds})")
    else:
        minimal = ", 1-minimal" if result.one_minimal else ""
        console.print(f"[bold green]FOUND[/] keep {len(kept)} of {n} eligible nodes in {keep}{minimal} "
                      f"({result.strategy} search, {builds})")
        console.print(f"  {keep} share of the model: {outcome.flops_share:.1%} of FLOPs, "
                      f"{outcome.params_share:.1%} of parameters")
        if result.used_regions:
            console.print("  the suspicion ranking needed most of the graph, so the search split graph "
                          "regions instead", style="dim")
        console.print(_kept_table(kept, outcome))
    if outcome.compare is not None and not outcome.compare.passed:
        console.print(f"[yellow]note[/]: by tolerance the plan still fails ({outcome.compare.notes.get('verdict')}); "
                      "it passed the --check command", style="dim")
    for note in outcome.notes:
        console.print(f"[yellow]note[/]: {note}")
    written = [("plan", outcome.plan_path), ("compare report", outcome.compare_path)]
    written += [("artefact", path) for path in outcome.artifacts]
    written.append(("journal", outcome.journal))
    for label, path in written:
        if path is not None:
            console.print(f"{label}: {path}", style="dim")


def _kept_table(kept: list[str], outcome: FallbackOutcome) -> Table:
    table = Table(title=f"Nodes kept in {outcome.keep_precision}", title_justify="left")
    for column in ("node", "op", "why it was suspected"):
        table.add_column(column)
    for node in kept:
        why = outcome.reasons.get(node) or ["found by the search"]
        table.add_row(node, outcome.op_types.get(node, ""), "; ".join(why))
    return table


def progress_printer(console: Console) -> Callable[[Evaluation], None]:
    """One status line per build, on the given (stderr) console."""
    count = itertools.count(1)

    def show(evaluation: Evaluation) -> None:
        verdict = "[green]pass[/]" if evaluation.passed else (
            "[red]build failed[/]" if evaluation.build_failed else "[red]fail[/]")
        console.print(f"[dim]build {next(count):>3}[/] {evaluation.phase:<8} keep {len(evaluation.kept):>4} "
                      f"-> {verdict} [dim]{evaluation.seconds:.2f}s[/]")

    return show
