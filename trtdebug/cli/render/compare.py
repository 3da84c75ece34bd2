"""Reports of a comparison: rich terminal output, and JSON (schema in docs/report-schema.md)."""

from __future__ import annotations

import math

from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from trtdebug.cli.render.diagnosis import render_diagnosis
from trtdebug.cli.render.fixed_table import FixedTable
from trtdebug.core.analysis.metrics import CompareResult, TensorReport, share_text
from trtdebug.core.system.memory import format_size

REPORT_FORMAT = "trtdebug.compare-report"
REPORT_VERSION = 1


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if math.isnan(value):
        return "nan"
    return f"{value:.{digits}g}"


def verdict_line(result: CompareResult) -> str:
    if result.passed:
        return (f"[bold green]PASS[/] {result.model} on {result.engine} ({result.precision}): "
                + ("the outputs pass the --check command" if result.check else "all outputs within tolerance"))
    return (f"[bold red]FAIL[/] {result.model} on {result.engine} ({result.precision}): "
            f"{result.verdict or 'outputs out of tolerance'}")


def render_compare(result: CompareResult, console: Console, top: int = 10) -> None:
    tol = result.tolerance
    console.print(verdict_line(result))
    if result.check:
        console.print(f"  pass criterion: --check {escape(result.check)}", style="dim")
    else:
        console.print(f"  tolerance atol={tol.atol:g} rtol={tol.rtol:g} (intermediate tensors: atol relative "
                      "to each tensor's max |x|)", style="dim")
    render_diagnosis(result, console)  # kernel faults first: they name the next step
    if not result.passed:
        _render_culprits(result, console)
    worst = result.worst(top)
    if worst:
        console.print(_worst_layers(worst, result.local_error, console.width))
    _render_notes(result, console)


def _worst_layers(rows: list[TensorReport], with_local: bool, width: int) -> RenderableType:
    """A table where it fits; on a narrower terminal (80 columns), two lines per layer: its full
    name first, its numbers below, so no name is ever cut down to `conv…`."""
    table = FixedTable(_worst_table(rows, with_local))
    if table.width <= width:
        return table
    lines = [Text("Worst layers", style="italic")]
    for t in rows:
        m = t.accumulated
        assert m is not None
        head = Text(f"{t.index:>4}  ", style="dim")
        head.append(t.node, style="bold red" if t.status == "introduced" else "bold")
        head.append(f" ({t.op_type}) {t.status}")
        if t.defects:
            head.append(" " + ", ".join(d.kind for d in t.defects), style="yellow")
        numbers = [f"max abs {_fmt(m.max_abs)}", f"max rel {_fmt(m.max_rel)}", f"SNR {_fmt(m.snr_db)} dB",
                   f"{share_text(m.frac_outside)} out of tol"]
        if with_local:
            numbers.append(f"local SNR {_fmt(t.local.snr_db) if t.local else '-'} dB")
        lines += [head, *(Text(line, style="dim") for line in _packed(numbers, width, NUMBERS_INDENT))]
    return Group(*lines)


NUMBERS_INDENT = 6  # under the node's name


def _packed(pieces: list[str], width: int, indent: int) -> list[str]:
    """The pieces joined by two spaces into lines of at most `width` columns, each indented; a line
    breaks only between pieces, so a number never parts from its unit (no lone "dB" on a line)."""
    lines: list[str] = []
    line = ""
    for piece in pieces:
        joined = f"{line}  {piece}" if line else piece
        if line and indent + cell_len(joined) > width:
            lines.append(line)
            joined = piece
        line = joined
    return [" " * indent + line for line in [*lines, line]]


def _cells_width(column: Column) -> int:
    return max([cell_len(str(column.header)), *(cell_len(str(cell)) for cell in column.cells)])


def _render_culprits(result: CompareResult, console: Console) -> None:
    if not result.culprits:
        console.print("No single layer introduces the error: it accumulates across layers within per-layer "
                      "tolerance (see the table).")
        return
    for number, culprit in enumerate(result.culprits):
        report = result.tensor(culprit.tensor)
        label = "[bold]Culprit[/]" if number == 0 else "[bold]Also[/]"
        layer = f", layer {escape(report.layer)}" if report.layer and report.layer != report.node else ""
        share = "" if culprit.explained is None or (culprit.creates_nonfinite and culprit.explained < 0.005) else (
            f" [dim](its reference value removes {culprit.explained:.0%} of the output error)[/]")
        if culprit.chain:
            together = "" if culprit.explained is None else (
                f" [dim](together remove {culprit.explained:.0%} of the output error)[/]")
            console.print(f"{label}: {chain_kind(culprit.reason)}: "
                          f"{' -> '.join(f'[cyan]{escape(n)}[/]' for n in shown_chain(culprit.chain))}{together}")
            console.print(f"  {escape(culprit.reason.split(': ', 1)[-1])}")
        elif report.defects and all(d.kind == "code_flip" for d in report.defects):
            # Its quantizer rounded slightly different inputs the other way: no layer or scale is at fault.
            console.print(f"{label}: {escape(result.precision.upper() or 'INT8')} code flips at "
                          f"[cyan]{escape(culprit.tensor)}[/] ({escape(culprit.node)}, {culprit.op_type}){share}")
            for defect in report.defects:
                console.print(f"  [yellow]{defect.kind}[/]: {escape(defect.message)}")
        else:
            console.print(f"{label}: [cyan]{escape(culprit.node)}[/] ({culprit.op_type}), tensor "
                          f"[cyan]{escape(culprit.tensor)}[/]{layer}{share}")
            for defect in report.defects:
                console.print(f"  [yellow]{defect.kind}[/]: {escape(defect.message)}")
        if number == 0 and report.accumulated:
            m = report.accumulated
            console.print(f"  max abs err {_fmt(m.max_abs)}, max rel err {_fmt(m.max_rel)}, "
                          f"SNR {_fmt(m.snr_db)} dB, {share_text(m.frac_outside)} of elements out of tolerance",
                          style="dim")
    if result.culprits_explain is not None:
        what = "it" if len(result.culprits) == 1 and not result.culprits[0].chain else (
            "them" if len(result.culprits) == 1 else f"these {len(result.culprits)} culprits")
        console.print(f"  with {what} at reference values the outputs lose {result.culprits_explain:.0%} of "
                      "their error", style="dim")
    others = len([t for t in result.introduced if t.tensor not in {c.tensor for c in result.culprits}])
    if others:
        console.print(f"  {others} more layer(s) introduce smaller errors of their own; see the table", style="dim")


