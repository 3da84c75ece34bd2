"""Shared fixtures: planted-defect models written once per session, the real Silero VAD model."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
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
#
# cuda-python is the fake's other seam. trtdebug reaches it only by importing the modules named in
# CUDA_PYTHON_MODULES (engines/tensorrt/cuda_buffers.py). `pip install 'trtdebug[tensorrt-cu12]'`
# installs it; on a machine without a GPU every call of the real one fails, so a test on the fake
# must never reach it: `fake` makes cuda-python look not installed, and `cudart` puts the fake
# runtime under cuda-python's names. The suite then runs the same with cuda-python and without it
# (.ci/run runs these tests both ways).

CUDA_PYTHON_MODULES = ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.bindings.utils", "cuda.cudart")
FAKE_FIXTURES = {"fake", "rtx_checked", "cudart", "no_cuda_python"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tensorrt_fake: uses the TensorRT fake or the fake cuda-python (set "
                                       "on every test asking for one of FAKE_FIXTURES or in a module that "
                                       "imports trt_fake)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        if FAKE_FIXTURES & set(getattr(item, "fixturenames", ())) or hasattr(module, "trt_fake"):
            item.add_marker(pytest.mark.tensorrt_fake)


@pytest.fixture
def no_cuda_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuda-python as if it were not installed, whether it is or not (a None in sys.modules fails the import)."""
    for name in CUDA_PYTHON_MODULES:
        monkeypatch.setitem(sys.modules, name, None)


def _activated_fake(monkeypatch: pytest.MonkeyPatch, rtx: bool) -> Iterator[Any]:
    import trt_fake

    module, recorder = trt_fake.activate(rtx=rtx)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    yield recorder
    unknown = recorder.misses - trt_fake.DETECTION_PROBES
    assert not unknown, f"names outside the TensorRT API: {unknown}"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, no_cuda_python: None) -> Iterator[Any]:
    """The 10.13 fake as `tensorrt`; after the test, nothing outside the API may have been used."""
    yield from _activated_fake(monkeypatch, rtx=False)


@pytest.fixture
def rtx_checked(monkeypatch: pytest.MonkeyPatch, no_cuda_python: None) -> Iterator[Any]:
    """A fake offering only names both tensorrt-stubs 10.13 and TensorRT-RTX 1.7 have."""
    pytest.importorskip("tensorrt_rtx_bindings")
    yield from _activated_fake(monkeypatch, rtx=True)


@pytest.fixture
def cudart(monkeypatch: pytest.MonkeyPatch, no_cuda_python: None) -> Any:
    """The fake cuda-python runtime, imported by trtdebug as `cuda.bindings.runtime`, in place of the
    real one (set up after `no_cuda_python`, so it wins over the hiding whatever the fixture order)."""
    import trt_fake

    runtime = trt_fake.FakeCudart()
    utils = ModuleType("cuda.bindings.utils")
    utils.get_cuda_native_handle = trt_fake.get_cuda_native_handle  # type: ignore[attr-defined]
    bindings = ModuleType("cuda.bindings")
    bindings.runtime, bindings.utils = runtime, utils  # type: ignore[attr-defined]
    package = ModuleType("cuda")
    package.bindings = bindings  # type: ignore[attr-defined]
    for name, module in {"cuda": package, "cuda.bindings": bindings, "cuda.bindings.runtime": runtime,
                         "cuda.bindings.utils": utils}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return runtime
