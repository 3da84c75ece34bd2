"""The consoles every command prints to: results on stdout, progress and notes on stderr."""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from rich.console import Console

# Reports are often piped to a file or CI log; 80 columns would truncate node names there.
# emoji=False: a node or tensor name such as "block:cat:1" is printed as it is, not with an emoji in it.
stdout = Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 160)
stderr = Console(stderr=True, highlight=False, emoji=False)


class ClosedPipeSafe:
    """stdout that outlives a closed pipe (`trtdebug compare m.onnx | head -1`): the first
    BrokenPipeError points the descriptor at /dev/null, as Python's signal docs recommend, and
    every later write is dropped, so the command finishes and exits with its own code."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self) -> None:
        self.broken = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def protect_stdout() -> None:
    """Route sys.stdout (what rich and click write to) through ClosedPipeSafe."""
    if not isinstance(sys.stdout, ClosedPipeSafe) and sys.stdout is not None:
        sys.stdout = ClosedPipeSafe(sys.stdout)  # type: ignore[assignment]
