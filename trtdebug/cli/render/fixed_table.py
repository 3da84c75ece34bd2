"""A rich Table whose columns all have fixed widths and never wrap, printed line by line.

rich renders a table cell by cell (padding, wrapping, cropping, shaping each one): 80 cells of the
worst-layers table took longer to print than compare took to measure a small model's tensors. With
every width fixed and nothing wrapping, each line is the cells' text padded to their widths, so
`FixedTable` writes those lines directly: the same characters in the same styles as rich's own
rendering (tests/test_fixed_table.py holds them side by side). A table using anything else rich
offers (captions, footers, lines between rows, other padding) is printed by rich itself.
"""

from __future__ import annotations

from collections.abc import Iterator

from rich.console import Console, ConsoleOptions, RenderableType
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style
from rich.table import Column, Table
from rich.text import Text


class FixedTable:
    """Prints `table` (columns with `width` set, `no_wrap`, plain Text or str cells) as rich would."""

    def __init__(self, table: Table):
        self.table = table

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        if not self.supported():
            return Measurement.get(console, options, self.table)
        return Measurement(self.width, self.width).with_maximum(options.max_width)

    @property
    def width(self) -> int:
        return sum(self._widths()) + len(self.table.columns) + 1

    def _widths(self) -> list[int]:
        return [(column.width or 0) + 2 for column in self.table.columns]  # one space of padding each side

    def supported(self) -> bool:
        t = self.table
        return bool(t.box and t.columns and t.show_edge and t.show_header and not t.show_footer and not t.show_lines
                    and not t.leading and not t.caption and not t.row_styles and t.padding == (0, 1, 0, 1)
                    and t.pad_edge and not t.collapse_padding and t.width is None and t.min_width is None
                    and not t.expand and not t.style
                    and not any(row.end_section for row in t.rows)
                    and all(c.width is not None and c.no_wrap and c.ratio is None for c in t.columns)
                    and all(isinstance(cell, str | Text) and "\n" not in str(cell)
                            for c in t.columns for cell in [c.header, *c.cells]))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        table = self.table
        lines = self._cells(console) if table.box is not None and self.supported() else None
        if table.box is None or lines is None or self.width > options.max_width:
            yield from console.render(table, options)
            return
        widths = self._widths()
        box = table.box.substitute(options, safe=console.safe_box if table.safe_box is None else table.safe_box)
        border = console.get_style(table.style or "") + console.get_style(table.border_style or "")
        if table.title:
            title = table.title if isinstance(table.title, Text) else console.render_str(
                table.title, style=Style.pick_first(table.title_style, "table.title"), highlight=False)
            yield from console.render(title, options.update(width=self.width, justify=table.title_justify,
                                                            highlight=table.highlight, height=None))
        yield Segment(box.get_top(widths), border)
        yield Segment.line()
        for index, cells in enumerate(lines):
            edges = ((box.head_left, box.head_vertical, box.head_right) if index == 0 else
                     (box.foot_left, box.foot_vertical, box.foot_right) if index == len(lines) - 1 else
                     (box.mid_left, box.mid_vertical, box.mid_right))
            yield from self._line(console, cells, edges, border)
            if index == 0:
                yield Segment(box.get_row(widths, "head", edge=True), border)
                yield Segment.line()
        yield Segment(box.get_bottom(widths), border)
        yield Segment.line()

    def _cells(self, console: Console) -> list[list[tuple[Style, Text]]] | None:
        """The header line and each row: every cell's style and text; None where a text is wider than its
        column (rich would crop it)."""
        get_style = console.get_style
        columns = self.table.columns

        def text(cell: RenderableType, column: Column) -> Text:
            return cell if isinstance(cell, Text) else console.render_str(str(cell), highlight=column.highlight)

        header = get_style(self.table.header_style or "")
        lines = [[(header + get_style(c.header_style), text(c.header, c)) for c in columns]]
        cells = [(get_style(c.style or ""), list(c.cells)) for c in columns]
        for index in range(len(self.table.rows)):
            row_style = get_style(self.table.get_row_style(console, index))
            lines.append([(style + row_style, text(values[index], column))
                          for (style, values), column in zip(cells, columns, strict=True)])
        fits = all(t.cell_len <= (c.width or 0) for line in lines for (_, t), c in zip(line, columns, strict=True))
        return lines if fits else None

    def _line(self, console: Console, cells: list[tuple[Style, Text]], edges: tuple[str, str, str],
              border: Style) -> Iterator[Segment]:
        left, divider, right = edges
        line = [Segment(left, border)]
        for number, ((style, text), column) in enumerate(zip(cells, self.table.columns, strict=True)):
            if number:
                line.append(Segment(divider, border))
            gap = (column.width or 0) - text.cell_len
            before = gap if column.justify == "right" else gap // 2 if column.justify == "center" else 0
            # the padding takes the cell's style; the justifying spaces and the text take the text's on top
            justified = style + console.get_style(text.style) if text.style else style
            line += [Segment(" ", style), Segment(" " * before, justified)]
            if text.spans:  # render applies the text's style under its spans
                line += Segment.apply_style(text.render(console, end=""), style)
            else:
                line.append(Segment(text.plain, justified))
            line += [Segment(" " * (gap - before), justified), Segment(" ", style)]
        line.append(Segment(right, border))
        yield from Segment.simplify(segment for segment in line if segment.text)  # fewer segments to write
        yield Segment.line()
