"""A small Q/DQ convolutional model built by hand (onnx.helper), as ModelOpt and onnxruntime's
quantizer export them: per-tensor symmetric INT8 activations, per-channel INT8 weights kept as
float initializers behind a Q/DQ pair."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT_SHAPE = (1, 3, 8, 8)


def _pair(nodes: list, inits: list, tensor: str, scale: np.ndarray, axis: int | None = None) -> str:
    scale = np.asarray(scale, np.float32)
    zero = np.zeros(scale.shape, np.int8)
    inits += [numpy_helper.from_array(scale, f"{tensor}_scale"), numpy_helper.from_array(zero, f"{tensor}_zero")]
    extra = {"axis": axis} if axis is not None else {}
    nodes.append(helper.make_node("QuantizeLinear", [tensor, f"{tensor}_scale", f"{tensor}_zero"], [f"{tensor}_q"],
                                  name=f"{tensor}_QuantizeLinear", **extra))
    nodes.append(helper.make_node("DequantizeLinear", [f"{tensor}_q", f"{tensor}_scale", f"{tensor}_zero"],
                                  [f"{tensor}_dq"], name=f"{tensor}_DequantizeLinear", **extra))
    return f"{tensor}_dq"


def qdq_conv_model() -> onnx.ModelProto:
    """input -> Q/DQ -> conv1 -> relu1 -> Q/DQ -> conv2 -> output (both convs INT8)."""
    rng = np.random.default_rng(0)
    nodes: list = []
    inits: list = []
    w1 = rng.uniform(-0.5, 0.5, (4, 3, 3, 3)).astype(np.float32)
    w2 = rng.uniform(-0.5, 0.5, (4, 4, 3, 3)).astype(np.float32)
    inits += [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
              numpy_helper.from_array(np.zeros(4, np.float32), "b1"),
              numpy_helper.from_array(np.zeros(4, np.float32), "b2")]
    x = _pair(nodes, inits, "input", np.float32(1 / 127))
    w1q = _pair(nodes, inits, "w1", np.abs(w1).reshape(4, -1).max(1) / 127, axis=0)
    nodes.append(helper.make_node("Conv", [x, w1q, "b1"], ["conv1"], name="conv1", pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"))
    r = _pair(nodes, inits, "relu1", np.float32(2 / 127))
    w2q = _pair(nodes, inits, "w2", np.abs(w2).reshape(4, -1).max(1) / 127, axis=0)
    nodes.append(helper.make_node("Conv", [r, w2q, "b2"], ["output"], name="conv2", pads=[1, 1, 1, 1]))
    graph = helper.make_graph(nodes, "qdq_conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                INPUT_SHAPE)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, (1, 4, 8, 8))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


CODE_FLIP_SCALE = 1 / 8
# Reference values just below a rounding boundary (k + 0.5 steps, k odd) by a quarter of FP16's spacing
# there: FP16 rounds them onto the boundary, and round-half-to-even then takes the code above.
CODE_FLIP_VALUES = (1.5 / 8 - 2.0**-15, 3.5 / 8 - 2.0**-14, 5.5 / 8 - 2.0**-13)


def code_flip_model() -> tuple[onnx.ModelProto, np.ndarray]:
    """input -> Mul by 1 (FP16: rounds the input) -> a -> Add 0 ("add", to be kept FP32) -> y -> Q/DQ
    (scale 1/8) -> Mul by 2 -> output, and an input whose values are on y's grid except three that lie
    just below rounding boundaries: the FP16 rounding of `a` flips their codes at y."""
    nodes: list = []
    inits = [numpy_helper.from_array(np.float32(1.0), "one"), numpy_helper.from_array(np.float32(0.0), "nothing"),
             numpy_helper.from_array(np.float32(2.0), "two")]
    nodes.append(helper.make_node("Mul", ["input", "one"], ["a"], name="round"))
    nodes.append(helper.make_node("Add", ["a", "nothing"], ["y"], name="add"))
    y = _pair(nodes, inits, "y", np.float32(CODE_FLIP_SCALE))
    nodes.append(helper.make_node("Mul", [y, "two"], ["output"], name="double"))
    values = np.array([j / 8 for j in range(13)] + list(CODE_FLIP_VALUES), np.float32).reshape(1, -1)
    graph = helper.make_graph(nodes, "code_flip", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                 values.shape)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, values.shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, values
