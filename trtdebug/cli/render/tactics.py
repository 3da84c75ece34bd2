"""Terminal report of a tactic search (`trtdebug tactics`): suspects, bans kept and rejected with
their evidence, the build diff, and the verdict with the bans."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from trtdebug.cli.render.compare import verdict_line
from trtdebug.workflows.tactics import BanDecision, TacticRank, TacticSearch


def _error(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "-"
    max_abs = metrics.get("max_abs")
    shown = "inf" if max_abs is None else f"{max_abs:.3g}"
    return f"max abs {shown}, {metrics.get('frac_outside') or 0.0:.1%} out of tol"


def render_tactics(search: TacticSearch, console: Console, top: int = 5) -> None:
    console.print(f"[bold]Default tactics[/]: {verdict_line(search.baseline)}")
    for note in search.notes:
        console.print(f"  {note}", style="dim")
    if search.ranking:
        console.print(_ranking_table(search.ranking[:top], len(search.records)))
    if search.suspects or search.unbannable:
        console.print(_suspects_table(search))
    if search.decisions:
        console.print(_decisions_table(search.decisions))
    kept = len(search.kept)
    console.print(f"[bold]With {len(search.bans)} ban(s)[/] ({kept} new): {verdict_line(search.final)}")
    if search.records_with_bans:
        passing = sum(r.passed for r in search.records_with_bans)
        console.print(f"  {passing} of {len(search.records_with_bans)} repeated builds with the bans pass",
                      style="green" if passing == len(search.records_with_bans) else "red")
    console.print(f"{search.builds} build(s) in all", style="dim")


def _ranking_table(ranking: Sequence[TacticRank], builds: int) -> Table:
    table = Table(title=f"Tactics in failing builds ({builds} builds recorded)", title_justify="left")
    for column in ("layer", "tactic", "failing builds", "passing builds"):
        table.add_column(column, justify="right" if column.endswith("builds") else "left", overflow="fold")
    for rank in ranking:
        table.add_row(rank.layer, rank.tactic, str(rank.bad_builds), str(rank.good_builds),
                      style="red" if rank.bad_only else None)
    return table


def _suspects_table(search: TacticSearch) -> Table:
    table = Table(title="Layers that introduce error", title_justify="left")
    for column in ("layer", "op", "tactic", "alternatives", "tensor", "error"):
        table.add_column(column, overflow="fold")  # names wrap, never cut
    for suspect in [*search.suspects, *search.unbannable]:
        layer, first = suspect.layer, suspect.tensors[0]
        error = _error(first.accumulated.to_json()) if first.accumulated else "-"
        table.add_row(layer.name, layer.op_type, layer.tactic or "-", ", ".join(layer.alternatives) or "none",
                      first.tensor, error)
    return table


def _decisions_table(decisions: Sequence[BanDecision]) -> Table:
    table = Table(title="Bans", title_justify="left")
    for column in ("", "layer", "banned tactic", "then", "error before", "error after", "why"):
        table.add_column(column, overflow="fold")  # names wrap, never cut
    for d in decisions:
        evidence = d.entry.evidence
        table.add_row("[green]kept[/]" if d.kept else "[red]rejected[/]", d.entry.layer, d.entry.tactic,
                      evidence.get("tactic_after") or "-", _error(evidence.get("before")),
                      _error(evidence.get("after")), d.reason)
    return table