def chain_kind(reason: str) -> str:
    """What a named group of layers is ("chain", "span"): the first word of its culprit's reason."""
    return reason.split(":", 1)[0]


def shown_chain(nodes: tuple[str, ...] | list[str], most: int = 6) -> list[str]:
    """A long chain or span by its ends: the first layers, a count, the last."""
    if len(nodes) <= most:
        return list(nodes)
    return [*nodes[:most - 2], f"... {len(nodes) - most + 1} more ...", nodes[-1]]


def _worst_table(rows: list[TensorReport], with_local: bool) -> Table:
    table = Table(title="Worst layers", title_justify="left", show_lines=False)
    for header in ("#", "node", "op", "status", "defect", "max abs", "max rel", "SNR dB", "out of tol"):
        table.add_column(header, justify="right" if header in ("#", "max abs", "max rel", "SNR dB") else "left",
                         no_wrap=True)
    if with_local:
        table.add_column("local SNR dB", justify="right", no_wrap=True)
    for t in rows:
        m = t.accumulated
        assert m is not None
        style = "red" if t.status == "introduced" else None
        cells = [str(t.index), t.node, t.op_type, t.status, ", ".join(d.kind for d in t.defects),
                 _fmt(m.max_abs), _fmt(m.max_rel), _fmt(m.snr_db), share_text(m.frac_outside)]
        if with_local:
            cells.append(_fmt(t.local.snr_db) if t.local else "-")
        table.add_row(*map(Text, cells), style=style)  # Text: no markup to parse in names and numbers
    for column in table.columns:  # widths fixed: FixedTable prints it line by line
        column.width = _cells_width(column)
    return table


def _render_notes(result: CompareResult, console: Console) -> None:
    notes = result.marking.get("notes")
    for note in notes if isinstance(notes, list) else []:
        console.print(f"note: {escape(str(note))}", soft_wrap=True)  # one line, whatever the width
    source = result.marking.get("reference")
    if isinstance(source, dict):
        console.print(f"reference: {escape(str(source.get('model')))}, {source.get('matched')} tensors matched by "
                      f"name; skipped {source.get('only_in_model')} only in the model, "
                      f"{source.get('only_in_reference')} only in the reference", style="dim")
    missing = sum(1 for t in result.tensors if t.status == "missing")
    compared = len(result.tensors) - missing
    console.print(f"{compared} tensors compared" + (f", {missing} not exposed by the engine (fused)"
                                                     if missing else ""), style="dim")
    memory = result.marking.get("memory")
    chunks = memory.get("chunks") if isinstance(memory, dict) else None
    if isinstance(memory, dict) and isinstance(chunks, int) and chunks > 1:
        held = "held" if memory.get("reference_held", True) else "computed again chunk by chunk"
        budget = memory.get("budget_bytes")
        console.print(f"compared in {chunks} chunks within the "
                      f"{format_size(budget if isinstance(budget, int) else 0)} "
                      f"memory budget (FP32 reference {held})", style="dim")
    repro = result.reproduction
    if repro is not None and repro.checked and not repro.reproduces:
        console.print("[yellow]warning[/]: marking tensors changed the engine: the unmarked build "
                      f"{'passes' if repro.unmarked_passed else 'fails'} but the marked one "
                      f"{'passes' if repro.marked_passed else 'fails'}")
    elif repro is not None and not repro.checked:
        console.print(f"[yellow]warning[/]: could not check that marking left the engine unchanged: {repro.reason}")
    inside = sorted({t.node for t in result.tensors if t.fidelity})
    if inside:
        names = ", ".join(escape(n) for n in inside[:3]) + (" ..." if len(inside) > 3 else "")
        console.print(f"[yellow]fidelity[/]: {len(inside)} layer(s) run in FP32 inside ({names}): the emulator "
                      "rounds their inputs and outputs, not each time step or subgraph node, so their FP16 error is "
                      "understated",
                      style="dim")
    risky = [v for v in result.range_violations if not v.folded_by_builder]
    if risky:
        names = ", ".join(v.tensor for v in risky[:3]) + (" ..." if len(risky) > 3 else "")
        console.print(f"[yellow]static check[/]: {len(risky)} constant(s) exceed the FP16 range: {names}")
