"""The TensorRT engine (8.6, 10.x, 11.x) and TensorRT-RTX, behind the engine protocol.

One code path serves every version; what differs is found by feature detection (trt_support):
- precision: weak typing (builder flags + layer constraints, <= 10.x) or strong typing (the plan
  as Cast nodes in the ONNX graph, 11.x / TensorRT-RTX / 10.x on request);
- exposing tensors: `outputs` (mark_output), `debug` (mark_debug + a debug listener, 10.0+) or
  `unfused` (mark_unfused_tensors_as_debug_tensors, 10.12+), optionally in chunks of K tensors per
  build. A tensor whose marking breaks the build is bisected out of its chunk and dropped;
- tactics: IAlgorithmSelector (<= 10.x) or the editable timing cache (10.8+, 11.x), see
  tensorrt_tactics; TensorRT-RTX has no autotuning.
Engines run through cuda-python (cuda_buffers) on a non-default stream. Layer -> ONNX node mapping
comes from the inspector's JSON, or from the build log where no GPU can deserialize the engine
(TensorRT-RTX builds ahead of time on a CPU).
"""

from __future__ import annotations

import copy
import ctypes
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from trtdebug.core.bans import BanList
from trtdebug.core.model import Model
from trtdebug.core.precision import PrecisionPlan
from trtdebug.engines.base import BuildError, Capabilities, LayerInfo, Marking
from trtdebug.engines.tensorrt.cuda_buffers import (
    CudaRuntime,
    bf16_bits_to_float32,
    device_arena,
    float32_to_bf16_bits,
    fp8_e4m3_bits_to_float32,
)
from trtdebug.engines.tensorrt.layers import (
    NodeResolver,
    layers_from_build_log,
    parse_inspector_json,
    to_layer_infos,
)
from trtdebug.engines.tensorrt.network import (
    PrecisionNotes,
    ShapeRange,
    add_profile,
    apply_weak_typing,
    create_network,
    dims_tuple,
    has_explicit_quantization,
    mark,
    mark_unfused,
    markable_tensors,
    parse_onnx,
    shape_ranges_for,
)
from trtdebug.engines.tensorrt.support import Features, load_tensorrt, make_logger, quiet_deprecations
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

TYPINGS = ("auto", "weak", "strong")
TACTIC_CONTROLS = ("auto", "selector", "timing-cache", "none")


@dataclass(frozen=True)
class TensorRTOptions:
    obey_constraints: bool = False  # OBEY_PRECISION_CONSTRAINTS instead of PREFER (weak typing)
    typing: str = "auto"  # auto: weak typing where the API has it, else strong
    input_shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)  # optimization profile
    shape_ranges: Mapping[str, ShapeRange] = field(default_factory=dict)  # name -> (min, opt, max)
    tf32: bool = False  # FP32 layers in FP32 unless asked: TF32 would blur FP32 fallback layers
    compute_capabilities: tuple[str, ...] = ()  # TensorRT-RTX targets, e.g. ("SM89",) or ("CURRENT",)
    record_tactics: bool = False  # attach tactic choices and alternatives to the layers
    tactic_control: str = "auto"  # auto: editable timing cache where it exists, else the selector
    calibration_feeds: Sequence[Mapping[str, np.ndarray]] = ()  # implicit INT8 (<= 10.x)
    calibration_cache: str | None = None
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
            chunks, notes = self._build_marked(builder, model, mark)
        notes.update(mode=mark.mode, builds=builder.builds, chunk_size=mark.chunk_size, chunks=len(chunks),
                     **builder.describe(chunks[0].result))
        return TensorRTBuilt(self, model, chunks, mark.mode, notes)

    def _build_marked(self, builder: NetworkBuilder, model: Model, mark: Marking
                      ) -> tuple[list[Chunk], dict[str, Any]]:
        onnx_tensors = set(model.intermediate_tensors())
        wanted = onnx_tensors if mark.tensors is None else onnx_tensors & set(mark.tensors)
        candidates = builder.candidates(wanted)
        size = mark.chunk_size if mark.chunk_size and mark.chunk_size > 0 else max(len(candidates), 1)
        groups = [candidates[i:i + size] for i in range(0, len(candidates), size)] or [[]]
        chunks: list[Chunk] = []
        dropped: list[dict[str, str]] = []
        for group in groups:
            kept, failed, result = self._build_dropping(builder, group, mark.mode)
            chunks.append(Chunk(kept, result))
            dropped.extend({"tensor": t, "reason": builder.failures.get(t, "not tried: marking retry budget spent")}
                           for t in failed)
        marked = [t for c in chunks for t in c.marked]
        return chunks, {"requested": len(candidates), "marked": marked, "dropped": dropped}

    def _build_dropping(self, builder: NetworkBuilder, tensors: list[str], mode: str
                        ) -> tuple[list[str], list[str], BuildResult]:
        """Build with `tensors` marked; if that fails, bisect out the tensors that break it."""
        last_failure = [""]

        def attempt(marked: list[str]) -> BuildResult | None:
            result = builder.build(marked, mode)
            if result.serialized is None:
                last_failure[0] = result.failure()
                return None
            return result

        def culprit(tensor: str) -> None:
            builder.failures[tensor] = last_failure[0]

        full = attempt(tensors)
        if full is not None:
            return tensors, [], full
        base = builder.unmarked(mode)
        if base.serialized is None:  # the plan itself does not build: marking is not the cause
            raise BuildError(base.failure())
        budget = self.options.max_marking_builds
        kept, failed, result = bisect_markable(attempt, tensors, lambda: builder.builds >= budget, culprit)
        if result is None and kept:  # halves that built alone may still fail together
            result = attempt(kept)
            if result is None:
                kept, failed = [], failed + kept
        return kept, failed, result or base


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}; use one of {', '.join(choices)}")


