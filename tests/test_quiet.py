"""Normal output carries no third-party log line or warning; `trtdebug --verbose` shows them:
Polygraphy's [I]/[W] lines with --engine results, onnxruntime's log, numpy's RuntimeWarnings."""

from __future__ import annotations

import subprocess

import numpy as np
import onnx
import pytest
from polygraphy.comparator import RunResults

from fixtures import odd_models, planted
from tests.cli import run_cli
from trtdebug.core.model.graph import Model
from trtdebug.core.reference.fp32_run import run_reference

NOISE = ("[W]", "[I]", "Warning", "RuntimeWarning", "onnxruntime:")



def assert_quiet(run: subprocess.CompletedProcess[str]) -> None:
    for text in NOISE:
        assert text not in run.stdout and text not in run.stderr, run.stdout + run.stderr


@pytest.fixture(scope="module")
def results_case(tmp_path_factory: pytest.TempPathFactory):
    """The clean conv net, its feeds, and a Polygraphy --save-outputs JSON of every layer."""
    folder = tmp_path_factory.mktemp("quiet")
    proto = planted.clean()[0]
    model_path = folder / "clean.onnx"
    onnx.save(proto, model_path)
    feeds = {"input": np.random.default_rng(3).uniform(-1, 1, planted.INPUT_SHAPE).astype(np.float32)}
    np.savez(folder / "feeds.npz", **feeds)
    model = Model.from_proto(proto)
    reference = run_reference(model, feeds)
    results = RunResults()
    results.add([{t: reference[t] for t in model.intermediate_tensors()}], runner_name="trt-runner")
    results.save(str(folder / "results.json"))
    return model_path, folder / "feeds.npz", folder / "results.json"


def test_polygraphy_results_are_read_quietly_and_verbose_shows_its_log(results_case):
    model, feeds, results = results_case
    args = ("compare", model, "--engine", "results", "--results", results, "--inputs", feeds)
    run = run_cli(*args)
    assert run.returncode == 0, run.stdout + run.stderr
    assert_quiet(run)
    verbose = run_cli("--verbose", *args)
    assert verbose.returncode == 0
    assert "[I] Loading inference results" in verbose.stdout + verbose.stderr


def test_onnxruntime_log_only_when_verbose(tmp_path):
    model = tmp_path / "fp16.onnx"
    onnx.save(odd_models.all_fp16(), model)
    run = run_cli("compare", model)
    assert run.returncode == 0, run.stdout + run.stderr
    assert_quiet(run)
    verbose = run_cli("-v", "compare", model)
    assert "[W:onnxruntime" in verbose.stderr  # its graph optimizer's notes on the emulator's folding
    after_the_command = run_cli("compare", "--verbose", model)  # where users often put it
    assert "[W:onnxruntime" in after_the_command.stderr


def test_numpy_warnings_only_when_verbose(tmp_path):
    model = tmp_path / "fp16.onnx"
    onnx.save(odd_models.all_fp16(), model)
    beyond_fp16 = "x:-1e5,1e5"  # generated values beyond FP16: the cast to the model's FP16 input overflows
    run = run_cli("compare", model, "--input-range", beyond_fp16)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr  # refused: the reference is not finite
    assert_quiet(run)
    verbose = run_cli("-v", "compare", model, "--input-range", beyond_fp16)
    assert "RuntimeWarning: overflow" in verbose.stderr
