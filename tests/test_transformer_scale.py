"""Transformers at scale: weights held once and read in place by every onnxruntime session, and models
too large to serialize whole (protobuf's 2 GiB) run without being serialized with their weights. The
large-model path is forced here at a small threshold; its values must equal the normal path's bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from fixtures.transformer_models import FEED_RANGES, TransformerConfig, save
from trtdebug.core.model import weights as shared
from trtdebug.core.model.feeds import generate_feeds, resolve_shapes
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.reference.fp32_run import Reference
from trtdebug.engines.emulator.engine import EmulatorEngine

CONFIG = TransformerConfig(layers=2, d_model=64, heads=4, seq=16, mask_value="finfo")


def _values(path: str) -> tuple[Model, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    model = Model.load(path)
    feeds = generate_feeds(model, resolve_shapes(model, {}), FEED_RANGES)
    reference = Reference(model).run(feeds)
    built = EmulatorEngine().build(model, PrecisionPlan("fp16"))
    wrong = [t for t in model.intermediate_tensors() if t.endswith(("scores", "softmax", "mlp_residual"))]
    return model, reference, built.run(feeds), built.run_local(reference, wrong)


def _equal_bits(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].tobytes() == b[name].tobytes(), name


@pytest.mark.parametrize("external", [False, True])
def test_large_model_path_gives_the_values_of_the_normal_path(tmp_path, monkeypatch, external):
    path = str(save(CONFIG, tmp_path / "decoder.onnx", external=external))
    _, reference, emulated, local = _values(path)
    assert np.isnan(emulated["y"]).any()  # the finfo mask NaNs in FP16: a failing model, every path exercised
    monkeypatch.setattr(shared, "SHARED_WEIGHT_BYTES", 1024)  # every weight matrix shared
    monkeypatch.setattr(shared, "LARGE_MODEL_BYTES", 1024)  # and the model "too large" to serialize
    model, reference2, emulated2, local2 = _values(path)
    _equal_bits(reference, reference2)
    _equal_bits(emulated, emulated2)
    _equal_bits(local, local2)
    built = EmulatorEngine().build(model, PrecisionPlan("fp16"))
    weight = "layers.0.mlp.up_proj.weight"
    assert built.weights[weight] is model.weights[weight]  # the folded graph's weights are the model's arrays
    assert all(not t.HasField("raw_data") for t in built.proto.graph.initializer if t.name in built.weights)


def test_sessions_read_the_shared_weights_in_place(tmp_path, monkeypatch):
    monkeypatch.setattr(shared, "SHARED_WEIGHT_BYTES", 1024)
    model = Model.load(str(save(CONFIG, tmp_path / "decoder.onnx")))
    feeds = generate_feeds(model, resolve_shapes(model, {}), FEED_RANGES)
    reference = Reference(model)
    held = {value.data_ptr() for value in reference._session._trtdebug_weights}
    big = [name for name, value in model.weights.items() if value.nbytes >= 1024]
    assert big and held == {model.weights[name].ctypes.data for name in big}  # no copy: the model's own arrays
    built = EmulatorEngine().build(model, PrecisionPlan("fp16"))
    built.run(feeds)
    emulated = {value.data_ptr() for value in built._session._trtdebug_weights}
    assert emulated <= {value.ctypes.data for value in built.weights.values()}


def test_a_model_over_two_gib_compares_as_its_small_copy(tmp_path, monkeypatch):
    """A model just over protobuf's 2 GiB (an embedding table in external data) runs compare and fallback
    end to end, never serialized whole, and reports what a copy with only the table's first rows reports:
    the ids read only those rows, so every tensor is the same."""
    import json

    from fixtures import transformer_models
    from tests.cli import run_cli

    big = transformer_models.over_two_gib(tmp_path / "big.onnx")
    assert sum(f.stat().st_size for f in tmp_path.iterdir()) > 2**31
    monkeypatch.setattr(transformer_models, "OVER_TWO_GIB_VOCAB", 1000)
    small = transformer_models.over_two_gib(tmp_path / "small.onnx")
    reports = {}
    for path in (big, small):
        done = run_cli("compare", path, "--json", tmp_path / f"{path.stem}.json")
        assert done.returncode in (0, 1), done.stderr
        reports[path.stem] = json.loads((tmp_path / f"{path.stem}.json").read_text())
    assert reports["big"]["tensors"] == reports["small"]["tensors"]
    assert reports["big"]["verdict"] == reports["small"]["verdict"]
    done = run_cli("fallback", big, "--out", tmp_path / "big.plan.json")
    assert done.returncode == 0, done.stderr


def test_a_written_model_holds_its_weights_put_back_a_weight_at_a_time(tmp_path, monkeypatch):
    """What trtdebug writes for other tools (a plan's mixed ONNX, a quantized model) carries the weights
    the model holds apart; below 2 GiB in one file, serialized one weight at a time."""
    import onnx

    from trtdebug.artifacts.mixed_onnx import write_model

    monkeypatch.setattr(shared, "SHARED_WEIGHT_BYTES", 1024)  # every weight matrix held apart
    model = Model.load(str(save(CONFIG, tmp_path / "decoder.onnx")))
    assert any(shared.is_shared(t) for t in model.proto.graph.initializer)
    written = onnx.load(str(write_model(model.proto, tmp_path / "written.onnx", model.weights)))
    onnx.checker.check_model(written)
    values = {t.name: onnx.numpy_helper.to_array(t) for t in written.graph.initializer}
    assert values.keys() == model.weights.keys()
    assert all(values[name].tobytes() == model.weights[name].tobytes() for name in values)
    assert [n.name for n in written.graph.node] == [n.name for n in model.proto.graph.node]


def test_a_plans_mixed_onnx_carries_its_fp16_weights_held_apart(tmp_path, monkeypatch):
    """The typed graph of a plan converts weights to FP16: those are placeholders too, each computed when
    it is written, and the written model runs as the typed graph of the same model with everything embedded."""
    import onnx

    from trtdebug.artifacts.mixed_onnx import write_mixed_onnx
    from trtdebug.core.plans.cast_islands import to_mixed_precision_onnx
    from trtdebug.core.reference import ort_sessions

    path = save(TransformerConfig(layers=2, d_model=64, heads=4, seq=16), tmp_path / "decoder.onnx")
    plan = PrecisionPlan("fp16", {"layers.0.mlp.down_proj": "fp32"})
    embedded = to_mixed_precision_onnx(Model.load(str(path)), plan)  # small weights: all embedded
    monkeypatch.setattr(shared, "SHARED_WEIGHT_BYTES", 1024)
    model = Model.load(str(path))
    derived = shared.DerivedWeights(model.weights)
    typed = to_mixed_precision_onnx(model, plan, derived)
    converted = [t.name for t in typed.graph.initializer
                 if shared.is_shared(t) and t.data_type == onnx.TensorProto.FLOAT16]
    assert converted and set(converted) <= set(derived.derived)  # computed when written, never held
    assert derived[converted[0]].dtype == np.float16
    written = onnx.load(str(write_mixed_onnx(model, plan, tmp_path / "mixed.onnx")))
    onnx.checker.check_model(written)
    feeds = generate_feeds(model, resolve_shapes(model, {}), FEED_RANGES)
    ours = ort_sessions.run(ort_sessions.session(written), feeds)
    theirs = ort_sessions.run(ort_sessions.session(embedded), feeds)
    _equal_bits(ours, theirs)


def test_a_budget_changes_nothing_but_how_the_decoder_is_compared(tmp_path):
    """The billion-parameter decoder runs under --memory-budget 16GiB; on a small copy of the same
    architecture (external data, failing FP16 mask) a budget just above its weights, which streams the
    reference in many chunks, gives the verdict, culprits and tensor statuses of a run without one."""
    import json

    from tests.cli import run_cli
    from trtdebug.core.reference.budget import weight_bytes

    path = save(TransformerConfig(layers=2, d_model=64, heads=4, seq=16, mask_value="finfo"),
                tmp_path / "decoder.onnx", external=True)
    tight = weight_bytes(Model.load(str(path))) + 64 * 1024
    reports = {}
    for name, budget in (("whole", []), ("budget", ["--memory-budget", f"{tight}B"])):
        ranges = [a for t, (lo, hi) in FEED_RANGES.items() for a in ("--input-range", f"{t}:{lo:g},{hi:g}")]
        done = run_cli("compare", path, *ranges, *budget, "--json", tmp_path / f"{name}.json")
        assert done.returncode == 1, done.stderr
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    memory = reports["budget"]["notes"]["marking"]["memory"]
    assert memory["chunks"] > 10 and not memory["reference_held"]
    for key in ("verdict", "culprits"):
        assert reports["budget"][key] == reports["whole"][key], key
    assert [(t["tensor"], t["status"]) for t in reports["budget"]["tensors"]] == \
        [(t["tensor"], t["status"]) for t in reports["whole"]["tensors"]]


def _folded_by_value(folded) -> list[tuple]:
    """The folded graph's nodes with each weight named by its values: onnxruntime shares equal constants
    under whichever name it meets first, which depends on the weights it was given."""
    import hashlib

    def digest(value: np.ndarray) -> str:
        return f"{hashlib.sha1(np.ascontiguousarray(value).tobytes()).hexdigest()}{value.shape}"

    values = {t.name: digest(shared.value_of(t, folded.weights)) for t in folded.proto.graph.initializer}
    return [(n.name, n.op_type, tuple(values.get(t, t) for t in n.input), tuple(n.output),
             tuple(a.SerializeToString() for a in n.attribute if a.type != a.GRAPH)) for n in folded.proto.graph.node]


def test_weights_only_read_at_run_time_are_not_handed_to_the_folding(tmp_path, monkeypatch):
    """A MatMul's or Gather's weight is handed to the folding session as a typed input, not as values
    (a 1.1 B decoder's 4.5 GB were copied in and written out again): the folded graph is the one folding
    every weight's values gives, on the generated decoder and real transformers."""
    from fixtures.real_models import text_encoder
    from fixtures.zoo import by_name
    from trtdebug.engines.emulator import folding

    monkeypatch.setattr(shared, "SHARED_WEIGHT_BYTES", 1024)
    handed: list[set[str]] = []
    session = folding.ort_sessions.session
    monkeypatch.setattr(folding.ort_sessions, "session", lambda proto, *args, weights=None, **kwargs:
                        handed.append(set(weights or {})) or session(proto, *args, weights=weights, **kwargs))
    for path in (save(CONFIG, tmp_path / "decoder.onnx"), text_encoder(), by_name("glass_lm").path(),
                 by_name("vit_focus").path()):
        model = Model.load(str(path))
        fast, every = folding.fold_like_builder(model), folding.fold_like_builder(model, every_weight=True)
        assert _folded_by_value(fast) == _folded_by_value(every), path
        # which Constant node's value stands for the equal ones is onnxruntime's pick, as above
        computing = {n.name for n in model.nodes if n.op_type != "Constant"}
        for graph in (fast, every):
            graph.covers = {layer: tuple(n for n in nodes if n in computing) for layer, nodes in graph.covers.items()}
        assert fast.covers == every.covers
        assert set(fast.folded_away) & computing == set(every.folded_away) & computing
        matmul_weights = {n.input[1] for n in model.nodes if n.op_type == "MatMul"} & set(model.weights)
        assert matmul_weights and not matmul_weights & handed[-2], path  # the fast fold's session
        assert all(fast.weights[name] is model.weights[name] for name in matmul_weights)


def test_weights_that_round_to_themselves_are_not_copied(tmp_path, monkeypatch):
    """A model exported in FP16 and upcast holds weights FP16 represents exactly: its emulated FP16 build
    reads the model's own arrays instead of rounded copies (the second copy was half a 1 B model's memory);
    weights that do round get a copy, and the emulated values are the same either way."""
    import onnx
    from onnx import numpy_helper

    monkeypatch.setattr(shared, "SHARED_WEIGHT_BYTES", 1024)
    proto = onnx.load(str(save(CONFIG, tmp_path / "decoder.onnx")))
    for tensor in proto.graph.initializer:
        if tensor.name.startswith("layers.0."):  # layer 0's weights exactly FP16, the others not
            value = numpy_helper.to_array(tensor)
            tensor.CopyFrom(numpy_helper.from_array(value.astype(np.float16).astype(value.dtype), tensor.name))
    onnx.save(proto, tmp_path / "half.onnx")
    model = Model.load(str(tmp_path / "half.onnx"))
    built = EmulatorEngine().build(model, PrecisionPlan("fp16"))
    exact = [n for n in model.weights if n.startswith("layers.0.") and f"{n}::fp16" in built.weights]
    rounded = [n for n in model.weights if n.startswith("layers.1.") and f"{n}::fp16" in built.weights]
    assert "layers.0.mlp.up_proj.weight" in exact and "layers.1.mlp.up_proj.weight" in rounded
    assert all(built.weights[f"{n}::fp16"] is model.weights[n] for n in exact)
    assert all(built.weights[f"{n}::fp16"] is not model.weights[n] for n in rounded)
    monkeypatch.setattr(shared, "SHARED_WEIGHT_BYTES", 1 << 40)  # nothing held apart: rounded in the graph
    feeds = generate_feeds(model, resolve_shapes(model, {}), FEED_RANGES)
    _equal_bits(built.run(feeds), EmulatorEngine().build(Model.load(str(tmp_path / "half.onnx")),
                                                         PrecisionPlan("fp16")).run(feeds))
