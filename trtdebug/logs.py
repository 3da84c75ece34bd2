"""Third-party logging: quiet unless the user asks for it (`trtdebug --verbose`).

trtdebug reports what matters in its own words; onnxruntime's C++ log, Polygraphy's `[I]`/`[W]`
lines and Python warnings (numpy's overflow RuntimeWarnings among them) appear only when verbose.
This module holds the switch; the modules that load those libraries ask it. It never prints.
"""

from __future__ import annotations

import logging
import warnings

verbose = False

# trtdebug's own notes to the user (an input cast to the model's dtype, ...): library modules log them
# here at INFO, the CLI prints each as one `note: ...` line on stderr; Python API callers see them
# through the logging module, as they configure it.
notes = logging.getLogger("trtdebug.notes")


def set_verbose(on: bool) -> None:
    """Called once by the CLI; Python warnings are ignored from here on unless verbose."""
    global verbose
    verbose = on
    warnings.simplefilter("default" if on else "ignore")


def onnxruntime_severity() -> int:
    """onnxruntime log severity: 2 (warnings) when verbose, else 4 (fatal only; errors reach the
    user as trtdebug's one-line messages)."""
    return 2 if verbose else 4


def quiet_polygraphy() -> None:
    """Polygraphy logs `[I] Loading ...` and `[W] 'colored' module ...` on stdout; errors only,
    unless verbose."""
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.INFO if verbose else G_LOGGER.ERROR
