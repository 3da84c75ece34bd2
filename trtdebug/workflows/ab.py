"""A/B: two captures of the same model (two engines, two TensorRT versions, two tactic sets) set
against each other layer by layer, and each against FP32.

`trtdebug compare model.onnx --engine results --results B.npz --against A.npz`: B is the engine
under test, A the one it is compared with (the known-good build). For every layer both exposed, each
engine's own error on its own inputs (workflows.kernel_check) and each one's accumulated error
against the FP32 reference. B *departs* from A at a layer whose own error exceeds
`KERNEL_MARGIN * max(A's own error, rounding's prediction) + KERNEL_FLOOR`: B computes that layer
worse than A does, by more than rounding explains. The first such layer in graph order is where B
goes wrong and A does not; everything after it inherits the difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from trtdebug.core.analysis.kernel_fault import KERNEL_FLOOR, KERNEL_MARGIN, relative_rms
from trtdebug.core.analysis.metrics import CompareResult
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.engines.results import load_results
from trtdebug.errors import UserError
from trtdebug.workflows.kernel_check import check_kernels
from trtdebug.workflows.problem import Case, Problem
from trtdebug.workflows.progress import SILENT, Progress


@dataclass(frozen=True)
class LayerAB:
    tensor: str
    node: str
    a_local: float  # A's own error on A's inputs (relative RMS against FP32 on those inputs)
    b_local: float
    predicted: float  # what rounding predicts on B's inputs
    a_fp32: float | None  # A's accumulated error against the FP32 reference (None: not available)
    b_fp32: float | None
    b_vs_a: float  # relative RMS difference of B's tensor from A's

    @property
    def departs(self) -> bool:
        return self.b_local > KERNEL_MARGIN * max(self.a_local, self.predicted) + KERNEL_FLOOR

    def to_json(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "node": self.node, "a_local_error": _json(self.a_local),
                "b_local_error": _json(self.b_local), "predicted_rounding": _json(self.predicted),
                "a_error_vs_fp32": _json(self.a_fp32), "b_error_vs_fp32": _json(self.b_fp32),
                "b_vs_a": _json(self.b_vs_a), "departs": self.departs}


def _json(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class ABResult:
    a: str  # where A's tensors came from
    b: str
    layers: tuple[LayerAB, ...]

    @property
    def first_departure(self) -> LayerAB | None:
        return next((la for la in self.layers if la.departs), None)

    def to_json(self) -> dict[str, Any]:
        first = self.first_departure
        return {"a": self.a, "b": self.b, "margin": KERNEL_MARGIN, "floor": KERNEL_FLOOR,
                "first_departure": None if first is None else first.to_json(),
                "layers": [la.to_json() for la in self.layers]}


def run_ab(problem: Problem, plan: PrecisionPlan, a_path: str | Path, b_path: str | Path) -> ABResult:
    """Where B departs from A (module docstring). Both files hold tensors of `problem.model`."""
    if Path(a_path).resolve() == Path(b_path).resolve():
        raise UserError(f"--against names the same file as --results ({a_path}); give the other engine's capture")
    a, _ = load_results(a_path)
    b, _ = load_results(b_path)
    model = problem.model
    known = set(model.producer) | {o.name for o in model.outputs}
    if not known & set(a):
        raise UserError(f"{a_path} names no tensor of this model; was it saved from this model?")
    shapes = {name: tuple(np.shape(problem.reference[name])) for name in known & set(a) & set(b)
              if _has(problem.reference, name)}
    a_check = check_kernels(model, plan, problem.feeds, a, shapes)
    b_check = check_kernels(model, plan, problem.feeds, b, shapes)
    layers = []
    for b_error in b_check.layers:
        a_error = a_check.of(b_error.tensor)
        if a_error is None:
            continue
        tensor = b_error.tensor
        reference = problem.reference[tensor] if _has(problem.reference, tensor) else None
        layers.append(LayerAB(
            tensor, b_error.node, a_error.local, b_error.local, b_error.predicted,
            None if reference is None else relative_rms(a[tensor], reference)[0],
            None if reference is None else relative_rms(b[tensor], reference)[0],
            relative_rms(b[tensor], a[tensor])[0]))
    return ABResult(str(a_path), str(b_path), tuple(layers))



def _has(values: Mapping[str, np.ndarray], name: str) -> bool:
    return name in values


def with_ab(result: CompareResult, case: Case, b_path: str | Path | None, a_path: str | Path,
            progress: Progress = SILENT) -> CompareResult:
    """Compare's result of B with the A/B comparison added to its diagnosis (`--against`)."""
    b_path = require_captures(b_path, a_path)
    progress.begin("A/B: recomputing both captures' layers on their own inputs")
    ab = run_ab(case.problem, case.plan, a_path, b_path)
    progress.end()
    return replace(result, diagnosis={**result.diagnosis, "ab": ab.to_json()})


def require_captures(b_path: str | Path | None, a_path: str | Path) -> str | Path:
    """Refuse, before anything runs, an A/B without two readable captures."""
    if b_path is None:
        raise UserError("--against compares two captures: give the engine under test's with --engine results "
                        "--results B.npz")
    if not Path(a_path).is_file():
        raise UserError(f"--against file not found: {a_path}")
    return b_path
