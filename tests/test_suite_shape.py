"""The suite keeps one way of doing each thing: tests start the CLI only through tests/cli.py, so a
change in how a user runs trtdebug (environment, timeout, interpreter) is made once."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_only_tests_cli_starts_the_cli():
    starts = re.compile(r"""["']-m["']\s*,\s*["']trtdebug["']""")
    offenders = [p.name for p in sorted(TESTS.glob("*.py")) if p.name != "cli.py" and starts.search(p.read_text())]
    assert not offenders, f"start the CLI with tests.cli.run_cli / start_cli / cli_command: {offenders}"
