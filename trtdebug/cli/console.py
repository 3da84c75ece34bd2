"""The consoles every command prints to: results on stdout, progress and notes on stderr."""

from __future__ import annotations

import sys

from rich.console import Console

# Reports are often piped to a file or CI log; 80 columns would truncate node names there.
stdout = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
stderr = Console(stderr=True, highlight=False)
