"""Device memory, streams and host <-> device copies with cuda-python, for running engines.

cuda-python returns a tuple from every call whose first element is the error code; `check` turns
a failure into a one-line CudaError, an EngineError (exit 4: out of memory, a failed copy), or
NoCudaDevice, also a UserError (exit 2: no GPU or driver here, the machine is the problem). Memory
taken through `DeviceArena` is freed when the arena closes, also after an error.

Host values are NumPy arrays. Types NumPy lacks travel as raw bits: BF16 as uint16 (decoded to
float32 by shifting into the upper half of a float32), FP8 E4M3 as uint8 (decoded by table).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import numpy as np

from trtdebug.errors import EngineError, UserError

CUDA_PYTHON_HINT = ("cuda-python is not installed: pip install 'trtdebug[tensorrt-cu12]' for a CUDA 12 driver "
                    "or 'trtdebug[tensorrt-cu13]' for CUDA 13")
NO_DEVICE_HINT = "; this needs a machine with an NVIDIA GPU and a driver matching cuda-python"
# Errors that mean "there is no usable GPU here" rather than "this call failed".
NO_DEVICE_ERRORS = {"cudaErrorInsufficientDriver", "cudaErrorNoDevice", "cudaErrorInitializationError",
                    "cudaErrorCompatNotSupportedOnDevice", "cudaErrorSystemDriverMismatch"}


class CudaError(EngineError):
    """A CUDA runtime call failed; the message names the call and the CUDA error."""


class NoCudaDevice(CudaError, UserError):
    """No usable GPU here (no device, no or too old a driver): the machine, not the engine, is the
    problem, so the CLI answers it as bad usage (exit 2)."""


def load_cudart() -> ModuleType:
    """`cuda.bindings.runtime` (cuda-python >= 12.6.1), else the older `cuda.cudart`."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise UserError(CUDA_PYTHON_HINT)


