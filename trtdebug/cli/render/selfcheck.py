"""Terminal output of `trtdebug selfcheck`: one table a user can paste into a bug report, under a
header naming the versions and the GPU it ran with."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trtdebug.engines.tensorrt.selfcheck import Check, environment


def render_selfcheck(checks: Iterable[Check], console: Console, header: Mapping[str, str] | None = None) -> None:
    checks = list(checks)
    header = environment(checks) if header is None else header
    console.print("\n".join(f"{escape(key)}: {escape(value)}" for key, value in header.items()), soft_wrap=True)
    style = {"ok": "green", "failed": "bold red", "skipped": "yellow"}
    table = Table(title="trtdebug selfcheck", show_lines=False)
    for column in ("check", "status", "seconds", "detail"):
        table.add_column(column, overflow="fold")
    for check in checks:
        table.add_row(escape(check.name), f"[{style[check.status]}]{check.status}[/]",
                      f"{check.seconds:.2f}" if check.seconds else "", escape(check.detail))
    console.print(table)
