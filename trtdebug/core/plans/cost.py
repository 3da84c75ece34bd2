"""Rough per-node compute (FLOPs) and parameter counts, to say what a fallback plan costs.

FLOPs count a multiply-add as two for Conv, ConvTranspose, MatMul, Gemm and the recurrent ops,
and a few operations per output element for everything else that computes. Shapes come from the
tensors of an actual run where given (exact), else from the model's inferred shapes; a node
whose shapes are unknown counts 0 FLOPs. Parameters are the elements of the float constants a
node reads; a constant shared by several nodes is counted once in any total.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import DATA_MOVEMENT_OPS

# Operations per output element beyond plain elementwise ops (1).
PER_ELEMENT = {"Softmax": 5, "LogSoftmax": 5, "LayerNormalization": 8, "InstanceNormalization": 8,
               "GroupNormalization": 8, "BatchNormalization": 2, "Gelu": 8, "Erf": 4, "HardSwish": 3,
               "Sigmoid": 4, "Tanh": 4, "Exp": 4, "Log": 4, "Pow": 4, "Sqrt": 2}
REDUCTIONS = frozenset({"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceMax", "ReduceMin",
                        "ReduceL1", "ReduceL2", "ReduceProd", "ReduceLogSumExp", "GlobalAveragePool",
                        "GlobalMaxPool", "AveragePool", "MaxPool"})
RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


@dataclass(frozen=True)
class NodeCost:
    flops: float
    params: tuple[str, ...]  # the float constants the node reads


class CostModel:
    def __init__(self, model: Model, shapes: Mapping[str, tuple[int, ...]] | None = None):
        self.model = model
        self._shapes = dict(shapes or {})
        self._param_size = {name: int(value.size) for name, value in model.constants() if value.dtype.kind == "f"}
        self.nodes = {node.name: self._node_cost(node) for node in model.nodes}
        self.total_flops = sum(c.flops for c in self.nodes.values())
        self.total_params = self.params(self.nodes)

    def flops(self, nodes: Iterable[str]) -> float:
        return sum(self.nodes[n].flops for n in nodes if n in self.nodes)

    def params(self, nodes: Iterable[str]) -> int:
        used = {p for n in nodes if n in self.nodes for p in self.nodes[n].params}
        return sum(self._param_size[p] for p in used)

    def shares(self, nodes: Iterable[str]) -> tuple[float, float]:
        """(FLOPs share, parameter share) of these nodes in the whole model, each in [0, 1]."""
        nodes = list(nodes)
        flops = self.flops(nodes) / self.total_flops if self.total_flops else 0.0
        params = self.params(nodes) / self.total_params if self.total_params else 0.0
        return flops, params

    # -- per op --------------------------------------------------------------------------------

    def shape(self, tensor: str) -> tuple[int, ...] | None:
        if tensor in self._shapes:
            return tuple(int(d) for d in self._shapes[tensor])
        spec = self.model.spec(tensor)
        return tuple(int(d) for d in spec.shape) if spec.is_static and spec.shape is not None else None  # type: ignore[arg-type]

    def _node_cost(self, node: onnx.NodeProto) -> NodeCost:
        params = tuple(dict.fromkeys(t for t in node.input if t in self._param_size))
        if node.op_type in DATA_MOVEMENT_OPS:
            return NodeCost(0.0, params)
        return NodeCost(float(self._flops(node)), params)

    def _flops(self, node: onnx.NodeProto) -> float:
        op = node.op_type
        out = self.shape(node.output[0]) if node.output and node.output[0] else None
        inputs = [self.shape(t) if t else None for t in node.input]
        if op in ("Conv", "ConvTranspose") and len(inputs) > 1 and inputs[1] is not None:
            per_element = 2 * _size(inputs[1][1:])
            counted = inputs[0] if op == "ConvTranspose" else out
            return per_element * _size(counted) if counted is not None else 0.0
        if op in ("MatMul", "Gemm") and out is not None and inputs and inputs[0] is not None:
            a = inputs[0]
            inner = a[0] if op == "Gemm" and _attribute(node, "transA", 0) else a[-1]
            return 2 * _size(out) * inner + (_size(out) if op == "Gemm" and len(node.input) > 2 else 0)
        if op in RECURRENT_GATES and len(inputs) > 2 and inputs[0] is not None and inputs[1] is not None:
            steps, batch, features = inputs[0][0], inputs[0][1], inputs[0][2]
            directions, gate_rows = inputs[1][0], inputs[1][1]
            hidden = gate_rows // RECURRENT_GATES[op]
            return 2 * steps * batch * directions * gate_rows * (features + hidden)
        if op in REDUCTIONS and inputs and inputs[0] is not None:
            return _size(inputs[0])
        if out is None:
            return 0.0
        return PER_ELEMENT.get(op, 1) * _size(out)


def _size(shape: Iterable[int] | None) -> int:
    return int(np.prod(list(shape), dtype=np.int64)) if shape is not None else 0


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def shapes_of(tensors: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    known = getattr(tensors, "shapes", None)  # a LazyReference knows every shape without the values
    if known is not None:
        return {name: tuple(shape) for name, shape in known.items()}
    return {name: tuple(np.asarray(value).shape) for name, value in tensors.items()}
