"""--precision bf16 on models older than opset 13, which has no Cast to BF16: the emulator rounds in
arithmetic at the model's own opset, bit for bit as the Cast pairs do at opset 13."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from fixtures.user_models import CNN_SHAPE, small_cnn
from tests.cli import run_cli
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.engines.emulator.engine import EmulatorEngine


def _every_tensor(opset: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return EmulatorEngine().build(Model.from_proto(small_cnn(opset)), PrecisionPlan("bf16")).run(feeds)


@pytest.mark.parametrize("opset", [11, 12])
def test_bf16_at_opset_11_and_12_rounds_every_tensor_as_opset_13_does(opset):
    rng = np.random.default_rng(3)
    # magnitudes from subnormal to huge, so overflow, subnormals and ties all occur somewhere
    x = (rng.normal(0, 1, CNN_SHAPE) * np.exp2(rng.integers(-140, 120, CNN_SHAPE))).astype(np.float32)
    x.flat[:5] = [0.0, -0.0, 1 + 2.0**-8, 1 + 3 * 2.0**-8, 3.4028235e38]  # the last rounds to inf in BF16
    old, new = _every_tensor(opset, {"x": x}), _every_tensor(13, {"x": x})
    assert set(old) == set(new) and len(new) == 7
    for name, value in new.items():
        assert np.array_equal(old[name].view(np.uint32), value.view(np.uint32)), name
    assert not np.isinf(x).any() and np.isinf(new["c1"]).any()  # BF16's overflow is covered


def test_compare_bf16_on_an_opset_11_model_reaches_a_verdict(tmp_path):
    import onnx
    onnx.save(small_cnn(11), tmp_path / "cnn11.onnx")
    done = run_cli("compare", tmp_path / "cnn11.onnx", "--precision", "bf16")
    assert done.returncode in (0, 1), done.stderr
    assert "tensors compared" in done.stdout


def test_bf16_below_opset_11_is_refused_in_one_line(tmp_path):
    import onnx
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)])
    model.ir_version = 7
    onnx.save(model, tmp_path / "old.onnx")
    done = run_cli("compare", tmp_path / "old.onnx", "--precision", "bf16")
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("trtdebug:")]
    assert len(errors) == 1 and "opset >= 11" in errors[0] and "Traceback" not in done.stderr
