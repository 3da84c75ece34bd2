"""Per-tensor comparison of a candidate run against the FP32 reference.

Final outputs are checked with the user's atol/rtol as given (|c - r| <= atol + rtol * |r|, the
np.allclose rule; per output with --output-tol): the verdict, the report's output rows and the JSON
`outputs` section all use exactly this. Intermediate tensors live at arbitrary scales, so there
atol is taken relative to the tensor's own magnitude (atol * max|r|): a tensor of values around
1e-6 that underflowed to zero is wrong, and a tensor of values around 1e4 is not wrong by 0.1.

Values beyond FP16's range that the model itself absorbs (an additive -1e9 or -3.4e38 mask that
becomes -inf and feeds a Softmax) are compared by pattern: when such a tensor is wrong only where
the reference is beyond FP16's range, with an infinity of the same sign, and none of its consumers
is wrong, it is `absorbed`, not an error.

A wrong tensor is *introduced* where its layer is wrong on its own (local error, where the engine
can compute it) or where none of its inputs is wrong; otherwise the error is *propagated* from
upstream. A layer that is exact on its own inputs never introduces error: one whose local error is
zero (an FP32 Concat of FP16 inputs, a dequantize of INT8 codes that changed upstream), or one that
only moves data (DATA_MOVEMENT) while an input already differs, however little.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

import numpy as np

from trtdebug import __version__
from trtdebug.core.analysis import blockwise
from trtdebug.core.analysis.defects import Defect, all_close, detect
from trtdebug.core.analysis.histograms import ValueHistogram, value_histogram
from trtdebug.core.model.data_dependent import deciding_tensors
from trtdebug.core.model.graph import FP16_MAX, Model, RangeViolation
from trtdebug.core.system import files

# What the JSON report holds: an engine's notes in its own words are of this shape.
JsonValue: TypeAlias = "None | bool | int | float | str | list[JsonValue] | dict[str, JsonValue]"

# Ops that only move or select values: their output differs from the reference only where an input does.
DATA_MOVEMENT = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Concat", "Split",
                           "Slice", "Gather", "GatherElements", "GatherND", "Expand", "Tile", "DepthToSpace",
                           "SpaceToDepth"})

# max_rel is |c - r| / max(|r|, REL_FLOOR * max|r|): references near zero (a ReLU's zeros, a Sigmoid's
# tails) would otherwise give ratios of 1e+31 that say nothing.
REL_FLOOR = 1e-3

DEFAULT_TOLERANCES = {"fp32": (1e-4, 1e-4), "bf16": (5e-2, 5e-2), "fp16": (1e-2, 1e-2), "int8": (1e-1, 1e-1),
                      "fp8": (1e-1, 1e-1), "int4": (1e-1, 1e-1)}


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    per_output: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def for_precision(cls, precision: str, atol: float | None = None, rtol: float | None = None,
                      per_output: Mapping[str, tuple[float, float]] | None = None) -> Tolerance:
        default_atol, default_rtol = DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["fp16"])
        return cls(default_atol if atol is None else atol, default_rtol if rtol is None else rtol,
                   dict(per_output or {}))

    def for_output(self, name: str) -> tuple[float, float]:
        return self.per_output.get(name, (self.atol, self.rtol))


@dataclass
class Metrics:
    max_abs: float
    mean_abs: float
    max_rel: float
    cosine: float
    snr_db: float
    frac_outside: float
    ref_max_abs: float
    new_nonfinite: int  # elements non-finite in the candidate but finite in the reference

    @property
    def bad(self) -> bool:
        return self.frac_outside > 0 or self.new_nonfinite > 0

    def to_json(self) -> dict[str, float | int | None]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in self.__dict__.items()}


def share_text(fraction: float) -> str:
    """A share of elements as every table and reason prints it: one decimal, and a share that is
    neither none nor all never reads 0.0% or 100.0% (0.04% of a tensor out of tolerance is not none)."""
    if 0 < fraction < 0.0005:
        return "<0.1%"
    if 0.9995 <= fraction < 1:
        return ">99.9%"
    return f"{fraction:.1%}"


def measure(ref: np.ndarray, cand: np.ndarray, atol: float, rtol: float,
            relative_atol: bool) -> tuple[Metrics, np.ndarray]:
    """Error metrics, and the mask of elements outside tolerance. Shapes must have equal size."""
    metrics, outside, _ = _measure(ref, cand, atol, rtol, relative_atol)
    return metrics, outside


def _measure(ref: np.ndarray, cand: np.ndarray, atol: float, rtol: float,
             relative_atol: bool) -> tuple[Metrics, np.ndarray, bool]:
    """`measure`, and whether every candidate value is finite.

    Tensors are measured a cache-sized block at a time, blocks spread over threads (numpy releases the
    GIL): one read of each tensor for the metrics, a second for the mask only where some element may
    be outside tolerance, instead of a dozen passes through memory. The same inf or NaN on both sides
    is no error; any other non-finite mismatch is an infinite one, and a value that became inf/NaN
    where the reference is finite makes the SNR -inf."""
    r, c = blockwise.flat_float(ref), blockwise.flat_float(cand)
    if not r.size:
        return Metrics(0.0, 0.0, 0.0, 1.0, math.inf, 0.0, 0.0, 0), np.zeros(ref.shape, bool), True
    sums = blockwise.reduce(r.size, lambda a, b: _block_sums(r[a:b], c[a:b]))
    bound = atol * (sums.ref_max if relative_atol else 1.0)
    outside = np.zeros(r.size, dtype=bool)
    outside_count = 0
    rel_floor = max(REL_FLOOR * sums.ref_max, float(np.finfo(np.float32).tiny))
    # Without a second pass, the per-element ratio is known against a tiny floor only; no element's
    # floored ratio exceeds max_abs / floor, so the smaller of the two bounds it (and is exact but in rare cases).
    max_rel = min(sums.max_rel, sums.max_abs / rel_floor)
    if sums.max_abs > bound:  # otherwise no element can be outside: the second pass is needed rarely
        passes = blockwise.map(r.size, lambda a, b: _outside_block(r[a:b], c[a:b], bound, rtol, rel_floor,
                                                                   outside[a:b]))
        outside_count = sum(count for count, _ in passes)
        max_rel = max(rel for _, rel in passes)
    norms = math.sqrt(sums.rr * sums.cc)
    cosine = max(-1.0, min(1.0, sums.rc / norms)) if norms > 0 else (1.0 if sums.rr == sums.cc == 0 else 0.0)
    snr = math.inf if sums.noise == 0 else (10 * math.log10(sums.rr / sums.noise) if sums.rr > 0 else -math.inf)
    if sums.new_nonfinite:  # values that became inf/NaN are infinitely wrong, whatever the finite rest says
        snr, max_rel = -math.inf, math.inf
    metrics = Metrics(max_abs=sums.max_abs, mean_abs=sums.abs_sum / sums.finite if sums.finite else 0.0,
                      max_rel=max_rel, cosine=cosine, snr_db=snr, frac_outside=outside_count / r.size,
                      ref_max_abs=sums.ref_max, new_nonfinite=sums.new_nonfinite)
    return metrics, outside.reshape(ref.shape), sums.candidate_nonfinite == 0


@dataclass
class _Sums:
    """Per-block reductions of `_block_sums`, merged in block order (the result never depends on threads).
    Sums and max_rel are over the elements finite on both sides."""

    rr: float = 0.0
    cc: float = 0.0
    rc: float = 0.0
    noise: float = 0.0  # sum of squared errors
    abs_sum: float = 0.0
    finite: int = 0  # elements finite on both sides
    max_abs: float = 0.0  # inf where a non-finite value is not matched by the same on the other side
    ref_max: float = 0.0  # over finite reference values
    max_rel: float = 0.0
    new_nonfinite: int = 0  # finite in the reference, inf/NaN in the candidate
    candidate_nonfinite: int = 0

    def merge(self, other: _Sums) -> _Sums:
        return _Sums(self.rr + other.rr, self.cc + other.cc, self.rc + other.rc, self.noise + other.noise,
                     self.abs_sum + other.abs_sum, self.finite + other.finite, max(self.max_abs, other.max_abs),
                     max(self.ref_max, other.ref_max), max(self.max_rel, other.max_rel),
                     self.new_nonfinite + other.new_nonfinite, self.candidate_nonfinite + other.candidate_nonfinite)


def _block_sums(r: np.ndarray, c: np.ndarray) -> _Sums:
    with np.errstate(invalid="ignore", over="ignore"):
        rr, cc = float(np.dot(r, r)), float(np.dot(c, c))  # inf or NaN when any value is not finite
        if not (math.isfinite(rr) and math.isfinite(cc)):
            return _nonfinite_block_sums(r, c)
        err = np.subtract(c, r)
        np.abs(err, out=err)
        work = np.abs(r)
        # BLAS dot products are the cheapest reductions numpy has; a sum is a dot with ones
        sums = _Sums(rr, cc, float(np.dot(r, c)), float(np.dot(err, err)),
                     float(np.dot(err, _ones(err.size, err.dtype))), err.size, float(err.max()), float(work.max()))
        np.maximum(work, np.finfo(np.float32).tiny, out=work)
        np.divide(err, work, out=work)
        sums.max_rel = float(work.max())
    return sums


def _nonfinite_block_sums(r: np.ndarray, c: np.ndarray) -> _Sums:
    """`_block_sums` of a block holding inf or NaN (or values whose squares overflow) on either side:
    elements not finite on both sides are zeroed out of the sums (cheaper than selecting the others)."""
    finite_r, finite_c = np.isfinite(r), np.isfinite(c)
    both = finite_r & finite_c
    if not both.any():  # no element finite on both sides (a NaN tensor): nothing to sum, the counts only
        return _Sums(max_abs=math.inf if _mismatched(r, c, both).any() else 0.0,
                     ref_max=float(np.abs(np.where(finite_r, r, 0)).max()),
                     new_nonfinite=int(np.count_nonzero(finite_r & ~finite_c)),
                     candidate_nonfinite=int(np.count_nonzero(~finite_c)))
    with np.errstate(invalid="ignore", over="ignore"):
        rf, cf = np.where(both, r, 0).astype(r.dtype, copy=False), np.where(both, c, 0).astype(c.dtype, copy=False)
        err = np.abs(cf - rf)
        mismatch = _mismatched(r, c, both)
        relative = err / np.maximum(np.abs(rf), np.finfo(np.float32).tiny)
        return _Sums(float(np.dot(rf, rf)), float(np.dot(cf, cf)), float(np.dot(rf, cf)), float(np.dot(err, err)),
                     float(err.sum(dtype=np.float64)), int(np.count_nonzero(both)),
                     math.inf if mismatch.any() else float(err.max()),
                     float(np.abs(np.where(finite_r, r, 0)).max()), float(relative.max()),
                     int(np.count_nonzero(finite_r & ~finite_c)), int(np.count_nonzero(~finite_c)))


def _mismatched(r: np.ndarray, c: np.ndarray, both_finite: np.ndarray) -> np.ndarray:
    """Elements where some side is inf/NaN and the other does not hold the same inf or a NaN too."""
    return ~both_finite & ~((r == c) | (np.isnan(r) & np.isnan(c)))


def _outside_block(r: np.ndarray, c: np.ndarray, bound: float, rtol: float, rel_floor: float,
                   out: np.ndarray) -> tuple[int, float]:
    """Elements outside tolerance (marked in `out`, counted), and the block's relative error with its floor."""
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.subtract(c, r)
        np.abs(err, out=err)
        work = np.abs(r)
        if not math.isfinite(float(err.max())):  # inf or NaN on some side (a finite difference needs both finite)
            finite_r = np.isfinite(r)
            both = finite_r & np.isfinite(c)
            if not both.any():  # a NaN tensor: outside exactly where the two sides differ
                np.copyto(out, _mismatched(r, c, both))
                return int(np.count_nonzero(out)), 0.0
            err[~both] = 0
            err[_mismatched(r, c, both)] = np.inf
            work[~finite_r] = 0  # a non-finite reference grants no relative tolerance
            relative_err = np.where(both, err, 0)
        else:
            relative_err = err
        floored = np.maximum(work, rel_floor)
        max_rel = float(np.max(relative_err / floored, initial=0.0))
        work *= rtol
        work += bound
        np.greater(err, work, out=out)
    return int(np.count_nonzero(out)), max_rel


