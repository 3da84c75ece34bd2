"""Rounding or a bad kernel, and A/B, on captures made by the emulator (fixtures/captures.py): every
tensor of an FP16 run stored in FP16, with or without one Conv's output 3% wrong and propagated.

A capture of pure rounding must give no kernel finding (on the planted conv net and on three real
models of the zoo); a planted fault must be a `kernel_error` at exactly its Conv, in the JSON report
with both numbers and in the headline with its next step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from fixtures import captures, planted
from fixtures.zoo import by_name
from tests.cli import run_cli
from trtdebug.core.model.feeds import generate_feeds, resolve_shapes
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.workflows.kernel_check import check_kernels

FAULTY = "conv2"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("captures")
    proto = planted.clean()[0]
    model = Model.from_proto(proto)
    feeds = {"input": np.random.default_rng(0).uniform(-1, 1, planted.INPUT_SHAPE).astype(np.float32)}
    paths = {"model": folder / "net.onnx", "feeds": folder / "feeds.npz", "clean": folder / "a.npz",
             "faulty": folder / "b.npz"}
    onnx.save(proto, paths["model"])
    np.savez(paths["feeds"], **feeds)
    np.savez(paths["clean"], **captures.emulator_capture(model, feeds))
    np.savez(paths["faulty"], **captures.emulator_capture(model, feeds, faulty_conv=FAULTY))
    return paths


def _compare(files: dict[str, Path], capture: str, tmp_path: Path, *extra: object) -> tuple[str, dict]:
    report = tmp_path / "report.json"
    run = run_cli("compare", files["model"], "--engine", "results", "--results", files[capture], "--inputs",
                  files["feeds"], "--json", report, "-q", *extra)
    assert run.returncode in (0, 1), run.stderr
    return run.stdout, json.loads(report.read_text())


def _kernel_defects(report: dict) -> dict[str, dict]:
    return {t["tensor"]: d for t in report["tensors"] for d in t["defects"] if d["kind"] == "kernel_error"}


def test_a_planted_kernel_fault_is_a_kernel_error_at_its_conv(files: dict[str, Path], tmp_path: Path) -> None:
    stdout, report = _compare(files, "faulty", tmp_path)
    found = _kernel_defects(report)
    assert list(found) == [FAULTY]
    details = found[FAULTY]["details"]
    assert details["local_error"] == pytest.approx(0.03, rel=0.05)
    assert details["predicted_rounding"] < 1e-3
    assert details["next_step"] == "trtdebug tactics"
    kernels = report["diagnosis"]["kernels"]
    assert kernels["kernel_errors"] == [FAULTY]
    downstream = [la for la in kernels["layers"] if la["tensor"] != FAULTY]
    assert downstream and all(la["verdict"] == "rounding" for la in downstream)  # they only read wrong values
    assert f"kernel error: {FAULTY}" in stdout and "next: trtdebug tactics" in stdout


def test_a_rounding_only_capture_has_no_kernel_finding(files: dict[str, Path], tmp_path: Path) -> None:
    stdout, report = _compare(files, "clean", tmp_path)
    assert _kernel_defects(report) == {}
    layers = report["diagnosis"]["kernels"]["layers"]
    assert len(layers) >= 5 and all(la["verdict"] == "rounding" for la in layers)
    assert "kernel error" not in stdout and "no kernel fault" in stdout


def test_ab_names_the_first_layer_where_b_departs_from_a(files: dict[str, Path], tmp_path: Path) -> None:
    stdout, report = _compare(files, "faulty", tmp_path, "--against", files["clean"])
    first = report["diagnosis"]["ab"]["first_departure"]
    assert first["tensor"] == FAULTY
    assert first["b_local_error"] > 10 * first["a_local_error"]
    assert first["b_error_vs_fp32"] > 10 * first["a_error_vs_fp32"]
    assert f"B departs from A first at {FAULTY}" in stdout
    # the other way round B is the good engine: it departs nowhere
    _, reverse = _compare(files, "clean", tmp_path, "--against", files["faulty"])
    assert reverse["diagnosis"]["ab"]["first_departure"] is None


def test_ab_needs_two_captures(files: dict[str, Path]) -> None:
    run = run_cli("compare", files["model"], "--inputs", files["feeds"], "--against", files["clean"], "-q")
    assert run.returncode == 2 and "--against compares two captures" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


ZOO_MODELS = ("ppocrv6_det", "ppocrv6_rec", "fsmn_vad")


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_real_models_rounding_is_rounding_and_a_planted_fault_is_found(name: str) -> None:
    zoo = by_name(name)
    model = Model.load(zoo.path())
    feeds = zoo.feeds(zoo.path()) if zoo.feeds else generate_feeds(model, resolve_shapes(model, zoo.shapes),
                                                                  zoo.ranges)
    clean = captures.emulator_capture(model, feeds)
    shapes = {k: v.shape for k, v in clean.items()}
    rounding = check_kernels(model, PrecisionPlan("fp16"), feeds, clean, shapes)
    assert len(rounding.layers) >= 40
    assert rounding.kernel_errors == []
    convs = [c for c in captures.conv_nodes(model, clean) if rounding.of(model.node_by_name[c].output[0])]
    target = convs[len(convs) // 2]
    faulty = captures.emulator_capture(model, feeds, faulty_conv=target)
    found = check_kernels(model, PrecisionPlan("fp16"), feeds, faulty, shapes)
    assert [e.node for e in found.kernel_errors] == [target]
