"""INT8 as a user runs it, on a real convolutional model (RapidOCR's MobileNetV3 text-direction
classifier from PyPI): `trtdebug quantize`, then `compare` and `fallback --precision int8` on Q/DQ
models with one activation scale planted 50x too small (saturation) or 50x too large (coarse),
and implicit INT8 (a float model calibrated in memory)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from fixtures.chain_models import planted_chain
from fixtures.int8_models import (
    CLASSIFIER_SHAPE,
    CLASSIFIER_SHAPE_OPTION,
    PLANTED_TENSOR,
    ocr_classifier,
    planted_scale,
    quantized_classifier,
)
from tests.cli import run_cli
from trtdebug.core.model.graph import Model
from trtdebug.core.quantized.qdq import QuantizedModel, QuantParams
from trtdebug.core.quantized.scale_findings import detect_coarse_scale, detect_saturation, quantization_stats

SHAPE = ("--input-shape", CLASSIFIER_SHAPE_OPTION)



@pytest.fixture(scope="module")
def int8_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("int8")
    healthy = quantized_classifier(folder)
    return {"healthy": (healthy, ""), "saturating": planted_scale(healthy, folder, 1 / 50),
            "coarse": planted_scale(healthy, folder, 50.0)}


def _compare_json(model: Path, tmp_path: Path, *extra) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / f"{model.stem}.json"
    run = run_cli("compare", model, "--precision", "int8", *SHAPE, "--json", report, *extra)
    return run, json.loads(report.read_text())


def _int8_defects(report: dict) -> list[tuple[str, str]]:
    return [(t["tensor"], d["kind"]) for t in report["tensors"] for d in t["defects"]
            if d["kind"] in ("saturation", "coarse_scale")]


# -- quantize ----------------------------------------------------------------------------------------

def test_quantize_writes_a_per_channel_qdq_model_upgraded_from_opset_11(tmp_path):
    source = tmp_path / "cls.onnx"
    source.write_bytes(ocr_classifier().read_bytes())
    run = run_cli("quantize", source, *SHAPE, "--calib-batches", "2", "--calib-method", "percentile")
    assert run.returncode == 0, run.stderr
    out = tmp_path / "cls.qdq.onnx"
    assert f"wrote {out}" in run.stdout and "opset 11" in run.stderr
    assert run.stderr.count("\n") <= 3, run.stderr  # notes only: onnxruntime's log lines are silenced
    model = onnx.load(str(out))
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13
    quantizers = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    per_channel = [n for n in quantizers if any(a.name == "axis" for a in n.attribute)]
    assert len(quantizers) > 100 and len(per_channel) >= 50  # one per conv weight
    assert source.read_bytes() == ocr_classifier().read_bytes()


def test_quantize_refuses_to_overwrite_its_input_and_reads_calibration_folders(tmp_path):
    source = tmp_path / "cls.onnx"
    source.write_bytes(ocr_classifier().read_bytes())
    refused = run_cli("quantize", source, "--out", source, *SHAPE)
    assert refused.returncode == 2 and "would overwrite" in refused.stderr
    batches = tmp_path / "calib"
    batches.mkdir()
    for i in range(2):
        np.savez(batches / f"b{i}.npz", x=np.random.default_rng(i).uniform(0, 1, CLASSIFIER_SHAPE).astype(np.float32))
    run = run_cli("quantize", source, "--out", tmp_path / "q.onnx", "--calib-inputs", batches)
    assert run.returncode == 0, run.stderr
    assert "on 2 batches" in run.stdout


# -- what the emulator and the detectors compute --------------------------------------------------------

def test_fake_quantization_matches_onnxruntime_quantize_dequantize():
    """Rounding half to even, saturation and per-channel scales exactly as QuantizeLinear does them."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 3, 4, 5)) * 3).astype(np.float32)
    x[0, 0, 0, :3] = [0.25, 0.75, -0.25]  # ties at scale 0.5
    for scale, zero, axis in [(np.float32(0.5), np.int8(3), None), (np.array([0.01, 0.5, 2.0], np.float32),
                                                                     np.zeros(3, np.int8), 1)]:
        attrs = {"axis": axis} if axis is not None else {}
        graph = helper.make_graph(
            [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)], "qdq",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, x.shape)],
            [numpy_helper.from_array(np.asarray(scale), "s"), numpy_helper.from_array(np.asarray(zero), "z")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x})[0]
        params = QuantParams(np.asarray(scale), np.asarray(zero), axis, -128, 127)
        np.testing.assert_array_equal(params.fake_quantize(x), expected)


def test_detectors_tell_saturation_from_coarse_scale():
    values = np.random.default_rng(0).standard_normal(10000).astype(np.float32)
    good = QuantParams(np.float32(np.abs(values).max() / 127), np.int8(0), None, -128, 127)
    small = QuantParams(good.scale / 50, np.int8(0), None, -128, 127)
    large = QuantParams(good.scale * 50, np.int8(0), None, -128, 127)
    for params, saturates, coarse in [(good, False, False), (small, True, False), (large, False, True)]:
        stats = quantization_stats(values, params)
        assert (detect_saturation(stats, params) is not None) == saturates
        assert (detect_coarse_scale(stats, params) is not None) == coarse
    assert quantization_stats(values, good).sqnr_db > 30


