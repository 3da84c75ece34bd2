"""`trtdebug inspect engine.plan`: an engine's realized precision per layer against the plan, from
the engine inspector alone, through the recording fake of TensorRT (every name checked against
tensorrt-stubs 10.13). Without TensorRT the command refuses in one line."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import trt_fake

from fixtures import odd_models, planted
from tests.cli import run_cli
from trtdebug.cli.render.inspect import render_inspect
from trtdebug.core.analysis.realized_precision import realized_precision_findings
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.engines.base import LayerInfo, Marking
from trtdebug.engines.tensorrt.engine import TensorRTEngine
from trtdebug.errors import UserError
from trtdebug.workflows.inspect import inspect_engine

KEPT = "conv2"


def _engine_file(folder: Path, model: Model, plan: PrecisionPlan) -> Path:
    built = TensorRTEngine("tensorrt").build(model, plan, None, Marking("none"))
    path = folder / "model.plan"
    path.write_bytes(built.serialize())
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    onnx.save(planted.clean()[0], tmp_path / "net.onnx")
    return {"model": tmp_path / "net.onnx", "folder": tmp_path}


def _plan(files: dict[str, Path], plan: PrecisionPlan, name: str) -> Path:
    path = files["folder"] / name
    plan.for_model(Model.load(files["model"])).save(path)
    return path


def test_a_node_the_plan_keeps_but_the_engine_ran_in_fp16_is_found(fake: trt_fake.Recorder,
                                                                   files: dict[str, Path]) -> None:
    model = Model.load(files["model"])
    engine = _engine_file(files["folder"], model, PrecisionPlan("fp16"))  # built without the plan's FP32 node
    plan = _plan(files, PrecisionPlan("fp16", {KEPT: "fp32"}), "plan.json")
    result = inspect_engine(engine, model_path=files["model"], plan_path=plan)
    assert [(f.kind, f.nodes, f.requested, f.realized) for f in result.findings] == [
        ("fused_into_reduced", (KEPT,), "fp32", "fp16")]
    assert all(la.precision == "fp16" for la in result.layers if la.onnx_nodes and la.op_type == "CONVOLUTION")


def test_a_layer_that_fell_back_to_fp32_is_found_and_an_honoured_plan_is_clean(fake: trt_fake.Recorder,
                                                                              files: dict[str, Path]) -> None:
    model = Model.load(files["model"])
    kept = PrecisionPlan("fp16", {KEPT: "fp32"})
    engine = _engine_file(files["folder"], model, kept)
    honoured = inspect_engine(engine, model_path=files["model"], plan_path=_plan(files, kept, "kept.json"))
    assert honoured.findings == ()
    requested = {la.onnx_nodes: honoured.requested[la.name] for la in honoured.layers if la.onnx_nodes}
    assert requested[(KEPT,)] == "fp32"
    plain = inspect_engine(engine, model_path=files["model"], plan_path=_plan(files, PrecisionPlan("fp16"), "p.json"))
    assert [(f.kind, f.nodes, f.realized) for f in plain.findings] == [("fell_back", (KEPT,), "fp32")]


def test_the_layer_table_and_json_read_without_a_model(fake: trt_fake.Recorder, files: dict[str, Path]) -> None:
    from rich.console import Console

    model = Model.load(files["model"])
    result = inspect_engine(_engine_file(files["folder"], model, PrecisionPlan("fp16")))
    assert result.findings == () and result.requested == {}
    assert {la["realized"] for la in result.to_json()["layers"]} >= {"fp16"}
    console = Console(record=True, width=200)
    render_inspect(result, console)
    assert "read by tensorrt 10.13" in console.export_text()


def test_a_typed_fp16_model_whose_engine_ran_fp32_lost_its_precision() -> None:
    model = Model.from_proto(odd_models.all_fp16())
    layers = [LayerInfo(n.name, (n.name,), "fp32", op_type=n.op_type) for n in model.nodes]
    findings = realized_precision_findings(model, PrecisionPlan("fp16"), layers)
    assert "typed_precision_lost" in [f.kind for f in findings]
    kept = [LayerInfo(n.name, (n.name,), "fp16", op_type=n.op_type) for n in model.nodes]
    assert realized_precision_findings(model, PrecisionPlan("fp16"), kept) == []


def test_plan_without_model_and_no_tensorrt_are_one_line_refusals(tmp_path: Path) -> None:
    engine = tmp_path / "e.plan"
    engine.write_bytes(b"not an engine")
    with pytest.raises(UserError, match="--plan needs --model"):
        inspect_engine(engine, plan_path=tmp_path / "plan.json")
    run = run_cli("inspect", engine)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1
    assert "TensorRT" in run.stderr and "not installed" in run.stderr
