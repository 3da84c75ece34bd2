"""Building one model under one plan: parse, mark, typing, profile, config, tactics, serialize.

A NetworkBuilder makes a fresh builder, network and parser for every build (TensorRT networks
cannot be unmarked), configures precision (weak typing: network.apply_weak_typing; strong typing:
the plan already is Cast nodes in the parsed graph), attaches the tactic mechanism (tactics.py) and
describes the engine's layers from the inspector (GPU) or the build log (no GPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trtdebug.core.model.graph import Model
from trtdebug.core.model.weights import DerivedWeights
from trtdebug.core.plans.ban_list import BanList
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.quantized.format import format_of
from trtdebug.core.quantized.qdq import QdqPair
from trtdebug.engines.base import LayerInfo
from trtdebug.engines.tensorrt.calibration import calibration_batches, make_calibrator
from trtdebug.engines.tensorrt.context import TensorRTContext
from trtdebug.engines.tensorrt.layers import (
    NodeResolver,
    layers_from_build_log,
    parse_inspector_json,
    to_layer_infos,
)
from trtdebug.engines.tensorrt.network import (
    PrecisionNotes,
    Profile,
    add_profile,
    apply_weak_typing,
    create_network,
    enable_explicit_int8,
    has_explicit_quantization,
    mark,
    mark_unfused,
    markable_tensors,
    parse_onnx,
    refuse_weak_float_qdq,
    shape_ranges_for,
)
from trtdebug.engines.tensorrt.support import quiet_deprecations
from trtdebug.engines.tensorrt.tactics import (
    TacticRecord,
    enable_editable_cache,
    force_unbanned_tactics,
    make_algorithm_selector,
    parse_profiling_log,
    records_from_profiling,
)
from trtdebug.errors import UserError

if TYPE_CHECKING:
    import tensorrt as trt


@dataclass
class BuildResult:
    """One builder call."""

    serialized: bytes | None
    errors: list[str]
    layers: list[LayerInfo] = field(default_factory=list)
    layer_source: str = ""
    records: list[TacticRecord] = field(default_factory=list)
    precision: PrecisionNotes = field(default_factory=PrecisionNotes)
    refused: list[str] = field(default_factory=list)  # tensors mark_debug did not mark

    def failure(self) -> str:
        reason = self.errors[-1] if self.errors else "build_serialized_network returned nothing"
        return f"TensorRT build failed: {reason.strip().splitlines()[0]}"


class CalibrationEnd:
    """Where implicit-INT8 calibration ended inside one build_serialized_network call. TensorRT
    first builds (and autotunes) a calibration network, runs the batches through it, then builds
    the engine: tactic records start here, or they would mix the calibration network's choices
    (and its autotuning log) with the engine's."""

    def __init__(self, logger: Any):
        self.logger = logger
        self.log_start = 0  # index into logger.messages
        self.listeners: list[Callable[[], None]] = []

    def then(self, listener: Callable[[], None]) -> None:
        self.listeners.append(listener)

    def reached(self) -> None:
        self.log_start = len(self.logger.messages)
        for listener in self.listeners:
            listener()


@dataclass
class Chunk:
    marked: list[str]
    result: BuildResult


