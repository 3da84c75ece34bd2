"""Emulated tactics: real arithmetic variants in onnxruntime, and the autotuner that picks them."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtdebug.core.model.graph import Model
from trtdebug.core.plans.ban_list import BanEntry, BanList
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.engines.emulator.engine import EmulatorEngine
from trtdebug.engines.emulator.tactics import (
    FP16_ACCUMULATE,
    FP32_ACCUMULATE,
    PREFERENCE_KEY,
    SPLIT_K,
)
from trtdebug.errors import UserError


def r16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def blockwise_fp16(a: np.ndarray, b: np.ndarray, block: int) -> np.ndarray:
    """Reference: FP16 inputs, each K-block's product rounded to FP16, FP16 running sum."""
    a, b = r16(a), r16(b)
    acc = np.zeros(np.broadcast_shapes(a.shape[:-1], b.shape[:-2] + (1,)) + b.shape[-1:], np.float32)
    for start in range(0, a.shape[-1], block):
        acc = r16(acc + r16(a[..., start:start + block] @ b[..., start:start + block, :]))
    return acc


def _model(node: onnx.NodeProto, inputs, output_shape, initializers, variant: str | None = None,
           output: str = "y") -> Model:
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT,
                                                                                  output_shape)],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in initializers.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    if variant:
        helper.set_model_props(proto, {PREFERENCE_KEY: json.dumps({node.name: variant})})
    return Model.from_proto(proto)


def _matmul(k: int, variant: str | None, seed: int = 0) -> tuple[Model, np.ndarray]:
    w = np.random.default_rng(seed).uniform(0.0, 2.0, size=(k, 6))
    model = _model(helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, k])], [2, 3, 6], {"w": w}, variant)
    return model, w.astype(np.float32)


def _run(model: Model, x: np.ndarray, precision: str = "fp16", **engine_args) -> tuple[np.ndarray, object]:
    built = EmulatorEngine(**engine_args).build(model, PrecisionPlan(precision))
    return built.run({"x": x})["y"], built


K = 200  # not a multiple of the 16-wide block: the last block is padded with zeros
X = np.random.default_rng(1).uniform(0.0, 4.0, size=(2, 3, K)).astype(np.float32)


def test_fp16_accumulate_is_blockwise_fp16_accumulation_and_differs_from_fp32_accumulate():
    model, w = _matmul(K, FP16_ACCUMULATE)
    y, built = _run(model, X)
    assert built.layers[0].tactic == FP16_ACCUMULATE
    expected = blockwise_fp16(X, w, 16)
    # onnxruntime sums each block in its own order, so at most one FP16 step of disagreement
    np.testing.assert_allclose(y, expected, rtol=2.0**-10, atol=0)
    assert np.mean(y == expected) > 0.95
    default, _ = _run(_matmul(K, None)[0], X)
    np.testing.assert_allclose(default, blockwise_fp16(X, w, K), rtol=2.0**-10, atol=0)  # one block: FP32 sum
    # sums near 400, where FP16 spacing is 0.25: most elements end a step or two apart
    assert np.mean(y != default) > 0.5 and np.abs(y - default).max() >= 0.5


def test_split_k_rounds_two_halves():
    model, w = _matmul(K, SPLIT_K)
    y, built = _run(model, X)
    assert built.layers[0].tactic == SPLIT_K
    np.testing.assert_allclose(y, blockwise_fp16(X, w, K // 2), rtol=2.0**-10, atol=0)


def test_default_build_is_unchanged_and_offers_the_alternatives():
    model, _ = _matmul(K, None)
    _, built = _run(model, X)
    layer = built.layers[0]
    assert layer.tactic == FP32_ACCUMULATE and set(layer.alternatives) == {FP16_ACCUMULATE, SPLIT_K}
    assert not any(n.op_type == "Scan" for n in built.proto.graph.node)  # the plain MatMul, rounded at its I/O


def test_local_error_uses_the_chosen_variant():
    model, _ = _matmul(K, FP16_ACCUMULATE)
    y, built = _run(model, X)
    np.testing.assert_array_equal(built.run_local({"x": X})["y"], y)


@pytest.mark.parametrize("trans_a, trans_b", [(0, 0), (1, 1)])
def test_gemm_variant_matches_the_reference(trans_a, trans_b):
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 4, size=(5, 70)).astype(np.float32)
    b = rng.uniform(0, 2, size=(70, 4)).astype(np.float32)
    c = rng.uniform(-1, 1, size=(4,)).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "b", "c"], ["y"], name="gemm", alpha=0.5, beta=2.0,
                            transA=trans_a, transB=trans_b)
    model = _model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(a.T.shape if trans_a
                                                                                          else a.shape))],
                   [5, 4], {"b": b.T if trans_b else b, "c": c}, FP16_ACCUMULATE)
    built = EmulatorEngine().build(model, PrecisionPlan("fp16"))
    y = built.run({"x": a.T.copy() if trans_a else a})["y"]
    expected = r16(blockwise_fp16(a, b, 16) * 0.5 + r16(c) * 2.0)
    np.testing.assert_allclose(y, expected, rtol=2.0**-9, atol=0)


