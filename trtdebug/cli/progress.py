"""The CLI's side of the library's Progress protocol: what long steps show on stderr."""

from __future__ import annotations

import itertools
import time

from rich.console import Console
from rich.markup import escape


class LineProgress:
    """One dim line per step and per unit of work, on stderr; nothing with `quiet`."""

    def __init__(self, console: Console, quiet: bool = False):
        self.console = console
        self.quiet = quiet
        self._step = ""
        self._count = itertools.count(1)
        self._started = time.perf_counter()

    def begin(self, step: str, total: int | None = None) -> None:
        self._step, self._count, self._started = step, itertools.count(1), time.perf_counter()
        if not self.quiet:
            self.console.print(f"[dim]{escape(step)}{f' ({total})' if total else ''}[/]")

    def advance(self, detail: str = "") -> None:
        number = next(self._count)
        if not self.quiet and detail:
            self.console.print(f"[dim]  {number:>3}[/] {escape(detail)}")

    def end(self) -> None:
        self._step = ""
