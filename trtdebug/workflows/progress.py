"""How long work reports progress: a small callback protocol the CLI implements.

A workflow announces each step (`begin`, with a total when it is known), reports each unit of
work done in it (`advance`, with a short detail such as a build's verdict) and closes it (`end`).
The library never prints; `SILENT` is the default for library callers.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def begin(self, step: str, total: int | None = None) -> None: ...

    def advance(self, detail: str = "") -> None: ...

    def end(self) -> None: ...


class SilentProgress:
    def begin(self, step: str, total: int | None = None) -> None:
        pass

    def advance(self, detail: str = "") -> None:
        pass

    def end(self) -> None:
        pass


SILENT: Progress = SilentProgress()
