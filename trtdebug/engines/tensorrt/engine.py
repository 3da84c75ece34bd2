"""The TensorRT engine (8.6, 10.x, 11.x) and TensorRT-RTX behind the engine protocol: its options,
what the installed TensorRT will do with them, and `build`.

One code path serves every version; what differs is found by feature detection (support.py):
- precision: weak typing (builder flags + layer constraints, <= 10.x) or strong typing (the plan
  as Cast nodes in the ONNX graph, 11.x / TensorRT-RTX / 10.x on request);
- exposing tensors: `outputs` (mark_output), `debug` (mark_debug + a debug listener, 10.0+) or
  `unfused` (mark_unfused_tensors_as_debug_tensors, 10.12+), optionally in chunks (marking.py);
- tactics: IAlgorithmSelector (<= 10.x) or the editable timing cache (10.8+, 11.x), see
  tactics.py; TensorRT-RTX has no autotuning.
Building is builder.py, running runner.py.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from trtdebug.core.model.graph import Model
from trtdebug.core.plans.ban_list import BanList
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.engines.base import BuildError, Capabilities, Marking
from trtdebug.engines.tensorrt.builder import Chunk, NetworkBuilder
from trtdebug.engines.tensorrt.cuda_buffers import CudaRuntime
from trtdebug.engines.tensorrt.layers import NodeResolver
from trtdebug.engines.tensorrt.marking import build_marked
from trtdebug.engines.tensorrt.network import ShapeRange, create_network, parse_onnx
from trtdebug.engines.tensorrt.runner import TensorRTBuilt
from trtdebug.engines.tensorrt.support import Features, load_tensorrt, make_logger
from trtdebug.errors import UserError

TYPINGS = ("auto", "weak", "strong")
TACTIC_CONTROLS = ("auto", "selector", "timing-cache", "none")


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


class TensorRTEngine:
    """`--engine tensorrt` / `--engine tensorrt-rtx`."""

    def __init__(self, flavor: str = "tensorrt", **options: Any):
        try:
            self.options = TensorRTOptions(**options)
        except TypeError:
            known = ", ".join(f.name for f in fields(TensorRTOptions))
            raise UserError(f"unknown TensorRT engine option in {sorted(options)}; known: {known}") from None
        _check_choice("typing", self.options.typing, TYPINGS)
        _check_choice("tactic control", self.options.tactic_control, TACTIC_CONTROLS)
        self.trt = load_tensorrt(flavor)
        self.features = Features.detect(self.trt)
        self.name = flavor
        # Exposing tensors can change fusions and tactics; TensorRT-RTX has no tactic control.
        self.capabilities = Capabilities(serializes=True, records_tactics_on_request=True,
                                         tactics=not self.features.is_rtx)
        self._device: bool | None = None
        # Implicit INT8: the calibration cache of each model (by sha256), written by its first build.
        self.calibration_caches: dict[str, dict[str, bytes]] = {}

    def recording_tactics(self) -> TensorRTEngine:
        """The same engine, recording each layer's tactic and alternatives (for `trtdebug tactics`)."""
        recording = copy.copy(self)
        recording.options = replace(self.options, record_tactics=True)
        return recording

    # -- what this TensorRT will do -------------------------------------------------------------

    @property
    def strong_typing(self) -> bool:
        if self.options.typing == "weak" and not self.features.weak_typing:
            raise UserError(f"{self.features.module_name} {self.features.version} has no weak typing "
                            "(precision flags and layer constraints); use typing=strong")
        if self.options.typing == "strong" and self.features.weak_typing and not self.features.strong_flag:
            raise UserError(f"TensorRT {self.features.version} has no strongly typed networks; use typing=weak")
        return self.options.typing == "strong" or not self.features.weak_typing

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

    def device_available(self) -> bool:
        """Whether engines can be deserialized here (cuda-python and a GPU)."""
        if self._device is None:
            try:
                self._device = CudaRuntime().device_count() > 0
            except UserError:
                self._device = False
        return self._device

    def network_layer_names(self, model: Model) -> dict[str, list[str]]:
        """ONNX node -> the TensorRT network layers the parser makes from it that can take a
        precision: the names trtexec --layerPrecisions and Polygraphy --layer-precisions need."""
        from trtdebug.engines.tensorrt.layers import network_layer_nodes
        from trtdebug.engines.tensorrt.network import can_take_precision

        logger = make_logger(self.trt)
        builder = self.trt.Builder(logger)
        network = create_network(self.trt, builder, self.features, strong=False)
        _parser = parse_onnx(self.trt, network, logger, model.proto, modified=False)
        resolver = NodeResolver([n.name for n in model.nodes])
        names: dict[str, list[str]] = {}
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if not can_take_precision(self.trt, layer):
                continue
            metadata = str(layer.metadata) if self.features.layer_metadata else ""
            for node in network_layer_nodes(metadata, layer.name, resolver):
                names.setdefault(node, []).append(layer.name)
        return names

    # -- building -------------------------------------------------------------------------------

    def build(self, model: Model, plan: PrecisionPlan, bans: BanList | None = None,
              mark: Marking | None = None) -> TensorRTBuilt:
        mark = mark or Marking()
        if mark.mode not in self.features.marking_modes():
            raise UserError(f"--mark {mark.mode} needs a newer TensorRT than {self.features.module_name} "
                            f"{self.features.version}; available: {', '.join(self.features.marking_modes())}")
        builder = NetworkBuilder(self, model, plan, bans)
        if mark.mode in ("none", "unfused"):
            result = builder.build([], mark.mode)
            if result.serialized is None:
                raise BuildError(result.failure())
            chunks = [Chunk([], result)]
            notes: dict[str, Any] = {"requested": 0, "marked": [], "dropped": []}
            if mark.mode == "unfused" and (mark.chunk_size or mark.tensors is not None):
                notes["note"] = "--mark unfused exposes what TensorRT keeps unfused; tensors and chunks do not apply"
        else:
            chunks, notes = build_marked(builder, model, mark, self.options.max_marking_builds)
        notes.update(mode=mark.mode, builds=builder.builds, chunk_size=mark.chunk_size, chunks=len(chunks),
                     **builder.describe(chunks[0].result))
        return TensorRTBuilt(self, model, chunks, mark.mode, notes, builder.live_pairs)


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}; use one of {', '.join(choices)}")
