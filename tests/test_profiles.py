"""Optimization profiles from the command line: NAME:MIN,OPT,MAX reaches the TensorRT builds and the
saved engine; engines that run one shape refuse it; bad profiles are one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures import odd_models
from tests.cli import run_cli
from trtdebug.core.plans.precision_plan import PrecisionPlan


@pytest.fixture
def dynamic_batch_model(tmp_path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                               helper.make_node("Relu", ["c"], ["y"], name="relu")], "dyn", [x], [y], [w])
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    from trtdebug.core.model.graph import Model

    PrecisionPlan("fp16").for_model(Model.load(path)).save(tmp_path / "plan.json")
    return path


def test_profile_reaches_the_tensorrt_engine_options(dynamic_batch_model: Path) -> None:
    from trtdebug.cli.options import problem_spec
    from trtdebug.workflows.problem import open_engine, prepare_feeds

    pytest.importorskip("tensorrt_rtx_bindings")
    shapes = (("x", ((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))),)
    spec = problem_spec(str(dynamic_batch_model), engine_name="tensorrt-rtx", input_shapes=shapes)
    from trtdebug.core.model.graph import Model

    feeds = prepare_feeds(Model.load(dynamic_batch_model), spec)
    assert feeds["x"].shape == (2, 3, 8, 8)  # inputs are generated at OPT
    engine = open_engine("tensorrt-rtx", feeds=feeds, profiles=spec.input_profiles)
    assert engine.options.shape_ranges == {"x": ((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))}  # type: ignore[attr-defined]


@pytest.mark.rtx
def test_build_saves_an_engine_with_the_users_profile(dynamic_batch_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx_bindings")
    run = run_cli("build", dynamic_batch_model, "--plan", tmp_path / "plan.json", "--engine", "tensorrt-rtx",
                  "--input-shape", "x:1x3x8x8,2x3x8x8,4x3x8x8", "--out", tmp_path / "out" / "dyn.engine")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out" / "dyn.engine").stat().st_size > 1000


@pytest.mark.parametrize(("shape", "message"), [
    ("x:1x3x8x8,2x3x8x8", "a profile has three shapes"),
    ("x:4x3x8x8,2x3x8x8,1x3x8x8", "MIN <= OPT <= MAX"),
    ("x:1x3x8,2x3x8x8,4x3x8x8", "same rank"),
    ("x:0x3x8x8", "at least 1"),
])
def test_bad_profiles_are_one_line_errors(dynamic_batch_model: Path, shape: str, message: str) -> None:
    run = run_cli("compare", dynamic_batch_model, "--input-shape", shape)
    assert run.returncode == 2 and message in run.stderr and run.stderr.count("\n") == 1, run.stderr


def test_the_emulator_refuses_a_profile(dynamic_batch_model: Path) -> None:
    run = run_cli("compare", dynamic_batch_model, "--input-shape", "x:1x3x8x8,2x3x8x8,4x3x8x8")
    assert run.returncode == 2 and "optimization profile" in run.stderr and "NAME:DxDx" in run.stderr


def test_emit_prints_commands_and_refuses_what_the_target_version_lacks(dynamic_batch_model: Path,
                                                                        tmp_path: Path) -> None:
    run = run_cli("build", dynamic_batch_model, "--plan", tmp_path / "plan.json", "--emit", "trtexec",
                  "--emit", "polygraphy", "--input-shape", "x:1x3x8x8,2x3x8x8,4x3x8x8")
    assert run.returncode == 0, run.stderr
    engine = dynamic_batch_model.with_suffix(".engine")
    assert run.stdout.splitlines() == [
        f"trtexec --onnx={dynamic_batch_model} --saveEngine={engine} --fp16 --minShapes=x:1x3x8x8 "
        "--optShapes=x:2x3x8x8 --maxShapes=x:4x3x8x8 --noTF32",
        f"polygraphy convert {dynamic_batch_model} -o {engine} --fp16 --trt-min-shapes 'x:[1,3,8,8]' "
        "--trt-opt-shapes 'x:[2,3,8,8]' --trt-max-shapes 'x:[4,3,8,8]'"]  # quoted: [] is a shell glob
    unshaped = run_cli("build", dynamic_batch_model, "--plan", tmp_path / "plan.json", "--emit", "trtexec")
    assert unshaped.returncode == 2 and "input 'x' has dynamic dimensions" in unshaped.stderr, unshaped.stderr
    eleven = run_cli("build", dynamic_batch_model, "--plan", tmp_path / "plan.json", "--emit", "trtexec",
                     "--target-version", "11")
    assert eleven.returncode == 2 and "mixed-precision ONNX" in eleven.stderr


def test_outputs_get_the_usual_file_permissions(dynamic_batch_model: Path, tmp_path: Path) -> None:
    run = run_cli("build", dynamic_batch_model, "--plan", tmp_path / "plan.json", "--out", tmp_path / "m.onnx")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "m.onnx").stat().st_mode & 0o044  # readable by others, like any file the user writes


@pytest.mark.rtx
def test_build_takes_shape_tensor_values_from_inputs(tmp_path: Path) -> None:
    """A Reshape fed by an int64 graph input (a shape tensor) builds only when the profile carries its
    values: `trtdebug build --inputs` supplies them."""
    pytest.importorskip("tensorrt_rtx_bindings")
    model = odd_models.shape_tensor_input()
    onnx.save(model, tmp_path / "reshape.onnx")
    np.savez(tmp_path / "feeds.npz", x=np.ones((2, 3, 4), np.float32), shape=np.array([6, 4], np.int64))
    from trtdebug.core.model.graph import Model

    PrecisionPlan("fp16").for_model(Model.load(tmp_path / "reshape.onnx")).save(tmp_path / "plan.json")
    run = run_cli("build", tmp_path / "reshape.onnx", "--plan", tmp_path / "plan.json", "--engine", "tensorrt-rtx",
                  "--inputs", tmp_path / "feeds.npz", "--out", tmp_path / "reshape.engine")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "reshape.engine").stat().st_size > 1000
