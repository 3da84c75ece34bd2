"""Metrics, defect scans and histograms over large tensors run a cache-sized block at a time on threads
(core.blocks); they say exactly what the same computation over the whole tensor says."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trtdebug.core import blocks
from trtdebug.core.detect import FP16_MIN_NORMAL, detect
from trtdebug.core.histogram import BINS, value_histogram
from trtdebug.core.metrics import _measure_exact, measure

SIZES = [7, blocks.BLOCK * 3 + 11, blocks.PARALLEL_FROM * 2 + 5]  # one block; several; several on threads


def _pair(size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(size)
    ref = (rng.standard_normal(size) * 3).astype(np.float32)
    cand = ref + (rng.standard_normal(size) * 0.01).astype(np.float32)
    cand[::97] += 0.5  # some elements out of tolerance in every block
    return ref, cand


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("relative", [True, False])
def test_blocked_measure_equals_the_element_wise_one(size, relative):
    ref, cand = _pair(size)
    fast, fast_outside = measure(ref, cand, 1e-2, 1e-2, relative)
    exact, exact_outside = _measure_exact(ref, ref, cand, 1e-2, 1e-2, relative)
    np.testing.assert_array_equal(fast_outside, exact_outside)
    for name, value in exact.__dict__.items():
        assert getattr(fast, name) == pytest.approx(value, rel=1e-4, abs=1e-9), name


@pytest.mark.parametrize("size", SIZES)
def test_blocked_histogram_counts_every_value_once(size):
    ref, cand = _pair(size)
    ref[:3], cand[3:6] = 0.0, [np.inf, -np.inf, np.nan]
    cand[-1] = 1e5  # the top edge comes from the candidate
    hist = value_histogram("t", ref, cand)
    finite_cand = np.abs(cand[np.isfinite(cand) & (cand != 0)])
    smallest = min(np.abs(ref[ref != 0]).min(), finite_cand.min())
    low, high = math.floor(math.log10(smallest)), math.ceil(math.log10(1e5))
    assert (hist.edges[0], hist.edges[-1], len(hist.edges)) == (low, high, BINS + 1)
    expected, _ = np.histogram(np.log10(finite_cand.astype(np.float64)), np.asarray(hist.edges))
    # every value counted once; a value within float32 rounding of a bin edge may land in the next bin
    assert sum(hist.candidate) == expected.sum()
    assert np.abs(np.asarray(hist.candidate) - expected).max() <= max(2, expected.max() // 10_000)
    assert sum(hist.reference) == size - 3
    assert dict(hist.special) == {"zero": (3, 0), "inf": (0, 2), "nan": (0, 1)}


@pytest.mark.parametrize("size", SIZES[1:])
def test_blocked_defect_scan_finds_overflow_and_underflow_in_the_last_block(size):
    ref, cand = _pair(size)
    ref[-1], cand[-1] = 70000.0, np.inf
    (overflow,) = detect(ref, cand, np.abs(cand - ref) > 0.1, "fp16", 1e-2, 1e-2)
    assert overflow.kind == "overflow" and overflow.details["elements_inf"] == 1
    assert overflow.details["reference_max_abs"] == 70000.0
    tiny = np.full(size, 0.5, np.float32)
    tiny[-5:] = FP16_MIN_NORMAL / 4
    flushed = tiny.copy()
    flushed[-5:] = 0
    (underflow,) = detect(tiny, flushed, tiny != flushed, "fp16", 1e-2, 1e-2)
    assert underflow.kind == "underflow" and underflow.details["elements_flushed"] == 5
