"""Running built engines: bindings, host/device buffers, the debug listener, TensorRTBuilt.

Every run creates an execution context, sets input shapes and addresses (host memory for
host-located shape tensors, device memory otherwise), executes on a non-default stream
(execute_async_v3) and copies outputs and debug tensors back as NumPy arrays keyed by engine
tensor name. TensorRTBuilt runs each marking chunk's engine in turn and merges their tensors.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from trtdebug.core.model.graph import Model
from trtdebug.core.quantized.qdq import QdqPair
from trtdebug.engines.base import LayerInfo
from trtdebug.engines.tensorrt.builder import BuildResult, Chunk
from trtdebug.engines.tensorrt.context import TensorRTContext
from trtdebug.engines.tensorrt.cuda_buffers import CudaRuntime, device_arena
from trtdebug.engines.tensorrt.host_types import HostType, host_input, host_type
from trtdebug.engines.tensorrt.network import as_dims, dims_tuple
from trtdebug.errors import EngineError, UserError, first_line

if TYPE_CHECKING:
    import tensorrt as trt


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


def make_output_allocator(trt_api: Any, arena: Any) -> Any:
    """An IOutputAllocator for outputs whose shape is known only after the run (NonZero, NMS and
    what follows them): TensorRT asks for memory of the size it needs, then reports the shape. As
    Polygraphy's runner does (tools/Polygraphy/polygraphy/backend/trt/runner.py, OutputAllocator);
    only `reallocate_output` is given: the bindings fall back to it where TensorRT calls
    reallocateOutputAsync (python/src/infer/pyCore.cpp, PyOutputAllocator)."""

    class DeviceOutputs(trt_api.IOutputAllocator):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt_api.IOutputAllocator.__init__(self)  # required by pybind11 trampolines
            self.memory: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.errors: list[str] = []

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
            try:
                known = self.memory.get(str(tensor_name))
                if known is not None and known[1] >= int(size):
                    return known[0]
                pointer = int(arena.alloc(max(int(size), 1)))  # cudaMalloc: 256-byte aligned
                self.memory[str(tensor_name)] = (pointer, int(size))
                return pointer
            except Exception as exc:  # TensorRT prints and swallows exceptions from here
                self.errors.append(f"{tensor_name}: {exc}")
                return 0

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shapes[str(tensor_name)] = tuple(int(shape[i]) for i in range(len(shape)))

    return DeviceOutputs()


def run_engine(trt_api: Any, engine: trt.ICudaEngine, feeds: Mapping[str, np.ndarray], cuda: CudaRuntime,
               mode: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Run once: set shapes and addresses, copy in, execute_async_v3, copy out. Returns the I/O
    and debug tensors by engine name, and the debug listener's and output allocator's errors."""
    context = engine.create_execution_context()
    if context is None:
        raise EngineError("TensorRT could not create an execution context (out of GPU memory?)")
    listener = _attach_listener(trt_api, context, cuda, mode)  # referenced here until the run ends
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt_api.TensorIOMode.INPUT]
    missing = [n for n in inputs if n not in feeds]
    if missing:
        raise UserError(f"no feed for engine input {missing[0]!r}")
    errors: list[str] = []
    with device_arena(cuda) as arena:
        host_resident: list[np.ndarray] = []  # host-located tensors TensorRT reads in place
        for name in inputs:
            host = host_input(name, feeds[name], host_type(trt_api, engine.get_tensor_dtype(name)))
            if not context.set_input_shape(name, as_dims(host.shape)):
                raise UserError(f"input {name!r} shape {list(host.shape)} is outside the engine's optimization "
                                "profile; rebuild with a shape range that covers it")
            if _input_on_host(trt_api, engine, name):
                host_resident.append(host)
                context.set_tensor_address(name, host.ctypes.data)
            else:
                context.set_tensor_address(name, arena.upload(host))
        _infer_shapes(context)
        allocator = make_output_allocator(trt_api, arena)  # for data-dependent output shapes only
        outputs = {name: _bind_output(trt_api, engine, context, arena, name, allocator)
                   for name in names if name not in inputs}
        if not context.execute_async_v3(arena.stream_handle):
            raise EngineError("TensorRT failed to execute the engine (execute_async_v3 returned False)")
        arena.synchronize()  # the allocator's shapes are final once the run is done
        fetched = {name: (binding.fetch(arena, allocator, name), binding.spec) for name, binding in outputs.items()}
        arena.synchronize()
        errors.extend(f"output allocator: {e}" for e in allocator.errors)
    results = {name: spec.decode(host) if spec.decode else host for name, (host, spec) in fetched.items()}
    if listener is not None:
        for name, value in listener.tensors.items():
            results.setdefault(name, value)
        errors = listener.errors + errors
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


def _input_on_host(trt_api: Any, engine: trt.ICudaEngine, name: str) -> bool:
    """Shape-tensor inputs are given as host memory: Polygraphy's runner tests
    `engine.is_shape_inference_io(name)` and passes the host array's pointer."""
    return bool(engine.is_shape_inference_io(name)) or _on_host(trt_api, engine, name)


