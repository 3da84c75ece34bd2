"""Rounding or a bad kernel, for engines that cannot isolate a layer themselves (TensorRT,
TensorRT-RTX, saved results): every layer whose inputs and output the engine exposed is recomputed
by the emulator on the engine's own values, once in FP32 and once rounded as the plan asks, and
core.analysis.kernel_fault judges the engine's output against both.

Feeding the engine's own inputs is what makes the numbers local: upstream error (a wrong Conv's
output read by the next layer) is in the inputs of both recomputations, so only the layer's own
arithmetic differs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from trtdebug.core.analysis.kernel_fault import KERNEL_ERROR, KERNEL_FLOOR, KERNEL_MARGIN, LayerError, layer_error
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.engines.base import LayerInfo, Marking, as_local_error
from trtdebug.engines.emulator.engine import EmulatorEngine
from trtdebug.errors import UserError


@dataclass(frozen=True)
class KernelCheck:
    """Every checked layer's local error beside its rounding prediction, in graph order."""

    layers: tuple[LayerError, ...] = ()
    skipped: Mapping[str, int] = field(default_factory=dict)  # why a layer could not be checked -> count
    note: str = ""  # why nothing was checked, when nothing was

    @property
    def kernel_errors(self) -> list[LayerError]:
        return [e for e in self.layers if e.verdict == KERNEL_ERROR]

    def of(self, tensor: str) -> LayerError | None:
        return next((e for e in self.layers if e.tensor == tensor), None)

    def to_json(self) -> dict[str, Any]:
        return {"margin": KERNEL_MARGIN, "floor": KERNEL_FLOOR, "metric": "relative RMS error",
                "layers": [e.to_json() for e in self.layers], "kernel_errors": [e.tensor for e in self.kernel_errors],
                "skipped": dict(self.skipped), "note": self.note}


def engine_values(model: Model, captured: Mapping[str, np.ndarray], shapes: Mapping[str, Sequence[int]],
                  feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The engine's tensors as the emulator reads them: float32, in the model's shape. Saved FP16
    values widen exactly; a tensor saved in another layout is left out (detect names that)."""
    values: dict[str, np.ndarray] = {name: np.asarray(v) for name, v in feeds.items()}
    skipped: dict[str, int] = {}
    for name, value in captured.items():
        if name in feeds:
            continue
        array = np.asarray(value)
        shape = tuple(shapes.get(name, array.shape))
        if array.shape != shape:
            skipped["saved in another shape or layout"] = skipped.get("saved in another shape or layout", 0) + 1
            continue
        values[name] = array.astype(np.float32) if array.dtype.kind == "f" and array.dtype != np.float32 else array
    return values, skipped


def checkable(model: Model, folded: onnx.ModelProto, values: Collection[str]) -> tuple[list[str], int]:
    """Float tensors the engine exposed whose emulated layer reads only tensors it exposed too (weights
    aside: a tensor the builder folds to a constant is a weight, whatever the ONNX computed it with)."""
    weights = {i.name for i in folded.graph.initializer}
    original = (set(model.producer) | {i.name for i in model.inputs}) - weights
    wanted, unread = [], 0
    for node in folded.graph.node:
        reads = [t for t in node.input if t in original]
        for tensor in (t for t in node.output if t in values):
            if all(t in values for t in reads):
                wanted.append(tensor)
            else:
                unread += 1
    return wanted, unread


def check_kernels(model: Model, plan: PrecisionPlan, feeds: Mapping[str, np.ndarray],
                  captured: Mapping[str, np.ndarray], shapes: Mapping[str, Sequence[int]],
                  engine_layers: Sequence[LayerInfo] = ()) -> KernelCheck:
    """Judge every layer the engine exposed: its error on its own inputs against what rounding predicts."""
    emulator = EmulatorEngine()
    folded = emulator.folded(model)
    values, skipped = engine_values(model, captured, shapes, feeds)
    wanted, unread = checkable(model, folded.proto, values)
    if unread:
        skipped["an input not exposed by the engine"] = unread
    wanted = [t for t in wanted if values[t].dtype.kind == "f"]
    if not wanted:
        return KernelCheck((), skipped, "no layer had its inputs and output exposed by the engine")
    fp32 = emulator.build_folded(model, folded, PrecisionPlan("fp32"), mark=Marking("none"))
    rounded = as_local_error(emulator, emulator.build(model, plan, mark=Marking("none")))
    assert rounded is not None  # the emulator always computes local error
    try:
        exact = fp32.run_local(values, wanted)
        predicted = rounded.run_local(values, wanted)
    except (KeyError, UserError) as exc:  # a layer reads a tensor under a name the engine did not save
        return KernelCheck((), skipped, f"the emulator cannot recompute the layers on these values ({exc})")
    by_tensor = {t: layer for layer in engine_layers for t in layer.outputs}
    errors = []
    for tensor in wanted:
        if tensor not in exact or tensor not in predicted:
            skipped["not recomputed by the emulator"] = skipped.get("not recomputed by the emulator", 0) + 1
            continue
        layer = by_tensor.get(tensor)
        errors.append(layer_error(tensor, model.producer.get(tensor, tensor), values[tensor], exact[tensor],
                                  predicted[tensor], layer.name if layer else "",
                                  str(layer.extra.get("kernel") or layer.tactic) if layer else ""))
    return KernelCheck(tuple(errors), skipped)
