"""Ctrl-C answered within a second, even while a native build or run holds on for minutes.

Python only sees SIGINT between bytecodes of the main thread, and a TensorRT build or an
onnxruntime session can stay in native code for minutes. So a command runs its workflow in a
worker thread and the main thread waits on it in short slices; on Ctrl-C it says what was kept
(the fallback journal is fsync'ed per record, so it stays valid) and exits 130 at once, without
waiting for the native call to return.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import click

from trtdebug.core.search.journal import release_held_locks
from trtdebug.errors import EXIT_INTERRUPTED

T = TypeVar("T")
POLL_SECONDS = 0.1


def _stop_worker_processes() -> None:
    """Terminate the worker processes multiprocessing started (fallback --jobs N): os._exit leaves no
    pool shutdown to do it, and a terminal's Ctrl-C reaches them only when they share its process group."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(timeout=1)


def run_interruptible(work: Callable[[], T], interrupted: Callable[[], str] = lambda: "interrupted",
                      before_exit: Callable[[], None] = lambda: None) -> T:
    """`work()` in a worker thread; its result, or its exception re-raised here. On Ctrl-C:
    `before_exit()` (restore the terminal), one line `trtdebug: <interrupted()>`, exit 130.
    `before_exit()` also runs before an exception is re-raised, so its one-line message stands alone."""
    outcome: dict[str, Any] = {}

    def worker() -> None:
        try:
            outcome["result"] = work()
        except BaseException as exc:  # handed to the main thread, which raises it
            outcome["error"] = exc

    thread = threading.Thread(target=worker, name="trtdebug-work", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(POLL_SECONDS)
    except KeyboardInterrupt:
        before_exit()
        release_held_locks()  # os._exit below skips the `with` that would remove the lock files
        _stop_worker_processes()  # --jobs N: spawned judges would outlive us, each holding a model
        click.echo(f"trtdebug: {interrupted()}", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        # The worker may be inside a native call that cannot be cancelled; finishing the
        # interpreter around it could block or crash, so leave now. Every file trtdebug writes
        # is renamed into place only when complete, and the journal is synced per record.
        os._exit(EXIT_INTERRUPTED)
    if "error" in outcome:
        before_exit()
        raise outcome["error"]
    return outcome["result"]