def test_conv_variant_accumulates_channel_blocks():
    rng = np.random.default_rng(3)
    channels = 40
    w = rng.uniform(0, 1, size=(8, channels, 1, 1)).astype(np.float32)
    bias = rng.uniform(-1, 1, size=(8,)).astype(np.float32)
    x = rng.uniform(0, 8, size=(2, channels, 5, 5)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "bias"], ["y"], name="conv")
    model = _model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))], [2, 8, 5, 5],
                   {"w": w, "bias": bias}, FP16_ACCUMULATE)
    y = EmulatorEngine().build(model, PrecisionPlan("fp16")).run({"x": x})["y"]
    # a 1x1 conv is a matmul over channels: pixels x channels @ channels x out_channels
    pixels = x.transpose(0, 2, 3, 1).reshape(-1, channels)
    expected = r16(blockwise_fp16(pixels, w[:, :, 0, 0].T, 16) + r16(bias)).reshape(2, 5, 5, 8).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(y, expected, rtol=2.0**-9, atol=0)


def test_strided_3x3_conv_variant_stays_close_to_fp32_accumulation():
    """A wrong regrouping of channels or kernel windows would be off by far more than rounding."""
    rng = np.random.default_rng(4)
    w = rng.normal(0, 0.1, size=(6, 40, 3, 3)).astype(np.float32)
    x = rng.uniform(-4, 4, size=(1, 40, 9, 9)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2])
    results = {}
    for variant in (FP32_ACCUMULATE, FP16_ACCUMULATE, SPLIT_K):
        model = _model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 40, 9, 9])], None,
                       {"w": w}, variant)
        built = EmulatorEngine().build(model, PrecisionPlan("fp16"))
        assert built.layers[0].tactic == variant
        results[variant] = built.run({"x": x})["y"]
    scale = np.abs(results[FP32_ACCUMULATE]).max()
    for variant in (FP16_ACCUMULATE, SPLIT_K):
        assert results[variant].shape == (1, 6, 5, 5)
        difference = np.abs(results[variant] - results[FP32_ACCUMULATE]).max()
        assert 0 < difference < 0.01 * scale


def test_bans_exclude_variants_and_unknown_bans_never_fail_the_build():
    model, _ = _matmul(K, FP16_ACCUMULATE)
    ban = BanList((BanEntry("mm", FP16_ACCUMULATE, ("mm",)),))
    built = EmulatorEngine().build(model, PrecisionPlan("fp16"), ban)
    layer = built.layers[0]
    assert layer.tactic == FP32_ACCUMULATE and FP16_ACCUMULATE not in layer.alternatives
    assert layer.extra["tactic_choice"]["banned"] == (FP16_ACCUMULATE,)
    unknown = BanList((BanEntry("mm", "no_such_kernel", ("mm",)), BanEntry("other", FP16_ACCUMULATE)))
    assert EmulatorEngine().build(model, PrecisionPlan("fp16"), unknown).layers[0].tactic == FP16_ACCUMULATE
    everything = BanList(tuple(BanEntry("mm", v, ("mm",)) for v in (FP32_ACCUMULATE, FP16_ACCUMULATE, SPLIT_K)))
    layer = EmulatorEngine().build(model, PrecisionPlan("fp16"), everything).layers[0]
    assert layer.tactic == FP32_ACCUMULATE and layer.extra["tactic_choice"]["reason"] == "all banned"


def test_tactic_seed_noise_is_deterministic_and_varies_between_seeds():
    model, _ = _matmul(K, None)
    picks = [_run(model, X, tactic_seed=seed)[1].layers[0].tactic for seed in range(12)]
    again = [_run(model, X, tactic_seed=seed)[1].layers[0].tactic for seed in range(12)]
    assert picks == again
    assert set(picks) == {FP32_ACCUMULATE, FP16_ACCUMULATE, SPLIT_K}


def test_only_reduced_precision_reductions_have_variants():
    model, _ = _matmul(K, FP16_ACCUMULATE)
    assert EmulatorEngine().build(model, PrecisionPlan("fp32")).layers[0].tactic == ""
    bf16 = EmulatorEngine().build(model, PrecisionPlan("bf16")).layers[0]
    assert bf16.tactic == FP32_ACCUMULATE and bf16.alternatives == (SPLIT_K,)  # no FP16 accumulator in BF16
    small, _ = _matmul(16, None)
    assert _run(small, X[..., :16])[1].layers[0].alternatives == (SPLIT_K,)  # one block: nothing to accumulate


def test_malformed_tactic_metadata_is_a_user_error():
    model, _ = _matmul(K, None)
    proto = model.proto
    for value, message in (("{not json", "must be JSON"), (json.dumps({"mm": "fastest"}), "unknown variant")):
        helper.set_model_props(proto, {PREFERENCE_KEY: value})
        with pytest.raises(UserError, match=message):
            EmulatorEngine().build(Model.from_proto(proto), PrecisionPlan("fp16"))
