"""Exporting a PrecisionPlan: trtexec flags, Polygraphy flags (checked with Polygraphy's own argument
parser), and a mixed-precision ONNX file (checked by onnx.checker, strict shape inference,
onnxruntime numerics and a real TensorRT-RTX build)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures import planted
from trtdebug.artifacts.build_flags import command_line, polygraphy_args, trtexec_args
from trtdebug.artifacts.mixed_onnx import write_mixed_onnx
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.cast_islands import to_mixed_precision_onnx
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.reference import ort_sessions
from trtdebug.core.reference.fp32_run import run_reference
from trtdebug.engines.base import Marking
from trtdebug.errors import UserError

ISLAND = PrecisionPlan("fp16", {"relu_amplify": "fp32", "conv_amplify": "fp32"})


@pytest.fixture(scope="module")
def overflow_model() -> Model:
    return Model.from_proto(planted.overflow()[0])


def feeds() -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(5).uniform(-1, 1, planted.INPUT_SHAPE).astype(np.float32)}


# -- trtexec and Polygraphy flags -----------------------------------------------------------------------

def trtexec_layer_spec(value: str) -> dict[str, str]:
    """trtexec's own reading of a --layerPrecisions value (samples/common/sampleOptions.cpp: split on
    ',', the name is everything before the last ':')."""
    return dict(item.rsplit(":", 1) for item in value.split(","))  # type: ignore[misc]


def test_trtexec_flags_for_a_plan() -> None:
    args = trtexec_args(ISLAND)
    assert args[:2] == ["--fp16", "--precisionConstraints=prefer"]
    precisions = next(a for a in args if a.startswith("--layerPrecisions="))
    output_types = next(a for a in args if a.startswith("--layerOutputTypes="))
    expected = {"conv_amplify": "fp32", "relu_amplify": "fp32"}
    assert trtexec_layer_spec(precisions.split("=", 1)[1]) == expected
    assert trtexec_layer_spec(output_types.split("=", 1)[1]) == expected
    assert "--precisionConstraints=obey" in trtexec_args(ISLAND, obey=True)
    assert trtexec_args(PrecisionPlan("fp16")) == ["--fp16", "--noTF32"]  # nothing to constrain
    # --fp16 lets every layer run in FP16: an FP32-default plan holds every other layer to FP32.
    args = trtexec_args(PrecisionPlan("fp32", {"conv1": "fp16"}))
    assert args[:2] == ["--fp16", "--precisionConstraints=prefer"]
    assert args[2] == "--layerPrecisions=*:fp32,conv1:fp16" and args[3] == "--layerOutputTypes=*:fp32,conv1:fp16"
    assert trtexec_layer_spec(args[2].split("=", 1)[1]) == {"*": "fp32", "conv1": "fp16"}


def test_fp32_default_plan_lists_every_layer_for_polygraphy() -> None:
    plan = PrecisionPlan("fp32", {"conv1": "fp16"})
    layers = {"conv1": ["conv1"], "conv2": ["conv2"], "logits": ["logits", "logits_0"]}
    args = polygraphy_args(plan, layers)
    assert args[:4] == ["--fp16", "--precision-constraints", "prefer", "--layer-precisions"]
    assert args[4:] == ["conv1:float16", "conv2:float32", "logits:float32", "logits_0:float32"]
    with pytest.raises(UserError, match="Polygraphy has no wildcard"):
        polygraphy_args(plan)
    assert polygraphy_args(PrecisionPlan("fp16", {"conv1": "fp32"}), layers)[-1] == "conv1:float32"


def test_flags_a_target_version_lacks_are_refused() -> None:
    with pytest.raises(UserError, match="TensorRT 8.6 has no bf16"):
        trtexec_args(PrecisionPlan("bf16"), target_version="8.6")
    assert trtexec_args(PrecisionPlan("bf16"), target_version="10.13") == ["--bf16", "--noTF32"]
    for plan in (PrecisionPlan("fp16"), PrecisionPlan("fp32", {"conv1": "fp16"})):
        with pytest.raises(UserError, match="TensorRT 11 .* mixed-precision ONNX"):
            trtexec_args(plan, target_version="11")
        with pytest.raises(UserError, match="TensorRT 11"):
            polygraphy_args(plan, target_version="11.1")
    assert trtexec_args(PrecisionPlan("fp32"), target_version="11") == ["--noTF32"]
    with pytest.raises(UserError, match="unknown TensorRT target version"):
        trtexec_args(PrecisionPlan("fp16"), target_version="9")


def test_int8_needs_calibration_or_qdq() -> None:
    with pytest.raises(UserError, match="placeholder dynamic ranges"):
        trtexec_args(PrecisionPlan("int8"))
    assert trtexec_args(PrecisionPlan("int8"), calibration_cache="calib.cache") == [
        "--fp16", "--int8", "--calib=calib.cache", "--noTF32"]  # INT8 with FP16 fallback, as trtdebug builds
    assert trtexec_args(PrecisionPlan("int8"), qdq=True) == ["--fp16", "--int8", "--noTF32"]
    assert polygraphy_args(PrecisionPlan("int8"), calibration_cache="c.cache") == [
        "--fp16", "--int8", "--calibration-cache", "c.cache"]


def test_trtexec_flags_use_network_layer_names_and_refuse_commas() -> None:
    plan = PrecisionPlan("fp16", {"logits": "fp32", "/model/conv:0": "fp32"})
    layers = {"logits": ["logits", "logits_0"], "/model/conv:0": ["/model/conv:0"]}
    spec = trtexec_layer_spec(trtexec_args(plan, layers)[2].split("=", 1)[1])
    assert spec == {"/model/conv:0": "fp32", "logits": "fp32", "logits_0": "fp32"}
    with pytest.raises(UserError, match="comma in its name"):
        trtexec_args(PrecisionPlan("fp16", {"a,b": "fp32"}))
    with pytest.raises(UserError, match="quote in its name"):
        trtexec_args(PrecisionPlan("fp16", {"it's": "fp32"}))


def test_command_line_is_shell_quoted() -> None:
    line = command_line("trtexec", "my model.onnx", trtexec_args(PrecisionPlan("fp16", {"a b": "fp32"})),
                        "my model.engine")
    assert line.startswith("trtexec '--onnx=my model.onnx' '--saveEngine=my model.engine' --fp16 "
                           "--precisionConstraints=prefer ")
    assert "'--layerPrecisions=a b:fp32'" in line


@pytest.mark.parametrize("tool", ["convert", "run"])
def test_polygraphy_parses_the_flags_itself(tool: str, tmp_path: Path) -> None:
    from polygraphy.tools.args import TrtConfigArgs, TrtLoadNetworkArgs
    from polygraphy.tools.convert import Convert
    from polygraphy.tools.run import Run

    model_path = tmp_path / "model.onnx"
    onnx.save(planted.clean()[0], model_path)
    plan = PrecisionPlan("fp16", {"conv2": "fp32", "/blocks.0/attn/MatMul:0": "fp32"})
    polygraphy = Convert() if tool == "convert" else Run()
    parser = polygraphy.setup_parser()
    extra = ["-o", str(tmp_path / "model.engine")] if tool == "convert" else ["--trt"]
    args = parser.parse_args([str(model_path), *polygraphy_args(plan, obey=True), *extra])
    for group in polygraphy.arg_groups.values():
        group.parse(args)
    precisions = polygraphy.arg_groups[TrtLoadNetworkArgs].layer_precisions
    assert {name: str(value) for name, value in precisions.items()} == {
        "/blocks.0/attn/MatMul:0": "trt.float32", "conv2": "trt.float32"}
    assert polygraphy.arg_groups[TrtConfigArgs].precision_constraints == "obey"
    assert args.fp16
    # INT8 with a calibration cache, as Polygraphy reads it.
    args = parser.parse_args([str(model_path), *polygraphy_args(PrecisionPlan("int8"), calibration_cache="c.cache"),
                              *extra])
    assert args.int8 and args.calibration_cache == "c.cache"


# -- mixed-precision ONNX ------------------------------------------------------------------------------

def casts(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in proto.graph.node if n.op_type == "Cast"]


def check_cast_rules(original: Model, typed: onnx.ModelProto) -> None:
    onnx.checker.check_model(typed, full_check=True)
    onnx.shape_inference.infer_shapes(typed, strict_mode=True)
    io = [(v.name, v.type.tensor_type.elem_type) for v in [*typed.graph.input, *typed.graph.output]]
    assert io == [(v.name, v.type.tensor_type.elem_type) for v in [*original.proto.graph.input,
                                                                    *original.proto.graph.output]]
    producer = {o: n for n in typed.graph.node for o in n.output}
    consumed = {t for n in typed.graph.node for t in n.input} | {o.name for o in typed.graph.output}
    original_casts = {n.name for n in original.nodes if n.op_type == "Cast"}
    inserted = [c for c in casts(typed) if c.name not in original_casts]
    for cast in inserted:
        assert cast.output[0] in consumed, f"orphan cast {cast.name}"
        source = producer.get(cast.input[0])
        assert source is None or source.op_type != "Cast" or source.name in original_casts, \
            f"back-to-back casts at {cast.name}"
    pairs = [(c.input[0], c.attribute[0].i) for c in inserted]
    assert len(pairs) == len(set(pairs)), "two casts of the same tensor to the same type"
    used = {t for n in typed.graph.node for t in n.input}
    assert all(i.name in used for i in typed.graph.initializer), "unused initializer left behind"


def test_island_plan_as_a_typed_graph(overflow_model: Model) -> None:
    typed = to_mixed_precision_onnx(overflow_model, ISLAND)
    check_cast_rules(overflow_model, typed)
    types = {i.name: i.data_type for i in typed.graph.initializer}
    assert types["conv1.weight__fp16"] == TensorProto.FLOAT16  # FP16 region: weights converted once
    assert types["conv_amplify.weight"] == TensorProto.FLOAT  # the island keeps FP32 weights
    assert types["bn1.var"] == TensorProto.FLOAT  # BatchNorm statistics are not a precision slot
    # Exactly two precision boundaries inside the graph, plus the graph input and output.
    assert sorted(c.input[0] for c in casts(typed)) == ["input", "logits__fp16", "relu1", "relu_amplify"]


def test_typed_graph_types_and_numerics(overflow_model: Model) -> None:
    """onnxruntime computes FP16 nodes in FP32 on the CPU (trtdebug.engines.emulator.engine explains), so
    this checks the types shape inference derives and that the typed graph still computes the model."""

    def elem_types(typed: onnx.ModelProto) -> dict[str, int]:
        return {v.name: v.type.tensor_type.elem_type for v in typed.graph.value_info}

    fp16 = to_mixed_precision_onnx(overflow_model, PrecisionPlan("fp16"))
    island = to_mixed_precision_onnx(overflow_model, ISLAND)
    assert elem_types(fp16)["conv_amplify"] == TensorProto.FLOAT16
    assert elem_types(island)["conv_amplify"] == TensorProto.FLOAT
    assert elem_types(island)["conv2"] == TensorProto.FLOAT16
    reference = run_reference(overflow_model, feeds())["logits"]
    values = ort_sessions.run(ort_sessions.session(island), feeds())
    np.testing.assert_allclose(values["logits"], reference, atol=2e-2, rtol=2e-2)


def mixed_ops_model() -> Model:
    """Concat of an FP16 and an FP32 tensor, Resize (scales stay float), a graph output also read
    inside, a model Cast pair, and an If whose branch reads an outer tensor."""
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Mul", ["a", "w"], ["b"], name="mul"),
        helper.make_node("Concat", ["a", "b"], ["c"], name="concat", axis=1),
        helper.make_node("Resize", ["c", "", "scales"], ["d"], name="resize", mode="nearest"),
        helper.make_node("Sigmoid", ["d"], ["y"], name="sigmoid"),
        helper.make_node("Add", ["y", "y"], ["z"], name="add"),
        helper.make_node("Cast", ["z"], ["zh"], name="to_half", to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["zh"], ["zf"], name="to_float", to=f),
        helper.make_node("Tanh", ["zf"], ["t"], name="tanh"),
        helper.make_node("ReduceMax", ["t"], ["m"], name="max", keepdims=0),
        helper.make_node("Greater", ["m", "zero"], ["positive"], name="greater"),
        helper.make_node("If", ["positive"], ["branch"], name="branch_if",
                         then_branch=helper.make_graph([helper.make_node("Neg", ["a"], ["neg"], name="neg")], "then",
                                                       [], [helper.make_tensor_value_info("neg", f, [1, 2, 4, 4])]),
                         else_branch=helper.make_graph([helper.make_node("Abs", ["a"], ["abs"], name="abs")], "else",
                                                       [], [helper.make_tensor_value_info("abs", f, [1, 2, 4, 4])])),
    ]
    graph = helper.make_graph(
        nodes, "mixed_ops", [helper.make_tensor_value_info("x", f, [1, 2, 4, 4])],
        [helper.make_tensor_value_info(n, f, None) for n in ("y", "z", "t", "branch")],
        [numpy_helper.from_array(np.full((1, 2, 1, 1), 0.5, np.float32), "w"),
         numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
         numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    return Model.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_mixed_ops_follow_the_cast_rules() -> None:

    model = mixed_ops_model()
    plan = PrecisionPlan("fp16", {"mul": "fp32"})
    typed = to_mixed_precision_onnx(model, plan)
    check_cast_rules(model, typed)
    node = {n.name: n for n in typed.graph.node}
    assert node["concat"].input[0] == "a__fp32"  # FP16 `a` joins FP32 `b`: unified to the more precise
    assert node["resize"].input[2] == "scales"  # Resize scales are not a precision slot
    assert node["tanh"].input[0] == "zh"  # the model's FP16 cast is looked through, not re-cast
    then_branch = next(a.g for a in node["branch_if"].attribute if a.name == "then_branch")
    assert then_branch.node[0].input[0] == "a__fp32"  # the branch reads `a` in its original type
    x = {"x": np.random.default_rng(1).uniform(-1, 1, (1, 2, 4, 4)).astype(np.float32)}
    reference = run_reference(model, x)
    values = ort_sessions.run(ort_sessions.session(typed), x)
    for name in ("y", "z", "t", "branch"):
        np.testing.assert_allclose(values[name], reference[name], atol=1e-2, rtol=1e-2)


def test_all_fp32_plan_changes_nothing(overflow_model: Model) -> None:
    typed = to_mixed_precision_onnx(overflow_model, PrecisionPlan("fp32"))
    assert not casts(typed)
    assert [n.name for n in typed.graph.node] == [n.name for n in overflow_model.nodes]


def test_int8_plans_cannot_be_typed(overflow_model: Model) -> None:
    with pytest.raises(UserError, match="Q/DQ"):
        to_mixed_precision_onnx(overflow_model, PrecisionPlan("int8"))


@pytest.mark.rtx
@pytest.mark.parametrize("which", ["island", "mixed_ops"])
def test_exported_onnx_builds_with_tensorrt_rtx(which: str, tmp_path: Path, overflow_model: Model) -> None:
    pytest.importorskip("tensorrt_rtx_bindings")
    from trtdebug.engines.tensorrt.engine import TensorRTEngine

    model, plan = ((overflow_model, ISLAND) if which == "island"
                   else (mixed_ops_model(), PrecisionPlan("fp16", {"mul": "fp32"})))
    path = write_mixed_onnx(model, plan, tmp_path / "mixed.onnx")
    exported = Model.load(path)
    check_cast_rules(model, exported.proto)
    engine = TensorRTEngine("tensorrt-rtx", compute_capabilities=("SM89",))
    built = engine.build(exported, PrecisionPlan("fp32"), None, Marking("none"))  # already typed: parse as is
    assert built.serialized and built.layers
    covered = {n for layer in built.layers for n in layer.onnx_nodes}
    assert ("conv_amplify" if which == "island" else "mul") in covered
