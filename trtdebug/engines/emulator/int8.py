"""CPU emulation of an INT8 TensorRT build: the Q/DQ graph run in float32.

TensorRT computes an INT8 layer on the integer codes of its quantized inputs with INT32
accumulation, which is exact; the layer's result, dequantized, equals the float computation on
the fake-quantized (quantized, then dequantized) values up to float32 rounding. So running the
Q/DQ graph in float32, QuantizeLinear rounding and saturating exactly as TensorRT's, is faithful.
Layers outside INT8 compute at the model's own type in a Q/DQ model the user gave (a strongly typed
build: FP32 in an FP32 export), in FP16 in an implicit INT8 build (INT8 and FP16 flags); a plan
keeps pairs out of INT8 (their readers read the float tensor) or layers (implicit INT8: the layer
reads float inputs) and may keep layers in FP32.

The graph is not folded like the FP16 path's (onnxruntime's optimizer duplicates shared
DequantizeLinear nodes, which would rename the tensors reports match): every ONNX node is a layer.

Results are reported by the float counterpart's tensor names: a quantized tensor's value is the
output of its DequantizeLinear, i.e. the value its INT8 readers see.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.quantized.qdq import QdqPair, QuantizedModel, removal_for_plan, without_pairs
from trtdebug.engines.base import LayerInfo, Marking
from trtdebug.engines.emulator.built import EmulatorBuilt, FoldedBuilder
from trtdebug.engines.emulator.folding import FoldedGraph

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def unfolded(model: Model) -> FoldedGraph:
    """Every node is its own layer."""
    return FoldedGraph(model.proto, {n.name: (n.name,) for n in model.nodes}, (), dict(model.weights))


class Int8Built:
    """An emulated INT8 engine; its tensors are named as in the float counterpart."""

    def __init__(self, model: QuantizedModel, plan: PrecisionPlan, live: list[QdqPair], removed: list[QdqPair],
                 graph: Model, inner: EmulatorBuilt):
        self.model = model
        self.plan = plan
        self.live = live
        self.removed = removed
        self.inner = inner
        self.stands_for = {p.source: p.dequantized[0] for p in live if not p.is_weight}
        dequantized = {dq for p in live for dq in p.dequantized}
        reads_int8 = {n.name for n in graph.nodes if any(t in dequantized for t in n.input)}
        self.layers = [
            LayerInfo(name=layer.name, onnx_nodes=layer.onnx_nodes,
                      precision=model.precision if set(layer.onnx_nodes) & reads_int8 else layer.precision,
                      tactic=layer.tactic, op_type=layer.op_type, outputs=layer.outputs,
                      alternatives=layer.alternatives, extra=layer.extra)
            for layer in inner.layers if layer.op_type not in QDQ_OPS]
        self.marking_notes: dict[str, Any] = {
            **inner.marking_notes,
            model.precision: {"pairs": len(model.pairs), "live_pairs": len(live),
                              "removed_pairs": [p.quantize for p in removed],
                              "note": f"Q/DQ graph in float32: {model.precision.upper()} layers read fake-quantized "
                                      f"values; other layers {model.outside_precision.upper()}"},
        }

    def _to_float_names(self, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        named = dict(values)
        for source, dq in self.stands_for.items():
            if dq in values:
                named[source] = values[dq]
        return named

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._to_float_names(self.inner.run(feeds))

    def run_substituted(self, feeds: Mapping[str, np.ndarray], replacements: Mapping[str, np.ndarray],
                        switchable: Collection[str] = ()) -> dict[str, np.ndarray]:
        """The INT8 build with some float tensors replaced where their INT8 readers read them (the
        DequantizeLinear output of a quantized tensor): its quantization and error undone."""
        return self.inner.run_substituted(feeds, {self.stands_for.get(t, t): v for t, v in replacements.items()},
                                          [self.stands_for.get(t, t) for t in switchable])

    def run_local(self, reference: Mapping[str, np.ndarray],
                  tensors: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """Each layer alone on the reference's float inputs, its output quantized by its own pair:
        the error a layer and the quantization of its output add, without its inputs' quantization
        error (already counted where those inputs are written)."""
        fed = dict(reference)
        constants = self.model.qdq_constants
        for pair in self.live:
            if pair.source not in reference and pair.source not in constants:
                continue
            value = np.asarray(reference[pair.source] if pair.source in reference else constants[pair.source])
            fed[pair.quantized] = np.asarray(pair.params.quantize(value), pair.params.zero_point.dtype)
            for dq in pair.dequantized:
                fed[dq] = value if not pair.is_weight else pair.params.fake_quantize(value)
        local = self.inner.run_local(fed, tensors)
        for pair in self.live:
            if not pair.is_weight and pair.source in local:
                local[pair.source] = pair.params.fake_quantize(local[pair.source])
        return local


def build_int8(emulator: FoldedBuilder, model: QuantizedModel, plan: PrecisionPlan, bans: Any,
               mark: Marking) -> Int8Built:
    removed, bypass = removal_for_plan(model, plan.nodes)
    graph = Model.from_proto(without_pairs(model.qdq.proto, removed, bypass), model.qdq.weights)
    # layers the plan gives a float precision (pair keys are graph edits, gone from `graph`)
    layers = {n: p for n, p in plan.nodes.items() if p in ("fp32", "fp16", "bf16") and n in graph.node_by_name}
    inner_plan = PrecisionPlan(model.outside_precision, layers)
    gone = {p.quantize for p in removed}
    live = [p for p in model.pairs.values() if p.quantize not in gone]
    stands_for = {p.source: p.dequantized[0] for p in live if not p.is_weight}
    inner_mark = mark if mark.tensors is None else Marking(
        mark.mode, tuple(dict.fromkeys(stands_for.get(t, t) for t in mark.tensors)), mark.chunk_size)
    inner = emulator.build_folded(graph, unfolded(graph), inner_plan, bans, inner_mark)
    return Int8Built(model, plan, live, removed, graph, inner)