@dataclass
class OutputBinding:
    spec: HostType
    shape: tuple[int, ...]
    pointer: int = 0  # device memory, or
    host: np.ndarray | None = None  # host memory TensorRT writes in place, or
    allocated: bool = False  # memory TensorRT asks the output allocator for (data-dependent shape)

    def fetch(self, arena: Any, allocator: Any, name: str = "") -> np.ndarray:
        if self.host is not None:
            return self.host
        if self.allocated:
            return _fetch_allocated(arena, allocator, name, self.spec)
        return arena.download(self.pointer, self.shape, self.spec.dtype)


def _fetch_allocated(arena: Any, allocator: Any, name: str, spec: HostType) -> np.ndarray:
    shape = allocator.shapes.get(name)
    if shape is None:
        raise EngineError(f"TensorRT reported no shape for the data-dependent output {name!r}")
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return np.empty(shape, dtype=spec.dtype)
    pointer, size = allocator.memory.get(name, (0, 0))
    if not pointer or size < int(np.prod(shape, dtype=np.int64)) * spec.dtype.itemsize:
        why = f" ({allocator.errors[0]})" if allocator.errors else ""  # e.g. the allocation ran out of memory
        raise EngineError(f"TensorRT wrote the data-dependent output {name!r} to no memory trtdebug allocated{why}")
    return arena.download(pointer, shape, spec.dtype)


def _infer_shapes(context: trt.IExecutionContext) -> None:
    """The engine's shapes for these inputs, or one line. infer_shapes raises RuntimeError for an
    invalid shape ("a tensor ends up with a negative dimension": a Reshape the inputs do not fit)
    and names the inputs left unspecified (NvInferRuntime.h, IExecutionContext::inferShapes;
    python/src/infer/pyCore.cpp)."""
    try:
        unspecified = context.infer_shapes()
    except RuntimeError as exc:
        raise UserError(f"TensorRT cannot compute the engine's shapes for these inputs ({first_line(exc)}): "
                        "check the input shapes and shape-tensor values against the model") from None
    if unspecified:
        raise UserError(f"TensorRT cannot compute the engine's shapes: input {str(unspecified[0])!r} is not "
                        "fully specified; give its shape with --input-shape or its values with --inputs")


def _bind_output(trt_api: Any, engine: trt.ICudaEngine, context: trt.IExecutionContext, arena: Any,
                 name: str, allocator: Any) -> OutputBinding:
    try:
        shape = dims_tuple(context.get_tensor_shape(name))
    except ValueError:  # Dims{-1, {}}: len() of it fails; infer_shapes passed, so TensorRT is at fault
        raise EngineError(f"TensorRT reports no shape for output {name!r} although it inferred the shapes") from None
    spec = host_type(trt_api, engine.get_tensor_dtype(name))
    if any(d < 0 for d in shape):  # known only after the run: TensorRT asks the allocator for memory
        if not context.set_output_allocator(name, allocator):
            raise EngineError(f"TensorRT refused an output allocator for {name!r}, whose shape {list(shape)} "
                            "depends on the data")
        return OutputBinding(spec, shape, allocated=True)
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

    def __init__(self, context: TensorRTContext, model: Model, chunks: list[Chunk], mode: str,
                 notes: dict[str, Any], live_pairs: Sequence[QdqPair] = ()):
        self.context = context
        self.live_pairs = list(live_pairs)  # Q/DQ model: activation pairs the engine keeps in INT8
        self.trt = context.trt
        self.model = model
        self.chunks = chunks
        self.mode = mode
        self.marking_notes = notes
        self.layers = _merged_layers(chunks)
        self.onnx_tensors = set(model.producer) | {o.name for o in model.outputs}
        # One chunk: its engine stays loaded between runs. Several: each is loaded, run and
        # released in turn, so GPU memory holds one chunk's engine at a time.
        self._loaded: tuple[Any, Any] | None = None  # (runtime, engine); the runtime outlives the engine

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
            if len(self.chunks) == 1:
                self._loaded = self._loaded or self._deserialize(chunk.result)
                values, errors = run_engine(self.trt, self._loaded[1], feeds, cuda, self.mode)
            else:
                runtime, engine = self._deserialize(chunk.result)
                try:
                    values, errors = run_engine(self.trt, engine, feeds, cuda, self.mode)
                finally:
                    del engine, runtime  # the context went with run_engine; the engine before its runtime
            if errors:
                self.marking_notes.setdefault("debug_errors", []).extend(errors[:10])
            values = self._to_float_names(values)
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

    def _to_float_names(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A Q/DQ engine's tensors by the float counterpart's names: a quantized tensor is the
        output of its DequantizeLinear (what its INT8 readers see), or, where only the float tensor
        the QuantizeLinear reads could be marked, that tensor quantized and dequantized here."""
        outputs = {o.name for o in self.model.outputs}
        for pair in self.live_pairs:
            dequantized = pair.dequantized[0]
            if dequantized in values:
                values[pair.source] = values[dequantized]
            elif pair.source in values and pair.source not in outputs:
                values[pair.source] = pair.params.fake_quantize(np.asarray(values[pair.source], np.float32))
        return values

    def _deserialize(self, result: BuildResult) -> tuple[Any, Any]:
        assert result.serialized is not None
        logger = self.context.logger()
        runtime = self.trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(result.serialized)
        if engine is None:
            reason = (logger.errors() or ["deserialize_cuda_engine returned nothing"])[-1].splitlines()[0]
            raise EngineError(f"cannot load the engine it built on this machine: {reason}")
        return runtime, engine


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