def bisect_markable(attempt: Callable[[list[str]], Any | None], tensors: list[str],
                    out_of_budget: Callable[[], bool],
                    on_culprit: Callable[[str], None] = lambda tensor: None
                    ) -> tuple[list[str], list[str], Any | None]:
    """Split `tensors` (whose joint marking failed) into kept and dropped: halves that build are
    kept whole, failing halves are split until single culprits remain (`on_culprit` is called
    right after the failed attempt that proves one). Assumes marking nothing builds. Returns
    (kept, dropped, the result of building with exactly `kept`, if one was made)."""

    def resolve(base: list[str], group: list[str]) -> tuple[list[str], list[str], Any | None]:
        if not group:
            return [], [], None
        if out_of_budget():
            return [], list(group), None
        result = attempt(base + group)
        if result is not None:
            return list(group), [], result
        return split(base, group)

    def split(base: list[str], group: list[str]) -> tuple[list[str], list[str], Any | None]:
        if len(group) == 1:
            on_culprit(group[0])
            return [], list(group), None
        middle = len(group) // 2
        kept_left, dropped_left, result_left = resolve(base, group[:middle])
        kept_right, dropped_right, result_right = resolve(base + kept_left, group[middle:])
        result = result_right if kept_right else result_left
        return kept_left + kept_right, dropped_left + dropped_right, result

    kept, dropped, result = split([], list(tensors))
    return kept, dropped, result


@dataclass
class BuildResult:
    """One builder call."""

    serialized: bytes | None
    errors: list[str]
    layers: list[LayerInfo] = field(default_factory=list)
    layer_source: str = ""
    records: list[TacticRecord] = field(default_factory=list)
    precision: PrecisionNotes = field(default_factory=PrecisionNotes)
    engine: Any = None  # deserialized engine (kept with its runtime) when a GPU is present
    runtime: Any = None

    def failure(self) -> str:
        reason = self.errors[-1] if self.errors else "build_serialized_network returned nothing"
        return f"TensorRT build failed: {reason.strip().splitlines()[0]}"


@dataclass
class Chunk:
    marked: list[str]
    result: BuildResult


