"""Rounding or a bad kernel: a layer's own error on a real engine, set beside what rounding predicts.

For every layer whose inputs and output an engine exposed, two numbers on the engine's *own* inputs:
- `local`: the engine's output against the layer recomputed in FP32 (its own error, isolated from
  everything upstream);
- `predicted`: the error that FP16/BF16/INT8 rounding of that layer alone makes on the same inputs
  (the emulator's output against the same FP32 recomputation).
Both are relative RMS errors, ||x - fp32|| / ||fp32||. A layer whose local error exceeds
`KERNEL_MARGIN * predicted + KERNEL_FLOOR` computes values rounding cannot explain: a `kernel_error`
(next step: `trtdebug tactics`). One within it is rounding (next step: `trtdebug fallback`).

Why these numbers (docs/tensorrt.md, "Rounding or a bad kernel"): a kernel that rounds the same
tensors in another order (another accumulation order, FP32 registers inside a fusion) differs from
the emulator by a small factor, not by an order of magnitude; 4x leaves room for that. The floor is
one FP16 ulp relative (2**-10): a layer whose rounding predicts no error (Relu, Reshape of FP16
values) may still differ by a last bit. A 3% wrong Conv has a local error of 3e-2 against a
predicted ~3e-4: 30 times the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from trtdebug.core.analysis.defects import Defect

KERNEL_MARGIN = 4.0  # local error beyond this many times the rounding prediction ...
KERNEL_FLOOR = 2.0**-10  # ... plus one FP16 ulp (relative) is a kernel fault

KERNEL_ERROR, ROUNDING = "kernel_error", "rounding"
NEXT_STEP = {KERNEL_ERROR: "trtdebug tactics", ROUNDING: "trtdebug fallback"}


@dataclass(frozen=True)
class LayerError:
    """One layer's own error on the engine's inputs, and what rounding predicts for it."""

    tensor: str  # the tensor the layer writes
    node: str  # the ONNX node that writes it
    local: float  # relative RMS error of the engine's output against FP32 on the same inputs
    predicted: float  # relative RMS error rounding alone makes on the same inputs
    nonfinite: int  # engine values that are inf/NaN where the rounding prediction is finite
    verdict: str  # kernel_error | rounding
    engine_layer: str = ""  # the engine's layer writing the tensor, where the engine reports one
    tactic: str = ""  # that layer's tactic (kernel), where known

    @property
    def threshold(self) -> float:
        return KERNEL_MARGIN * self.predicted + KERNEL_FLOOR

    @property
    def next_step(self) -> str:
        return NEXT_STEP[self.verdict]

    def to_json(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "node": self.node, "local_error": _finite(self.local),
                "predicted_rounding": _finite(self.predicted), "threshold": _finite(self.threshold),
                "nonfinite": self.nonfinite, "verdict": self.verdict, "engine_layer": self.engine_layer,
                "tactic": self.tactic, "next_step": self.next_step}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def relative_rms(values: np.ndarray, fp32: np.ndarray) -> tuple[float, np.ndarray]:
    """||values - fp32|| / ||fp32|| over the elements both have finite, and the mask of those."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    f = np.asarray(fp32, dtype=np.float64).reshape(-1)
    finite = np.isfinite(x) & np.isfinite(f)
    scale = float(np.sqrt(np.sum(f[finite] ** 2)))
    diff = float(np.sqrt(np.sum((x[finite] - f[finite]) ** 2)))
    if scale == 0.0:
        return (0.0 if diff == 0.0 else math.inf), finite
    return diff / scale, finite


def judge(local: float, predicted: float, nonfinite: int) -> str:
    """kernel_error when the engine's own error is beyond what rounding explains (module docstring)."""
    if nonfinite:
        return KERNEL_ERROR
    if not math.isfinite(predicted):  # rounding itself overflows here: that explains anything
        return ROUNDING
    return KERNEL_ERROR if local > KERNEL_MARGIN * predicted + KERNEL_FLOOR else ROUNDING


def layer_error(tensor: str, node: str, engine_value: np.ndarray, fp32: np.ndarray, rounded: np.ndarray,
                engine_layer: str = "", tactic: str = "") -> LayerError:
    local, _ = relative_rms(engine_value, fp32)
    predicted, rounded_finite = relative_rms(rounded, fp32)
    engine_finite = np.isfinite(np.asarray(engine_value, dtype=np.float64).reshape(-1))
    # inf/NaN the engine made where the same rounding stays finite: no FP16 range problem explains it
    nonfinite = int(np.count_nonzero(rounded_finite & ~engine_finite))
    return LayerError(tensor, node, local, predicted, nonfinite, judge(local, predicted, nonfinite),
                      engine_layer, tactic)


def kernel_defect(error: LayerError) -> Defect:
    """The `kernel_error` defect a tensor report carries (docs/report-schema.md)."""
    where = f" (engine layer {error.engine_layer!r}" + (f", tactic {error.tactic}" if error.tactic else "") + ")" \
        if error.engine_layer else ""
    nonfinite = f", {error.nonfinite} value(s) inf/NaN where rounding stays finite" if error.nonfinite else ""
    message = (f"kernel error: {error.node} computes {error.local:.3g} relative error on the engine's own "
               f"inputs, rounding predicts {error.predicted:.3g}{nonfinite}{where}; "
               f"next: {error.next_step}")
    return Defect(KERNEL_ERROR, message, {"local_error": _finite(error.local),
                                          "predicted_rounding": _finite(error.predicted),
                                          "margin": KERNEL_MARGIN, "floor": KERNEL_FLOOR,
                                          "nonfinite": error.nonfinite, "engine_layer": error.engine_layer,
                                          "tactic": error.tactic, "next_step": error.next_step})


def kernel_errors(errors: Mapping[str, LayerError]) -> list[LayerError]:
    return [e for e in errors.values() if e.verdict == KERNEL_ERROR]
