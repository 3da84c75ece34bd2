"""Model classes real exports come in, run as a user runs them: an IR 3 model with initializers
listed as graph inputs, models stored all in FP16 or BF16 (the reference runs their FP32 upcast,
the candidate is the model as given), and one with an FP16 overflow found in such a model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from fixtures import odd_models
from tests.cli import run_cli
from trtdebug.core.model.graph import Model
from trtdebug.workflows.problem import ProblemSpec, prepare


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return odd_models.write_all(tmp_path_factory.mktemp("odd"))


@pytest.mark.parametrize("name", ["ir3", "fp16", "bf16"])
def test_compare_and_fallback_run_the_model_class(models, name, tmp_path):
    compared = run_cli("compare", models[name])
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert "error" not in compared.stderr and "Traceback" not in compared.stderr, compared.stderr
    assert f"PASS {name}.onnx" in compared.stdout
    plan = tmp_path / "plan.json"
    fallback = run_cli("fallback", models[name], "--out", plan)
    assert fallback.returncode == 0, fallback.stdout + fallback.stderr
    assert "error" not in fallback.stderr and "Traceback" not in fallback.stderr
    assert json.loads(plan.read_text())["format"] == "trtdebug.precision-plan"
    onnx.checker.check_model(onnx.load(str(tmp_path / "plan.mixed.onnx")))


def test_ir3_initializers_are_constants_not_inputs(models):
    model = Model.load(models["ir3"])
    assert [i.name for i in model.inputs] == ["x"]
    assert model.proto.ir_version >= 4 and [i.name for i in model.proto.graph.input] == ["x"]


def test_fp16_and_bf16_models_get_feeds_in_their_type_and_an_fp32_reference(models):
    fp16 = prepare(ProblemSpec(models["fp16"]))
    assert fp16.problem.feeds["x"].dtype == np.float16
    assert fp16.plan.default == "fp16"
    assert all(v.dtype == np.float32 for k, v in fp16.problem.reference.items() if k != "x")
    bf16 = prepare(ProblemSpec(models["bf16"]))
    x = bf16.problem.feeds["x"]
    bfloat16 = onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.BFLOAT16)
    assert np.array_equal(x, x.astype(bfloat16).astype(np.float32))  # bfloat16 values
    assert bf16.plan.default == "bf16"


def test_an_overflow_in_an_all_fp16_model_is_found_and_fixed(models, tmp_path):
    compared = run_cli("compare", models["fp16_overflow"])
    assert compared.returncode == 1, compared.stdout + compared.stderr
    assert "Culprit: amplify (Mul), tensor m2" in compared.stdout
    plan = tmp_path / "plan.json"
    fallback = run_cli("fallback", models["fp16_overflow"], "--out", plan)
    assert fallback.returncode == 0, fallback.stdout + fallback.stderr
    assert set(json.loads(plan.read_text())["nodes"]) == {"amplify", "scale_down"}
    assert run_cli("compare", models["fp16_overflow"], "--plan", plan).returncode == 0
