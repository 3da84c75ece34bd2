"""An FP32 copy of a model stored in FP16 or BF16: what the FP32 reference runs.

onnxconverter-common converts FP32 models to FP16 but not back, so this is the reverse, kept small:
FP16/BF16 initializers and constant tensors become FP32, and so do the element types of graph
inputs, outputs and value_info, the `to` of Cast nodes and the `dtype` of ops that create tensors,
in the main graph and in every subgraph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

REDUCED = (TensorProto.FLOAT16, TensorProto.BFLOAT16)


def reduced_float_types(proto: onnx.ModelProto) -> set[int]:
    """The FP16/BF16 element types the main graph's inputs, outputs and initializers use."""
    graph = proto.graph
    types = {vi.type.tensor_type.elem_type for vi in [*graph.input, *graph.output]}
    types |= {init.data_type for init in graph.initializer}
    return types & set(REDUCED)


def mentions_reduced_types(proto: onnx.ModelProto) -> bool:
    """Whether the main graph types any tensor FP16/BF16: its I/O, initializers, value_info, Constant
    values, or a Cast to one (a typed model may keep FP32 I/O and weights, with Casts inside)."""
    graph = proto.graph
    if reduced_float_types(proto) or any(vi.type.tensor_type.elem_type in REDUCED for vi in graph.value_info):
        return True
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in REDUCED:
                return True
            if attr.type == onnx.AttributeProto.INT and attr.name in ("to", "dtype") and attr.i in REDUCED:
                return True
    return False


def upcast_to_fp32(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every FP16/BF16 tensor type turned into FP32 (the values are exact in FP32)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    _upcast_graph(copy.graph)
    return copy


def _upcast_graph(graph: onnx.GraphProto) -> None:
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.tensor_type.elem_type in REDUCED:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    for i, init in enumerate(graph.initializer):
        if init.data_type in REDUCED:
            graph.initializer[i].CopyFrom(_upcast_tensor(init))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in REDUCED:
                attr.t.CopyFrom(_upcast_tensor(attr.t))
            elif attr.type == onnx.AttributeProto.INT and attr.name in ("to", "dtype") and attr.i in REDUCED:
                attr.i = TensorProto.FLOAT
            elif attr.type == onnx.AttributeProto.GRAPH:
                _upcast_graph(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _upcast_graph(sub)


def _upcast_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    value = numpy_helper.to_array(tensor).astype(np.float32)  # bfloat16 arrives as ml_dtypes.bfloat16
    return numpy_helper.from_array(value, tensor.name)
