"""What compare adds about a real engine (one that cannot isolate a layer itself: TensorRT,
TensorRT-RTX, saved results): per layer, rounding or a bad kernel (workflows.kernel_check), and the
precision each layer really ran against the plan (core.analysis.realized_precision)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from trtdebug.core.analysis.kernel_fault import kernel_defect
from trtdebug.core.analysis.metrics import CompareResult, TensorReport
from trtdebug.core.analysis.realized_precision import PrecisionFinding, realized_precision_findings
from trtdebug.core.plans.ban_list import BanList
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.engines.base import BuildError, Built, Engine, Marking
from trtdebug.errors import UserError
from trtdebug.workflows.kernel_check import KernelCheck, check_kernels
from trtdebug.workflows.problem import Problem


@dataclass(frozen=True)
class Diagnosis:
    kernels: KernelCheck | None = None  # None: the engine isolates layers itself (the emulator)
    precision: tuple[PrecisionFinding, ...] = ()
    realized: bool = False  # whether the engine reported each layer's precision

    def annotate(self, tensors: Sequence[TensorReport]) -> None:
        """A `kernel_error` defect on every tensor a faulty kernel writes."""
        if self.kernels is None:
            return
        by_tensor = {t.tensor: t for t in tensors}
        for error in self.kernels.kernel_errors:
            if error.tensor in by_tensor:
                by_tensor[error.tensor].defects.append(kernel_defect(error))

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.kernels is not None:
            found["kernels"] = self.kernels.to_json()
        if self.realized:
            found["realized_precision"] = [f.to_json() for f in self.precision]
        return found


def diagnose_engine(problem: Problem, plan: PrecisionPlan, built: Built, candidate: Mapping[str, np.ndarray] | None,
                    reports: Sequence[TensorReport], cannot_isolate: bool) -> Diagnosis:
    """`cannot_isolate`: the engine computes no local error of its own, so the emulator recomputes its
    layers on its values. A model the emulator cannot build gets no kernel check, and a note saying why."""
    if not cannot_isolate:  # the emulator: what it ran is the plan, by construction
        return Diagnosis()
    precision = realized_precision_findings(problem.model, plan, built.layers)
    realized = any(layer.precision for layer in built.layers)
    if candidate is None:
        return Diagnosis(None, tuple(precision), realized)
    shapes = {r.tensor: r.shape for r in reports if r.status != "missing"}
    try:
        kernels = check_kernels(problem.model, plan, problem.feeds, candidate, shapes, built.layers)
    except (UserError, BuildError) as exc:
        kernels = KernelCheck(note=f"the emulator cannot recompute this model's layers: {exc}")
    return Diagnosis(kernels, tuple(precision), realized)


UNMARKED_BUILD = "the unmarked build of the plan (the engine file written)"


def with_unmarked_precision(result: CompareResult, problem: Problem, engine: Engine, plan: PrecisionPlan,
                            bans: BanList | None) -> CompareResult:
    """`result` with its `realized_precision` taken from the plan's unmarked build, as fallback reports
    the plan it wrote: marking breaks fusions, so the compared build can hide a node the plan keeps
    fused into a reduced-precision block of the deployed engine. Unchanged where marking changes
    nothing (the emulator runs the plan by construction), where the engine reports no layer types,
    and where the build fails (writing the engine file reports that)."""
    if engine.capabilities.exact_marking or not engine.capabilities.rebuilds:
        return result
    try:
        built = engine.build(problem.model, plan, bans, Marking.final_outputs_only())
    except BuildError:
        return result
    if not any(layer.precision for layer in built.layers):
        return result
    findings = realized_precision_findings(problem.model, plan, built.layers)
    diagnosis: dict[str, Any] = {**result.diagnosis, "realized_precision": [f.to_json() for f in findings],
                 "realized_precision_of": UNMARKED_BUILD}
    return replace(result, diagnosis=diagnosis)
