"""The compare workflow: build with every layer output exposed, run, compute local error where the
engine can, and compare every tensor against the FP32 reference.

`run_compare` answers "where is this build wrong?"; fallback ranks its suspects with it and tactics
compares builds with it. Whether final outputs are good enough is `workflows.evaluate`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from trtdebug.core.attribution import find_culprits
from trtdebug.core.bans import BanList
from trtdebug.core.criterion import CheckCommand
from trtdebug.core.histogram import culprit_histograms
from trtdebug.core.int8_findings import annotate_int8
from trtdebug.core.metrics import CompareResult, Culprit, Reproduction, compare_tensors
from trtdebug.core.precision import PrecisionPlan, eligible_nodes
from trtdebug.core.quantization import QuantizedModel
from trtdebug.engines.base import Built, Engine, Marking, as_local_error, as_substituting
from trtdebug.workflows.evaluate import evaluate_plan
from trtdebug.workflows.problem import Case, Problem
from trtdebug.workflows.progress import SILENT, Progress


def layer_map(built: Built) -> dict[str, tuple[str, str]]:
    """Tensor -> (engine layer, layer precision) for every tensor a layer writes."""
    return {t: (layer.name, layer.precision) for layer in built.layers for t in layer.outputs}


def run_compare(problem: Problem, engine: Engine, plan: PrecisionPlan, bans: BanList | None = None,
                mark: Marking | None = None, progress: Progress = SILENT,
                check: CheckCommand | None = None) -> CompareResult:
    """Where the build is wrong. With `check`, the verdict is the user's command's (as in fallback)."""
    progress.begin(f"building on {engine.name} with layer outputs exposed, and running")
    built = engine.build(problem.model, plan, bans, mark or Marking())
    candidate = built.run(problem.feeds)
    progress.end()
    local_runner = as_local_error(engine, built)
    local = None
    if local_runner is not None:
        progress.begin("running each layer alone on the reference's inputs")
        local = local_runner.run_local(problem.reference)
        progress.end()
    result = compare_tensors(problem.model, problem.reference, candidate, problem.tolerance, local,
                             layer_map(built), engine.name, plan.default)
    if check is not None:
        verdict = check.verdict({o: candidate[o] for o in problem.reference_outputs() if o in candidate},
                                problem.reference_outputs())
        result.passed, result.verdict, result.check = verdict.passed, verdict.reason, check.template
    result.layers = list(built.layers)
    _note_fidelity(result)
    result.marking = dict(built.marking_notes)
    result.local_error = local is not None
    result.kept = plan.kept()
    result.bans = len(bans) if bans else 0
    if not engine.capabilities.exact_marking:
        progress.begin("checking that the unmarked build shows the same verdict")
        result.reproduction = _reproduction_check(problem, engine, plan, bans, result, check)
        progress.end()
    result.range_violations = problem.model.fp16_range_violations()
    if isinstance(problem.model, QuantizedModel):  # which quantized tensors clip or flush, and where
        annotate_int8(result, problem.model, plan, problem.reference)
    if not result.passed:
        progress.begin("finding the culprits")
        result.culprits, result.culprits_explain = _culprits(problem, engine, plan, built, candidate, result)
        progress.end()
    culprits = dict.fromkeys([c.tensor for c in result.culprits] + [t.tensor for t in result.introduced])
    result.histograms = culprit_histograms(culprits, problem.reference, candidate)
    return result


def _culprits(problem: Problem, engine: Engine, plan: PrecisionPlan, built: Built,
              candidate: Mapping[str, np.ndarray], result: CompareResult) -> tuple[list[Culprit], float | None]:
    """What explains the failure (core.attribution), measured where the engine can substitute tensors."""
    model = problem.model
    keepable = {n for n in eligible_nodes(model) if plan.precision_of(n) == plan.default}
    substituting = as_substituting(engine, built)
    outputs = {o.name: candidate[o.name] for o in model.outputs if o.name in candidate}
    run = (lambda replacements: substituting.run_substituted(problem.feeds, replacements)) if substituting else None
    return find_culprits(model, result.tensors, keepable or set(model.node_by_name), problem.reference,
                         problem.tolerance, run, outputs if substituting else None)


def _note_fidelity(result: CompareResult) -> None:
    """Carry the engine's own fidelity notes (e.g. the emulator's FP32-inside recurrent layers) to tensors."""
    by_tensor = {t.tensor: t for t in result.tensors}
    for layer in result.layers:
        note = layer.extra.get("fidelity", "")
        for tensor in layer.outputs if note else ():
            if tensor in by_tensor:
                by_tensor[tensor].fidelity = note


def compare_case(case: Case, mark: Marking | None = None, progress: Progress = SILENT,
                 check: CheckCommand | None = None) -> CompareResult:
    return run_compare(case.problem, case.engine, case.plan, case.bans, mark, progress, check)


def _reproduction_check(problem: Problem, engine: Engine, plan: PrecisionPlan, bans: BanList | None,
                        marked: CompareResult, check: CheckCommand | None = None) -> Reproduction:
    """Marking can change fusions and tactics; say whether the marked build still shows the
    unmarked build's verdict on the final outputs."""
    unmarked = evaluate_plan(problem, engine, plan, bans, check)
    if unmarked.build_failed:
        return Reproduction(False, reason=f"unmarked {unmarked.reason}")
    return Reproduction(True, unmarked_passed=unmarked.passed, marked_passed=marked.passed,
                        unmarked_reason=unmarked.reason)
