"""The consoles every command prints to: results on stdout, progress and notes on stderr."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

from rich.console import Console

# Reports are often piped to a file or CI log; 80 columns would truncate node names there.
# emoji=False: a node or tensor name such as "block:cat:1" is printed as it is, not with an emoji in it.
stdout = Console(highlight=False, emoji=False,
                 width=None if sys.stdout is not None and sys.stdout.isatty() else 160)
stderr = Console(stderr=True, highlight=False, emoji=False)


class GuardedStream:
    """A standard stream that outlives its reader or its device. A closed pipe (`trtdebug compare
    m.onnx | head -1`) is the reader leaving: the command finishes and keeps its own exit code. Any
    other write failure (stdout on a full disk) is remembered, so the command can say so in one line.
    Either way the descriptor is pointed at /dev/null, as Python's signal docs recommend, so later
    writes (and the interpreter's flush at exit) are dropped silently."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self.broken = False
        self.failure: OSError | None = None  # the first write failure that was not a closed pipe

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except OSError as exc:
                self._drop(exc)
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except OSError as exc:
                self._drop(exc)

    def _drop(self, exc: OSError) -> None:
        self.broken = True
        if not isinstance(exc, BrokenPipeError):
            self.failure = exc
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _opened(stream: TextIO | None, fd: int) -> TextIO:
    """A stream for descriptor `fd` even when the parent closed it (`trtdebug ... >&-`): /dev/null
    opened now takes the lowest free descriptor, which is that one."""
    if stream is not None:
        return stream
    devnull = os.open(os.devnull, os.O_WRONLY)
    if devnull != fd:
        os.dup2(devnull, fd)
        os.close(devnull)
    return open(fd, "w", closefd=False)  # noqa: SIM115 - lives as long as the process


def _encodable(stream: TextIO) -> TextIO:
    """A stream whose encoding cannot hold a character (PYTHONIOENCODING=ascii, a C locale) writes it
    as an escape (conv\\u2192) instead of failing: node names stay recognisable."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")
    return stream


def protect_streams() -> None:
    """Route sys.stdout and sys.stderr (what rich and click write to) through GuardedStream."""
    if not isinstance(sys.stdout, GuardedStream):
        sys.stdout = GuardedStream(_encodable(_opened(sys.stdout, 1)))  # type: ignore[assignment]
    if not isinstance(sys.stderr, GuardedStream):
        sys.stderr = GuardedStream(_encodable(_opened(sys.stderr, 2)))  # type: ignore[assignment]


def stdout_failure() -> OSError | None:
    """Why results could not be written to stdout (not a reader that left), if they could not."""
    return sys.stdout.failure if isinstance(sys.stdout, GuardedStream) else None


class _NoteLines(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        stderr.print(f"note: {record.getMessage()}", style="dim", markup=False, soft_wrap=True)


def show_notes() -> None:
    """The library's notes (trtdebug.logs.notes) as `note: ...` lines on stderr, once per process."""
    from trtdebug import logs

    if not any(isinstance(h, _NoteLines) for h in logs.notes.handlers):
        logs.notes.addHandler(_NoteLines())
        logs.notes.setLevel(logging.INFO)
        logs.notes.propagate = False
