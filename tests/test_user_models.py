"""Models new users brought that the project's own models never exercised (fixtures/user_models.py),
each through `trtdebug compare` as a user runs it: real ONNX models, real onnxruntime."""

from __future__ import annotations

import subprocess
from pathlib import Path

import onnx
import pytest

from fixtures import user_models
from tests.cli import run_cli


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
    _verdict(run_cli("compare", path, "--precision", "int8", "--local-error", scope))


# -- 2. graphs trtdebug builds that onnxruntime must load ---------------------------------------------

def test_local_error_on_a_resize_to_sizes_computed_from_shapes(tmp_path):
    """A vision transformer's position grid resized to sizes computed from the features' Shape: cut
    loose into a graph input of unknown length, onnx's shape inference rejected the local-error graph
    and trtdebug blamed the user's model (exit 2)."""
    path = _saved(user_models.resized_position_grid(), tmp_path, "vit_positions")
    run = run_cli("compare", path, "--local-error", "all", "--input-shape", "x:1x3x8x8")
    _verdict(run)
    assert "cannot load the model" not in run.stderr


def _bf16_cast_at_opset_11() -> onnx.ModelProto:
    """A graph onnxruntime rejects: Cast to BF16 exists from opset 13 on."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["low"], to=TensorProto.BFLOAT16),
         helper.make_node("Cast", ["low"], ["y"], to=TensorProto.FLOAT)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 8
    return model


def test_a_graph_trtdebug_built_that_onnxruntime_rejects_is_trtdebugs_bug_not_the_models():
    from trtdebug.core.reference import ort_sessions
    from trtdebug.errors import UserError

    with pytest.raises(ort_sessions.BuiltGraphRejected, match="local-error graph trtdebug built.*not in the model"):
        ort_sessions.session(_bf16_cast_at_opset_11(), built="the local-error graph")
    with pytest.raises(UserError, match="onnxruntime cannot load the model"):  # the user's own model
        ort_sessions.session(_bf16_cast_at_opset_11())
