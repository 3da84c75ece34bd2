"""Error types and the exit codes the CLI maps them to (documented in the README).

0  every final output within tolerance
1  an accuracy problem was found
2  bad usage or bad input (UserError): one line naming the problem and what to do; also a fault of the
   user's environment the user must mend (a full disk, a folder that cannot be written)
3  internal error: a bug in trtdebug, please report it (TRTDEBUG_TRACEBACK=1 shows the traceback)
4  the engine or the GPU runtime failed (EngineError): a crashed build, a CUDA error, out of GPU memory
5  fallback stopped at --max-evaluations: the plan it wrote passes but is not shown to be minimal (or
   no passing plan was found within the budget); it prints the command that resumes the search
130 interrupted
"""

import errno

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_ENGINE = 4
EXIT_BUDGET = 5
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """Bad input or bad usage: the message names the problem and what to do about it."""


class EngineError(Exception):
    """The engine or its runtime failed on input that is valid: a build that crashed, a CUDA error,
    GPU memory exhausted. Not the user's fault, not a bug of trtdebug."""


class BuildRunFailed(EngineError):
    """A reduced-precision build fails to run on inputs the FP32 model runs (e.g. a value rounded to
    zero decides a shape, and a layer gets an empty tensor): the build computes something unusable,
    so a search counts it as a failed candidate; compare reports it as an engine failure."""


def first_line(exc: BaseException) -> str:
    """The first line of a library's exception message (they can be pages long), or its type's name."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# Faults of the machine around trtdebug, not of its code: a full disk, a read-only or forbidden folder.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                                errno.EIO})


def environment_fault(exc: BaseException) -> str | None:
    """One line for an OSError the user's environment caused (None for anything else)."""
    if not isinstance(exc, OSError) or exc.errno not in ENVIRONMENT_ERRNOS:
        return None
    where = f" {exc.filename}" if exc.filename else ""
    hint = "free some space or write elsewhere" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else \
        "choose a place you can write to"
    return f"cannot write{where}: {exc.strerror or type(exc).__name__} ({hint})"