def test_tensors_are_matched_across_pairs_whatever_the_names(int8_models, tmp_path):
    """Renaming every Q/DQ tensor and node (as another exporter would) changes nothing: a
    DequantizeLinear output stands for the float tensor its QuantizeLinear read."""
    path, _ = int8_models["saturating"]
    model = onnx.load(str(path))
    renamed = {}
    for i, node in enumerate(model.graph.node):
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            node.name = f"{node.op_type[0]}q_{i}"
            renamed[node.output[0]] = f"t{i}"
    for node in model.graph.node:
        node.input[:] = [renamed.get(t, t) for t in node.input]
        node.output[:] = [renamed.get(t, t) for t in node.output]
    for output in model.graph.output:
        output.name = renamed.get(output.name, output.name)
    other = tmp_path / "renamed.onnx"
    onnx.save(model, str(other))
    quantized = QuantizedModel(Model.load(other))
    assert quantized.pair_of_tensor[PLANTED_TENSOR].quantize.startswith("Qq_")
    run, report = _compare_json(other, tmp_path)
    assert run.returncode == 1
    assert _int8_defects(report)[0] == (PLANTED_TENSOR, "saturation")


def test_float_counterpart_computes_what_the_float_model_does(int8_models):
    quantized = QuantizedModel(Model.load(int8_models["healthy"][0]))
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in quantized.nodes)
    x = np.random.default_rng(1).uniform(-1, 1, CLASSIFIER_SHAPE).astype(np.float32)
    run = lambda proto: ort.InferenceSession(proto.SerializeToString(),  # noqa: E731
                                             providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(run(quantized.proto), run(onnx.load(str(ocr_classifier()))), atol=1e-4)


# -- compare and fallback on planted scales ------------------------------------------------------------

def test_healthy_qdq_model_passes(int8_models, tmp_path):
    run, report = _compare_json(int8_models["healthy"][0], tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert _int8_defects(report) == []


@pytest.mark.parametrize(("fixture", "kind"), [("saturating", "saturation"), ("coarse", "coarse_scale")])
def test_compare_names_the_planted_tensor(int8_models, tmp_path, fixture, kind):
    path, pair = int8_models[fixture]
    run, report = _compare_json(path, tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert _int8_defects(report) == [(PLANTED_TENSOR, kind)]
    planted = next(t for t in report["tensors"] if t["tensor"] == PLANTED_TENSOR)
    assert planted["status"] == "introduced" and planted["precision"] == "int8"
    defect = planted["defects"][0]
    assert defect["details"]["pair"] == pair
    assert defect["details"]["local_sqnr_db"] < 10 and defect["details"]["quantization_sqnr_db"] < 10
    headline = run.stdout.split("Worst layers")[0]  # the culprit the terminal report leads with
    assert f"tensor {PLANTED_TENSOR}" in headline and kind in headline


@pytest.mark.parametrize("fixture", ["saturating", "coarse"])
def test_fallback_removes_the_planted_pair(int8_models, tmp_path, fixture):
    path, pair = int8_models[fixture]
    plan_path = tmp_path / "plan.json"
    run = run_cli("fallback", path, "--precision", "int8", *SHAPE, "--out", plan_path)
    assert run.returncode == 0, run.stdout + run.stderr
    plan = json.loads(plan_path.read_text())
    assert plan["default"] == "int8" and plan["nodes"] == {pair: "fp16"}
    assert plan["provenance"]["int8"]["removed_qdq_pairs"][0]["tensor"] == PLANTED_TENSOR
    assert plan["provenance"]["one_minimal"]
    # The artefact is the Q/DQ model without that pair, and it passes as it is.
    artefact = tmp_path / "plan.mixed.onnx"
    assert not any(n.name == pair for n in onnx.load(str(artefact)).graph.node)
    assert run_cli("compare", artefact, "--precision", "int8", *SHAPE).returncode == 0
    # The plan applies to the planted model too.
    assert run_cli("compare", path, "--plan", plan_path, *SHAPE).returncode == 0


# -- implicit INT8: a float model calibrated in memory ----------------------------------------------------

def test_implicit_int8_calibrates_the_float_model(tmp_path):
    narrow = tmp_path / "calib"
    narrow.mkdir()
    np.savez(narrow / "b0.npz", x=np.random.default_rng(0).uniform(-0.05, 0.05, CLASSIFIER_SHAPE).astype(np.float32))
    model = ocr_classifier()
    same_data = run_cli("compare", model, "--precision", "int8", *SHAPE, "--json", tmp_path / "same.json")
    assert same_data.returncode == 0, same_data.stdout + same_data.stderr
    # Calibrated on inputs 20x narrower than those compared, the first layer's input saturates.
    narrow_run = run_cli("compare", model, "--precision", "int8", *SHAPE, "--calib-inputs", narrow,
                         "--json", tmp_path / "narrow.json")
    report = json.loads((tmp_path / "narrow.json").read_text())
    assert narrow_run.returncode in (0, 1), narrow_run.stderr  # the classifier's argmax may survive it
    first_conv = "batch_norm_0.tmp_2"
    assert _int8_defects(report)[0] == (first_conv, "saturation")
    findings = report["notes"]["marking"]["int8"]["tensors"]
    assert findings["x"]["clipped_share"] > 0.8 and findings[first_conv]["clipped_share"] > 0.05
    assert _int8_defects(json.loads((tmp_path / "same.json").read_text())) == []


CALIBRATOR_LINES = ("Collecting tensor data", "Finding optimal threshold", "Number of", "Percentile :")


def test_histogram_calibration_prints_nothing_of_onnxruntime_on_stdout(tmp_path):
    model = planted_chain(20, 1, seed=3).save(tmp_path / "chain.onnx")
    quantized = run_cli("quantize", model, "--calib-method", "percentile", "--calib-batches", "2")
    assert quantized.returncode == 0, quantized.stderr
    assert [line.split()[0] for line in quantized.stdout.splitlines()] == ["wrote", "next:"], quantized.stdout
    compared = run_cli("compare", model, "--precision", "int8", "--calib-method", "percentile")
    assert compared.returncode in (0, 1), compared.stderr
    for text in CALIBRATOR_LINES:
        assert text not in compared.stdout + compared.stderr + quantized.stderr