@functools.cache
def _ones(size: int, dtype: np.dtype) -> np.ndarray:
    ones = np.ones(size, dtype)
    ones.flags.writeable = False
    return ones


@dataclass
class TensorReport:
    tensor: str
    node: str
    op_type: str
    index: int  # position in topological order
    shape: tuple[int, ...]
    is_output: bool
    status: str  # ok | introduced | propagated | absorbed | missing (not exposed by the engine)
    accumulated: Metrics | None = None
    local: Metrics | None = None
    defects: list[Defect] = field(default_factory=list)
    layer: str = ""  # engine layer that computes it
    precision: str = ""
    fidelity: str = ""  # a limit of the engine's emulation at this tensor ("FP32 inside": recurrent layers)


@dataclass(frozen=True)
class Culprit:
    """A tensor whose error explains the failure, as the headline names it."""

    tensor: str
    node: str
    op_type: str
    creates_nonfinite: bool  # values became inf/NaN here while the reference is finite
    explained: float | None  # share of the final-output error that its reference value removes (None: not measured)
    reason: str
    chain: tuple[str, ...] = ()  # nodes named together (a chain, or a span of layers), `node` the last


@dataclass(frozen=True)
class Reproduction:
    """Whether the marked build (tensors exposed) still shows the unmarked build's verdict."""

    checked: bool
    reason: str = ""  # why it could not be checked
    unmarked_passed: bool | None = None
    marked_passed: bool | None = None
    unmarked_reason: str = ""

    @property
    def reproduces(self) -> bool | None:
        return None if not self.checked else self.unmarked_passed == self.marked_passed

    def to_json(self) -> dict[str, Any]:
        return {"checked": self.checked, "reason": self.reason, "unmarked_passed": self.unmarked_passed,
                "marked_passed": self.marked_passed, "reproduces": self.reproduces,
                "unmarked_reason": self.unmarked_reason}


