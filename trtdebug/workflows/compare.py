"""The compare workflow: reference run, engine build and run, local error, comparison.

Shared by `compare`, `fallback` and `tactics`, which all ask the same two questions of a build:
where is it wrong (`run_compare`), and are its final outputs good enough (`evaluate_plan`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from trtdebug.core.bans import BanList
from trtdebug.core.metrics import CompareResult, Tolerance, Verdict, check_outputs, compare
from trtdebug.core.model import Model
from trtdebug.core.precision import PrecisionPlan
from trtdebug.core.reference import run_reference
from trtdebug.engines.base import BuildError, Built, Engine, Marking, as_local_error


@dataclass
class Problem:
    """What every command works on: a model, its feeds, and their FP32 reference values."""

    model: Model
    feeds: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    tolerance: Tolerance

    @classmethod
    def prepare(cls, model: Model, feeds: Mapping[str, np.ndarray], tolerance: Tolerance) -> Problem:
        feeds = dict(feeds)
        return cls(model, feeds, run_reference(model, feeds), tolerance)


def layer_map(built: Built) -> dict[str, tuple[str, str]]:
    """Tensor -> (engine layer, layer precision) for every tensor a layer writes."""
    return {t: (layer.name, layer.precision) for layer in built.layers for t in layer.outputs}


def run_compare(problem: Problem, engine: Engine, plan: PrecisionPlan, bans: BanList | None = None,
                mark: Marking | None = None) -> CompareResult:
    built = engine.build(problem.model, plan, bans, mark or Marking())
    candidate = built.run(problem.feeds)
    local_runner = as_local_error(engine, built)
    local = local_runner.run_local(problem.reference) if local_runner else None
    result = compare(problem.model, problem.reference, candidate, problem.tolerance, local,
                     layer_map(built), engine.name, plan.default)
    result.layers = list(built.layers)
    result.notes["marking"] = dict(built.marking_notes)
    result.notes["local_error"] = local is not None
    result.notes["plan"] = {"default": plan.default, "kept": plan.kept()}
    if bans:
        result.notes["bans"] = len(bans)
    if not engine.capabilities.exact_marking:
        result.notes["reproduction"] = _reproduction_check(problem, engine, plan, bans, result)
    result.range_violations = problem.model.fp16_range_violations()
    return result


def _reproduction_check(problem: Problem, engine: Engine, plan: PrecisionPlan, bans: BanList | None,
                        marked: CompareResult) -> dict[str, Any]:
    """Marking can change fusions and tactics; say whether the marked build still shows the
    unmarked build's verdict on the final outputs."""
    try:
        unmarked = evaluate_plan(problem, engine, plan, bans)
    except BuildError as exc:
        return {"checked": False, "reason": f"unmarked build failed: {exc}"}
    return {"checked": True, "unmarked_passed": unmarked.passed, "marked_passed": marked.passed,
            "reproduces": unmarked.passed == marked.passed, "unmarked_reason": unmarked.reason}


def evaluate_plan(problem: Problem, engine: Engine, plan: PrecisionPlan,
                  bans: BanList | None = None) -> Verdict:
    """Build with only the final outputs exposed and check them against tolerance."""
    try:
        built = engine.build(problem.model, plan, bans, Marking.final_outputs_only())
    except BuildError as exc:
        return Verdict(False, {}, f"build failed: {exc}")
    return check_outputs(problem.model, problem.reference, built.run(problem.feeds), problem.tolerance)
