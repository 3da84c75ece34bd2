"""Models new users brought that the project's own models never exercised (fixtures/user_models.py),
each through `trtdebug compare` as a user runs it: real ONNX models, real onnxruntime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from fixtures import user_models


def trtdebug(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trtdebug", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def _saved(model: onnx.ModelProto, folder: Path, name: str) -> Path:
    path = folder / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def _verdict(run: subprocess.CompletedProcess) -> None:
    """compare reached a verdict (0 pass, 1 fail), no internal error, no blame on the model."""
    assert run.returncode in (0, 1), run.stdout + run.stderr
    assert "internal error" not in run.stderr
    assert "tensors compared" in run.stdout


# -- 1. Q/DQ models written by onnxruntime's quantizer --------------------------------------------------

@pytest.mark.parametrize("make", [user_models.quantized_cnn, user_models.quantized_tagger])
@pytest.mark.parametrize("scope", ["all", "wrong"])
def test_compare_int8_on_a_model_quantized_by_onnxruntime(tmp_path, make, scope):
    """quantize_static stores INT8 weights quantized, read through DequantizeLinear nodes of constants:
    the local-error graph looked their outputs up among the reference's tensors (KeyError)."""
    path = _saved(make(), tmp_path, make.__name__)
    _verdict(trtdebug("compare", path, "--precision", "int8", "--local-error", scope))
