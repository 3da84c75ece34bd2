"""The emulator rounds like an FP16 TensorRT build, and only where a layer is planned in FP16."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.reference.fp32_run import run_reference
from trtdebug.engines.base import Marking
from trtdebug.engines.emulator.engine import EmulatorEngine


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return Model.from_proto(proto)


def _sqrt_of_square():
    return _model([helper.make_node("Mul", ["x", "x"], ["sq"], name="square"),
                   helper.make_node("Sqrt", ["sq"], ["y"], name="root")],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])


def test_fp16_intermediate_overflow_shows_where_onnxruntime_fp16_hides_it():
    model = _sqrt_of_square()
    x = {"x": np.array([300.0, 2.0, 0.5], np.float32)}
    out = EmulatorEngine().build(model, PrecisionPlan("fp16")).run(x)
    assert np.isinf(out["sq"][0]) and np.isinf(out["y"][0])  # 90000 > 65504
    assert out["y"][1] == 2.0
    assert run_reference(model, x)["y"][0] == 300.0


def test_fp32_layers_are_not_rounded_but_their_fp16_consumers_read_rounded_inputs():
    model = _sqrt_of_square()
    x = {"x": np.array([300.0, 1.0, 1.0], np.float32)}
    out = EmulatorEngine().build(model, PrecisionPlan("fp16", {"square": "fp32"})).run(x)
    assert out["sq"][0] == 90000.0
    assert np.isinf(out["y"][0])  # root is FP16: its input rounds to inf
    out = EmulatorEngine().build(model, PrecisionPlan("fp16", {"square": "fp32", "root": "fp32"})).run(x)
    assert out["y"][0] == 300.0


def test_outputs_are_fp16_values_and_weights_are_rounded():
    w = np.array([1.0 + 2.0**-12], np.float32)  # not representable in FP16: rounds to 1.0
    model = _model([helper.make_node("Mul", ["x", "w"], ["y"], name="scale")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                   [numpy_helper.from_array(w, "w")])
    out = EmulatorEngine().build(model, PrecisionPlan("fp16")).run({"x": np.array([1.0], np.float32)})
    assert out["y"][0] == 1.0
    assert out["y"].dtype == np.float32
    out = EmulatorEngine().build(model, PrecisionPlan("bf16")).run({"x": np.array([3.0], np.float32)})
    assert out["y"][0] == 3.0
    exact = EmulatorEngine().build(model, PrecisionPlan("fp32")).run({"x": np.array([1.0], np.float32)})
    assert exact["y"][0] == np.float32(w[0])


def test_integer_shape_arithmetic_stays_exact():
    """Shape -> Gather -> Mul on int64 must not be rounded (70000 is not an FP16 value)."""
    model = _model(
        [helper.make_node("Shape", ["x"], ["s"], name="shape"),
         helper.make_node("Mul", ["s", "k"], ["big"], name="int_mul"),
         helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2]),
         helper.make_tensor_value_info("big", TensorProto.INT64, [2])],
        [numpy_helper.from_array(np.array([35000], np.int64), "k"),
         numpy_helper.from_array(np.array([3, 2], np.int64), "target")])
    out = EmulatorEngine().build(model, PrecisionPlan("fp16")).run({"x": np.ones((2, 3), np.float32)})
    assert out["big"].tolist() == [70000, 105000]


def test_local_error_isolates_each_layer():
    model = _sqrt_of_square()
    x = {"x": np.array([300.0, 1.0, 1.0], np.float32)}
    built = EmulatorEngine().build(model, PrecisionPlan("fp16", {"square": "fp32"}))
    local = built.run_local(run_reference(model, x))
    assert local["sq"][0] == 90000.0  # square alone, in FP32, is right
    assert np.isinf(local["y"][0])  # root alone, reading 90000 in FP16, is wrong


def test_marking_only_final_outputs_hides_intermediates():
    model = _sqrt_of_square()
    built = EmulatorEngine().build(model, PrecisionPlan("fp16"), mark=Marking.final_outputs_only())
    assert set(built.run({"x": np.array([1.0, 2.0, 3.0], np.float32)})) == {"y"}


def test_constant_folded_nodes_are_reported_as_folded():
    model = _model([helper.make_node("Add", ["c", "c"], ["c2"], name="fold_me"),
                    helper.make_node("Mul", ["x", "c2"], ["y"], name="scale")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                   [numpy_helper.from_array(np.array([40000.0], np.float32), "c")])
    built = EmulatorEngine().build(model, PrecisionPlan("fp16"))
    assert "fold_me" in built.marking_notes["folded_away"]
    # 80000 was folded in FP32, then rounded as a weight of the FP16 Mul: inf, as TensorRT would.
    assert np.isinf(built.run({"x": np.array([1.0], np.float32)})["y"][0])
    assert onnx.checker.check_model(built.proto) is None


def test_substituted_runs_of_one_session_equal_runs_of_their_own(planted_models):
    """Culprit search replaces subsets of a few tensors by their reference values; one session with a
    switch per tensor answers every subset exactly as a graph built for that subset alone."""
    from trtdebug.core.model.feeds import generate_feeds, resolve_shapes

    model = Model.load(planted_models["residual_overflow"][0])
    feeds = generate_feeds(model, resolve_shapes(model, {}))
    reference = run_reference(model, feeds)
    built = EmulatorEngine().build(model, PrecisionPlan("fp16"))
    switchable = ["conv_amplify", "relu_amplify", "rescale", "skip", "logits"]
    plain = built.run(feeds)["logits"]
    assert np.array_equal(built.run_substituted(feeds, {}, switchable)["logits"], plain, equal_nan=True)
    for subset in (["conv_amplify"], ["relu_amplify", "skip"], ["skip"], ["logits"]):
        replacements = {t: reference[t] for t in subset}
        alone = EmulatorEngine().build(model, PrecisionPlan("fp16")).run_substituted(feeds, replacements)
        switched = built.run_substituted(feeds, replacements, switchable)
        np.testing.assert_array_equal(switched["logits"], alone["logits"])
    # the overflow's values are beyond FP16 even in the reference: the repair is downstream of the rescale
    repaired = built.run_substituted(feeds, {"rescale": reference["rescale"]}, switchable)["logits"]
    assert np.isfinite(repaired).all() and not np.isfinite(plain).all()


def test_pruned_substituted_runs_equal_the_switching_session_bit_for_bit(planted_models, tmp_path, monkeypatch):
    """Where a session is cheap beside a run, trials after the first run the graph cut at the replaced
    tensors and pruned to what the outputs need: the values are the switching session's, bit for bit."""
    from fixtures.transformer_models import FEED_RANGES, TransformerConfig, save
    from trtdebug.core.model.feeds import generate_feeds, resolve_shapes
    from trtdebug.engines.emulator import built as emulated

    decoder = save(TransformerConfig(layers=2, mask_value="finfo"), tmp_path / "decoder.onnx")
    cases = [(planted_models["residual_overflow"][0], {}, ["conv_amplify", "relu_amplify", "rescale", "skip"]),
             (decoder, FEED_RANGES, ["mask.padding", "layers.0.attn.softmax", "layers.0.mlp_residual",
                                     "layers.1.post_norm.mul"])]
    for path, ranges, tensors in cases:
        model = Model.load(path)
        feeds = generate_feeds(model, resolve_shapes(model, {}), ranges)
        reference = run_reference(model, feeds)
        subsets = [tensors[:1], tensors[1:3], tensors[2:], tensors, [model.outputs[0].name]]
        values = {}
        for prune in (False, True):
            monkeypatch.setattr(emulated, "PRUNE_WHEN_COST_BELOW", 1e9 if prune else 0.0)
            built = EmulatorEngine().build(model, PrecisionPlan("fp16"))
            built.run_substituted(feeds, {}, model.intermediate_tensors())  # the first trial decides
            assert built._prune is prune
            values[prune] = [built.run_substituted(feeds, {t: reference[t] for t in subset},
                                                   model.intermediate_tensors()) for subset in subsets]
        for switched, pruned in zip(values[False], values[True], strict=True):
            assert switched.keys() == pruned.keys()
            for name in switched:
                assert switched[name].tobytes() == pruned[name].tobytes(), (path, name)