class CudaRuntime:
    """Thin checked wrapper over the cuda-python runtime module."""

    def __init__(self, cudart: ModuleType | None = None):
        self.cudart = cudart or load_cudart()

    def check(self, result: Any, what: str) -> Any:
        """Unpack a cuda-python result tuple, raising CudaError on failure."""
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.cudart.cudaError_t.cudaSuccess:
            message = self.describe(err, what)
            raise NoCudaDevice(message) if message.endswith(NO_DEVICE_HINT) else CudaError(message)
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else tuple(rest)

    def describe(self, err: Any, what: str) -> str:
        name = self._text(self.cudart.cudaGetErrorName(err)) or str(err)
        detail = self._text(self.cudart.cudaGetErrorString(err))
        message = f"CUDA error in {what}: {name}" + (f" ({detail})" if detail and detail != name else "")
        if name in NO_DEVICE_ERRORS:
            message += NO_DEVICE_HINT
        return message

    @staticmethod
    def _text(result: Any) -> str:
        value = result[1] if isinstance(result, tuple) and len(result) > 1 else result
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")

    # -- queries ----------------------------------------------------------------------------

    def device_count(self) -> int:
        return int(self.check(self.cudart.cudaGetDeviceCount(), "cudaGetDeviceCount"))

    def free_memory(self) -> int:
        free, _total = self.check(self.cudart.cudaMemGetInfo(), "cudaMemGetInfo")
        return int(free)

    def device_description(self, device: int = 0) -> dict[str, str]:
        """GPU name, compute capability, driver and runtime CUDA versions (cudaGetDeviceProperties,
        cudaDriverGetVersion, cudaRuntimeGetVersion; versions are 1000 * major + 10 * minor)."""

        def version(value: Any) -> str:
            number = int(value)
            return f"{number // 1000}.{(number % 1000) // 10}"

        props = self.check(self.cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        name = props.name
        name = name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)
        return {"gpu": name, "compute capability": f"{int(props.major)}.{int(props.minor)}",
                "CUDA driver": version(self.check(self.cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")),
                "CUDA runtime": version(self.check(self.cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion"))}

    # -- memory and streams -------------------------------------------------------------------

    def malloc(self, nbytes: int) -> int:
        # cudaMalloc(0) may return a null pointer, which TensorRT rejects for a bound tensor.
        return int(self.check(self.cudart.cudaMalloc(max(int(nbytes), 1)), f"cudaMalloc({nbytes} bytes)"))

    def free(self, pointer: int) -> None:
        self.check(self.cudart.cudaFree(pointer), "cudaFree")

    def create_stream(self) -> Any:
        flags = self.cudart.cudaStreamNonBlocking  # never the legacy default stream
        return self.check(self.cudart.cudaStreamCreateWithFlags(flags), "cudaStreamCreateWithFlags")

    def destroy_stream(self, stream: Any) -> None:
        self.check(self.cudart.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def synchronize(self, stream: Any) -> None:
        self.check(self.cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def copy_to_device(self, pointer: int, host: np.ndarray, stream: Any) -> None:
        host = np.ascontiguousarray(host)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.check(self.cudart.cudaMemcpyAsync(pointer, host.ctypes.data, host.nbytes, kind, stream),
                   "cudaMemcpyAsync (host to device)")

    def copy_to_host(self, host: np.ndarray, pointer: int, stream: Any) -> None:
        if not host.flags.c_contiguous or not host.flags.writeable:
            raise ValueError("copy_to_host needs a writeable C-contiguous array")
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.check(self.cudart.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes, kind, stream),
                   "cudaMemcpyAsync (device to host)")

    @staticmethod
    def stream_handle(stream: Any) -> int:
        """The integer TensorRT wants for a stream (`int(stream)` is deprecated in cuda-python 12.9.1)."""
        try:
            from cuda.bindings.utils import get_cuda_native_handle  # type: ignore[import-not-found]
        except ImportError:
            return int(stream)
        return int(get_cuda_native_handle(stream))


class DeviceArena:
    """Owns a stream and every allocation made through it; `close` frees them all."""

    def __init__(self, runtime: CudaRuntime):
        self.runtime = runtime
        self.pointers: list[int] = []
        self.stream: Any = runtime.create_stream()

    def alloc(self, nbytes: int) -> int:
        pointer = self.runtime.malloc(nbytes)
        self.pointers.append(pointer)
        return pointer

    def upload(self, host: np.ndarray) -> int:
        pointer = self.alloc(host.nbytes)
        self.runtime.copy_to_device(pointer, host, self.stream)
        return pointer

    def download(self, pointer: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        host = np.empty(shape, dtype=dtype)
        self.runtime.copy_to_host(host, pointer, self.stream)
        return host

    def synchronize(self) -> None:
        self.runtime.synchronize(self.stream)

    @property
    def stream_handle(self) -> int:
        return self.runtime.stream_handle(self.stream)

    def close(self) -> None:
        """Free everything; the first failure is raised after all frees were attempted."""
        failure: CudaError | None = None
        try:
            self.runtime.synchronize(self.stream)
        except CudaError as exc:
            failure = exc
        for pointer in reversed(self.pointers):
            try:
                self.runtime.free(pointer)
            except CudaError as exc:
                failure = failure or exc
        self.pointers.clear()
        try:
            self.runtime.destroy_stream(self.stream)
        except CudaError as exc:
            failure = failure or exc
        if failure is not None:
            raise failure


@contextmanager
def device_arena(runtime: CudaRuntime | None = None) -> Iterator[DeviceArena]:
    arena = DeviceArena(runtime or CudaRuntime())
    try:
        yield arena
    finally:
        arena.close()


# -- host representations of types NumPy lacks ------------------------------------------------

def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """BF16 is the upper half of a float32: shift the 16 bits up and reinterpret."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round to nearest even on the upper 16 bits (NaN stays NaN)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    nan = np.isnan(values)
    out = rounded.astype(np.uint16)
    out[nan] = 0x7FC0
    return out


def _fp8_e4m3_table() -> np.ndarray:
    """All 256 FP8 E4M3FN values: 1 sign, 4 exponent (bias 7), 3 mantissa bits; 0x7F/0xFF are NaN."""
    codes = np.arange(256, dtype=np.uint32)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exponent = (codes >> 3) & 0xF
    mantissa = (codes & 0x7).astype(np.float64)
    normal = (1 + mantissa / 8) * 2.0 ** (exponent.astype(np.float64) - 7)
    subnormal = (mantissa / 8) * 2.0**-6
    values = sign * np.where(exponent == 0, subnormal, normal)
    values[(codes & 0x7F) == 0x7F] = np.nan
    return values.astype(np.float32)


FP8_E4M3_VALUES = _fp8_e4m3_table()


def fp8_e4m3_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return FP8_E4M3_VALUES[bits.astype(np.uint8)]