class EngineLayer(Protocol):
    """One layer of the build as a comparison reports it (engines.base.LayerInfo is one)."""

    @property
    def name(self) -> str: ...
    @property
    def onnx_nodes(self) -> tuple[str, ...]: ...
    @property
    def precision(self) -> str: ...
    @property
    def tactic(self) -> str: ...
    @property
    def op_type(self) -> str: ...
    @property
    def outputs(self) -> tuple[str, ...]: ...
    @property
    def alternatives(self) -> tuple[str, ...]: ...
    @property
    def extra(self) -> Mapping[str, Any]: ...


# Which layers' local error compare computes: those writing tensors out of tolerance, or every one.
LOCAL_SCOPES = ("wrong", "all")
DEFAULT_LOCAL_SCOPE = "wrong"

REPORT_FORMAT = "trtdebug.compare-report"
REPORT_VERSION = 1


@dataclass(frozen=True)
class CompareResult:
    """Where a build is wrong: built once by workflows.compare.run_compare, never changed after."""

    model: str
    engine: str
    precision: str
    tolerance: Tolerance
    tensors: tuple[TensorReport, ...]
    passed: bool
    verdict: str = ""  # why the final outputs failed ("" when they passed)
    check: str = ""  # the --check command that judged the outputs instead of the tolerance
    marking: Mapping[str, JsonValue] = field(default_factory=dict)  # what the engine exposed, in its own words
    local_error: bool = False  # whether local (per-layer, reference-fed) error was computed
    local_scope: str = ""  # for which layers: "wrong" (those writing tensors out of tolerance) or "all"
    kept: tuple[str, ...] = ()  # nodes the plan keeps above the default precision
    bans: int = 0  # tactic bans the build applied
    reproduction: Reproduction | None = None  # None: the engine marks exactly, nothing to check
    culprits: tuple[Culprit, ...] = ()  # what explains the failure, most important first
    culprits_explain: float | None = None  # share of the output error all culprits together account for
    output_tolerances: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # (atol, rtol) per output
    layers: tuple[EngineLayer, ...] = ()  # the build's layers
    range_violations: tuple[RangeViolation, ...] = ()  # constants beyond FP16's range
    # culprit tensor -> its values' histograms; only with run_compare(histograms=True), for the HTML report
    histograms: Mapping[str, ValueHistogram] = field(default_factory=dict)
    # engines that cannot isolate a layer: rounding or kernel per layer, realized precision (workflows.diagnose)
    diagnosis: Mapping[str, JsonValue] = field(default_factory=dict)

    @property
    def outputs(self) -> list[TensorReport]:
        return [t for t in self.tensors if t.is_output]

    @property
    def introduced(self) -> list[TensorReport]:
        return [t for t in self.tensors if t.status == "introduced"]

    @property
    def first_introduced(self) -> TensorReport | None:
        introduced = self.introduced
        return introduced[0] if introduced else None

    def worst(self, n: int = 10) -> list[TensorReport]:
        measured = [t for t in self.tensors if t.accumulated is not None and t.accumulated.bad]
        return sorted(measured, key=_badness, reverse=True)[:n]

    def tensor(self, name: str) -> TensorReport:
        return next(t for t in self.tensors if t.tensor == name)

    def to_json(self) -> dict[str, Any]:
        """The JSON report `trtdebug compare --json` writes (schema: docs/report-schema.md)."""
        first = self.culprits[0].tensor if self.culprits else None
        return files.versioned(REPORT_FORMAT, REPORT_VERSION, {
            "trtdebug": __version__,
            "model": self.model,
            "engine": self.engine,
            "precision": self.precision,
            "tolerance": {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol,
                          "per_output": {k: list(v) for k, v in self.tolerance.per_output.items()}},
            "passed": self.passed,
            "verdict": self.verdict,
            "check": self.check or None,
            "first_introduced": first,
            "culprits": [{"tensor": c.tensor, "node": c.node, "op_type": c.op_type,
                          "creates_nonfinite": c.creates_nonfinite, "explained": c.explained, "reason": c.reason,
                          "chain": list(c.chain)}
                         for c in self.culprits],
            "culprits_explain": self.culprits_explain,
            "outputs": {t.tensor: self._output_json(t) for t in self.outputs},
            "tensors": [_tensor_json(t) for t in self.tensors],
            "layers": [_layer_json(layer) for layer in self.layers],
            "range_violations": [{"tensor": v.tensor, "max_abs": v.max_abs, "consumers": list(v.consumers),
                                  "folded_by_builder": v.folded_by_builder} for v in self.range_violations],
            "diagnosis": _jsonable(self.diagnosis),
            "notes": _jsonable({"marking": self.marking, "local_error": self.local_error,
                                "local_error_scope": self.local_scope,
                                "plan": {"default": self.precision, "kept": list(self.kept)}, "bans": self.bans,
                                "reproduction": None if self.reproduction is None else self.reproduction.to_json()}),
        })

    def _output_json(self, t: TensorReport) -> dict[str, Any]:
        """An output judged exactly as the verdict judges it, with the tolerance used."""
        atol, rtol = self.output_tolerances.get(t.tensor, (self.tolerance.atol, self.tolerance.rtol))
        return {"passed": t.status in ("ok", "absorbed"), "atol": atol, "rtol": rtol,
                "metrics": None if t.accumulated is None else t.accumulated.to_json()}