def test_a_trial_in_a_detectors_head_runs_without_its_backbone(monkeypatch):
    """YOLOv8's anchors read the shapes of its feature maps: a trial cut in the box decode kept every
    node those Shape nodes depend on, the whole backbone. The shapes follow from the feeds', so they are
    constants there; the values stay the switching session's, bit for bit."""
    from fixtures.zoo import by_name
    from trtdebug.core.model.feeds import generate_feeds, resolve_shapes
    from trtdebug.engines.emulator import built as emulated

    model = Model.load(by_name("yolov8n_nudenet").path())
    feeds = generate_feeds(model, resolve_shapes(model, {"images": (1, 3, 320, 320)}), {"images": (-1.0, 1.0)})
    reference = run_reference(model, feeds)
    cut = ["/model.21/Split_output_0", "/model.21/Split_output_1", "/model.21/m.0/cv2/act/Sigmoid_output_0",
           "/model.21/m.0/cv2/conv/Conv_output_0", "/model.22/Add_2_output_0", "/model.22/Range_2_output_0",
           "/model.22/Range_3_output_0", "/model.22/Reshape_1_output_0", "/model.22/Reshape_7_output_0",
           "/model.22/Reshape_output_0"]
    made = []
    session = emulated.ort_sessions.session
    monkeypatch.setattr(emulated.ort_sessions, "session", lambda proto, *args, **kwargs: made.append(proto)
                        or session(proto, *args, **kwargs))
    outputs = {}
    for prune in (False, True):
        monkeypatch.setattr(emulated, "PRUNE_WHEN_COST_BELOW", 1e9 if prune else 0.0)
        built = EmulatorEngine().build(model, PrecisionPlan("fp16"))
        built.run_substituted(feeds, {}, cut)  # the first trial decides
        assert built._prune is prune
        made.clear()
        outputs[prune] = built.run_substituted(feeds, {t: reference[t] for t in cut}, cut)["output0"]
    assert outputs[True].tobytes() == outputs[False].tobytes()
    convs = [sum(n.op_type == "Conv" for n in proto.graph.node) for proto in (built.proto, made[-1])]
    assert convs[1] <= 12 < convs[0], convs  # the head's last convs, not the backbone's


