"""What building and running an engine need of the TensorRTEngine, and nothing more.

The builder (builder.py, marking.py, calibration.py) and the runner (runner.py) take a
TensorRTContext, not the engine: the loaded TensorRT module, what it can do, the options, and
the decisions those make (typing, tactic control). engine.py composes them; they never import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trtdebug.core.plans.ban_list import BanList
from trtdebug.engines.tensorrt.network import ShapeRange
from trtdebug.engines.tensorrt.support import Features, make_logger
from trtdebug.errors import UserError

TYPINGS = ("auto", "weak", "strong")
TACTIC_CONTROLS = ("auto", "selector", "timing-cache", "none")
# Quantized formats TensorRT builds only strongly typed, with what a message calls them. Their Q/DQ
# layers say the type; no builder flag selects them for layers: BuilderFlag FP8 and INT4 are "Enable
# plugins with FP8/INT4 input/output", deprecated in 10.12 "Superseded by strong typing"
# (include/NvInfer.h, release/10.13), and 8.6's FP8 "is not supported yet and will result in an error
# or undefined behavior" (include/NvInfer.h, release/8.6); 8.6 has no INT4 type at all.
STRONGLY_TYPED_FORMATS = {"fp8": "FP8", "int4": "INT4 weight-only"}


@dataclass(frozen=True)
class TensorRTOptions:
    obey_constraints: bool = False  # OBEY_PRECISION_CONSTRAINTS instead of PREFER (weak typing)
    typing: str = "auto"  # auto: weak typing where the API has it, else strong
    input_shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)  # optimization profile
    # name -> (min, opt, max): shapes of execution inputs, *values* of shape-tensor inputs
    shape_ranges: Mapping[str, ShapeRange] = field(default_factory=dict)
    # values of shape-tensor inputs (the feeds: any array per name; other inputs' entries are ignored)
    shape_input_values: Mapping[str, Any] = field(default_factory=dict)
    tf32: bool = False  # FP32 layers in FP32 unless asked: TF32 would blur FP32 fallback layers
    compute_capabilities: tuple[str, ...] = ()  # TensorRT-RTX targets, e.g. ("SM89",) or ("CURRENT",)
    record_tactics: bool = False  # attach tactic choices and alternatives to the layers
    tactic_control: str = "auto"  # auto: editable timing cache where it exists, else the selector
    calibration_feeds: Sequence[Mapping[str, np.ndarray]] = ()  # implicit INT8 (<= 10.x)
    calibration_cache: str | None = None
    calibration_method: str = "entropy"  # entropy or minmax (calibration.CALIBRATORS)
    workspace_bytes: int | None = None
    optimization_level: int | None = None  # builder_optimization_level 0-5 (0 ignores timing caches)
    max_marking_builds: int = 64  # builds spent bisecting tensors that break the build


@dataclass(frozen=True)
class TensorRTContext:
    """The loaded TensorRT (`trt`: tensorrt, or the TensorRT-RTX module), its features and the options."""

    trt: Any
    flavor: str  # "tensorrt" or "tensorrt-rtx"
    features: Features
    options: TensorRTOptions
    device_available: Callable[[], bool]  # engines can be deserialized here (the inspector needs it)
    # Implicit INT8: each model's (by sha256) calibration cache, written by its first build; the
    # engine's own dict, so later builds of the same model reuse it.
    calibration_caches: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def logger(self) -> Any:
        """A fresh logger: it keeps the messages of the one builder or runtime it is given to."""
        return make_logger(self.trt)

    @property
    def strong_typing(self) -> bool:
        if self.options.typing == "weak" and not self.features.weak_typing:
            raise UserError(f"{self.features.module_name} {self.features.version} has no weak typing "
                            "(precision flags and layer constraints); use typing=strong")
        if self.options.typing == "strong" and self.features.weak_typing and not self.features.strong_flag:
            raise UserError(f"TensorRT {self.features.version} has no strongly typed networks; use typing=weak")
        return self.options.typing == "strong" or not self.features.weak_typing

    def strong_typing_for(self, quant_precision: str | None) -> bool:
        """Whether a model of this quantized format (None: float, or INT8) builds strongly typed.
        FP8 and INT4 Q/DQ models always do: TensorRT 10.x with the STRONGLY_TYPED flag, 11.x and
        TensorRT-RTX by nature; a TensorRT without strongly typed networks (8.6) cannot build them."""
        label = STRONGLY_TYPED_FORMATS.get(quant_precision or "")
        if label is None:
            return self.strong_typing
        version = f"{self.features.module_name} {self.features.version}"
        if self.features.weak_typing and not self.features.strong_flag:
            raise UserError(f"{version} cannot build {label} Q/DQ models: they need a strongly typed network "
                            "(TensorRT 10.0 or later, or TensorRT-RTX); use --engine emulator or a newer TensorRT")
        if self.options.typing == "weak":
            raise UserError(f"{label} Q/DQ models build strongly typed only; use typing=strong (or auto) "
                            f"with {version}")
        return True

    def tactic_control(self, bans: BanList | None) -> str:
        wanted = self.options.tactic_control
        if wanted == "none" or self.features.is_rtx or not (self.options.record_tactics or bans):
            return "none"
        if wanted in ("auto", "timing-cache") and self.features.editable_timing_cache:
            return "timing-cache"
        if wanted in ("auto", "selector") and self.features.algorithm_selector:
            return "selector"
        if wanted == "auto":
            return "none"
        raise UserError(f"{self.features.module_name} {self.features.version} has no {wanted} for tactics")