def _tensor_json(t: TensorReport) -> dict[str, Any]:
    return {"tensor": t.tensor, "node": t.node, "op_type": t.op_type, "index": t.index,
            "shape": list(t.shape), "is_output": t.is_output, "status": t.status, "layer": t.layer,
            "precision": t.precision, "fidelity": t.fidelity,
            "accumulated": None if t.accumulated is None else t.accumulated.to_json(),
            "local": None if t.local is None else t.local.to_json(),
            "defects": [{"kind": d.kind, "message": d.message, "details": _jsonable(d.details)}
                        for d in t.defects]}


def _layer_json(layer: EngineLayer) -> dict[str, Any]:
    return {"name": layer.name, "onnx_nodes": list(layer.onnx_nodes), "precision": layer.precision,
            "tactic": layer.tactic, "op_type": layer.op_type, "outputs": list(layer.outputs),
            "alternatives": list(layer.alternatives)}


def _jsonable(value: object) -> JsonValue:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _badness(t: TensorReport) -> tuple[int, float, float]:
    m = t.accumulated
    assert m is not None
    return (1 if t.status == "introduced" else 0, m.frac_outside, -m.snr_db)


@dataclass
class Verdict:
    """Whether final outputs pass (tolerance or a --check command); what every search evaluates."""

    passed: bool
    outputs: dict[str, Metrics]
    reason: str = ""
    build_failed: bool = False  # the candidate could not be built at all


