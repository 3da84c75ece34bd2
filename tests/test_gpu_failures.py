"""GPU failures as a user meets them, through the fake TensorRT and the fake cuda-python runtime: a CUDA
call that fails while an engine runs (out of memory, a failed copy or stream) is an engine failure,
exit 4, in one line; a machine without a usable GPU is bad usage, exit 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest
import trt_fake

from fixtures import planted
from trtdebug.cli.app import main

OUT_OF_MEMORY, NO_DEVICE = 2, 100


def _compare_on_tensorrt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The exit code and the one error line (stderr's other lines are progress)."""
    model_path = tmp_path / "model.onnx"
    onnx.save(planted.clean()[0], model_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(model_path), "--engine", "tensorrt"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trtdebug:")]
    assert len(errors) == 1, errors
    return int(exit_info.value.code or 0), errors[0]


def _failing(cudart: trt_fake.FakeCudart, monkeypatch: pytest.MonkeyPatch, call: str, error: int) -> None:
    """`call` returns `error` from now on, as cuda-python reports a failure: the code first."""
    cudart.NAMES = {**cudart.NAMES, NO_DEVICE: b"cudaErrorNoDevice"}
    monkeypatch.setattr(cudart, call, lambda *args: (error, 0))


@pytest.mark.parametrize("call", ["cudaMalloc", "cudaMemcpyAsync", "cudaStreamSynchronize",
                                  "cudaStreamCreateWithFlags"])
def test_a_failing_cuda_call_is_an_engine_failure(call: str, fake: Any, cudart: trt_fake.FakeCudart,
                                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _failing(cudart, monkeypatch, call, OUT_OF_MEMORY)
    code, error = _compare_on_tensorrt(tmp_path, capsys)
    assert code == 4, error
    assert error.startswith(f"trtdebug: engine failure: CUDA error in {call}"), error
    assert "cudaErrorMemoryAllocation" in error


def test_tensorrt_refusing_to_run_is_an_engine_failure(fake: Any, cudart: trt_fake.FakeCudart,
                                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """No execution context (TensorRT's answer to a full GPU) and a failed execute are the engine's."""
    with monkeypatch.context() as patched:
        patched.setattr(trt_fake.ICudaEngine, "create_execution_context", lambda self: None)
        code, error = _compare_on_tensorrt(tmp_path, capsys)
    assert code == 4 and "could not create an execution context" in error, error
    monkeypatch.setattr(trt_fake.IExecutionContext, "execute_async_v3", lambda self, stream: False)
    code, error = _compare_on_tensorrt(tmp_path, capsys)
    assert code == 4 and "failed to execute the engine" in error, error


def test_no_gpu_is_bad_usage(fake: Any, cudart: trt_fake.FakeCudart, monkeypatch: pytest.MonkeyPatch,
                             tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _failing(cudart, monkeypatch, "cudaStreamCreateWithFlags", NO_DEVICE)
    code, error = _compare_on_tensorrt(tmp_path, capsys)
    assert code == 2 and error.startswith("trtdebug: error: CUDA error in"), error
    assert "cudaErrorNoDevice" in error and "needs a machine with an NVIDIA GPU" in error
