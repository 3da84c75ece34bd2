"""One emulated graph for many precision plans: each reduced-precision layer's rounding is switched at
run time by a boolean graph input, so a search evaluating many plans runs one session instead of
building one per plan (EmulatorEngine.replanned).

A switchable layer has two states: its precision under the graph's low plan (FP16/BF16, with the
tactic the autotuner picks there) and FP32 (no rounding, no tactic). The layer is an `If` on its switch
whose branches run it on its rounded inputs (Cast pairs, rounded weight copies) or on its own, each
reading its inputs in place (passing a switched weight on copied it, every weight at every run); its
output's rounding is computed and an `If` passes it or the raw value on. A layer's rounded output is
rounded once, from its raw value: a reduced consumer reads that rounding whatever its producer's state
(rounding twice is rounding once), so values equal a graph rebuilt for the plan bit for bit (tested). `If` costs less
than `Where(switch, rounded, unrounded)` here (measured: docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper

from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import DATA_MOVEMENT_OPS, REDUCED, precision_slots
from trtdebug.core.reference import ort_sessions
from trtdebug.engines.base import LayerInfo
from trtdebug.engines.emulator.folding import FoldedGraph
from trtdebug.engines.emulator.rounding import Rounder, float_tensors, raw_outputs
from trtdebug.engines.emulator.tactics import FP32_ACCUMULATE, ShapeOf, apply_variant, tensor_shapes

REDUCED_PREFIX = "reduced::"  # boolean graph inputs: True = the layer runs in its low precision
SWITCHED = "the switched emulated graph"


def _plain(tactic: str) -> str:
    return "" if tactic in ("", FP32_ACCUMULATE) else tactic


class _SwitchingRounder(Rounder):
    """The Rounder, emitting switchable layers with both states and a switch per rounding."""

    def __init__(self, folded: onnx.ModelProto, opset: int, shape_of: ShapeOf, float32: Callable[[str], bool],
                 weights: dict[str, np.ndarray], dtype_of: Callable[[str], np.dtype | None]):
        super().__init__(folded, opset, shape_of, weights)
        self.float32 = float32  # tensors an If's branches may declare FP32 (others switch through a Where)
        self.dtype_of = dtype_of  # the model's type of a tensor (a layer's other outputs, in an If's branches)
        self.output_rounding: dict[str, tuple[str, str]] = {}  # switched output -> (precision, its rounding)

    def _where(self, switch: str, on: str, off: str, target: str, tensor: str) -> str:
        """`target` = `on` where `switch` holds, else `off` (values of `tensor`): an If whose branches name
        one or the other (measured against a Where: faster, as the If passes a value on where the Where
        writes a copy)."""
        if not self.float32(tensor):
            self.graph.node.append(helper.make_node("Where", [switch, on, off], [target], name=f"{target}::switch"))
            return target
        def branch(source: str, name: str) -> onnx.GraphProto:
            return helper.make_graph([helper.make_node("Identity", [source], [f"{name}::out"], name=name)], name, [],
                                     [helper.make_tensor_value_info(f"{name}::out", onnx.TensorProto.FLOAT, None)])
        self.graph.node.append(helper.make_node("If", [switch], [target], name=f"{target}::switch",
                                                then_branch=branch(on, f"{target}::on"),
                                                else_branch=branch(off, f"{target}::off")))
        return target

    def _emit_both_states(self, node: onnx.NodeProto, switch: str, rounded_inputs: list[str]) -> None:
        """`node` in an If on `switch`: reading `rounded_inputs` where it holds, its own inputs otherwise.
        Only the taken branch runs, and each reads its inputs (a weight or its rounded copy) in place:
        switching each input instead passed a copy of it on, every weight of the model at every run."""
        found = [self._output_type(t) for t in node.output]
        types = [t for t in found if t is not None]
        if len(types) < len(found):  # a branch must declare its outputs' types: switch each input
            for i, (given, rounded) in enumerate(zip(node.input, rounded_inputs, strict=True)):
                if rounded != given:
                    node.input[i] = self._where(switch, rounded, given, f"{given}::?{node.name}", given)
            self.graph.node.append(node)
            return

        def branch(inputs: list[str], state: str) -> onnx.GraphProto:
            inner = onnx.NodeProto()
            inner.CopyFrom(node)
            inner.name = f"{node.name}::{state}"
            del inner.input[:]
            inner.input.extend(inputs)
            for i, t in enumerate(inner.output):
                if t:
                    inner.output[i] = f"{t}::{state}"
            return helper.make_graph([inner], inner.name, [], [
                helper.make_tensor_value_info(f"{t}::{state}", elem, None)
                for t, elem in zip(node.output, types, strict=True) if t])

        self.graph.node.append(helper.make_node(
            "If", [switch], [t for t in node.output if t], name=f"{node.name}::both states",
            then_branch=branch(rounded_inputs, "on"), else_branch=branch(list(node.input), "off")))

    def _output_type(self, tensor: str) -> int | None:
        if not tensor or tensor.endswith("::raw") or self.float32(tensor):
            return onnx.TensorProto.FLOAT  # a float output: FP32 in the emulated graph
        dtype = self.dtype_of(tensor)
        return onnx.helper.np_dtype_to_tensor_dtype(dtype) if dtype is not None else None

    def _rounded_input(self, tensor: str, precision: str) -> str:
        known = self.output_rounding.get(tensor)
        if known is not None and known[0] == precision:
            return known[1]  # the producer's raw output rounded: what its rounded output would be rounded to
        return self.round_tensor(tensor, precision)

    def add_switched(self, node: onnx.NodeProto, precision: str, tactic: str, floats: set[str]) -> None:
        switch = REDUCED_PREFIX + node.name
        if _plain(tactic):  # the variant's subgraph and the plain FP32 layer, one picked (single output)
            target = node.output[0]
            variant, plain = onnx.NodeProto(), onnx.NodeProto()
            variant.CopyFrom(node)
            plain.CopyFrom(node)
            variant.output[0] = f"{target}::{precision}::variant"
            plain.output[0] = f"{target}::fp32"
            emitted = apply_variant(variant, tactic, precision, self)
            if emitted is not None:
                self.add(emitted, precision, floats)
            self.graph.node.append(plain)
            self._where(switch, variant.output[0], plain.output[0], target, target)
            return
        in_slots, out_slots = precision_slots(node, self.opset)
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        renamed = raw_outputs(copy, out_slots, floats)
        rounded_inputs = {t: self._rounded_input(t, precision) for i in in_slots
                          if (t := node.input[i]) and t in floats}
        if any(r != t for t, r in rounded_inputs.items()):
            self._emit_both_states(copy, switch, [rounded_inputs.get(t, t) if i in in_slots else t
                                                  for i, t in enumerate(copy.input)])
        else:
            self.graph.node.append(copy)
        for raw, final in renamed:
            rounded = f"{final}::{precision}::rounded"
            self._cast_pair(raw, rounded, precision)
            self.rounded[rounded] = precision
            self.output_rounding[final] = (precision, rounded)
            self._where(switch, rounded, raw, final, final)


class SwitchedGraph:
    """The emulated graph of every plan that keeps each layer in its low precision or in FP32.

    `low`: each layer's precision under the plan it was built for; `tactics`: the autotuner's picks
    there. Layers in FP16/BF16 there (data movement aside) are switchable."""

    def __init__(self, model: Model, folded: FoldedGraph, low: Mapping[str, str], tactics: Mapping[str, str]):
        self.model = model
        self.folded = folded
        self.low = dict(low)
        self.tactics = {layer: _plain(t) for layer, t in tactics.items()}
        self.switchable = [n.name for n in folded.proto.graph.node
                           if self.low[n.name] in REDUCED and n.op_type not in DATA_MOVEMENT_OPS]
        switchable = set(self.switchable)
        floats = float_tensors(model, folded)
        shapes = tensor_shapes(model, folded.proto)
        initializers = {i.name: i.data_type for i in folded.proto.graph.initializer}

        def float32(tensor: str) -> bool:
            if tensor in initializers:
                return initializers[tensor] == onnx.TensorProto.FLOAT
            return model.dtype(tensor) == np.dtype(np.float32)

        rounder = _SwitchingRounder(folded.proto, model.opset, shapes, float32, folded.weights, model.dtype)
        for node in folded.proto.graph.node:
            precision = self.low[node.name]
            if node.name in switchable:
                rounder.add_switched(node, precision, self.tactics.get(node.name, ""), floats)
                continue
            plain = apply_variant(node, self.tactics.get(node.name, ""), precision, rounder)
            if plain is not None:
                rounder.add(plain, precision, floats)
        proto = onnx.ModelProto()
        proto.CopyFrom(folded.proto)
        proto.graph.CopyFrom(rounder.graph)
        del proto.graph.value_info[:]
        proto.graph.input.extend(helper.make_tensor_value_info(REDUCED_PREFIX + layer, onnx.TensorProto.BOOL, [])
                                 for layer in self.switchable)
        self.weights = folded.weights  # its placeholders' arrays, rounded copies included
        self.proto = proto
        self._session: Any = None

    def serves(self, precisions: Mapping[str, str], tactics: Mapping[str, str]) -> bool:
        """Whether a plan whose layers run in `precisions` with `tactics` is one of this graph's states:
        every layer at its low precision with the same tactic, or (switchable layers) in FP32."""
        switchable = set(self.switchable)
        for node in self.folded.proto.graph.node:
            layer, precision = node.name, precisions[node.name]
            if node.op_type in DATA_MOVEMENT_OPS:
                continue  # no precision of their own: emitted the same in every plan
            tactic = _plain(tactics.get(layer, ""))
            if precision == self.low[layer] and tactic == self.tactics.get(layer, ""):
                continue
            if layer in switchable and precision == "fp32" and not tactic:
                continue
            return False
        return True

    def run(self, feeds: Mapping[str, np.ndarray], precisions: Mapping[str, str]) -> dict[str, np.ndarray]:
        if self._session is None:
            self._session = ort_sessions.session(self.proto, built=SWITCHED, weights=self.weights)
        fed = dict(feeds)
        fed.update((REDUCED_PREFIX + layer, np.asarray(precisions[layer] != "fp32")) for layer in self.switchable)
        return ort_sessions.run(self._session, fed, [o.name for o in self.model.outputs],
                                built="the emulated build (rounding switched per layer)")


class SwitchedBuilt:
    """One plan's build served by a SwitchedGraph: its final outputs only."""

    def __init__(self, graph: SwitchedGraph, precisions: Mapping[str, str], layers: list[LayerInfo]):
        self.graph = graph
        self.precisions = dict(precisions)
        self.layers = layers
        self.marking_notes: dict[str, Any] = {
            "mode": "none", "note": "one run of the switched emulated graph (the plan's rounding switched on)",
            "folded_away": list(graph.folded.folded_away)}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.graph.run(feeds, self.precisions)