class NetworkBuilder:
    """Builds one model under one plan (and ban list), with any set of tensors exposed."""

    def __init__(self, engine: TensorRTEngine, model: Model, plan: PrecisionPlan, bans: BanList | None):
        self.engine = engine
        self.trt = engine.trt
        self.features = engine.features
        self.options = engine.options
        self.model = model
        self.plan = plan
        self.bans = bans
        self.strong = engine.strong_typing
        self.control = engine.tactic_control(bans)
        self.resolver = NodeResolver([n.name for n in model.nodes])
        self.proto, self.modified = self._graph()
        self.builds = 0
        self.failures: dict[str, str] = {}
        self._unmarked: dict[str, BuildResult] = {}

    def _graph(self) -> tuple[Any, bool]:
        if not self.strong:
            return self.model.proto, False
        if self.plan.default == "fp32" and not self.plan.nodes:
            return self.model.proto, False
        from trtdebug.core.typed_onnx import to_mixed_precision_onnx

        return to_mixed_precision_onnx(self.model, self.plan), True

    def nodes_of(self, builder_name: str) -> tuple[str, ...]:
        return self.resolver.from_name(builder_name)[0]

    def candidates(self, wanted: set[str]) -> list[str]:
        """Tensors that can be marked, in network order (parses once, builds nothing)."""
        logger = make_logger(self.trt)
        builder = self.trt.Builder(logger)
        network = create_network(self.trt, builder, self.features, self.strong)
        _parser = parse_onnx(self.trt, network, logger, self.proto, self.modified)
        return markable_tensors(self.trt, network, wanted)

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
        logger = make_logger(trt_api)
        builder = trt_api.Builder(logger)
        network = create_network(trt_api, builder, self.features, self.strong)
        parser = parse_onnx(trt_api, network, logger, self.proto, self.modified)
        config = builder.create_builder_config()
        self._configure(config)
        profile = add_profile(builder, config, shape_ranges_for(network, self.options.input_shapes,
                                                               self.options.shape_ranges))
        if mode in ("outputs", "debug"):
            mark(network, marked, mode)
        elif mode == "unfused":
            mark_unfused(network)
        precision = PrecisionNotes()
        if not self.strong:
            precision = apply_weak_typing(trt_api, network, config, self.features, self.plan, self.resolver,
                                          self.options.obey_constraints)
        calibrator = self._calibrate(network, config, profile, precision)
        try:
            serialized, records = self._build_with_tactics(builder, network, config, logger)
        finally:
            if calibrator is not None:
                calibrator.release()
        del parser  # the parser owns the weights until the build is done
        result = BuildResult(serialized, logger.errors(), records=records, precision=precision)
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
                   precision: PrecisionNotes) -> Any:
        if "INT8" not in precision.flags or has_explicit_quantization(self.trt, network):
            return None
        if not self.features.calibrators:
            raise UserError("this TensorRT has no INT8 calibrators; give a Q/DQ (explicitly quantized) model")
        if not self.options.calibration_feeds and not self.options.calibration_cache:
            raise UserError("INT8 without Q/DQ nodes needs calibration data: pass calibration feeds or a "
                            "calibration cache, or give a Q/DQ (explicitly quantized) model")
        from trtdebug.engines.tensorrt.calibration import make_calibrator

        calibrator = make_calibrator(self.trt, self.options.calibration_feeds, self.options.calibration_cache)
        with quiet_deprecations():
            config.int8_calibrator = calibrator
            config.set_calibration_profile(profile)
        return calibrator

    def _build_with_tactics(self, builder: trt.Builder, network: trt.INetworkDefinition,
                            config: trt.IBuilderConfig, logger: Any) -> tuple[bytes | None, list[TacticRecord]]:
        trt_api = self.trt
        if self.control == "selector":
            selector = make_algorithm_selector(trt_api, self.bans, self.nodes_of)
            with quiet_deprecations():
                config.algorithm_selector = selector
            config.set_flag(trt_api.BuilderFlag.DISABLE_TIMING_CACHE)  # cached tactics skip selection
            serialized = _serialize(builder, network, config, logger)
            logger.messages.extend((1, f"algorithm selector: {e}") for e in selector.errors)
            return serialized, selector.records()
        if self.control == "timing-cache":
            cache = enable_editable_cache(trt_api, config)
            serialized = _serialize(builder, network, config, logger)
            records = records_from_profiling(parse_profiling_log(logger.lines()))
            if serialized is not None and self.bans and force_unbanned_tactics(trt_api, cache, records, self.bans,
                                                                                self.nodes_of):
                serialized = _serialize(builder, network, config, logger)
            return serialized, records
        return _serialize(builder, network, config, logger), []

    def _describe_layers(self, result: BuildResult, logger: Any) -> None:
        """Engine layers from the inspector's JSON (needs a GPU to deserialize), else the build log."""
        assert result.serialized is not None
        layers = []
        if self.engine.device_available():
            runtime = self.trt.Runtime(logger)
            engine = runtime.deserialize_cuda_engine(result.serialized)
            if engine is not None:
                result.engine, result.runtime = engine, runtime
                inspector = engine.create_engine_inspector()
                text = inspector.get_engine_information(self.trt.LayerInformationFormat.JSON)
                layers = parse_inspector_json(text)
                result.layer_source = "engine inspector"
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
    after the op ("matMul1" -> "matMul1_myl0_0", as the sample matches them), or the same nodes."""
    for record in records:
        nodes = nodes_of(record.layer)
        layer = (next((lay for lay in layers if lay.name == record.layer), None)
                 or next((lay for lay in layers if lay.name.startswith(record.layer + "_myl")), None)
                 or next((lay for lay in layers if nodes and lay.onnx_nodes == nodes), None))
        if layer is None:
            continue
        if layer.tactic:
            layer.extra["kernel"] = layer.tactic
        layer.tactic = record.chosen
        layer.alternatives = record.alternatives
        layer.extra["tactic_layer"] = record.layer
        for key in ("cache_key", "forced_from", "note"):
            if getattr(record, key):
                layer.extra[key] = getattr(record, key)
        if record.excluded:
            layer.extra["excluded"] = list(record.excluded)
        if record.kernels:
            layer.extra["kernels"] = dict(record.kernels)


# -- running -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HostType:
    """How a TensorRT data type lives on the host: the NumPy dtype of its bytes, and a decoder."""

    dtype: np.dtype
    decode: Callable[[np.ndarray], np.ndarray] | None = None


HOST_TYPES = {
    "FLOAT": HostType(np.dtype(np.float32)), "HALF": HostType(np.dtype(np.float16)),
    "INT8": HostType(np.dtype(np.int8)), "UINT8": HostType(np.dtype(np.uint8)),
    "INT32": HostType(np.dtype(np.int32)), "INT64": HostType(np.dtype(np.int64)),
    "BOOL": HostType(np.dtype(np.bool_)),
    "BF16": HostType(np.dtype(np.uint16), bf16_bits_to_float32),
    "FP8": HostType(np.dtype(np.uint8), fp8_e4m3_bits_to_float32),
}


def host_type(trt_api: Any, data_type: Any) -> HostType:
    for name, spec in HOST_TYPES.items():
        if hasattr(trt_api.DataType, name) and data_type == getattr(trt_api.DataType, name):
            return spec
    raise UserError(f"trtdebug cannot read TensorRT tensors of type {data_type}; expose other tensors")


def host_input(name: str, value: np.ndarray, spec: HostType) -> np.ndarray:
    """A feed converted to the engine input's type (TensorRT 8.6 has no INT64: int64 -> int32)."""
    value = np.asarray(value)
    if spec.decode is bf16_bits_to_float32:
        return float32_to_bf16_bits(value.astype(np.float32))
    if value.dtype == spec.dtype:
        return np.ascontiguousarray(value)
    if value.dtype.kind in "iu" and spec.dtype.kind in "iu":
        info = np.iinfo(spec.dtype)
        if value.size and (value.min() < info.min or value.max() > info.max):
            raise UserError(f"input {name!r} has values outside the engine's {spec.dtype} range")
        return np.ascontiguousarray(value.astype(spec.dtype))
    if value.dtype.kind == spec.dtype.kind or (value.dtype.kind == "b" and spec.dtype.kind in "iu"):
        return np.ascontiguousarray(value.astype(spec.dtype))
    raise UserError(f"input {name!r} is {value.dtype}, but the engine wants {spec.dtype}")