def judge_outputs(model: Model, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                  tolerance: Tolerance) -> Verdict:
    metrics: dict[str, Metrics] = {}
    failing = []
    for spec in model.outputs:
        if spec.name not in candidate:
            return Verdict(False, metrics, f"engine did not produce output {spec.name!r}")
        ref, cand = np.asarray(reference[spec.name]), np.asarray(candidate[spec.name])
        if ref.size != cand.size:
            deciders = deciding_tensors(model, spec.name)
            decided = (f": its shape depends on computed values, decided by {', '.join(deciders[-3:])}"
                       if deciders else "")
            return Verdict(False, metrics, f"output {spec.name!r} has shape {list(cand.shape)}, "
                                           f"expected {list(ref.shape)}{decided}")
        if ref.dtype.kind not in "fc":
            if not np.array_equal(ref.reshape(-1), cand.reshape(-1)):
                failing.append(spec.name)
            continue
        atol, rtol = tolerance.for_output(spec.name)
        metrics[spec.name], _ = measure(ref, cand, atol, rtol, relative_atol=False)
        if metrics[spec.name].bad:
            failing.append(spec.name)
    reason = f"outputs out of tolerance: {', '.join(failing)}" if failing else ""
    return Verdict(not failing, metrics, reason)


def compare_tensors(model: Model, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                    tolerance: Tolerance, local: Mapping[str, np.ndarray] | None = None,
                    layer_of: Mapping[str, tuple[str, str]] | None = None, engine: str = "",
                    precision: str = "") -> CompareResult:
    """Compare every float tensor the model defines, in topological order.

    `layer_of` maps a tensor to (engine layer name, layer precision), where the engine says.
    """
    comparer = TensorComparer(model, tolerance, layer_of, engine, precision, local is not None)
    comparer.add([*(i.name for i in model.inputs), *model.intermediate_tensors()], reference, candidate, local)
    return comparer.finish()


