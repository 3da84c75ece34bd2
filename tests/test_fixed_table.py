"""FixedTable prints the worst-layers table line by line; what it prints must be what rich prints for the
same table: the same characters in the same styles, at the width rich measures."""

from __future__ import annotations

import pytest
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from trtdebug.cli.render.compare import _worst_table
from trtdebug.cli.render.fixed_table import FixedTable


def styled_characters(renderable: object, width: int = 400) -> list[tuple[str, str]]:
    """Every printed character with its style, as a terminal would show it."""
    console = Console(width=width, force_terminal=True, color_system="truecolor", highlight=False, emoji=False)
    return [(char, str(segment.style) if segment.style else "none")
            for segment in console.render(renderable) if not segment.control for char in segment.text]


@pytest.fixture(scope="module")
def compared(planted_models):
    from trtdebug.core.analysis.metrics import Tolerance
    from trtdebug.core.model.feeds import generate_feeds, resolve_shapes
    from trtdebug.core.model.graph import Model
    from trtdebug.core.plans.precision_plan import PrecisionPlan
    from trtdebug.engines.emulator.engine import EmulatorEngine
    from trtdebug.workflows.compare import run_compare
    from trtdebug.workflows.problem import Problem

    results = {}
    for name in ("residual_overflow", "overflow", "clean"):
        model = Model.load(planted_models[name][0])
        problem = Problem.prepare(model, generate_feeds(model, resolve_shapes(model, {})),
                                  Tolerance.for_precision("fp16"))
        results[name] = run_compare(problem, EmulatorEngine(), PrecisionPlan("fp16"), local_scope="all")
    return results


@pytest.mark.parametrize("name", ["residual_overflow", "overflow", "clean"])
@pytest.mark.parametrize("with_local", [True, False])
def test_worst_layers_print_as_rich_prints_them(compared, name, with_local):
    table = _worst_table(compared[name].worst(10), with_local)
    assert any(t.status == "introduced" for t in compared[name].worst(10)) or name == "clean"  # red rows too
    fixed = FixedTable(table)
    assert styled_characters(fixed) == styled_characters(table)
    console = Console(width=10_000)
    assert fixed.width == Measurement.get(console, console.options, table).maximum


def _odd_table() -> Table:
    table = Table(title=Text("Odd ", style="bold") + Text("cells", style="underline"), header_style="bold magenta")
    for header, justify in (("#", "right"), ("[not markup] name", "left"), ("mid", "center")):
        table.add_column(header, justify=justify, no_wrap=True, style="cyan" if justify == "center" else None)
    table.add_row(Text("1"), Text("[bold]conv[/]"), Text("x"), style="red")
    table.add_row(Text("22"), Text("卷积层 conv"), Text("yy", style="green"))
    table.add_row(Text("333"), Text("a", style="italic") + Text(" b"), Text(""), style="bold on blue")
    for column in table.columns:
        column.width = max(Text.from_markup(str(column.header)).cell_len, *(c.cell_len for c in column.cells))
    return table


def test_styles_justification_and_wide_characters_as_rich():
    table = _odd_table()
    assert styled_characters(FixedTable(table)) == styled_characters(table)


def test_tables_it_does_not_handle_are_printed_by_rich():
    table = _odd_table()
    table.caption = "a caption"
    assert styled_characters(FixedTable(table)) == styled_characters(table)
    unfixed = _odd_table()
    unfixed.columns[0].width = None  # measured by rich, as rich measures it
    console = Console(width=200)
    assert Measurement.get(console, console.options, FixedTable(unfixed)) == Measurement.get(
        console, console.options, unfixed)
    assert styled_characters(FixedTable(unfixed)) == styled_characters(unfixed)
    cropped = _odd_table()
    cropped.columns[1].width = 3  # rich cuts the names down; FixedTable leaves that to rich
    assert styled_characters(FixedTable(cropped)) == styled_characters(cropped)
    narrow = _odd_table()
    assert styled_characters(FixedTable(narrow), width=12) == styled_characters(narrow, width=12)