def make_debug_listener(trt_api: Any, cuda: CudaRuntime) -> Any:
    """An IDebugListener that copies every debug tensor to the host while it is valid."""

    class Collector(trt_api.IDebugListener):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt_api.IDebugListener.__init__(self)  # required by pybind11 trampolines
            self.tensors: dict[str, np.ndarray] = {}
            self.errors: list[str] = []

        def process_debug_tensor(self, addr: int, location: Any, type: Any, shape: Any, name: str,
                                 stream: int) -> None:
            try:
                spec = host_type(trt_api, type)
                host = np.empty(tuple(int(d) for d in shape), dtype=spec.dtype)
                if location == trt_api.TensorLocation.HOST:
                    ctypes.memmove(host.ctypes.data, int(addr), host.nbytes)
                else:  # addr and stream arrive as ints; the data is valid only during this call
                    cuda.synchronize(stream)
                    cuda.copy_to_host(host, int(addr), stream)
                    cuda.synchronize(stream)
                self.tensors[str(name)] = spec.decode(host) if spec.decode else host
            except Exception as exc:  # TensorRT prints and swallows exceptions from here
                self.errors.append(f"{name}: {exc}")

    return Collector()


def run_engine(trt_api: Any, engine: trt.ICudaEngine, feeds: Mapping[str, np.ndarray], cuda: CudaRuntime,
               mode: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Run once: set shapes and addresses, copy in, execute_async_v3, copy out. Returns the I/O
    and debug tensors by engine name, and the debug listener's errors."""
    context = engine.create_execution_context()
    if context is None:
        raise UserError("TensorRT could not create an execution context (out of GPU memory?)")
    listener = _attach_listener(trt_api, context, cuda, mode)  # referenced here until the run ends
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt_api.TensorIOMode.INPUT]
    missing = [n for n in inputs if n not in feeds]
    if missing:
        raise UserError(f"no feed for engine input {missing[0]!r}")
    with device_arena(cuda) as arena:
        host_resident: list[np.ndarray] = []  # host-located tensors TensorRT reads in place
        for name in inputs:
            host = host_input(name, feeds[name], host_type(trt_api, engine.get_tensor_dtype(name)))
            if not context.set_input_shape(name, host.shape):
                raise UserError(f"input {name!r} shape {list(host.shape)} is outside the engine's optimization "
                                "profile; rebuild with a shape range that covers it")
            if _on_host(trt_api, engine, name):
                host_resident.append(host)
                context.set_tensor_address(name, host.ctypes.data)
            else:
                context.set_tensor_address(name, arena.upload(host))
        outputs = {name: _bind_output(trt_api, engine, context, arena, name) for name in names if name not in inputs}
        if not context.execute_async_v3(arena.stream_handle):
            raise UserError("TensorRT failed to execute the engine (execute_async_v3 returned False)")
        fetched = {name: (binding.fetch(arena), binding.spec) for name, binding in outputs.items()}
        arena.synchronize()
    results = {name: spec.decode(host) if spec.decode else host for name, (host, spec) in fetched.items()}
    errors: list[str] = []
    if listener is not None:
        for name, value in listener.tensors.items():
            results.setdefault(name, value)
        errors = listener.errors
    return results, errors


