"""The trtdebug CLI as a user runs it: `python -m trtdebug ARGS` in a fresh process, output captured.

The one place tests start the CLI. The child imports trtdebug the way the parent did (PYTHONPATH,
editable install), so a worktree's tests run that worktree's code.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TIMEOUT_S = 300  # a hung CLI fails its test instead of the whole run


def cli_command(*args: object) -> list[str]:
    """The argv of `trtdebug ARGS` (paths and numbers as text)."""
    return [sys.executable, "-m", "trtdebug", *map(str, args)]


def run_cli(*args: object, cwd: Path | str | None = None, env: Mapping[str, str] | None = None,
            timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run `trtdebug ARGS` to its end; returncode, stdout and stderr (text) for the test to judge."""
    return subprocess.run(cli_command(*args), capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout,
                          check=False)


def start_cli(*args: object, **popen: Any) -> subprocess.Popen[str]:
    """Start `trtdebug ARGS` without waiting, stdout and stderr as text pipes: for tests that interrupt
    it, kill it or close its pipes while it runs."""
    return subprocess.Popen(cli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
