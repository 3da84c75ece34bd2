"""Progress on stderr when it is a pipe or a log: plain lines, each whole."""

from __future__ import annotations

import os
from pathlib import Path

from tests.cli import run_cli

ROOT = Path(__file__).resolve().parent.parent


def test_piped_progress_lines_are_never_wrapped(planted_models):
    """rich gives a pipe 80 columns; a step line longer than that must not leave its time on a line
    of its own ("...reference's inputs: done in" then "0.0s")."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    run = run_cli("compare", planted_models["overflow"][0], env=env, cwd=ROOT)
    assert run.returncode == 1, run.stderr
    lines = run.stderr.splitlines()
    long_steps = [line for line in lines if len(line) > 80]
    assert long_steps, f"no step line over 80 columns to check:\n{run.stderr}"
    for line in lines:
        assert line.endswith("...") or " done in " in line or line.strip()[0].isdigit(), \
            f"a progress line was cut:\n{run.stderr}"