def _attach_listener(trt_api: Any, context: trt.IExecutionContext, cuda: CudaRuntime, mode: str) -> Any:
    if mode not in ("debug", "unfused"):
        return None
    listener = make_debug_listener(trt_api, cuda)
    context.set_debug_listener(listener)  # the caller keeps `listener` alive: keep_alive only since 10.12
    if mode == "debug":
        context.set_all_tensors_debug_state(True)
    else:
        context.unfused_tensors_debug_state = True
    return listener


def _on_host(trt_api: Any, engine: trt.ICudaEngine, name: str) -> bool:
    """Shape tensors live in host memory; TensorRT reads and writes them there."""
    return bool(engine.get_tensor_location(name) == trt_api.TensorLocation.HOST)


@dataclass
class OutputBinding:
    spec: HostType
    shape: tuple[int, ...]
    pointer: int = 0  # device memory, or
    host: np.ndarray | None = None  # host memory TensorRT writes in place

    def fetch(self, arena: Any) -> np.ndarray:
        if self.host is not None:
            return self.host
        return arena.download(self.pointer, self.shape, self.spec.dtype)


def _bind_output(trt_api: Any, engine: trt.ICudaEngine, context: trt.IExecutionContext, arena: Any,
                 name: str) -> OutputBinding:
    shape = dims_tuple(context.get_tensor_shape(name))
    if any(d < 0 for d in shape):
        raise UserError(f"output {name!r} has a data-dependent shape {list(shape)}, which trtdebug cannot "
                        "allocate ahead of time")
    spec = host_type(trt_api, engine.get_tensor_dtype(name))
    if _on_host(trt_api, engine, name):
        binding = OutputBinding(spec, shape, host=np.empty(shape, dtype=spec.dtype))
        assert binding.host is not None
        context.set_tensor_address(name, binding.host.ctypes.data)
        return binding
    binding = OutputBinding(spec, shape, pointer=arena.alloc(int(np.prod(shape, dtype=np.int64)) * spec.dtype.itemsize))
    context.set_tensor_address(name, binding.pointer)
    return binding