class TensorComparer:
    """`compare_tensors` fed a group of tensors at a time (in topological order), keeping only metrics and
    small summaries: what the verdict needs (final outputs), whether each candidate tensor holds inf/NaN,
    whether a wrong tensor only carries a mask (the absorption walk), and the values' histograms of the
    first introduced errors. Values can be freed as soon as their group is added."""

    def __init__(self, model: Model, tolerance: Tolerance, layer_of: Mapping[str, tuple[str, str]] | None = None,
                 engine: str = "", precision: str = "", local: bool = False, histograms: int = 0,
                 inspect_wrong: Callable[[TensorReport, np.ndarray, np.ndarray], None] | None = None):
        self.model, self.tolerance, self.engine, self.precision = model, tolerance, engine, precision
        self.inspect_wrong = inspect_wrong  # sees each wrong tensor's values once, while they live
        self.layer_of = layer_of or {}
        self.local = local
        self.output_names = {o.name for o in model.outputs}
        self.reports: list[TensorReport] = []
        self.tainted: set[str] = set()  # tensors whose values are wrong, or missing downstream of wrong ones
        self.differing: set[str] = set()  # tensors whose values differ from the reference at all (within tolerance too)
        self.nonfinite: set[str] = set()  # candidate tensors holding inf/NaN
        self.masked: set[str] = set()  # wrong tensors that only carry a mask's pattern (masked_only)
        self.reference_outputs: dict[str, np.ndarray] = {}
        self.candidate_outputs: dict[str, np.ndarray] = {}
        self.histograms: dict[str, ValueHistogram] = {}
        self.histogram_limit = histograms
        self.undecided: list[TensorReport] = []  # out of tolerance, awaiting their local error (`decide`)

    def add(self, tensors: Iterable[str], reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
            local: Mapping[str, np.ndarray] | None = None) -> None:
        """Compare `tensors`. Without `local` values (while the comparer computes local error), the tensors
        out of tolerance wait in `undecided` for `decide`: only they need their layer's local error."""
        for tensor in tensors:
            if tensor in self.output_names:
                if tensor in reference:
                    self.reference_outputs[tensor] = reference[tensor]
                if tensor in candidate:
                    self.candidate_outputs[tensor] = candidate[tensor]
            if tensor not in self.model.producer or tensor not in reference \
                    or np.asarray(reference[tensor]).dtype.kind != "f":
                if tensor in candidate and _has_nonfinite(candidate[tensor]):
                    self.nonfinite.add(tensor)
                continue
            node = self.model.node_by_name[self.model.producer[tensor]]
            index = self.model.node_index(node.name)
            layer, layer_precision = self.layer_of.get(tensor, ("", self.precision))
            ref = np.asarray(reference[tensor])
            report = TensorReport(tensor, node.name, node.op_type, index, tuple(ref.shape),
                                  tensor in self.output_names, "missing", layer=layer, precision=layer_precision)
            inputs_wrong = any(t in self.tainted for t in node.input)
            if tensor not in candidate:
                if inputs_wrong:
                    self.tainted.add(tensor)
                self.reports.append(report)
                continue
            cand = np.asarray(candidate[tensor])
            inputs_nonfinite = any(t in self.nonfinite for t in node.input if t)
            finite = _classify(report, ref, cand, None if local is None or tensor not in local
                               else np.asarray(local[tensor]), self.tolerance, inputs_wrong, inputs_nonfinite,
                               inputs_differ=any(t in self.differing for t in node.input if t))
            if report.accumulated is None or report.accumulated.max_abs != 0:
                self.differing.add(tensor)
            if not (finite if finite is not None else not _has_nonfinite(cand)):
                self.nonfinite.add(tensor)
            if report.status != "ok":
                self.tainted.add(tensor)
                if not report.is_output and report.accumulated is not None and tensor in self.nonfinite \
                        and masked_only(ref, cand, self.tolerance.atol, self.tolerance.rtol):
                    self.masked.add(tensor)
            if self.local and local is None and report.status != "ok" and report.accumulated is not None:
                self.undecided.append(report)
            else:
                self._take_histogram(report, ref, cand)
            self.reports.append(report)

    def decide(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
               local: Mapping[str, np.ndarray]) -> None:
        """Measure the local error of the `undecided` tensors (`local`: their layers run alone on the
        reference's inputs): a layer wrong on its own introduces error even where its inputs were wrong."""
        for report in self.undecided:
            ref = np.asarray(reference[report.tensor])
            if report.tensor in local and np.asarray(local[report.tensor]).size == ref.size:
                atol, rtol = _tolerance_of(self.tolerance, report)
                report.local, _ = measure(ref, np.asarray(local[report.tensor]), atol, rtol,
                                          relative_atol=not report.is_output)
                if report.local.bad:
                    report.status = "introduced"
                elif report.local.max_abs == 0:
                    report.status = "propagated"  # exact on its own inputs: the error came in through them
            self._take_histogram(report, ref, np.asarray(candidate[report.tensor]))
        self.undecided = []

    def _take_histogram(self, report: TensorReport, ref: np.ndarray, cand: np.ndarray) -> None:
        if self.inspect_wrong is not None and report.status not in ("ok", "missing"):
            self.inspect_wrong(report, ref, cand)
        if report.status == "introduced" and len(self.histograms) < self.histogram_limit and cand.size:
            self.histograms[report.tensor] = value_histogram(report.tensor, ref, cand)

    def finish(self) -> CompareResult:
        _absorb(self.model, self.reports, self.masked)
        verdict = judge_outputs(self.model, self.reference_outputs, self.candidate_outputs, self.tolerance)
        return CompareResult(self.model.name, self.engine, self.precision, self.tolerance, tuple(self.reports),
                             verdict.passed, verdict.reason,
                             output_tolerances={o: self.tolerance.for_output(o) for o in self.output_names})


