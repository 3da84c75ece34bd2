"""ruff and mypy stay clean; mypy checks the TensorRT 8.6/10.x code against tensorrt-stubs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_is_clean():
    run = _run("ruff", "check", "trtdebug", "tests", "fixtures", "benchmarks")
    assert run.returncode == 0, run.stdout + run.stderr


def test_mypy_is_clean_against_tensorrt_stubs():
    import importlib.util

    assert importlib.util.find_spec("tensorrt_stubs") is not None, \
        "install the stubs: python3 -m pip install --no-deps tensorrt-stubs==10.13.0.35.1"
    run = _run("mypy", "trtdebug")
    assert run.returncode == 0, run.stdout + run.stderr


def test_bundled_example_is_what_the_fixture_code_generates():
    from fixtures.planted import overflow

    model, _ = overflow()
    assert onnx.load(ROOT / "examples" / "overflow_convnet.onnx").SerializeToString() == model.SerializeToString()
