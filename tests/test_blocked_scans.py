"""Metrics, defect scans and histograms over large tensors run a cache-sized block at a time on threads
(core.analysis.blockwise); they say exactly what the same computation over the whole tensor says."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trtdebug.core.analysis import blockwise
from trtdebug.core.analysis.defects import FP16_MIN_NORMAL, detect
from trtdebug.core.analysis.histograms import BINS, value_histogram
from trtdebug.core.analysis.metrics import REL_FLOOR, measure

SIZES = [7, blockwise.BLOCK * 3 + 11, blockwise.PARALLEL_FROM * 2 + 5]  # one block; several; several on threads


def _pair(size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(size)
    ref = (rng.standard_normal(size) * 3).astype(np.float32)
    cand = ref + (rng.standard_normal(size) * 0.01).astype(np.float32)
    cand[::97] += 0.5  # some elements out of tolerance in every block
    return ref, cand


def _element_wise(r: np.ndarray, c: np.ndarray, atol: float, rtol: float, relative: bool) -> tuple[dict, np.ndarray]:
    """The metrics as their definitions read, over whole arrays in float64: what blocks must reproduce."""
    r, c = r.astype(np.float64), c.astype(np.float64)
    finite_r, both = np.isfinite(r), np.isfinite(r) & np.isfinite(c)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(c - r)
        same = (r == c) | (np.isnan(r) & np.isnan(c))
        err = np.where(both, err, np.where(same, 0.0, np.inf))
        abs_r = np.abs(np.where(finite_r, r, 0.0))
        ref_max = abs_r.max()
        outside = err > atol * (ref_max if relative else 1.0) + rtol * abs_r
        rf, cf, ef = r[both], c[both], err[both]
        new_nonfinite = int(np.count_nonzero(finite_r & ~np.isfinite(c)))
        rr, cc, noise = rf @ rf, cf @ cf, ef @ ef
        snr = -math.inf if new_nonfinite else (math.inf if noise == 0 else 10 * math.log10(rr / noise))
        metrics = {"max_abs": err.max(), "mean_abs": ef.mean(), "cosine": (rf @ cf) / math.sqrt(rr * cc),
                   "snr_db": snr, "frac_outside": outside.mean(), "ref_max_abs": ref_max,
                   "new_nonfinite": new_nonfinite,
                   # relative to |r|, floored at REL_FLOOR of the tensor's max |r| (docs/report-schema.md)
                   "max_rel": math.inf if new_nonfinite else (
                       ef / np.maximum(np.abs(rf), max(REL_FLOOR * ref_max, 2.0**-126))).max()}
    return metrics, outside


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("relative", [True, False])
@pytest.mark.parametrize("special", ["finite", "inf and nan"])
def test_blocked_measure_equals_the_element_wise_definitions(size, relative, special):
    ref, cand = _pair(size)
    if special != "finite":  # in one block only, the others take the finite path
        ref[-4:], cand[-4:] = [np.inf, np.nan, 1.0, -np.inf], [np.inf, np.nan, np.inf, 5.0]
    fast, fast_outside = measure(ref, cand, 1e-2, 1e-2, relative)
    expected, expected_outside = _element_wise(ref, cand, 1e-2, 1e-2, relative)
    np.testing.assert_array_equal(fast_outside, expected_outside)
    for name, value in expected.items():
        assert getattr(fast, name) == pytest.approx(value, rel=1e-4, abs=1e-9), name
    if special != "finite":
        assert fast.new_nonfinite == 1 and fast.max_abs == math.inf and fast.snr_db == -math.inf


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


@pytest.mark.parametrize("size", SIZES[1:])
def test_blocked_mask_check_sees_every_block(size):
    """An additive -1e9 mask that FP16 turns into -inf is absorbed only if everything else is within
    tolerance, whichever block the exception lies in."""
    from trtdebug.core.analysis.metrics import masked_only

    ref, cand = _pair(size)
    cand = ref.copy()
    ref[-7:], cand[-7:] = -1e9, -np.inf
    assert masked_only(ref, cand, 1e-2, 1e-2)
    wrong = cand.copy()
    wrong[3] += 10.0
    assert not masked_only(ref, wrong, 1e-2, 1e-2)
    nan_one_side = cand.copy()
    nan_one_side[blockwise.BLOCK + 1] = np.nan
    assert not masked_only(ref, nan_one_side, 1e-2, 1e-2)
    assert not masked_only(ref[:-7], cand[:-7], 1e-2, 1e-2)  # nothing masked: not a mask


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="fork is POSIX only")
def test_blocked_measure_works_in_a_forked_child():
    """A library user's code may fork after measuring: the child must not wait on the parent's threads."""
    import multiprocessing

    ref, cand = _pair(blockwise.PARALLEL_FROM * 2)
    measure(ref, cand, 1e-2, 1e-2, True)  # the parent's pool exists now
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        result = pool.apply_async(_child_measure, (ref, cand))
        assert result.get(timeout=60) == measure(ref, cand, 1e-2, 1e-2, True)[0].frac_outside


def _child_measure(ref: np.ndarray, cand: np.ndarray) -> float:
    return measure(ref, cand, 1e-2, 1e-2, True)[0].frac_outside


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("special", ["finite", "reference inf", "reference nan", "candidate inf", "beyond fp16"])
def test_defect_scan_counts_what_its_definitions_say(size, special):
    """The scan behind every defect, against its element-wise definition, with and without the inf/NaN
    that let it skip passes (a finite reference within FP16, a candidate known to be finite)."""
    from trtdebug.core.analysis.defects import _Scan, _scan

    ref, cand = _pair(size)
    ref[1::50] = 1e-6  # small values that FP16 flushes
    cand[1::50] = 0.0
    if special == "reference inf":
        ref[2], ref[-2] = np.inf, -np.inf
    elif special == "reference nan":
        ref[3] = np.nan
    elif special == "candidate inf":
        cand[4], cand[-3], cand[5] = np.inf, -np.inf, np.nan
    elif special == "beyond fp16":
        ref[-1] = 7e4
    outside = np.abs(cand - ref) > 1e-3
    finite_r = np.isfinite(ref)
    magnitude = np.where(finite_r, np.abs(ref), 0)
    flushed = outside & (magnitude != 0) & (cand == 0)
    expected = _Scan(float(magnitude.max()), int(np.count_nonzero(magnitude > 65504)),
                     int(np.count_nonzero(finite_r & np.isinf(cand))), int(np.count_nonzero(finite_r & np.isnan(cand))),
                     bool(cand.any()), bool(magnitude.any()), int(np.count_nonzero(flushed)),
                     float(magnitude[flushed].max(initial=0.0)), int(np.count_nonzero(outside)))
    known_finite = [False, True] if np.isfinite(cand).all() else [False]
    for candidate_finite in known_finite:
        scan = blockwise.reduce(
            size, lambda a, b, known=candidate_finite: _scan(ref[a:b], cand[a:b], outside[a:b], known))
        assert scan == expected
