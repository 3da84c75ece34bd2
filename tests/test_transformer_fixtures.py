"""The generated transformers: weights drawn lazily, so a model saved with external data holds the very
weights of the embedded one, and writing it never holds all of them at once (the 1.1 B decoder's 4.5 GB).
Small configs only: the 2 GiB model is exercised here at a small table."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import fixtures.transformer_models as transformer_models
from fixtures.transformer_models import TransformerConfig, save

CONFIGS = [TransformerConfig(layers=2, d_model=64, heads=4, seq=16, mask_value="finfo"),
           TransformerConfig(layers=3, d_model=96, heads=4, seq=8, causal=False, seed=5)]


def _run(path: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)


def _feeds(config: TransformerConfig) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.uniform(-1, 1, (config.batch, config.seq, config.d_model)).astype(np.float32),
            "attention_mask": np.ones((config.batch, config.seq), np.int64)}


@pytest.mark.parametrize("config", CONFIGS, ids=["decoder", "encoder"])
def test_external_save_holds_the_embedded_weights_and_computes_the_same(tmp_path, config):
    embedded = save(config, tmp_path / "embedded.onnx")
    external = save(config, tmp_path / "external.onnx", external=True)
    assert (tmp_path / "external.onnx.data").stat().st_size > 0
    assert external.stat().st_size < embedded.stat().st_size / 10  # the weights are not in the proto
    weights = {t.name: numpy_helper.to_array(t).tobytes() for t in onnx.load(str(embedded)).graph.initializer}
    loaded = {t.name: numpy_helper.to_array(t).tobytes() for t in onnx.load(str(external)).graph.initializer}
    assert weights == loaded
    drawn = [value for name, value in weights.items() if name.endswith(".weight")]
    assert len(set(drawn)) == len(drawn) == 9 * config.layers + 1  # every weight drawn afresh, none repeated
    feeds = _feeds(config)
    for a, b in zip(_run(str(embedded), feeds), _run(str(external), feeds), strict=True):
        assert a.tobytes() == b.tobytes()


def test_external_save_holds_one_tensor_at_a_time(tmp_path):
    config = TransformerConfig(layers=4, d_model=256, heads=4, seq=8)
    tensor_bytes = [numpy_helper.to_array(t).nbytes for t in transformer_models.transformer(config).graph.initializer]
    tracemalloc.start()
    try:
        save(config, tmp_path / "external.onnx", external=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(tensor_bytes) > 10 * max(tensor_bytes)
    assert peak < 4 * max(tensor_bytes), (peak, sum(tensor_bytes))


def test_over_two_gib_model_runs_and_reads_its_table(tmp_path, monkeypatch):
    monkeypatch.setattr(transformer_models, "OVER_TWO_GIB_VOCAB", 1000)  # the real table is 2.18 GB
    monkeypatch.setattr(transformer_models, "_TABLE_ROWS_PER_PIECE", 300)  # written in pieces, the last short
    path = transformer_models.over_two_gib(tmp_path / "big.onnx")
    width = transformer_models.OVER_TWO_GIB_WIDTH
    assert (tmp_path / "big.onnx.data").stat().st_size > 4 * 1000 * width
    model = onnx.load(str(path))
    table = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "embedding.weight")
    assert table.shape == (1000, width) and len(np.unique(table[:, 0])) == 1000
    ids = np.array([[0, 1, 2, 299, 300, 998, 999, 5]], np.int64)
    (y,) = _run(str(path), {"ids": ids})
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    x = table[ids]
    normed = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * weights["norm.weight"]
    up = normed @ weights["up.weight"] + weights["up.bias"]
    logits = (up / (1 + np.exp(-up))) @ weights["out.weight"]
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(y, expected / expected.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)
