"""FP8 and INT4 weight-only on real trained models from the zoo: the khmer transformer encoder and the
PP-LCNet orientation CNN, quantized by the library's own placement (fixtures/float_qdq_models.py
zoo_quantized), with a planted bad scale whose pair, tensor and block compare must name, and that
fallback must keep out of the quantized format (or, for one INT4 block that does not move the
outputs, must leave in it: fallback acts on output error, docs/quantized.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures import float_qdq_models as fx
from tests.cli import run_cli

MODELS = (fx.REAL_ENCODER, fx.REAL_CNN)
SCALE_KINDS = ("saturation", "coarse_scale")
# Output tolerances at which the clean quantized model passes and the planted one fails: the clean
# FP8 encoder's emissions are 0.44 off (29 dB), the planted one's 3.1; the clean FP8 CNN's
# probabilities 0.017 off, the planted one's 0.083.
FALLBACK_TOLERANCE = {fx.REAL_ENCODER: ["--atol", "1", "--rtol", "0.1"], fx.REAL_CNN: ["--atol", "0.05"]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("float_qdq_real")


def compare(folder: Path, name: str, model: Path, report: str, *options: str) -> tuple[int, dict]:
    run = run_cli("compare", model, *fx.zoo_input_args(name, folder), *options, "--json", folder / report, cwd=folder)
    assert run.returncode in (0, 1), run.stdout + run.stderr
    return run.returncode, json.loads((folder / report).read_text())


def scale_findings(result: dict) -> dict[str, list[dict]]:
    """Tensor -> its saturation / coarse-scale defects, over every compared tensor."""
    found = {t["tensor"]: [d for d in t["defects"] if d["kind"] in SCALE_KINDS] for t in result["tensors"]}
    return {tensor: defects for tensor, defects in found.items() if defects}


@pytest.mark.parametrize("quant_format", ["fp8", "int4"])
@pytest.mark.parametrize("name", MODELS)
def test_clean_quantized_real_model_has_no_scale_finding(folder: Path, name: str, quant_format: str) -> None:
    code, result = compare(folder, name, fx.zoo_quantized(name, quant_format, folder), f"{name}.{quant_format}.json")
    assert result["precision"] == quant_format
    assert scale_findings(result) == {}
    marks = result["notes"]["marking"][quant_format]["tensors"]
    if quant_format == "fp8":
        # Calibrated on the data compare runs (the CNN: on 4 generated batches, compare's among them):
        # scale = amax / 448, so only the amax value itself may round past 448 x scale (one element:
        # 0.2% of a pooled [1, 512] tensor).
        assert all(m["clipped_share"] < 0.005 and 1 - 1e-6 < m["headroom"] < 1.5 for m in marks.values())
    else:
        assert marks and all(not m["defects"] for m in marks.values())
    # The encoder's emissions are a few tenths off at the default tolerance (plain FP8/INT4 rounding
    # through three layers); the CNN's probabilities stay within it.
    assert code == (1 if name == fx.REAL_ENCODER else 0)


@pytest.mark.parametrize("name", MODELS)
def test_fp8_real_activation_scale_100x_too_small_is_named(folder: Path, name: str) -> None:
    tensor = fx.REAL_FP8_TENSOR[name]
    planted, pair = fx.plant_activation_scale(fx.zoo_quantized(name, "fp8", folder), folder, tensor, 1 / 100)
    code, result = compare(folder, name, planted, f"{name}.fp8.planted.json")
    findings = scale_findings(result)
    assert list(findings) == [tensor]
    defect = findings[tensor][0]
    assert defect["kind"] == "saturation" and defect["details"]["pair"] == pair
    assert defect["details"]["headroom"] < 0.02 and "448 x scale" in defect["message"]
    assert result["notes"]["marking"]["fp8"]["tensors"][tensor]["clipped_share"] > 0.5
    # The encoder's outputs go far out of tolerance; the classifier's probabilities stay within it,
    # and the saturated tensor is named all the same.
    assert code == (1 if name == fx.REAL_ENCODER else 0)


@pytest.mark.parametrize("name", MODELS)
def test_fp8_real_fallback_keeps_exactly_the_planted_pair(folder: Path, name: str) -> None:
    planted, pair = fx.plant_activation_scale(fx.zoo_quantized(name, "fp8", folder), folder,
                                              fx.REAL_FP8_TENSOR[name], 1 / 100)
    plan_path = folder / f"{name}.fp8.plan.json"
    run = run_cli("fallback", planted, "--precision", "fp8", *fx.zoo_input_args(name, folder),
                  *FALLBACK_TOLERANCE[name], "--out", plan_path, cwd=folder)
    assert run.returncode == 0, run.stdout + run.stderr
    plan = json.loads(plan_path.read_text())
    assert plan["default"] == "fp8" and plan["nodes"] == {pair: "fp16"}


@pytest.mark.parametrize("name", MODELS)
def test_int4_real_block_scale_far_too_large_is_named(folder: Path, name: str) -> None:
    weight, block = fx.REAL_INT4_BLOCK[name]
    planted, pair = fx.plant_block_scale(fx.zoo_quantized(name, "int4", folder), folder, weight, block, 16)
    _, result = compare(folder, name, planted, f"{name}.int4.planted.json")
    marks = result["notes"]["marking"]["int4"]["tensors"]
    assert {w for w, m in marks.items() if m["defects"]} == {weight}
    finding = marks[weight]
    assert finding["pair"] == pair and [d["kind"] for d in finding["defects"]] == ["coarse_scale"]
    worst = finding["worst_blocks"][0]
    assert worst["block"][:2] == list(block) and worst["sqnr_db"] < 1  # a conv's scale is [out, blocks, 1, 1]
    assert "rounding error dominates 1 of" in finding["defects"][0]["message"]
    # The layer reading the weight carries the defect naming the block; no other layer has one.
    (layer, defects), = scale_findings(result).items()
    assert layer in finding["layers"] or any(layer in reader for reader in finding["layers"])
    assert defects[0]["details"]["pair"] == pair and defects[0]["details"]["blocks"][0]["block"] == worst["block"]


def test_int4_real_fallback_leaves_one_bad_block_that_does_not_move_the_outputs(folder: Path) -> None:
    """One zeroed block of 1152 in the encoder leaves its emissions as the clean INT4 model's (0.63 off):
    fallback acts on output error, so at a tolerance the clean model meets nothing leaves INT4; the
    block stays named by compare (the test above)."""
    name = fx.REAL_ENCODER
    weight, block = fx.REAL_INT4_BLOCK[name]
    planted, _ = fx.plant_block_scale(fx.zoo_quantized(name, "int4", folder), folder, weight, block, 16)
    plan_path = folder / "int4.plan.json"
    run = run_cli("fallback", planted, "--precision", "int4", *fx.zoo_input_args(name, folder),
                  *FALLBACK_TOLERANCE[name], "--out", plan_path, cwd=folder)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS without any fallback" in run.stdout
    plan = json.loads(plan_path.read_text())
    assert plan["default"] == "int4" and plan["nodes"] == {}