class TensorRTBuilt:
    """Built engine(s): one per marking chunk, run one after another and merged."""

    def __init__(self, engine: TensorRTEngine, model: Model, chunks: list[Chunk], mode: str,
                 notes: dict[str, Any]):
        self.engine = engine
        self.trt = engine.trt
        self.model = model
        self.chunks = chunks
        self.mode = mode
        self.marking_notes = notes
        self.layers = _merged_layers(chunks)
        self.onnx_tensors = set(model.producer) | {o.name for o in model.outputs}
        self._runtimes: list[Any] = []  # a runtime must outlive the engines it deserialized
        if len(chunks) > 1:  # keep GPU memory bounded: deserialize one chunk at a time when running
            for chunk in chunks:
                chunk.result.engine = chunk.result.runtime = None

    @property
    def serialized(self) -> list[bytes]:
        """The serialized engine of each marking chunk."""
        return [c.result.serialized for c in self.chunks if c.result.serialized is not None]

    def serialize(self) -> bytes:
        """The engine file (`trtdebug build`): a build exposing nothing extra has exactly one."""
        if len(self.chunks) != 1:
            raise UserError("a chunked build has several engines; build without chunking to save one")
        return self.serialized[0]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda = CudaRuntime()
        merged: dict[str, np.ndarray] = {}
        unmapped: set[str] = set()
        for chunk in self.chunks:
            engine = chunk.result.engine or self._deserialize(chunk.result)
            values, errors = run_engine(self.trt, engine, feeds, cuda, self.mode)
            if errors:
                self.marking_notes.setdefault("debug_errors", []).extend(errors[:10])
            for name, value in values.items():
                if name in self.onnx_tensors:
                    merged.setdefault(name, value)
                else:
                    unmapped.add(name)
        if unmapped and self.mode == "unfused":
            # Unfused debug tensors carry engine-internal names; only those equal to ONNX names match.
            self.marking_notes["unmatched_debug_tensors"] = sorted(unmapped)
        if self.mode == "unfused":
            self.marking_notes["marked"] = sorted(n for n in merged if n not in {o.name for o in self.model.outputs})
        return merged

    def _deserialize(self, result: BuildResult) -> Any:
        assert result.serialized is not None
        logger = make_logger(self.trt)
        runtime = self.trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(result.serialized)
        if engine is None:
            reason = (logger.errors() or ["deserialize_cuda_engine returned nothing"])[-1].splitlines()[0]
            raise UserError(f"cannot load the engine on this machine: {reason}")
        self._runtimes.append(runtime)
        return engine


def _merged_layers(chunks: Sequence[Chunk]) -> list[LayerInfo]:
    """Every chunk's layers (a layer fused differently in another chunk is a different layer)."""
    merged: list[LayerInfo] = []
    seen: dict[tuple[str, tuple[str, ...], str], LayerInfo] = {}
    for index, chunk in enumerate(chunks):
        for layer in chunk.result.layers:
            key = (layer.name, layer.onnx_nodes, layer.tactic)
            if key in seen:  # the same layer in another chunk may write other marked tensors
                known = seen[key]
                known.outputs = tuple(dict.fromkeys([*known.outputs, *layer.outputs]))
                continue
            seen[key] = layer
            if len(chunks) > 1:
                layer.extra["build"] = index
            merged.append(layer)
    return merged
