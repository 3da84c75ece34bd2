"""Element-wise work over large arrays, a cache-sized block at a time, blocks spread over threads.

A dozen numpy passes over a tensor of hundreds of MB each stream it through memory; the same passes
over a block of 256K elements stay in (L2/L3) cache. numpy releases the GIL inside its loops, so blocks run
in parallel on a thread pool sized to the CPUs this process may use. Results come back in block
order, so what is computed never depends on the number of threads.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

import numpy as np

BLOCK = 1 << 18  # elements: measured fastest (1 MiB of float32: per-block overhead and cache balanced)
PARALLEL_FROM = 1 << 20  # elements: below this, handing blocks to threads costs more than it saves

T = TypeVar("T")


class Mergeable(Protocol):
    def merge(self: T, other: T) -> T: ...


M = TypeVar("M", bound=Mergeable)


def flat_float(values: np.ndarray) -> np.ndarray:
    """`values` as the one-dimensional float array blocks work over: float32 and float64 as they are (a
    view), anything else as float32, which holds every value and threshold the scans compare."""
    values = np.asarray(values)
    return values.reshape(-1) if values.dtype in (np.float32, np.float64) else values.astype(np.float32).reshape(-1)


def spans(size: int) -> list[tuple[int, int]]:
    return [(start, min(start + BLOCK, size)) for start in range(0, size, BLOCK)] or [(0, 0)]


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=min(cpus(), 16), thread_name_prefix="trtdebug-blocks")


if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads: it makes its own pool
    os.register_at_fork(after_in_child=_pool.cache_clear)


def map(size: int, work: Callable[[int, int], T]) -> list[T]:  # noqa: A001 - blocks.map reads as meant
    """work(start, stop) for every block of an array of `size` elements, in block order."""
    parts = spans(size)
    if size < PARALLEL_FROM or cpus() == 1:
        return [work(a, b) for a, b in parts]
    return list(_pool().map(lambda span: work(*span), parts))


def reduce(size: int, work: Callable[[int, int], M]) -> M:
    """`map`, its per-block results merged in block order."""
    results = map(size, work)
    merged = results[0]
    for result in results[1:]:
        merged = merged.merge(result)
    return merged
