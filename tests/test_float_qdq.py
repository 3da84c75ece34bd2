"""FP8 E4M3 and INT4 weight-only Q/DQ models, debugged like INT8: a transformer encoder block and a
CNN quantized by `trtdebug quantize --format fp8|int4` (fixtures/float_qdq_models.py), with planted
bad scales the tool must name; the emulation bit for bit against onnxruntime's own operators."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures import float_qdq_models as fx
from tests.cli import run_cli
from trtdebug.core.model.graph import Model
from trtdebug.core.quantized.format import format_of
from trtdebug.core.quantized.fp8 import Fp8Format
from trtdebug.core.quantized.int4 import Int4Format
from trtdebug.core.quantized.qdq import BlockParams, Float8Params, QdqPair, QuantizedModel, find_pairs
from trtdebug.engines.emulator.float_qdq import weight_codes


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("float_qdq")


def report(path: Path) -> dict:
    return json.loads(path.read_text())


def tensor(result: dict, name: str) -> dict:
    return next(t for t in result["tensors"] if t["tensor"] == name)


def _session(nodes: list[onnx.NodeProto], inputs: list, outputs: list, inits: list) -> ort.InferenceSession:
    graph = helper.make_graph(nodes, "probe", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# -- emulation bit for bit -------------------------------------------------------------------------------


def test_fp8_quantize_matches_onnxruntime_and_ml_dtypes_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((6, 64)) * rng.choice([1e-4, 1e-2, 1, 30], size=(6, 1))).astype(np.float32)
    x[0, :6] = [500.0, -500.0, 0.0, -0.0, 1e-9, 448 * 0.01 * 1.03]  # beyond the range, zeros, underflow
    scale = np.linspace(0.005, 0.02, 64).astype(np.float32)  # per channel along axis 1
    zero = helper.make_tensor("z", TensorProto.FLOAT8E4M3FN, [64], [0] * 64)
    session = _session([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
                        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1)],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                       [helper.make_tensor_value_info("q", TensorProto.FLOAT8E4M3FN, list(x.shape)),
                        helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
                       [numpy_helper.from_array(scale, "s"), zero])
    codes, dequantized = session.run(None, {"x": x})
    params = Float8Params(scale, np.zeros(64, ml_dtypes.float8_e4m3fn), 1, -448, 448)
    ours = params.quantize(x).astype(ml_dtypes.float8_e4m3fn)
    assert np.array_equal(ours.view(np.uint8), np.asarray(codes).view(np.uint8))  # the same bits
    by_ml_dtypes = np.clip(x / scale, -448, 448).astype(ml_dtypes.float8_e4m3fn)
    assert np.array_equal(ours.view(np.uint8), by_ml_dtypes.view(np.uint8))
    assert np.array_equal(params.fake_quantize(x).view(np.uint32), dequantized.view(np.uint32))
    assert params.quantize(x)[0, 0] == 448 and params.quantize(x)[0, 1] == -448  # saturated, not NaN


@pytest.mark.parametrize("codes", [TensorProto.INT4, TensorProto.UINT4])
def test_int4_block_codes_match_onnxruntime_bit_for_bit(codes: int) -> None:
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((80, 12)).astype(np.float32)  # 80 = 2 blocks of 32 and a short one of 16
    scale = (rng.uniform(0.05, 0.4, size=(3, 12))).astype(np.float32)
    zero_value = 8 if codes == TensorProto.UINT4 else 0
    zero = helper.make_tensor("z", codes, [3, 12], [zero_value] * 36)
    session = _session([helper.make_node("QuantizeLinear", ["w", "s", "z"], ["q"], axis=0, block_size=32),
                        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=0, block_size=32)],
                       [helper.make_tensor_value_info("w", TensorProto.FLOAT, [80, 12])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [80, 12])],
                       [numpy_helper.from_array(scale, "s"), zero])
    dequantized = session.run(None, {"w": weight})[0]
    code_type = ml_dtypes.int4 if codes == TensorProto.INT4 else ml_dtypes.uint4
    info = ml_dtypes.iinfo(code_type)
    params = BlockParams(scale, np.full((3, 12), zero_value).astype(code_type), 0, int(info.min), int(info.max),
                         32, (80, 12))
    assert np.array_equal(params.fake_quantize(weight).view(np.uint32), dequantized.view(np.uint32))
    # The codes the emulator folds into the graph, dequantized by onnxruntime, give the same bits too.
    folded = weight_codes(QdqPair("q", ("dq",), "w", "w_codes", ("y",), params, True), weight)
    session = _session([helper.make_node("DequantizeLinear", ["w_codes", "s", "z"], ["y"], axis=0, block_size=32)],
                       [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [80, 12])],
                       [folded, numpy_helper.from_array(scale, "s"), zero])
    assert np.array_equal(session.run(None, {})[0].view(np.uint32), dequantized.view(np.uint32))


# -- FP8 ----------------------------------------------------------------------------------------------


def test_fp8_pairs_are_pairs_and_the_format_is_fp8(folder: Path) -> None:
    qdq = Model.load(fx.quantized("encoder", "fp8", folder))
    quantize_nodes = [n.name for n in qdq.nodes if n.op_type == "QuantizeLinear"]
    assert sorted(find_pairs(qdq)) == sorted(quantize_nodes)  # float8 zero points: matched like INT8's
    model = QuantizedModel(qdq)
    chosen = format_of(model)
    assert isinstance(chosen, Fp8Format) and chosen.precision == "fp8"
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.nodes)


def test_fp8_encoder_saturating_pair_is_named_without_precision_flag(folder: Path) -> None:
    planted, pair = fx.plant_activation_scale(fx.quantized("encoder", "fp8", folder), folder,
                                              fx.ENCODER_FP8_TENSOR, 1 / 50)
    run = run_cli("compare", planted, "--json", folder / "sat.json", cwd=folder)  # FP8 detected from its codes
    assert run.returncode == 1, run.stderr
    result = report(folder / "sat.json")
    assert result["precision"] == "fp8"
    assert result["culprits"][0]["tensor"] == fx.ENCODER_FP8_TENSOR
    defect = tensor(result, fx.ENCODER_FP8_TENSOR)["defects"][0]
    assert defect["kind"] == "saturation" and defect["details"]["pair"] == pair
    assert "448 x scale" in defect["message"] and defect["details"]["headroom"] < 0.1
    others = [t["tensor"] for t in result["tensors"] if any(d["kind"] == "saturation" for d in t["defects"])]
    assert others == [fx.ENCODER_FP8_TENSOR]


def test_fp8_encoder_scale_far_too_large_is_underflow(folder: Path) -> None:
    planted, pair = fx.plant_activation_scale(fx.quantized("encoder", "fp8", folder), folder,
                                              fx.ENCODER_FP8_TENSOR, 1e6)
    run = run_cli("compare", planted, "--precision", "fp8", "--json", folder / "under.json", cwd=folder)
    assert run.returncode == 1, run.stderr
    defect = tensor(report(folder / "under.json"), fx.ENCODER_FP8_TENSOR)["defects"][0]
    assert defect["kind"] == "coarse_scale" and defect["details"]["pair"] == pair
    assert "underflow to 0" in defect["message"] and defect["details"]["headroom"] > 1e5


def test_fp8_cnn_fallback_removes_the_planted_pair_only(folder: Path) -> None:
    clean = run_cli("compare", fx.quantized("cnn", "fp8", folder), cwd=folder)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    planted, pair = fx.plant_activation_scale(fx.quantized("cnn", "fp8", folder), folder, fx.CNN_FP8_TENSOR, 1 / 50)
    run = run_cli("fallback", planted, "--precision", "fp8", "--out", folder / "fp8plan.json", cwd=folder)
    assert run.returncode == 0, run.stdout + run.stderr
    plan = json.loads((folder / "fp8plan.json").read_text())
    assert plan["default"] == "fp8" and plan["nodes"] == {pair: "fp16"}


# -- INT4 weight-only ------------------------------------------------------------------------------------


def _int4_findings(result: dict, weight: str) -> dict:
    return result["notes"]["marking"]["int4"]["tensors"][weight]


def test_int4_encoder_clean_has_no_bad_blocks(folder: Path) -> None:
    model = QuantizedModel(Model.load(fx.quantized("encoder", "int4", folder)))
    assert isinstance(format_of(model), Int4Format)
    assert all(p.is_weight and isinstance(p.params, BlockParams) for p in model.pairs.values())
    run_cli("compare", fx.quantized("encoder", "int4", folder), "--json", folder / "int4clean.json", cwd=folder)
    findings = report(folder / "int4clean.json")["notes"]["marking"]["int4"]["tensors"]
    assert len(findings) == 6 and all(not f["defects"] for f in findings.values())


@pytest.mark.parametrize(("factor", "kind"), [(8.0, "coarse_scale"), (1 / 8, "saturation")])
def test_int4_encoder_planted_block_is_named(folder: Path, factor: float, kind: str) -> None:
    planted, pair = fx.plant_block_scale(fx.quantized("encoder", "int4", folder), folder, fx.ENCODER_INT4_WEIGHT,
                                         (1, 5), factor)
    out = folder / f"int4_{kind}.json"
    run_cli("compare", planted, "--json", out, cwd=folder)
    result = report(out)
    findings = _int4_findings(result, fx.ENCODER_INT4_WEIGHT)
    assert [d["kind"] for d in findings["defects"]] == [kind] and findings["pair"] == pair
    assert findings["worst_blocks"][0]["block"] == [1, 5]
    bad = {w for w, f in result["notes"]["marking"]["int4"]["tensors"].items() if f["defects"]}
    assert bad == {fx.ENCODER_INT4_WEIGHT}
    defect = next(d for d in tensor(result, "mlp_up_matmul")["defects"] if d["kind"] == kind)
    assert defect["details"]["blocks"][0]["block"] == [1, 5] and "[1, 5]" in defect["message"]


def test_int4_cnn_fallback_keeps_the_planted_weight_out_of_int4(folder: Path) -> None:
    planted, pair = fx.plant_block_scale(fx.quantized("cnn", "int4", folder), folder, "fc.weight", (3,), 0.05)
    run = run_cli("fallback", planted, "--out", folder / "int4plan.json", cwd=folder)
    assert run.returncode == 0, run.stdout + run.stderr
    plan = json.loads((folder / "int4plan.json").read_text())
    assert plan["default"] == "int4" and plan["nodes"] == {pair: "fp16"}
    assert plan["provenance"]["int4"]["weights_out_of_int4"][0]["layers"] == ["logits"]
    # The plan made concrete is the Q/DQ model without that pair; no builder flags express INT4.
    written = onnx.load(str(folder / "int4plan.mixed.onnx"))
    assert pair not in {n.name for n in written.graph.node}
    assert sum(n.op_type == "QuantizeLinear" for n in written.graph.node) == len(find_pairs(Model.load(planted))) - 1
    emit = run_cli("build", planted, "--plan", folder / "int4plan.json", "--emit", "trtexec", cwd=folder)
    assert emit.returncode == 2 and len(emit.stderr.strip().splitlines()) == 1 and "INT4" in emit.stderr


# -- quantize --format, refusals ----------------------------------------------------------------------------


def test_quantize_format_fp8_writes_a_model_compare_accepts(folder: Path) -> None:
    out = folder / "cli.fp8.onnx"
    run = run_cli("quantize", fx.float_model("cnn", folder), "--format", "fp8", "--out", out, cwd=folder)
    assert run.returncode == 0, run.stderr
    assert "--precision fp8" in run.stdout
    qdq = onnx.load(str(out))
    zero_types = {i.data_type for i in qdq.graph.initializer if i.name.endswith("_qzero")}
    assert zero_types == {TensorProto.FLOAT8E4M3FN}
    quantized_ops = {n.op_type for n in qdq.graph.node for t in n.input if t.endswith("_dequantized")}
    assert quantized_ops == {"Conv", "Gemm"}
    assert run_cli("compare", out, cwd=folder).returncode == 0


def test_precision_fp8_on_a_float_model_says_to_quantize_it(folder: Path) -> None:
    run = run_cli("compare", fx.float_model("cnn", folder), "--precision", "fp8", cwd=folder)
    assert run.returncode == 2
    assert "trtdebug quantize" in run.stderr and "--format fp8" in run.stderr and "Traceback" not in run.stderr


def _block_scaled(folder: Path, name: str, codes: int, scale_type: int) -> Path:
    weight = helper.make_tensor("w_codes", codes, [32, 4], [0] * 128)
    scale = helper.make_tensor("w_scale", scale_type, [1, 4], [1.0] * 4 if scale_type == TensorProto.FLOAT
                               else [127] * 4)
    nodes = [helper.make_node("DequantizeLinear", ["w_codes", "w_scale"], ["w"], name="weight_dq", axis=0,
                              block_size=32),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [weight, scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 11
    path = folder / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(("name", "codes", "scale_type", "named"), [
    ("nvfp4", TensorProto.FLOAT4E2M1, TensorProto.FLOAT, "FP4 E2M1"),
    ("mxfp8", TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E8M0, "E8M0")])
def test_block_scaled_fp4_fp8_are_refused_naming_the_op(folder: Path, name: str, codes: int, scale_type: int,
                                                        named: str) -> None:
    run = run_cli("compare", _block_scaled(folder, name, codes, scale_type), cwd=folder)
    assert run.returncode == 2, run.stdout + run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "'weight_dq'" in lines[0] and named in lines[0], run.stderr
