"""Fallback's report says what the plan's engine really ran in: the realized precision of the plan's
unmarked build (the engine file written; marking breaks fusions) against the plan, on the terminal
and in the compare report beside the plan. Through the recording fake of TensorRT, whose builder
runs a layer without an FP16 kernel in FP32 silently; the emulator, which runs the plan by
construction, shows nothing of it."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import trt_fake
from rich.console import Console

from fixtures import planted
from trtdebug.cli.render.fallback import render_fallback
from trtdebug.workflows.diagnose import UNMARKED_BUILD
from trtdebug.workflows.fallback import FallbackOutcome, run_fallback
from trtdebug.workflows.problem import ProblemSpec

NO_HALF = "conv2"


def _fallback(folder: Path, engine: str) -> tuple[FallbackOutcome, str]:
    onnx.save(planted.clean()[0], folder / "net.onnx")
    outcome = run_fallback(ProblemSpec(folder / "net.onnx", engine=engine), folder / "plan.json")
    console = Console(record=True, width=300)
    render_fallback(outcome, console)
    return outcome, console.export_text()


def test_a_layer_that_fell_back_to_fp32_in_the_plans_engine_is_reported(fake: trt_fake.Recorder,
                                                                       cudart: trt_fake.FakeCudart,
                                                                       tmp_path: Path) -> None:
    fake.no_half_kernel = {NO_HALF}
    outcome, text = _fallback(tmp_path, "tensorrt")
    assert outcome.found and outcome.compare_path is not None
    report = json.loads(outcome.compare_path.read_text())["diagnosis"]
    assert report["realized_precision_of"] == UNMARKED_BUILD
    assert [(f["kind"], f["nodes"], f["requested"], f["realized"]) for f in report["realized_precision"]] == [
        ("fell_back", [NO_HALF], "fp16", "fp32")]
    assert "realized precision of the unmarked build of the plan" in text
    assert f"precision (fell_back): '{NO_HALF}' ran in FP32 although the plan asks FP16" in text


def test_an_honoured_plan_says_so_and_the_emulator_says_nothing(fake: trt_fake.Recorder, cudart: trt_fake.FakeCudart,
                                                               tmp_path: Path) -> None:
    _, text = _fallback(tmp_path, "tensorrt")
    assert "realized precision: every layer of the unmarked build of the plan" in text
    (tmp_path / "emulator").mkdir()
    outcome, text = _fallback(tmp_path / "emulator", "emulator")
    assert outcome.compare is not None and "realized_precision" not in outcome.compare.diagnosis
    assert "realized precision" not in text
