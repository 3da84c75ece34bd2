"""The compare workflow: build with every layer output exposed, run, compute local error where the
engine can, and compare every tensor against the FP32 reference.

`run_compare` answers "where is this build wrong?"; fallback ranks its suspects with it and tactics
compares builds with it. Whether final outputs are good enough is `workflows.evaluate`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from trtdebug.core.analysis.culprits import find_culprits
from trtdebug.core.analysis.histograms import MAX_CULPRITS as HISTOGRAM_LIMIT
from trtdebug.core.analysis.histograms import ValueHistogram, culprit_histograms
from trtdebug.core.analysis.metrics import (
    DEFAULT_LOCAL_SCOPE,
    LOCAL_SCOPES,
    CompareResult,
    Culprit,
    Reproduction,
    TensorComparer,
    TensorReport,
)
from trtdebug.core.plans.ban_list import BanList
from trtdebug.core.plans.precision_plan import PrecisionPlan, eligible_nodes
from trtdebug.core.quantized.format import format_of
from trtdebug.core.quantized.scale_findings import CodeFlips
from trtdebug.core.reference.budget import plan_compare, tensor_bytes, weight_bytes
from trtdebug.core.reference.fp32_run import LazyReference
from trtdebug.core.reference.pieces import run_ahead
from trtdebug.core.search.user_check import CheckCommand
from trtdebug.core.system.memory import default_budget
from trtdebug.engines.base import (
    Built,
    Engine,
    LayerInfo,
    Marking,
    PiecewiseBuilt,
    as_local_error,
    as_piecewise,
    as_substituting,
)
from trtdebug.workflows.diagnose import diagnose_engine
from trtdebug.workflows.evaluate import evaluate_plan, judge
from trtdebug.workflows.problem import Case, Problem
from trtdebug.workflows.progress import SILENT, Progress


def layer_map(built: Built) -> dict[str, tuple[str, str]]:
    """Tensor -> (engine layer, layer precision) for every tensor a layer writes."""
    return {t: (layer.name, layer.precision) for layer in built.layers for t in layer.outputs}


def run_compare(problem: Problem, engine: Engine, plan: PrecisionPlan, bans: BanList | None = None,
                mark: Marking | None = None, progress: Progress = SILENT,
                check: CheckCommand | None = None, local_scope: str = DEFAULT_LOCAL_SCOPE,
                histograms: bool = False) -> CompareResult:
    """Where the build is wrong. With `check`, the verdict is the user's command's (as in fallback).
    With `histograms`, the values of the culprits and first wrong tensors are histogrammed for the
    HTML report (`result.histograms`); nothing else reads them.

    Tensors are exposed, compared and freed a group at a time (core.reference.budget plans the groups within the
    problem's memory budget), so reference, candidate and local-error values of every tensor are never
    held together. A model whose tensors make one group runs whole.

    Local error (where the engine computes it) is what tells a wrong layer from one that only carries
    wrong inputs, so by default (`local_scope` "wrong") only the layers writing tensors out of tolerance
    run again on the reference's inputs; "all" runs every layer (fallback ranks bystanders by it)."""
    if local_scope not in LOCAL_SCOPES:
        raise ValueError(f"local_scope must be one of {LOCAL_SCOPES}")
    if check is not None:  # a command that cannot run, or fails the reference itself, gives no verdict
        check.require_reference_passes(problem.reference_outputs())
    model = problem.model
    cplan = problem.memory_plan or plan_compare(model, tensor_bytes(model, problem.feeds),
                                                problem.memory_budget or default_budget(), weight_bytes(model))
    budget = cplan.budget
    mark = mark or Marking()
    builds = math.ceil(3 * cplan.total / budget)  # reference, candidate and measuring, a build's tensors at once
    if not engine.capabilities.pieces and mark.chunk_size is None and builds > 1 and mark.mode != "none":
        mark = replace(mark, chunk_size=max(1, math.ceil(len(model.intermediate_tensors()) / builds)))
    streamed = engine.capabilities.pieces and (cplan.chunks > 1 or isinstance(problem.reference, LazyReference))
    progress.begin(f"building on {engine.name} with layer outputs exposed" + ("" if streamed else ", and running"))
    built = engine.build(model, plan, bans, mark)
    piecewise = as_piecewise(engine, built) if streamed else None
    candidate = built.run(problem.feeds) if piecewise is None else None
    progress.end()
    local_runner = as_local_error(engine, built)
    quant_format = format_of(model)
    flips: dict[str, CodeFlips] = {}  # wrong quantized tensors' codes against the reference's (code flips)

    def inspect_wrong(report: TensorReport, ref: np.ndarray, cand: np.ndarray) -> None:
        if quant_format is not None and (found := quant_format.code_flips(report.tensor, ref, cand)) is not None:
            flips[report.tensor] = found

    comparer = TensorComparer(model, problem.tolerance, layer_map(built), engine.name, plan.default,
                              local_runner is not None, histograms=HISTOGRAMS if histograms else 0,
                              inspect_wrong=inspect_wrong if quant_format is not None else None)
    chunks = 1
    if piecewise is not None:
        progress.begin(f"running and comparing {cplan.chunks} groups of tensors one after another")
        chunks = _compare_pieces(problem, piecewise, local_runner is not None, local_scope == "all", cplan.groups,
                                 comparer, progress)
        progress.end()
    else:
        assert candidate is not None
        local = None
        if local_runner is not None and local_scope == "all":
            progress.begin("running each layer alone on the reference's inputs")
            local = local_runner.run_local(problem.reference)
            progress.end()
        comparer.add([*(i.name for i in model.inputs), *model.intermediate_tensors()], problem.reference,
                     candidate, local)
        del local
        if local_runner is not None and comparer.undecided:
            progress.begin("running the layers out of tolerance alone on the reference's inputs")
            comparer.decide(problem.reference, candidate, local_runner.run_local(
                problem.reference, [r.tensor for r in comparer.undecided]))
            progress.end()
    diagnosis = diagnose_engine(problem, plan, built, candidate, comparer.reports, local_runner is None)
    candidate = None
    compared = comparer.finish()  # the tensors and the tolerance's verdict; what follows adds to it
    diagnosis.annotate(compared.tensors)
    candidate_outputs = comparer.candidate_outputs
    passed, verdict_reason, check_template = compared.passed, compared.verdict, ""
    if check is not None:
        verdict = judge(problem, candidate_outputs, check)
        passed, verdict_reason, check_template = verdict.passed, verdict.reason, check.template
    layers = tuple(built.layers)
    _note_fidelity(compared.tensors, layers)
    marking = dict(built.marking_notes)
    if problem.notes:  # e.g. what a strongly typed model's types decide over --precision
        marking["notes"] = list(problem.notes)
    if problem.reference_source is not None:
        marking["reference"] = dict(problem.reference_source)
    marking["memory"] = {"budget_bytes": budget + cplan.weights, "weight_bytes": cplan.weights,
                         "tensor_bytes": cplan.total, "chunks": chunks,
                         "reference_held": not isinstance(problem.reference, LazyReference)}
    reproduction = None
    if not engine.capabilities.exact_marking:
        progress.begin("checking that the unmarked build shows the same verdict")
        reproduction = _reproduction_check(problem, engine, plan, bans, passed, check)
        progress.end()
    if quant_format is not None:  # which quantized tensors clip, flush or flip, and where
        findings = quant_format.annotate(compared.tensors, plan, problem.reference, flips)
        marking[quant_format.precision] = {**marking.get(quant_format.precision, {}), "tensors": findings}
    culprits: list[Culprit] = []
    culprits_explain = None
    if not passed:
        progress.begin("finding the culprits")
        culprits, culprits_explain = _culprits(problem, engine, plan, built, candidate_outputs, compared.tensors)
        progress.end()
    histogrammed: dict[str, ValueHistogram] = {}
    if histograms:
        wanted = dict.fromkeys([c.tensor for c in culprits] + [t.tensor for t in compared.introduced])
        histogrammed = _histograms(list(wanted), comparer, problem, built, as_piecewise(engine, built))
    local_error = local_runner is not None
    return replace(compared, passed=passed, verdict=verdict_reason, check=check_template, marking=marking,
                   local_error=local_error, local_scope=local_scope if local_error else "",
                   kept=tuple(plan.kept()), bans=len(bans) if bans else 0, reproduction=reproduction,
                   culprits=tuple(culprits), culprits_explain=culprits_explain, layers=layers,
                   range_violations=tuple(model.fp16_range_violations()), histograms=histogrammed,
                   diagnosis=diagnosis.to_json())


HISTOGRAMS = 24  # introduced tensors whose histograms are taken while their values are alive


def _compare_pieces(problem: Problem, built: PiecewiseBuilt, local: bool, local_all: bool, groups: list[list[str]],
                    comparer: TensorComparer, progress: Progress) -> int:
    """Run, compute local error (every layer's with `local_all`, else the wrong tensors' layers') and
    compare a group of tensors at a time; returns the number of groups."""
    reference = problem.reference
    lazy = isinstance(reference, LazyReference)
    ref_stream = None
    if isinstance(reference, LazyReference):  # (mypy narrows on isinstance, not on `lazy`)
        groups, ref_stream = reference.groups, run_ahead(reference.stream())
    last_read: dict[str, int] = {}
    if local:
        for k in range(len(groups)):
            for t in built.local_reads(k, groups):
                last_read[t] = k
    window: dict[str, np.ndarray] = dict(problem.feeds)  # reference values alive (lazy reference)
    pending: dict[str, np.ndarray] = {}  # candidate tensors that arrived before their group
    done: set[str] = set()
    for k, (group, values) in enumerate(zip(groups, run_ahead(built.run_pieces(problem.feeds, groups)), strict=True)):
        pending.update(values)
        del values
        if ref_stream is not None:
            window.update(next(ref_stream))
        ref: Mapping[str, np.ndarray] = window if lazy else reference
        local_values = built.run_local_piece(k, ref, groups) if local_all else None
        comparer.add(group if k else [*problem.feeds, *group], ref, pending, local_values)
        del local_values
        if local and comparer.undecided:
            comparer.decide(ref, pending, built.run_local(ref, [r.tensor for r in comparer.undecided]))
        done.update(group)
        for t in group:
            pending.pop(t, None)
        if lazy:
            for t in [t for t in window if t in done and last_read.get(t, -1) <= k and t not in problem.feeds]:
                del window[t]
        progress.advance(f"compared {k + 1}/{len(groups)}")
    return len(groups)


def _histograms(tensors: list[str], comparer: TensorComparer, problem: Problem, built: Built,
                piecewise: PiecewiseBuilt | None) -> dict[str, ValueHistogram]:
    """culprit_histograms, from those taken during the comparison; others' values are computed again."""
    produced = {r.tensor for r in comparer.reports if r.status != "missing" and int(np.prod(r.shape))}
    wanted = [t for t in tensors if t in produced][:HISTOGRAM_LIMIT]
    missing = [t for t in wanted if t not in comparer.histograms]
    found = dict(comparer.histograms)
    if missing:
        candidate = piecewise.run_exposing(problem.feeds, missing) if piecewise else built.run(problem.feeds)
        found.update(culprit_histograms(missing, problem.reference, candidate))
    return {t: found[t] for t in wanted if t in found}


def _culprits(problem: Problem, engine: Engine, plan: PrecisionPlan, built: Built,
              candidate: Mapping[str, np.ndarray], tensors: Sequence[TensorReport]
              ) -> tuple[list[Culprit], float | None]:
    """What explains the failure (core.analysis.culprits), measured where the engine can substitute tensors."""
    model = problem.model
    keepable = {n for n in eligible_nodes(model) if plan.precision_of(n) == plan.default}
    substituting = as_substituting(engine, built)
    outputs = {o.name: candidate[o.name] for o in model.outputs if o.name in candidate}
    run = (lambda replacements, switchable: substituting.run_substituted(problem.feeds, replacements, switchable)
           ) if substituting else None
    return find_culprits(model, tensors, keepable or set(model.node_by_name), problem.reference,
                         problem.tolerance, run, outputs if substituting else None,
                         max_bytes=(problem.memory_plan.budget if problem.memory_plan else
                                    problem.memory_budget or default_budget()) // 3,
                         whole_network=format_of(model) is None)


def _note_fidelity(tensors: Sequence[TensorReport], layers: Sequence[LayerInfo]) -> None:
    """Carry the engine's own fidelity notes (e.g. the emulator's FP32-inside recurrent layers) to tensors."""
    by_tensor = {t.tensor: t for t in tensors}
    for layer in layers:
        note = layer.extra.get("fidelity", "")
        for tensor in layer.outputs if note else ():
            if tensor in by_tensor:
                by_tensor[tensor].fidelity = note


def compare_case(case: Case, mark: Marking | None = None, progress: Progress = SILENT,
                 check: CheckCommand | None = None, local_scope: str = DEFAULT_LOCAL_SCOPE,
                 histograms: bool = False) -> CompareResult:
    return run_compare(case.problem, case.engine, case.plan, case.bans, mark, progress, check, local_scope,
                       histograms)


def _reproduction_check(problem: Problem, engine: Engine, plan: PrecisionPlan, bans: BanList | None,
                        marked_passed: bool, check: CheckCommand | None = None) -> Reproduction:
    """Marking can change fusions and tactics; say whether the marked build still shows the
    unmarked build's verdict on the final outputs."""
    unmarked = evaluate_plan(problem, engine, plan, bans, check)
    if unmarked.build_failed:
        return Reproduction(False, reason=f"unmarked {unmarked.reason}")
    return Reproduction(True, unmarked_passed=unmarked.passed, marked_passed=marked_passed,
                        unmarked_reason=unmarked.reason)