def _has_nonfinite(value: np.ndarray) -> bool:
    value = np.asarray(value)
    return value.dtype.kind == "f" and not bool(np.isfinite(value).all())


def _tolerance_of(tolerance: Tolerance, report: TensorReport) -> tuple[float, float]:
    """Final outputs are judged exactly as the verdict judges them (their own tolerance, absolute);
    intermediates by the general one, its atol relative to the tensor's max |x|."""
    return tolerance.for_output(report.tensor) if report.is_output else (tolerance.atol, tolerance.rtol)


def _classify(report: TensorReport, ref: np.ndarray, cand: np.ndarray, local: np.ndarray | None,
              tolerance: Tolerance, inputs_wrong: bool, inputs_nonfinite: bool = False,
              inputs_differ: bool = False) -> bool | None:
    """Sets the report's status, metrics and defects; returns whether every candidate value is finite
    (None: not measured)."""
    atol, rtol = _tolerance_of(tolerance, report)
    relative = not report.is_output
    if cand.size != ref.size:
        report.status = "introduced" if not inputs_wrong else "propagated"
        report.defects = detect(ref, cand, np.ones(ref.shape, bool), report.precision, atol, rtol)
        return None
    report.accumulated, outside, finite = _measure(ref, cand.reshape(ref.shape) if cand.shape != ref.shape
                                                   else cand, atol, rtol, relative_atol=relative)
    if local is not None and local.size == ref.size:
        report.local, _ = measure(ref, local, atol, rtol, relative_atol=relative)
    if not report.accumulated.bad:
        report.status = "ok"
        return finite
    # Wrong on its own (local error), or wrong although its inputs were right (it amplified
    # error that stayed within tolerance upstream): either way the error starts here.
    locally_wrong = report.local is not None and report.local.bad
    exact_here = (report.local is not None and report.local.max_abs == 0) or (
        report.op_type in DATA_MOVEMENT and inputs_differ)
    report.status = "introduced" if locally_wrong or not (inputs_wrong or exact_here) else "propagated"
    report.defects = detect(ref, cand, outside, report.precision, atol, rtol, inputs_nonfinite=inputs_nonfinite,
                            candidate_finite=finite)
    return finite


