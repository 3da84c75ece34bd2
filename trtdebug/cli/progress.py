"""The CLI's side of the library's Progress protocol: what long steps show on stderr.

On a terminal, rich progress bars (a spinner where the total is unknown, count and time left where
it is known); when stderr is a pipe or a log, one plain line per step and per unit of work;
with `--quiet`, nothing. Steps nest (a compare run inside fallback's ranking step), and workflows
report from the worker thread the command runs them in (cli.interrupt), so every method is safe to
call from another thread: rich's Progress locks its own state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from trtdebug.workflows.progress import SILENT
from trtdebug.workflows.progress import Progress as ProgressProtocol


def quiet_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--quiet", "-q", is_flag=True,
                        help="No progress output on stderr (for scripts); results still go to stdout.")(func)


class LineProgress:
    """Plain dim lines for logs and pipes: a step's line, one per unit of work, its time taken.

    A step's first line waits until the step reports work or ends, so a step that fails at once
    (a missing file) leaves only the one-line error on stderr. Lines are never wrapped: a pipe has no
    width (rich assumes 80 columns), and a log line cut in two loses its time to a line of its own."""

    def __init__(self, console: Console):
        self.console = console
        self._steps: list[_Step] = []
        self._lock = threading.Lock()

    def begin(self, step: str, total: int | None = None) -> None:
        with self._lock:
            self._announce()
            self._steps.append(_Step(step, total))

    def advance(self, detail: str = "") -> None:
        with self._lock:
            if not self._steps:
                return
            self._announce()
            current = self._steps[-1]
            current.done += 1
            if detail:
                count = f"{current.done}/{current.total}" if current.total else f"{current.done}"
                self.console.print(f"[dim]{'  ' * len(self._steps)}{count:>7}[/] {escape(detail)}", soft_wrap=True)

    def end(self) -> None:
        with self._lock:
            if not self._steps:
                return
            step = self._steps.pop()
            self.console.print(f"[dim]{'  ' * len(self._steps)}{escape(step.name)}: done in "
                               f"{time.perf_counter() - step.started:.1f}s[/]", soft_wrap=True)

    def _announce(self) -> None:
        for depth, step in enumerate(self._steps):
            if not step.announced:
                step.announced = True
                self.console.print(f"[dim]{'  ' * depth}{escape(step.name)}"
                                   f"{f' ({step.total})' if step.total else ''}...[/]", soft_wrap=True)


class _Step:
    def __init__(self, name: str, total: int | None):
        self.name, self.total, self.done = name, total, 0
        self.started = time.perf_counter()
        self.announced = False


class BarProgress:
    """rich progress bars on a terminal, one line per open step; finished steps stay as a line."""

    def __init__(self, console: Console):
        self.bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24),
                             MofNCompleteColumn(), TextColumn("[dim]{task.fields[detail]}"),
                             TimeElapsedColumn(), TimeRemainingColumn(compact=True),
                             console=console, transient=True, redirect_stdout=False, redirect_stderr=False)
        self.console = console
        self._tasks: list[tuple[TaskID, str, float]] = []
        self._lock = threading.Lock()

    def begin(self, step: str, total: int | None = None) -> None:
        with self._lock:
            if not self._tasks:
                self.bars.start()
            indent = "  " * len(self._tasks)
            task = self.bars.add_task(indent + escape(step), total=total, detail="")
            self._tasks.append((task, step, time.perf_counter()))

    def advance(self, detail: str = "") -> None:
        with self._lock:
            if self._tasks:
                self.bars.update(self._tasks[-1][0], advance=1, detail=escape(detail))

    def end(self) -> None:
        with self._lock:
            if not self._tasks:
                return
            task, step, started = self._tasks.pop()
            self.bars.remove_task(task)
            self.bars.console.print(f"[dim]{'  ' * len(self._tasks)}{escape(step)}: done in "
                                    f"{time.perf_counter() - started:.1f}s[/]")
            if not self._tasks:
                self.bars.stop()

    def stop(self) -> None:
        """Leave the terminal clean (cursor shown, bars gone) before an early exit."""
        with self._lock:
            self._tasks.clear()
            self.bars.stop()


def progress_for(console: Console, quiet: bool = False) -> ProgressProtocol:
    """Bars on a terminal, plain lines elsewhere, nothing with --quiet."""
    if quiet:
        return SILENT
    if console.is_terminal:
        return BarProgress(console)
    return LineProgress(console)


def stop_display(progress: ProgressProtocol) -> None:
    if isinstance(progress, BarProgress):
        progress.stop()
