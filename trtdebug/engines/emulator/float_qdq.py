"""CPU emulation of FP8 and INT4 weight-only TensorRT builds: the Q/DQ graph run in float32 with
onnxruntime's own QuantizeLinear/DequantizeLinear (FP8 E4M3, saturating at 448 x scale; block-wise
INT4, opset 21), as emulator/int8.py does for INT8.

Two things differ from INT8 because numpy and onnxruntime's Python binding exchange no float8 or
int4 arrays:

- weights' QuantizeLinear nodes are folded here into code initializers (the builder folds them
  too), computed in numpy exactly as the operator does (tests/test_float_qdq.py checks bit for bit
  against onnxruntime); their DequantizeLinear nodes still run in onnxruntime. An INT4 model then
  computes no int4 tensor at run time.
- a layer run alone (`run_local`) is never a Q/DQ node: their codes cannot be fed. The layers
  reading a quantized tensor are fed its fake-quantized value, as for INT8.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.quantized.qdq import QdqPair, QuantizedModel, removal_for_plan, without_pairs
from trtdebug.engines.base import Marking
from trtdebug.engines.emulator.built import EmulatorBuilt, FoldedBuilder
from trtdebug.engines.emulator.int8 import QDQ_OPS, Int8Built, unfolded


def weight_codes(pair: QdqPair, weight: np.ndarray) -> onnx.TensorProto:
    """The codes QuantizeLinear makes of a weight, as an initializer named like the pair's codes tensor."""
    values = np.asarray(pair.params.quantize(weight)).astype(pair.params.zero_point.dtype)
    return numpy_helper.from_array(values, pair.quantized)


def fold_weight_quantizers(proto: onnx.ModelProto, pairs: Collection[QdqPair],
                           constants: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """`proto` with the QuantizeLinear of each weight pair replaced by its codes as an initializer."""
    folded = [p for p in pairs if p.is_weight and p.source in constants]
    by_node = {p.quantize: p for p in folded}
    graph = proto.graph
    kept = [n for n in graph.node if n.name not in by_node]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(weight_codes(p, constants[p.source]) for p in folded)
    read = {t for n in graph.node for t in n.input}
    unused = [i for i in graph.initializer if i.name not in read]
    for initializer in unused:
        graph.initializer.remove(initializer)
    return proto


class FloatQdqBuilt(Int8Built):
    """An emulated FP8 or INT4 engine; its tensors are named as in the float counterpart."""

    def __init__(self, model: QuantizedModel, plan: PrecisionPlan, live: list[QdqPair], removed: list[QdqPair],
                 graph: Model, inner: EmulatorBuilt):
        super().__init__(model, plan, live, removed, graph, inner)
        self._local_tensors = [t for n in graph.nodes if n.op_type not in QDQ_OPS for t in n.output]
        self._codes = {p.quantized for p in self.model.pairs.values()}

    def run_local(self, reference: Mapping[str, np.ndarray],
                  tensors: Collection[str] | None = None) -> dict[str, np.ndarray]:
        wanted = self._local_tensors if tensors is None else [t for t in tensors if t not in self._codes]
        return super().run_local(reference, wanted)


def build_float_qdq(emulator: FoldedBuilder, model: QuantizedModel, plan: PrecisionPlan, bans: Any,
                    mark: Marking) -> FloatQdqBuilt:
    """The FP8 / INT4 build a plan describes (the pairs and layers it takes out of the format gone)."""
    removed, bypass = removal_for_plan(model, plan.nodes)
    gone = {p.quantize for p in removed}
    live = [p for p in model.pairs.values() if p.quantize not in gone]
    proto = fold_weight_quantizers(without_pairs(model.qdq.proto, removed, bypass), live, model.qdq_constants)
    graph = Model.from_proto(proto, model.qdq.weights)
    # layers the plan gives a float precision (pair keys are graph edits, gone from `graph`)
    layers = {n: p for n, p in plan.nodes.items() if p in ("fp32", "fp16", "bf16") and n in graph.node_by_name}
    stands_for = {p.source: p.dequantized[0] for p in live if not p.is_weight}
    inner_mark = mark if mark.tensors is None else Marking(
        mark.mode, tuple(dict.fromkeys(stands_for.get(t, t) for t in mark.tensors)), mark.chunk_size)
    inner_plan = PrecisionPlan(model.outside_precision, layers)
    inner = emulator.build_folded(graph, unfolded(graph), inner_plan, bans, inner_mark)
    return FloatQdqBuilt(model, plan, live, removed, graph, inner)