class NetworkBuilder:
    """Builds one model under one plan (and ban list), with any set of tensors exposed."""

    def __init__(self, context: TensorRTContext, model: Model, plan: PrecisionPlan, bans: BanList | None):
        self.context = context
        self.trt = context.trt
        self.features = context.features
        self.options = context.options
        self.model = model
        self.plan = plan
        self.bans = bans
        quant_format = format_of(model)
        # FP8 and INT4 Q/DQ models build strongly typed whatever the typing option (context.py).
        self.strong = context.strong_typing_for(quant_format.precision if quant_format is not None else None)
        self.control = context.tactic_control(bans)
        self.resolver = NodeResolver([n.name for n in model.nodes])
        # A Q/DQ model: the pairs the plan keeps in its format (their DequantizeLinear outputs stand
        # for the float tensors reports name); the plan's pair keys are graph edits, not layer precisions.
        self.live_pairs: list[QdqPair] = []
        self.layer_plan = plan
        if quant_format is not None:
            self.live_pairs = quant_format.live_pairs(plan.nodes)
            self.layer_plan = quant_format.layer_plan(plan)
        # the values of the graph's weight placeholders (core.model.weights): the Q/DQ model's, or the
        # model's and the typed graph's converted weights
        base = quant_format.model.qdq.weights if quant_format is not None else self.model.weights
        self.weights = DerivedWeights(base)
        self.proto, self.modified = self._graph()
        self.builds = 0
        self.failures: dict[str, str] = {}
        self._unmarked: dict[str, BuildResult] = {}

    def _graph(self) -> tuple[Any, bool]:
        quant_format = format_of(self.model)
        if quant_format is not None:
            # The Q/DQ graph the plan describes (model.proto is its float counterpart, the reference),
            # with the pairs the plan takes out of the format removed: strongly typed networks take
            # INT8/FP8/INT4 from the Q/DQ layers, weakly typed ones (INT8 only) with the INT8 flag.
            return quant_format.plan_model(self.plan.nodes), bool(self.plan.nodes)
        if not self.strong:
            return self.model.proto, False
        if self.plan.default == "fp32" and not self.plan.nodes:
            return self.model.proto, False
        from trtdebug.core.plans.cast_islands import to_mixed_precision_onnx

        return to_mixed_precision_onnx(self.model, self.plan, self.weights), True

    def nodes_of(self, builder_name: str) -> tuple[str, ...]:
        return self.resolver.from_name(builder_name)[0]

    def candidates(self, wanted: set[str]) -> list[str]:
        """Tensors that can be marked, in network order (parses once, builds nothing). A quantized
        float tensor is asked for by the DequantizeLinear output that stands for it in the Q/DQ
        graph (the value its INT8 readers see); where that cannot be marked, by its own name."""
        logger = self.context.logger()
        builder = self.trt.Builder(logger)
        network = create_network(self.trt, builder, self.features, self.strong)
        _parser = parse_onnx(self.trt, network, logger, self.proto, self.modified, self.weights)
        stands_for = {p.source: p.dequantized[0] for p in self.live_pairs}
        found = markable_tensors(self.trt, network, wanted | {stands_for[t] for t in wanted if t in stands_for})
        by_dequantized = set(found)
        return [t for t in found if not (t in stands_for and stands_for[t] in by_dequantized)]

    def fallback_for(self, tensor: str) -> str | None:
        """What to mark instead of a DequantizeLinear output whose marking breaks the build: the
        float tensor its QuantizeLinear reads (TensorRTBuilt fake-quantizes it on the host)."""
        return next((p.source for p in self.live_pairs if tensor in p.dequantized), None)

    def unmarked(self, mode: str) -> BuildResult:
        if mode not in self._unmarked:
            self._unmarked[mode] = self.build([], "none")
        return self._unmarked[mode]

    def describe(self, result: BuildResult) -> dict[str, Any]:
        return {"engine": f"{self.features.module_name} {self.features.version}",
                "typing": "strong" if self.strong else "weak", "precision": result.precision.to_json(),
                "tactic_control": self.control, "layer_info": result.layer_source}

    def build(self, marked: Sequence[str], mode: str) -> BuildResult:
        self.builds += 1
        trt_api = self.trt
        logger = self.context.logger()
        builder = trt_api.Builder(logger)
        network = create_network(trt_api, builder, self.features, self.strong)
        parser = parse_onnx(trt_api, network, logger, self.proto, self.modified, self.weights)
        config = builder.create_builder_config()
        self._configure(config)
        ranges = shape_ranges_for(network, self.options.input_shapes, self.options.shape_ranges,
                                  self.options.shape_input_values)
        profile = add_profile(builder, config, ranges)
        refused: list[str] = []
        if mode in ("outputs", "debug"):
            refused = mark(network, marked, mode)
        elif mode == "unfused":
            mark_unfused(network)
        precision = PrecisionNotes()
        if not self.strong:
            precision = apply_weak_typing(trt_api, network, config, self.features, self.layer_plan, self.resolver,
                                          self.options.obey_constraints)
            if has_explicit_quantization(trt_api, network):
                refuse_weak_float_qdq(trt_api, network, self.features)
                enable_explicit_int8(trt_api, config, precision)
        calibration = CalibrationEnd(logger)
        calibrator = self._calibrate(network, config, profile, ranges, precision, calibration)
        try:
            serialized, records = self._build_with_tactics(builder, network, config, logger, calibration)
        finally:
            if calibrator is not None:
                calibrator.release()
        del parser  # the parser owns the weights until the build is done
        result = BuildResult(serialized, logger.errors(), records=records, precision=precision, refused=refused)
        if calibrator is not None and calibrator.errors:
            result.errors.append(f"calibration: {calibrator.errors[0]}")
        if serialized is not None:
            self._describe_layers(result, logger)
        return result

    def _configure(self, config: trt.IBuilderConfig) -> None:
        trt_api = self.trt
        config.profiling_verbosity = trt_api.ProfilingVerbosity.DETAILED  # tactic names and metadata
        if not self.options.tf32 and hasattr(trt_api.BuilderFlag, "TF32"):
            config.clear_flag(trt_api.BuilderFlag.TF32)  # TF32 is on by default
        if self.options.workspace_bytes:
            config.set_memory_pool_limit(trt_api.MemoryPoolType.WORKSPACE, self.options.workspace_bytes)
        if self.options.optimization_level is not None:
            config.builder_optimization_level = self.options.optimization_level
        if self.options.compute_capabilities:
            self._set_compute_capabilities(config)

    def _set_compute_capabilities(self, config: Any) -> None:
        if not self.features.compute_capability:
            raise UserError("compute capabilities are a TensorRT-RTX option; TensorRT builds for the GPU it runs on")
        enum = self.trt.ComputeCapability
        targets = self.options.compute_capabilities
        unknown = [t for t in targets if not hasattr(enum, t)]
        if unknown:
            known = ", ".join(n for n in enum.__members__ if n != "NONE")
            raise UserError(f"unknown compute capability {unknown[0]!r}; use one of {known}")
        config.num_compute_capabilities = len(targets)
        for index, target in enumerate(targets):
            config.set_compute_capability(getattr(enum, target), index)

    def _calibrate(self, network: trt.INetworkDefinition, config: trt.IBuilderConfig, profile: Any,
                   profile_shapes: Profile, precision: PrecisionNotes, calibration: CalibrationEnd) -> Any:
        if "INT8" not in precision.flags or has_explicit_quantization(self.trt, network):
            return None
        if not self.features.calibrators:
            raise UserError("this TensorRT has no INT8 calibrators; give a Q/DQ (explicitly quantized) model")
        if not self.options.calibration_feeds and not self.options.calibration_cache:
            raise UserError("INT8 without Q/DQ nodes needs calibration data: pass calibration feeds or a "
                            "calibration cache, or give a Q/DQ (explicitly quantized) model")
        batches = calibration_batches(self.trt, network, profile_shapes, self.options.calibration_feeds)
        memory = self.context.calibration_caches.setdefault(self.model.sha256, {})
        calibrator = make_calibrator(self.trt, batches, self.options.calibration_cache, memory=memory,
                                     method=self.options.calibration_method, on_finished=calibration.reached)
        with quiet_deprecations():
            config.int8_calibrator = calibrator
            config.set_calibration_profile(profile)
        return calibrator

    def _build_with_tactics(self, builder: trt.Builder, network: trt.INetworkDefinition,
                            config: trt.IBuilderConfig, logger: Any,
                            calibration: CalibrationEnd) -> tuple[bytes | None, list[TacticRecord]]:
        trt_api = self.trt
        if self.control == "selector":
            selector = make_algorithm_selector(trt_api, self.bans, self.nodes_of)
            calibration.then(selector.forget)
            with quiet_deprecations():
                config.algorithm_selector = selector
            config.set_flag(trt_api.BuilderFlag.DISABLE_TIMING_CACHE)  # cached tactics skip selection
            serialized = _serialize(builder, network, config, logger)
            logger.messages.extend((1, f"algorithm selector: {e}") for e in selector.errors)
            return serialized, selector.records()
        if self.control == "timing-cache":
            cache = enable_editable_cache(trt_api, config)
            serialized = _serialize(builder, network, config, logger)
            records = records_from_profiling(parse_profiling_log(logger.lines()[calibration.log_start:]))
            if serialized is not None and self.bans and force_unbanned_tactics(trt_api, cache, records, self.bans,
                                                                                self.nodes_of):
                serialized = _serialize(builder, network, config, logger)
            return serialized, records
        return _serialize(builder, network, config, logger), []

    def _describe_layers(self, result: BuildResult, logger: Any) -> None:
        """Engine layers from the inspector's JSON (needs a GPU to deserialize), else the build log.
        The deserialized engine is released right away: a marked build has one engine per chunk,
        and keeping them all would hold GPU memory for every chunk (TensorRTBuilt loads each
        again when it runs, one at a time)."""
        assert result.serialized is not None
        layers = []
        if self.context.device_available():
            runtime = self.trt.Runtime(logger)
            engine = runtime.deserialize_cuda_engine(result.serialized)
            if engine is not None:
                inspector = engine.create_engine_inspector()
                text = inspector.get_engine_information(self.trt.LayerInformationFormat.JSON)
                del inspector, engine  # before the runtime that made it
                layers = parse_inspector_json(text)
                result.layer_source = "engine inspector"
            del runtime
        if not layers:
            layers = layers_from_build_log(logger.lines())
            result.layer_source = "build log" if layers else "unavailable"
        result.layers = to_layer_infos(layers, self.resolver, result.layer_source)
        attach_tactics(result.layers, result.records, self.nodes_of)