def masked_only(ref: np.ndarray, cand: np.ndarray, atol: float, rtol: float) -> bool:
    """Wrong only where the reference lies beyond FP16's range and the candidate holds an infinity of the
    same sign (a large additive mask rounded to -inf); within tolerance everywhere else."""
    r, c = blockwise.flat_float(ref), blockwise.flat_float(cand)
    scan = blockwise.reduce(r.size, lambda a, b: _MaskScan.of(r[a:b], c[a:b]))
    if not scan.masked or (scan.rest_nonfinite and scan.nan_differs):
        return False
    tolerance = atol * scan.scale
    return all(blockwise.map(r.size, lambda a, b: _rest_close(r[a:b], c[a:b], tolerance, rtol)))


@dataclass(frozen=True)
class _MaskScan:
    masked: int = 0  # candidate inf where the reference is beyond FP16 with the same sign
    scale: float = 0.0  # largest finite |reference| elsewhere
    rest_nonfinite: bool = False  # elsewhere, some candidate value is inf/NaN
    nan_differs: bool = False  # elsewhere, NaN on one side only

    @classmethod
    def of(cls, r: np.ndarray, c: np.ndarray) -> _MaskScan:
        masked = _mask(r, c)
        count = int(np.count_nonzero(masked))
        rest_r, rest_c = (r[~masked], c[~masked]) if count else (r, c)  # no copies where nothing is masked
        finite_r = np.isfinite(rest_r)
        return cls(count, float(np.abs(np.where(finite_r, rest_r, 0)).max(initial=0.0)),
                   not bool(np.isfinite(rest_c).all()), not np.array_equal(np.isnan(rest_r), np.isnan(rest_c)))

    def merge(self, other: _MaskScan) -> _MaskScan:
        return _MaskScan(self.masked + other.masked, max(self.scale, other.scale),
                         self.rest_nonfinite or other.rest_nonfinite, self.nan_differs or other.nan_differs)


def _mask(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.isinf(c) & (np.abs(r) > FP16_MAX) & (np.sign(r) == np.sign(c))


def _rest_close(r: np.ndarray, c: np.ndarray, atol: float, rtol: float) -> bool:
    rest = ~_mask(r, c)
    with np.errstate(invalid="ignore", over="ignore"):
        return all_close(c[rest], r[rest], atol, rtol)


def _absorb(model: Model, reports: list[TensorReport], masked: set[str]) -> None:
    """Wrong tensors that only carry a mask's pattern (`masked`: masked_only held) and that no consumer
    suffers from. Walks backwards, so a chain of them (mask -> Add -> Softmax) is absorbed from the consumer
    that recovers."""
    by_tensor = {r.tensor: r for r in reports}
    for report in reversed(reports):
        if report.status not in ("introduced", "propagated") or report.is_output or report.accumulated is None:
            continue
        consumers = [by_tensor[o] for n in model.consumers.get(report.tensor, [])
                     for o in model.node_by_name[n].output if o in by_tensor]
        if not consumers or any(c.status not in ("ok", "absorbed") for c in consumers):
            continue
        if report.tensor in masked:
            report.status = "absorbed"
            report.defects = []
