"""Memory of this machine: sizes as users write them, what is available, and giving freed tensor
memory back to the system."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re

from trtdebug.errors import UserError

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
DEFAULT_SHARE = 0.5  # of MemAvailable, without --memory-budget


# Tensors at least this large get their own mapping, returned to the system when freed. Above the
# temporaries of a measuring block (core.analysis.blockwise: 1 MiB of float32, 2 MiB of float64), which the heap
# then reuses: mapped afresh for each block, their pages cost more than the arithmetic on them.
MMAP_THRESHOLD = 4 * 2**20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


@functools.cache  # once per process: the setting stays
def release_freed_tensors() -> None:
    """Make freed tensor memory go back to the system (glibc only; elsewhere nothing changes).

    glibc raises its mmap threshold each time a mapped block is freed, up to 32 MiB; after the first
    freed tensor, tensors of that size come from the heap, which keeps what is freed. Compare frees a
    group of tensors at a time, so without a fixed threshold its resident memory would grow group after
    group as if nothing were freed. Fixing the threshold also stops that dynamic raising."""
    with contextlib.suppress(Exception):  # not glibc, no ctypes
        import ctypes

        libc = ctypes.CDLL(None)  # the process's own symbols, libc's among them (find_library runs ldconfig)
        if hasattr(libc, "mallopt"):
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def parse_size(text: str) -> int:
    """'8GiB', '500MB', '1.5g', '1000000' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match[2].lower() not in _UNITS:
        raise UserError(f"cannot read {text!r} as a memory size: give e.g. 8GiB, 500MB or 1.5GB")
    return int(float(match[1]) * _UNITS[match[2].lower()])


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation: MemAvailable, or free pages; None if unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_budget() -> int:
    available = available_memory()
    return int(available * DEFAULT_SHARE) if available else 8 * 2**30


def size_argument(size: int) -> str:
    """A size as --memory-budget takes it, rounded up to a tenth of its unit: '9.2GiB'."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{math.ceil(size * 10 / scale) / 10:g}{unit}"
    return f"{size}B"


def format_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
