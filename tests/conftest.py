"""Shared fixtures: planted-defect models written once per session, the real Silero VAD model."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures import planted
from fixtures.real_models import silero_vad


@pytest.fixture(scope="session")
def planted_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, planted.Planted]]:
    return planted.write_all(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="session")
def silero_path() -> Path:
    return silero_vad()


SILERO_SHAPES = ("input:1x512", "state:2x1x128")
SILERO_RANGES = ("sr:16000,16000",)  # the model branches on its sample rate input


# -- the recording TensorRT fake (tests/trt_fake.py), imported only by the tests that ask for it: it
# needs tensorrt-stubs, which machines that only run the GPU tests lack.

def _activated_fake(monkeypatch: pytest.MonkeyPatch, rtx: bool) -> Iterator[Any]:
    import trt_fake

    module, recorder = trt_fake.activate(rtx=rtx)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    yield recorder
    unknown = recorder.misses - trt_fake.DETECTION_PROBES
    assert not unknown, f"names outside the TensorRT API: {unknown}"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The 10.13 fake as `tensorrt`; after the test, nothing outside the API may have been used."""
    yield from _activated_fake(monkeypatch, rtx=False)


@pytest.fixture
def rtx_checked(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fake offering only names both tensorrt-stubs 10.13 and TensorRT-RTX 1.7 have."""
    pytest.importorskip("tensorrt_rtx_bindings")
    yield from _activated_fake(monkeypatch, rtx=True)


@pytest.fixture
def cudart(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The fake cuda-python runtime in place of the real one."""
    import trt_fake

    from trtdebug.engines.tensorrt import cuda_buffers

    runtime = trt_fake.FakeCudart()
    monkeypatch.setattr(cuda_buffers, "load_cudart", lambda: runtime)
    return runtime