def test_local_error_of_some_layers_equals_theirs_among_all(planted_models, silero_path):
    """Running again only the layers compare asks for (a graph of just them) gives exactly the values
    the local graph of every layer gives them, on a planted net and on Silero VAD (recurrent, If)."""
    from trtdebug.core.model.feeds import generate_feeds, resolve_shapes

    cases = [(planted_models["residual_overflow"][0], {}, {}),
             (silero_path, {"input": (4, 512), "state": (2, 4, 128)}, {"sr": (16000.0, 16000.0)})]
    for path, shapes, ranges in cases:
        model = Model.load(path)
        feeds = generate_feeds(model, resolve_shapes(model, shapes), ranges)
        reference = run_reference(model, feeds)
        every = EmulatorEngine().build(model, PrecisionPlan("fp16")).run_local(reference)
        some = [t for i, t in enumerate(every) if i % 3 == 0] + ["not a tensor"]
        alone = EmulatorEngine().build(model, PrecisionPlan("fp16")).run_local(reference, some)
        assert set(alone) == set(some) - {"not a tensor"}
        for tensor, value in alone.items():
            np.testing.assert_array_equal(value, every[tensor], err_msg=f"{path.name}: {tensor}")


def test_local_graph_of_a_few_layers_carries_only_their_weights(planted_models):
    """compare runs again only the wrong layers, a group at a time on large models: each such graph must
    not copy every weight of the model (a 50 MB recognizer went from 955 to 1126 MiB peak when it did)."""
    model = Model.load(planted_models["overflow"][0])
    built = EmulatorEngine().build(model, PrecisionPlan("fp16"))
    proto, _, outputs = built._make_local_graph(writing={"conv_amplify"})
    assert outputs == ["conv_amplify"]
    def unrounded(names):  # a weight and its rounded copy ("w::fp16") are one weight
        return {name.split("::")[0] for name in names}

    carried = unrounded(i.name for i in proto.graph.initializer)
    assert carried == unrounded(t for node in proto.graph.node for t in node.input) & unrounded(
        i.name for i in built.folded.proto.graph.initializer) == {"conv_amplify.weight", "conv_amplify.bias"}


def test_weights_round_alike_whatever_their_size_and_nan_stays_nan():
    """Large weights round through onnxruntime's Cast kernels, small ones through NumPy: the same values
    for every float32 bit pattern, and a NaN weight stays NaN in BF16 (the bit arithmetic's carry had
    made some inf)."""
    from trtdebug.engines.emulator.rounding import CAST_SESSION_ELEMENTS, round_values

    bits = np.random.default_rng(0).integers(0, 2**32, 4 * CAST_SESSION_ELEMENTS, dtype=np.uint64)
    values = bits.astype(np.uint32).view(np.float32)
    for precision in ("fp16", "bf16"):
        with np.errstate(all="ignore"):
            whole = round_values(values, precision)
            pieces = np.concatenate([round_values(piece, precision) for piece in np.array_split(values, 8)])
        assert whole.dtype == pieces.dtype == np.float32
        nan = np.isnan(values)
        assert np.array_equal(np.isnan(whole), nan) and np.array_equal(np.isnan(pieces), nan), precision
        assert np.array_equal(whole[~nan].view(np.uint32), pieces[~nan].view(np.uint32)), precision
    assert round_values(np.float32([65519.99, 65520.0]), "fp16").tolist() == [65504.0, np.inf]
