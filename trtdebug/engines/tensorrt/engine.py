"""The TensorRT engine (8.6, 10.x, 11.x) and TensorRT-RTX behind the engine protocol: its options,
what the installed TensorRT will do with them, and `build`.

One code path serves every version; what differs is found by feature detection (support.py):
- precision: weak typing (builder flags + layer constraints, <= 10.x) or strong typing (the plan
  as Cast nodes in the ONNX graph, 11.x / TensorRT-RTX / 10.x on request);
- exposing tensors: `outputs` (mark_output), `debug` (mark_debug + a debug listener, 10.0+) or
  `unfused` (mark_unfused_tensors_as_debug_tensors, 10.12+), optionally in chunks (marking.py);
- tactics: IAlgorithmSelector (<= 10.x) or the editable timing cache (10.8+, 11.x), see
  tactics.py; TensorRT-RTX has no autotuning.
Building is builder.py (marking.py: which tensors, in chunks), running runner.py; both take a
TensorRTContext (context.py), not this engine.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any

from trtdebug.core.model.graph import Model
from trtdebug.core.plans.ban_list import BanList
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.engines.base import BuildError, Capabilities, Marking
from trtdebug.engines.tensorrt.builder import Chunk, NetworkBuilder
from trtdebug.engines.tensorrt.context import TACTIC_CONTROLS, TYPINGS, TensorRTContext, TensorRTOptions
from trtdebug.engines.tensorrt.cuda_buffers import CudaRuntime
from trtdebug.engines.tensorrt.layers import NodeResolver
from trtdebug.engines.tensorrt.marking import build_marked
from trtdebug.engines.tensorrt.network import create_network, parse_onnx
from trtdebug.engines.tensorrt.runner import TensorRTBuilt
from trtdebug.engines.tensorrt.support import Features, load_tensorrt, make_logger
from trtdebug.errors import UserError


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

    def context(self) -> TensorRTContext:
        """What the builder and runner need of this engine (they take this, not the engine)."""
        return TensorRTContext(self.trt, self.name, self.features, self.options, self.device_available,
                               self.calibration_caches)

    @property
    def strong_typing(self) -> bool:
        return self.context().strong_typing

    def tactic_control(self, bans: BanList | None) -> str:
        return self.context().tactic_control(bans)

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
        _parser = parse_onnx(self.trt, network, logger, model.proto, modified=False, weights=model.weights)
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
        requested = mark.mode
        if mark.mode == "auto":  # observe without changing the engine where this TensorRT can
            mark = replace(mark, mode="unfused" if self.features.unfused_debug else "outputs")
        if mark.mode not in self.features.marking_modes():
            raise UserError(f"--mark {mark.mode} needs a newer TensorRT than {self.features.module_name} "
                            f"{self.features.version}; available: {', '.join(self.features.marking_modes())}")
        context = self.context()
        builder = NetworkBuilder(context, model, plan, bans)
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
        notes["observed_by"] = observed_by(mark.mode, requested, self.features)
        return TensorRTBuilt(context, model, chunks, mark.mode, notes, builder.live_pairs)


def observed_by(mode: str, requested: str, features: Features) -> str:
    """How the tensors were observed, for the report: whether the engine's fusions were kept."""
    how = {"unfused": "unfused tensors as debug tensors (mark_unfused_tensors_as_debug_tensors): every fusion "
                      "kept, only tensors that survive fusion seen",
           "debug": "debug tensors (mark_debug): fusions broken at each marked tensor, engine I/O unchanged",
           "outputs": "marked outputs (mark_output): fusions broken at each marked tensor",
           "none": "final outputs only"}[mode]
    if requested == "auto" and mode == "outputs":
        how += f" ({features.module_name} {features.version} has no mark_unfused_tensors_as_debug_tensors: 10.12+)"
    return how


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}; use one of {', '.join(choices)}")