def _serialize(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig,
               logger: Any) -> bytes | None:
    try:
        with quiet_deprecations():
            plan = builder.build_serialized_network(network, config)
    except Exception as exc:  # some versions raise instead of returning None
        logger.messages.append((1, f"{type(exc).__name__}: {exc}"))
        return None
    return bytes(memoryview(plan)) if plan is not None else None


def attach_tactics(layers: list[LayerInfo], records: Sequence[TacticRecord],
                   nodes_of: Callable[[str], tuple[str, ...]]) -> None:
    """Put each recorded tactic on the engine layer it belongs to: same name, a Myelin layer named
    after the op ("matMul1" -> "matMul1_myl0_0", as the sample matches them), or the same nodes.

    `extra["kernel"]` is always the kernel the *engine* reports (inspector or build-log TacticName).
    For the editable timing cache the layer's tactic is that kernel too: the cache entry trtdebug
    wrote is only a request, and NVIDIA's sampleEditableTimingCache checks the engine's own
    TacticName after an edit (samples/sampleEditableTimingCache/sampleEditableTimingCache.cpp).
    A request the engine did not follow is noted. For the algorithm selector, the tactic is the one
    report_algorithms says TensorRT chose (the engine's own report of its choice)."""
    for record in records:
        nodes = nodes_of(record.layer)
        layer = (next((lay for lay in layers if lay.name == record.layer), None)
                 or next((lay for lay in layers if lay.name.startswith(record.layer + "_myl")), None)
                 or next((lay for lay in layers if nodes and lay.onnx_nodes == nodes), None))
        if layer is None:
            continue
        kernel = layer.tactic  # what the engine reports for this layer, if anything
        if kernel:
            layer.extra["kernel"] = kernel
        layer.alternatives = record.alternatives
        layer.extra["tactic_layer"] = record.layer
        if record.cache_key is not None:  # editable timing cache
            layer.extra["cache_tactic"] = record.chosen
            wanted = record.kernels.get(record.chosen, "")
            if kernel and wanted and kernel != wanted:
                record.note = (f"the engine uses {kernel}, not {wanted} written in the timing cache"
                               + (" (TensorRT ignored the edit)" if record.forced_from else ""))
            layer.tactic = kernel or record.chosen
        else:
            layer.tactic = record.chosen
        for key in ("cache_key", "forced_from", "note"):
            if getattr(record, key):
                layer.extra[key] = getattr(record, key)
        if record.excluded:
            layer.extra["excluded"] = list(record.excluded)
        if record.kernels:
            layer.extra["kernels"] = dict(record.kernels)
