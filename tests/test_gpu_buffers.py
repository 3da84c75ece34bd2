"""The cuda-python buffer code run for real: allocations, async copies on a non-default stream,
every host dtype round trip, CUDA errors as one-line messages, and frees (also after errors).
GPU tests are skipped where there is no GPU or no cuda-python; the host encodings of BF16 and FP8
(no NumPy dtype) are checked everywhere."""

from __future__ import annotations

import numpy as np
import pytest

from trtdebug.engines.tensorrt.cuda_buffers import (
    CudaError,
    CudaRuntime,
    bf16_bits_to_float32,
    device_arena,
    float32_to_bf16_bits,
    fp8_e4m3_bits_to_float32,
)
from trtdebug.errors import EngineError, UserError

MIB = 1 << 20


@pytest.fixture(scope="module")
def cuda() -> CudaRuntime:
    try:
        runtime = CudaRuntime()
        if runtime.device_count() < 1:
            pytest.skip("no CUDA device")
    except UserError as exc:
        pytest.skip(f"no usable CUDA here: {exc}")
    return runtime


def sample(dtype: np.dtype, shape: tuple[int, ...] = (3, 5, 7)) -> np.ndarray:
    rng = np.random.default_rng(7)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    return (rng.standard_normal(shape) * 100).astype(dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "uint8", "int32", "int64", "bool"])
def test_every_dtype_round_trips(cuda: CudaRuntime, dtype: str) -> None:
    host = sample(np.dtype(dtype))
    with device_arena(cuda) as arena:
        pointer = arena.upload(host)
        back = arena.download(pointer, host.shape, host.dtype)
        arena.synchronize()
    assert back.dtype == host.dtype and np.array_equal(back, host)


@pytest.mark.gpu
def test_bf16_round_trips_as_bits(cuda: CudaRuntime) -> None:
    values = np.array([1.0, -2.5, 3.140625, 65504.0, 1e30, -0.0, np.inf, np.nan], np.float32)
    bits = float32_to_bf16_bits(values)
    with device_arena(cuda) as arena:
        back = arena.download(arena.upload(bits), bits.shape, np.dtype(np.uint16))
        arena.synchronize()
    decoded = bf16_bits_to_float32(back)
    np.testing.assert_array_equal(decoded[:4], [1.0, -2.5, 3.140625, 65536.0])  # 65504 rounds up in BF16
    assert np.isinf(decoded[6]) and np.isnan(decoded[7]) and np.signbit(decoded[5])


@pytest.mark.gpu
def test_empty_and_non_contiguous_arrays(cuda: CudaRuntime) -> None:
    strided = sample(np.dtype(np.float32), (4, 6)).T  # not C-contiguous
    with device_arena(cuda) as arena:
        back = arena.download(arena.upload(strided), strided.shape, strided.dtype)
        empty = arena.download(arena.upload(np.zeros((0, 3), np.float16)), (0, 3), np.dtype(np.float16))
        arena.synchronize()
    assert np.array_equal(back, strided) and empty.shape == (0, 3)


@pytest.mark.gpu
def test_copies_run_on_a_non_default_stream(cuda: CudaRuntime) -> None:
    with device_arena(cuda) as arena:
        assert arena.stream_handle != 0  # 0 is the legacy default stream


@pytest.mark.gpu
def test_cuda_errors_are_one_line_messages(cuda: CudaRuntime) -> None:
    with pytest.raises(CudaError, match=r"^CUDA error in cudaMalloc\(\d+ bytes\): cudaErrorMemoryAllocation") as info:
        cuda.malloc(1 << 50)  # a petabyte
    assert "\n" not in str(info.value) and isinstance(info.value, EngineError)  # exit 4, not "bad input"
    with pytest.raises(CudaError, match="CUDA error in cudaFree: cudaErrorInvalid"):
        cuda.free(0xDEADBEEF000)


@pytest.mark.gpu
def test_memory_is_freed_even_when_a_step_fails(cuda: CudaRuntime) -> None:
    before = cuda.free_memory()
    with pytest.raises(CudaError), device_arena(cuda) as arena:
        for _ in range(4):
            arena.alloc(256 * MIB)
        assert cuda.free_memory() <= before - 1000 * MIB  # the memory was really taken
        arena.alloc(1 << 50)
    assert cuda.free_memory() >= before - 64 * MIB  # the 1 GiB came back (allocator slack aside)


@pytest.mark.gpu
def test_download_needs_a_writeable_contiguous_array(cuda: CudaRuntime) -> None:
    with device_arena(cuda) as arena:
        pointer = arena.upload(np.zeros(8, np.float32))
        read_only = np.zeros(8, np.float32)
        read_only.flags.writeable = False
        with pytest.raises(ValueError, match="writeable C-contiguous"):
            cuda.copy_to_host(read_only, pointer, arena.stream)


# -- host encodings (no GPU needed) -----------------------------------------------------------------

def test_bf16_bits_round_to_nearest_even() -> None:
    # 1 + 2^-8 lies halfway between two BF16 values: it rounds to the even one (1.0).
    halfway = np.array([1 + 2**-8, 1 + 3 * 2**-8, -1.5], np.float32)
    assert list(bf16_bits_to_float32(float32_to_bf16_bits(halfway))) == [1.0, 1 + 2**-6, -1.5]
    assert float32_to_bf16_bits(np.array([np.nan], np.float32))[0] == 0x7FC0


def test_fp8_e4m3_table() -> None:
    codes = np.array([0x00, 0x38, 0xB8, 0x7E, 0x01, 0x08, 0x7F, 0xFF], np.uint8)
    values = fp8_e4m3_bits_to_float32(codes)
    assert list(values[:6]) == [0.0, 1.0, -1.0, 448.0, 2.0**-9, 2.0**-6]  # 448 is E4M3's largest
    assert np.isnan(values[6]) and np.isnan(values[7])


def test_no_gpu_is_bad_usage_but_a_failed_call_is_an_engine_failure() -> None:
    """Everywhere (a scripted cudart): 'no device' is exit 2 with what to do; a failed allocation is exit 4."""
    from trtdebug.engines.tensorrt.cuda_buffers import NoCudaDevice

    class ScriptedCudart:
        class cudaError_t:  # noqa: N801
            cudaSuccess = 0

        NAMES = {100: b"cudaErrorNoDevice", 2: b"cudaErrorMemoryAllocation"}

        def cudaGetErrorName(self, error: int) -> tuple[int, bytes]:  # noqa: N802
            return (0, self.NAMES[error])

        def cudaGetErrorString(self, error: int) -> tuple[int, bytes]:  # noqa: N802
            return (0, b"")

        def cudaGetDeviceCount(self) -> tuple[int, int]:  # noqa: N802
            return (100, 0)

        def cudaMalloc(self, size: int) -> tuple[int, int]:  # noqa: N802
            return (2, 0)

    runtime = CudaRuntime(ScriptedCudart())  # type: ignore[arg-type]
    with pytest.raises(NoCudaDevice, match="needs a machine with an NVIDIA GPU") as no_device:
        runtime.device_count()
    assert isinstance(no_device.value, UserError)
    with pytest.raises(CudaError) as failed:
        runtime.malloc(1 << 20)
    assert isinstance(failed.value, EngineError) and not isinstance(failed.value, UserError)
