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
