"""Terminal output of `trtdebug fallback`: the verdict, the kept nodes and why, what was written."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trtdebug.cli.render.diagnosis import render_precision_findings
from trtdebug.workflows.fallback import FallbackOutcome


def render_fallback(outcome: FallbackOutcome, console: Console, resume_command: str | None = None) -> None:
    """The verdict and what was written; `resume_command`: the line that continues a search cut off
    by its evaluation budget."""
    result = outcome.search
    n = len(outcome.candidates)
    builds = f"{outcome.builds} builds" + (f" ({outcome.builds_this_run} in this run, the rest replayed from "
                                             "the journal)" if outcome.resumed else "")
    sets = len(outcome.input_sets)
    if sets > 1:
        builds += f", each judged on {sets} input sets: {', '.join(outcome.input_sets)}"
    if result.budget_exhausted:
        _render_stopped(outcome, console, builds, resume_command)
        if result.kept is None:
            return
    elif result.kept is None:
        console.print(f"[bold red]NO PLAN[/] {result.message}. The error does not come from reduced "
                      "precision alone: check the inputs and the tolerance, or look for a bad kernel with "
                      f"`trtdebug tactics`. ({result.strategy} search, {builds})")
        for note in outcome.notes:
            console.print(f"[yellow]note[/]: {note}")
        console.print(f"journal: {outcome.journal}", style="dim")
        return
    kept = list(result.kept)
    keep = outcome.keep_precision
    if result.budget_exhausted:
        console.print(_kept_table(kept, outcome))
    elif not kept:
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
        console.print(f"[yellow]note[/]: by tolerance the plan still fails ({outcome.compare.verdict}); "
                      "it passed the --check command", style="dim")
    for note in outcome.notes:
        console.print(f"[yellow]note[/]: {note}")
    _render_realized_precision(outcome, console)
    written = [("plan", outcome.plan_path), ("compare report", outcome.compare_path)]
    written += [("artefact", path) for path in outcome.artifacts]
    written.append(("journal", outcome.journal))
    for label, path in written:
        if path is not None:
            console.print(f"{label}: {path}", style="dim")


def _render_stopped(outcome: FallbackOutcome, console: Console, builds: str, resume_command: str | None) -> None:
    result = outcome.search
    if result.kept is None:
        console.print(f"[bold yellow]STOPPED[/] no kept set passed within the budget of {outcome.max_evaluations} "
                      f"evaluations; no plan was written ({result.strategy} search, {builds})")
    else:
        console.print(f"[bold yellow]STOPPED[/] at the budget of {outcome.max_evaluations} evaluations: keep "
                      f"{len(result.kept)} of {len(outcome.candidates)} eligible nodes in {outcome.keep_precision}; "
                      f"the plan passes on every input set but is not shown to be minimal ({result.strategy} search, "
                      f"{builds})")
    if resume_command:
        console.print(f"to go on: {resume_command}", soft_wrap=True)
    if result.kept is None:
        for note in outcome.notes:
            console.print(f"[yellow]note[/]: {note}")
        console.print(f"journal: {outcome.journal}", style="dim")


def _kept_table(kept: list[str], outcome: FallbackOutcome) -> Table:
    table = Table(title=f"Nodes kept in {outcome.keep_precision}", title_justify="left")
    for column in ("node", "op", "why it was suspected"):
        table.add_column(column, overflow="fold")  # a name cut to `conv…` identifies no layer
    for node in kept:
        why = outcome.reasons.get(node) or ("found by the search",)
        table.add_row(node, outcome.op_types.get(node, ""), "; ".join(why))
    return table


def _render_realized_precision(outcome: FallbackOutcome, console: Console) -> None:
    """What the plan's engine really ran in against what the plan asks; nothing where the engine
    reports no layer types (the emulator runs the plan by construction)."""
    diagnosis = outcome.compare.diagnosis if outcome.compare is not None else {}
    findings = diagnosis.get("realized_precision")
    if not isinstance(findings, list):
        return
    of = escape(str(diagnosis.get("realized_precision_of") or "the compared build"))
    if not findings:
        console.print(f"realized precision: every layer of {of} runs in the precision the plan asks", style="dim")
        return
    console.print(f"realized precision of {of} differs from the plan in {len(findings)} layer(s):")
    render_precision_findings(findings, console)
