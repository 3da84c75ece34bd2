"""Every option value an error message suggests is one the parser takes, and the suggested command
works: hints are pulled out of real error messages and fed back."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import click
import onnx
import pytest

from fixtures import odd_models, planted
from tests import trt_fake
from tests.cli import run_cli
from trtdebug.cli.options import InputShape, NamedPair
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.search.user_check import CheckCommand
from trtdebug.engines.base import Marking
from trtdebug.errors import UserError

# A suggestion, as messages word one: "give one with --input-shape x:1x3", "e.g. --check \"...\"".
HINT = re.compile(r"(?:with|e\.g\.|use|pass) (--input-shape|--input-range|--output-tol|--check) (\"[^\"]*\"|\S+)")



def hints(message: str) -> list[tuple[str, str]]:
    found = [(option, shlex.split(value)[0]) for option, value in HINT.findall(message)]
    assert found, f"no hint in {message!r}"
    return found


def parses(option: str, value: str) -> None:
    if option == "--input-shape":
        InputShape().convert(value, None, None)
    elif option == "--input-range":
        NamedPair("NAME:LOW,HIGH", "x:-1,1", ordered=True).convert(value, None, None)
    elif option == "--output-tol":
        NamedPair("NAME:ATOL,RTOL", "y:1e-2,1e-3", minimum=0.0).convert(value, None, None)
    else:
        CheckCommand(value)


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hints") / "dynamic.onnx"
    onnx.save(odd_models.dynamic(), path)
    return path


def test_the_dynamic_shape_hint_parses_and_the_suggested_command_works(dynamic):
    run = run_cli("compare", dynamic)
    assert run.returncode == 2
    (option, value), = hints(run.stderr)
    parses(option, value)
    assert run_cli("compare", dynamic, option, value).returncode == 0


def test_the_check_hint_parses(tmp_path):
    with pytest.raises(UserError) as refused:
        CheckCommand("python my_metric.py")
    for option, value in hints(str(refused.value)):
        parses(option, value)


def test_the_tensorrt_dynamic_shape_hint_parses(monkeypatch):
    module, _ = trt_fake.activate()
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    from trtdebug.engines.tensorrt.engine import TensorRTEngine

    proto = planted.clean()[0]
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    with pytest.raises(UserError) as refused:
        TensorRTEngine("tensorrt").build(Model.from_proto(proto), PrecisionPlan("fp16"), None, Marking("none"))
    for option, value in hints(str(refused.value)):
        parses(option, value)


def test_the_parser_refuses_what_the_old_hint_said():
    with pytest.raises(click.BadParameter):
        parses("--input-shape", "x:Nx3xNxN")


def test_the_integer_range_hint_parses_and_the_suggested_command_works(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Cast", ["ids"], ["f"], name="cast", to=onnx.TensorProto.FLOAT),
         onnx.helper.make_node("Relu", ["f"], ["y"], name="relu")], "ints",
        [onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    model = tmp_path / "ints.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), model)
    run = run_cli("compare", model, "--input-range", "ids:0.2,0.7")
    assert run.returncode == 2, run.stderr
    (option, value), = hints(run.stderr)
    parses(option, value)
    assert run_cli("compare", model, option, value).returncode == 0
