"""Q/DQ placement for FP8 and INT4 weight-only, as ModelOpt and AWQ/RTN exports lay them out.

- FP8 E4M3: a Q/DQ pair on every activation input of MatMul/Conv/Gemm (per-tensor scale, amax / 448
  from calibration) and on their weights (per-output-channel scale, amax / 448 of each channel).
- INT4 weight-only: a block-wise Q/DQ pair on the weights of MatMul/Conv/Gemm (symmetric int4, one
  scale per `block_size` values along the reduction axis: amax / 7); activations stay float.

Weights keep their float values behind the pair (QuantizeLinear on the float initializer), so the
float counterpart is exact and a bad scale is measured against the true weights. One pair per
tensor: every MatMul/Conv/Gemm reading it reads the same DequantizeLinear output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtdebug.core.model.graph import Model
from trtdebug.core.quantized.qdq import FP8_E4M3_MAX

QUANTIZED_OPS = ("MatMul", "Conv", "Gemm")
QDQ_OPSET = 21  # FP8 Q/DQ arrived in opset 19, block-wise INT4 in 21
INT4_MAX = 7
DEFAULT_BLOCK_SIZE = 32
TINY = np.float32(1e-12)  # an all-zero tensor still gets a usable scale


def activation_inputs(model: Model) -> list[str]:
    """The float tensors an FP8 build quantizes as activations: non-constant inputs 0 (and 1 of MatMul)."""
    constants = {name for name, _ in model.constants()}
    seen: dict[str, None] = {}
    for node in model.nodes:
        if node.op_type in QUANTIZED_OPS:
            slots = (0, 1) if node.op_type == "MatMul" else (0,)
            seen.update((node.input[i], None) for i in slots if node.input[i] not in constants)
    return list(seen)


def _weight_axes(model: Model) -> dict[str, tuple[int, int]]:
    """Constant weight -> (output-channel axis, reduction axis) for each MatMul/Conv/Gemm weight."""
    constants = dict(model.constants())
    axes: dict[str, tuple[int, int]] = {}
    for node in model.nodes:
        if node.op_type not in QUANTIZED_OPS or len(node.input) < 2 or node.input[1] not in constants:
            continue
        weight = constants[node.input[1]]
        if node.op_type == "Conv" and weight.ndim >= 3:
            axes[node.input[1]] = (0, 1)
        elif node.op_type == "Gemm" and weight.ndim == 2:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axes[node.input[1]] = (0, 1) if trans_b else (1, 0)
        elif node.op_type == "MatMul" and weight.ndim == 2:
            axes[node.input[1]] = (1, 0)
    return axes


class _Placer:
    """Adds Q/DQ pairs in front of the readers of chosen tensors."""

    def __init__(self, proto: onnx.ModelProto):
        self.proto = proto
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.renamed: dict[str, str] = {}

    def pair(self, tensor: str, scale: np.ndarray, zero: onnx.TensorProto, **attrs: Any) -> None:
        base = tensor.replace("/", "_")
        scale_name, zero_name = f"{base}_qscale", f"{base}_qzero"
        zero.name = zero_name
        self.initializers += [numpy_helper.from_array(np.asarray(scale, np.float32), scale_name), zero]
        codes, dequantized = f"{base}_quantized", f"{base}_dequantized"
        self.nodes += [helper.make_node("QuantizeLinear", [tensor, scale_name, zero_name], [codes],
                                        name=f"{base}_QuantizeLinear", **attrs),
                       helper.make_node("DequantizeLinear", [codes, scale_name, zero_name], [dequantized],
                                        name=f"{base}_DequantizeLinear", **attrs)]
        self.renamed[tensor] = dequantized

    def finish(self) -> onnx.ModelProto:
        graph = self.proto.graph
        for node in graph.node:
            if node.op_type in QUANTIZED_OPS:
                for i, tensor in enumerate(node.input):
                    if tensor in self.renamed:
                        node.input[i] = self.renamed[tensor]
        # Q/DQ first: each reads a graph input, an initializer or a tensor written earlier; sorted below.
        nodes = list(graph.node)
        del graph.node[:]
        graph.node.extend(_topological([*self.nodes, *nodes], graph))
        graph.initializer.extend(self.initializers)
        return self.proto


def _topological(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    available |= {f"{t.name}" for t in graph.sparse_initializer}
    ordered: list[onnx.NodeProto] = []
    pending = list(nodes)
    pending_inits = {i for n in nodes for i in n.input if i.endswith(("_qscale", "_qzero"))}
    available |= pending_inits
    while pending:
        ready = [n for n in pending if all(t in available for t in n.input)]
        if not ready:  # a cycle cannot come from adding pairs; keep the rest as they were
            ordered.extend(pending)
            break
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if n not in ready]
    return ordered


def _fp8_zero() -> onnx.TensorProto:
    return helper.make_tensor("zero", TensorProto.FLOAT8E4M3FN, [], [0])


def _per_channel_amax(weight: np.ndarray, axis: int) -> np.ndarray:
    others = tuple(i for i in range(weight.ndim) if i != axis)
    return np.abs(weight.astype(np.float64)).max(axis=others)


def place_fp8(proto: onnx.ModelProto, activation_amax: Mapping[str, float]) -> onnx.ModelProto:
    """`proto` (at opset >= 19) with FP8 E4M3 Q/DQ pairs on the MatMul/Conv/Gemm inputs: activations per
    tensor (scale amax / 448 from `activation_amax`), weights per output channel."""
    model = Model.from_proto(proto)
    constants = dict(model.constants())
    placer = _Placer(proto)
    for tensor in activation_inputs(model):
        amax = max(float(activation_amax.get(tensor, 0.0)), float(TINY))
        placer.pair(tensor, np.asarray(amax / FP8_E4M3_MAX, np.float32), _fp8_zero())
    for weight, (channel_axis, _) in _weight_axes(model).items():
        scale = np.maximum(_per_channel_amax(constants[weight], channel_axis) / FP8_E4M3_MAX, TINY)
        zero = helper.make_tensor("zero", TensorProto.FLOAT8E4M3FN, [scale.size], np.zeros(scale.size).tolist())
        placer.pair(weight, scale.astype(np.float32), zero, axis=channel_axis)
    return placer.finish()


def int4_block_scales(weight: np.ndarray, axis: int, block_size: int) -> np.ndarray:
    """amax / 7 of every block of `block_size` values along `axis` (the last block may be shorter)."""
    length = weight.shape[axis]
    blocks = -(-length // block_size)
    padded_shape = list(weight.shape)
    padded_shape[axis] = blocks * block_size
    padded = np.zeros(padded_shape, np.float64)
    index = tuple(slice(0, length) if i == axis else slice(None) for i in range(weight.ndim))
    padded[index] = np.abs(weight)
    shape = [*weight.shape[:axis], blocks, block_size, *weight.shape[axis + 1:]]
    return np.maximum(padded.reshape(shape).max(axis=axis + 1) / INT4_MAX, TINY).astype(np.float32)


def place_int4(proto: onnx.ModelProto, block_size: int = DEFAULT_BLOCK_SIZE) -> onnx.ModelProto:
    """`proto` (at opset >= 21) with block-wise symmetric INT4 Q/DQ pairs on the MatMul/Conv/Gemm weights,
    blocks along the reduction axis; activations stay float (weight-only)."""
    model = Model.from_proto(proto)
    constants = dict(model.constants())
    placer = _Placer(proto)
    for weight, (_, reduction_axis) in _weight_axes(model).items():
        scales = int4_block_scales(constants[weight], reduction_axis, block_size)
        zero = helper.make_tensor("zero", TensorProto.INT4, list(scales.shape), np.zeros(scales.size, int).tolist())
        placer.pair(weight, scales, zero, axis=reduction_axis, block_size=block_size)
    return placer.finish()
