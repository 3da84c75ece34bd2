"""`trtdebug selfcheck`: the engine-level paths (engines.tensorrt.selfcheck: typing, marking,
the inspector, tactics) and the workflow-level ones built on them, tried for real on this machine.

Per installed flavor, after its engine rows: the kernel check (rounding or kernel, on a capture of
the tiny model's FP16 engine: every layer recomputed by the emulator on the engine's own values)
and A/B (captures of its FP32 and FP16 engines set against each other layer by layer). Both need
the engine to run: without a GPU they are skipped, saying so.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trtdebug.core.analysis.metrics import Tolerance
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.reference.fp32_run import run_reference
from trtdebug.core.system import files
from trtdebug.engines.base import COMPARE_MARKING, Marking
from trtdebug.engines.tensorrt import selfcheck as engine_selfcheck
from trtdebug.engines.tensorrt.selfcheck import Check, attempt, tiny_model
from trtdebug.errors import UserError
from trtdebug.workflows.ab import run_ab
from trtdebug.workflows.kernel_check import check_kernels
from trtdebug.workflows.problem import Problem

if TYPE_CHECKING:
    from trtdebug.engines.tensorrt.engine import TensorRTBuilt, TensorRTEngine

KERNEL_CHECK = "rounding or kernel (kernel check on an engine capture)"
AB = "A/B (FP32 and FP16 captures, layer by layer)"


def run_selfcheck(flavors: Iterable[str] = ("tensorrt", "tensorrt-rtx")) -> list[Check]:
    """Every row, in order: each flavor's engine rows, then its workflow rows."""
    flavors = tuple(flavors)
    checks = engine_selfcheck.run_selfcheck(flavors)
    model = Model.from_proto(tiny_model())
    feeds = {"input": np.random.default_rng(1).uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)}
    problem = Problem(model, feeds, run_reference(model, feeds), Tolerance.for_precision("fp16"))
    for flavor in flavors:
        installed = any(c.name == flavor and c.status == "ok" for c in checks)
        if not installed:
            continue
        last = max(i for i, c in enumerate(checks) if c.name == flavor or c.name.startswith(f"{flavor}: "))
        checks[last + 1:last + 1] = _workflow_checks(flavor, problem)
    return checks


def _workflow_checks(flavor: str, problem: Problem) -> list[Check]:
    from trtdebug.engines.tensorrt.engine import TensorRTEngine

    labels = (f"{flavor}: {KERNEL_CHECK}", f"{flavor}: {AB}")
    probe = TensorRTEngine(flavor)
    if not probe.device_available():
        return [Check(label, "skipped", "running an engine needs a GPU") for label in labels]
    targets = ("CURRENT",) if probe.features.compute_capability else ()
    engine = TensorRTEngine(flavor, compute_capabilities=targets)
    return [attempt(labels[0], partial(kernel_check_row, problem, engine)),
            attempt(labels[1], partial(ab_row, problem, engine))]


def _capture(problem: Problem, engine: TensorRTEngine, plan: PrecisionPlan
             ) -> tuple[dict[str, np.ndarray], TensorRTBuilt]:
    built = engine.build(problem.model, plan, None, Marking(COMPARE_MARKING))
    return built.run(problem.feeds), built


def kernel_check_row(problem: Problem, engine: TensorRTEngine) -> str:
    """The FP16 engine's capture judged layer by layer: the check must reach layers, and on this tiny
    model rounding must explain every one (a kernel error here is a false alarm or a broken kernel)."""
    plan = PrecisionPlan("fp16")
    captured, built = _capture(problem, engine, plan)
    shapes = {name: np.shape(value) for name, value in problem.reference.items()}
    result = check_kernels(problem.model, plan, problem.feeds, captured, shapes, built.layers)
    if not result.layers:
        raise UserError(f"no layer was checked: {result.note or 'the capture exposed no layer with its inputs'}")
    faulty = [e.node for e in result.kernel_errors]
    if faulty:
        raise UserError(f"{len(faulty)} of {len(result.layers)} layers called a kernel error on the tiny model: "
                        f"{', '.join(faulty)}")
    return f"{len(result.layers)} layers checked on the engine's own values: all within what rounding predicts"


def ab_row(problem: Problem, engine: TensorRTEngine) -> str:
    """A (the FP32 engine) against B (the FP16 one), through saved captures as a user gives them:
    B must follow A within rounding at every layer both exposed, and there must be such layers."""
    with tempfile.TemporaryDirectory(prefix="trtdebug-selfcheck-") as folder:
        paths = {}
        for name, precision in (("a", "fp32"), ("b", "fp16")):
            captured, _ = _capture(problem, engine, PrecisionPlan(precision))
            paths[name] = files.save_npz(Path(folder) / f"{name}.npz", captured)
        result = run_ab(problem, PrecisionPlan("fp16"), paths["a"], paths["b"])
    if not result.layers:
        raise UserError("the two captures have no checkable layer in common")
    first = result.first_departure
    if first is not None:
        raise UserError(f"the FP16 engine departs from the FP32 one at {first.node} on the tiny model")
    return f"B (FP16) follows A (FP32) within rounding at all {len(result.layers)} layers both exposed"
