"""An emulated engine once built: the rounded graph run with onnxruntime, end to end, a layer at a
time on reference inputs (local error), in pieces, or with some tensors substituted."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import helper, numpy_helper

from trtdebug.core.model.graph import Model, infer_shapes, node_dependencies
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.reference import ort_sessions
from trtdebug.core.reference.random_ops import RANDOM_OPS
from trtdebug.engines.base import LayerInfo, Marking
from trtdebug.engines.emulator.folding import FoldedGraph
from trtdebug.engines.emulator.rounding import (
    FP32_INSIDE,
    float_tensors,
    layer_precision,
    rounded_graph,
    rounds_only_at_edges,
)
from trtdebug.engines.emulator.tactics import TacticChoice, tensor_shapes

# run_substituted prunes a graph per trial where a pruned trial (its session made and run) costs less than
# this share of a run of the whole graph (estimated as the pruned run over the share of the nodes it keeps)
PRUNE_WHEN_COST_BELOW = 0.75
SUBSTITUTE_PREFIX = "substitute::"  # graph inputs that replace a layer output in run_substituted
SWITCH_PREFIX = "switch::"  # ... and whether they do, in this run
SWITCHED_PREFIX = "switched::"  # the value consumers read: the layer's own or the substitute
REF_PREFIX = "ref::"  # graph inputs of the local-error graph carry reference values
# what trtdebug built, as onnxruntime's load errors name it (they are trtdebug's bugs, not the model's)
EMULATED, LOCAL, SUBSTITUTING = "the emulated graph", "the local-error graph", "the substituting graph"
SHAPE_OPS = ("Shape", "Size")


def shape_value(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    """What a Shape (its start and end applied) or Size node writes for an input of this shape."""
    if node.op_type == "Size":
        return np.array(math.prod(shape), np.int64)
    rank = len(shape)
    bounds = {a.name: a.i for a in node.attribute if a.name in ("start", "end")}
    start, end = (min(max(b + rank if b < 0 else b, 0), rank)
                  for b in (bounds.get("start", 0), bounds.get("end", rank)))
    return np.array(shape[start:end], np.int64)


class FoldedBuilder(Protocol):
    """What builds an EmulatorBuilt from a folded graph (EmulatorEngine; emulator/int8.py uses it)."""

    def build_folded(self, model: Model, folded: FoldedGraph, plan: PrecisionPlan, bans: Any = None,
                     mark: Marking | None = None) -> EmulatorBuilt: ...


def layer_infos(folded: FoldedGraph, precisions: Mapping[str, str], tactics: Mapping[str, str],
                choices: Mapping[str, TacticChoice] | None) -> list[LayerInfo]:
    """What a build reports of each emulated layer: the ONNX nodes it covers, precision and tactic."""
    return [
        LayerInfo(name=" + ".join(folded.covers[n.name]) or n.name, onnx_nodes=folded.covers[n.name],
                  precision=precisions[n.name], tactic=tactics.get(n.name, ""),
                  op_type=n.op_type, outputs=tuple(o for o in n.output if o),
                  alternatives=choices[n.name].alternatives if choices and n.name in choices else (),
                  extra={"layer": n.name, **({"tactic_choice": asdict(choices[n.name])}
                                              if choices and n.name in choices else {}),
                         **({"fidelity": FP32_INSIDE} if rounds_only_at_edges(n) else {})})
        for n in folded.proto.graph.node
    ]


class EmulatorBuilt:
    """An emulated engine: one onnxruntime session over the rounded graph."""

    def __init__(self, model: Model, folded: FoldedGraph, plan: PrecisionPlan,
                 tactics: dict[str, str], mark: Marking, choices: Mapping[str, TacticChoice] | None = None):
        self.model = model
        self.plan = plan
        self.folded = folded
        self.tactics = tactics
        self.layer_precision = {name: layer_precision(model, plan, nodes)
                                for name, nodes in folded.covers.items()}
        self.layers = layer_infos(folded, self.layer_precision, tactics, choices)
        self.float_tensors = float_tensors(model, folded)
        # the large weights held apart, once, read in place by every session below: the folded graph's
        # (the model's arrays where folding left them as they were) and their rounded copies
        self.weights = folded.weights
        self.proto = self._rounded_graph(folded.proto, self.float_tensors)
        exposed = self._exposed(mark)
        self.marking_notes: dict[str, Any] = {
            "mode": "all" if mark.mode != "none" else "none",
            "note": "the emulator exposes tensors without changing the computation",
            "folded_away": list(folded.folded_away),
        }
        self._exposed_names = exposed
        self._session: Any = None  # made by the first `run`: a piecewise compare never needs it
        self._local_session: Any = None
        self._pieces: dict[tuple[int, str], Any] = {}  # (id(groups), EMULATED or LOCAL) -> PiecewiseGraph
        self._local_live: dict[str, np.ndarray] = {}
        self._local_parts: tuple[onnx.ModelProto, dict[str, str], list[str]] | None = None
        self._switching: tuple[tuple[str, ...], Any] | None = None  # run_substituted's switches and session
        self._prune: bool | None = None  # run_substituted on pruned graphs (decided by the first, pruned, trial)
        self._shapes_for: tuple[tuple[Any, ...], dict[str, tuple[int, ...]]] | None = None  # _known_shapes' cache

    def _rounded_graph(self, source: onnx.ModelProto, floats: set[str]) -> onnx.ModelProto:
        shapes = tensor_shapes(self.model, self.folded.proto)
        return rounded_graph(source, self.model.opset, self.layer_precision, self.tactics, floats,
                             lambda t: shapes(t.removeprefix(REF_PREFIX)), self.weights)

    def _exposed(self, mark: Marking) -> list[str]:
        if mark.mode == "none":
            return []
        produced = {t for n in self.proto.graph.node for t in n.output}
        wanted = mark.tensors if mark.tensors is not None else self.model.intermediate_tensors()
        return [t for t in wanted if t in produced]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            self._session = ort_sessions.session(ort_sessions.with_outputs(self.proto, self._exposed_names),
                                                 built=EMULATED, weights=self.weights)
        return ort_sessions.run(self._session, feeds, built=f"the emulated {self.plan.default} build")

    def run_local(self, reference: Mapping[str, np.ndarray],
                  tensors: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """Every layer run alone on the reference's FP32 inputs: its own error, isolated.
        `tensors`: only the layers writing these (their own small session)."""
        if tensors is not None:
            return self._run_local_layers(reference, tensors)
        if self._local_session is None:
            self._local_session = self._build_local()
        session, feeds_from = self._local_session
        feeds = {name: reference[tensor] for name, tensor in feeds_from.items()}
        return ort_sessions.run(session, feeds)

    def _run_local_layers(self, reference: Mapping[str, np.ndarray], tensors: Collection[str]) -> dict[str, np.ndarray]:
        """The local graph of just the layers writing `tensors` (building every layer's costs more than
        running a few: compare runs again only the layers out of tolerance)."""
        proto, feeds_from, outputs = self._make_local_graph(writing=set(tensors))
        computed = set(outputs)
        wanted = [t for t in dict.fromkeys(tensors) if t in computed]
        if not wanted:
            return {}
        session = ort_sessions.session(ort_sessions.with_outputs(proto, wanted, weights=self.weights), built=LOCAL,
                                       weights=self.weights)
        return ort_sessions.run(session, {name: reference[tensor] for name, tensor in feeds_from.items()}, wanted)

    def run_pieces(self, feeds: Mapping[str, np.ndarray], groups: Sequence[Sequence[str]]
                   ) -> Iterator[dict[str, np.ndarray]]:
        """`run`, a group of tensors at a time (core.reference.pieces): every layer still runs once."""
        return self._piecewise(groups).run(feeds)

    def run_local_piece(self, k: int, reference: Mapping[str, np.ndarray],
                        groups: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
        """`run_local` for the layers writing group k's tensors; `reference` holds what they read."""
        graph = self._local_piecewise(groups)
        if k == 0:
            self._local_live = {}
        live = self._local_live  # rounded copies of reference values that several groups' layers share
        values = {name: live[name] if name in live else reference[name.removeprefix(REF_PREFIX)]
                  for name in graph.reads(k)}
        produced = graph.run_piece(k, values)
        for name in [n for n in live if not graph.read_after(n, k)]:
            del live[name]
        live.update((n, v) for n, v in produced.items() if graph.read_after(n, k))
        return {n: v for n, v in produced.items() if n in graph.exposed}

    def local_reads(self, k: int, groups: Sequence[Sequence[str]]) -> set[str]:
        """Reference tensors the layers writing group k's tensors read (`run_local_piece` may take some
        of them from rounded copies an earlier piece kept; `run_local` of some of them reads them all)."""
        return {t for _, sources in self._local_layers(set(groups[k])) for t in sources}

    def run_exposing(self, feeds: Mapping[str, np.ndarray], tensors: Sequence[str]) -> dict[str, np.ndarray]:
        from trtdebug.core.reference.pieces import PiecewiseGraph

        graph = PiecewiseGraph(self.proto, [list(range(len(self.proto.graph.node)))], tensors, EMULATED, self.weights)
        return next(iter(graph.run(feeds)))

    def _piecewise(self, groups: Sequence[Sequence[str]]) -> Any:
        from trtdebug.core.reference.pieces import PiecewiseGraph, split_by_targets

        key = (id(groups), EMULATED)
        if key not in self._pieces:
            self._pieces = {k: v for k, v in self._pieces.items() if k[0] == id(groups)}
            self._pieces[key] = PiecewiseGraph(self.proto, split_by_targets(self.proto, groups), self._exposed_names,
                                               EMULATED, self.weights)
        return self._pieces[key]

    def _local_piecewise(self, groups: Sequence[Sequence[str]]) -> Any:
        """Every layer's local graph in pieces: made only where every layer's local error is asked for."""
        from trtdebug.core.reference.pieces import PiecewiseGraph, split_by_targets

        key = (id(groups), LOCAL)
        if key not in self._pieces:
            self._pieces = {k: v for k, v in self._pieces.items() if k[0] == id(groups)}
            local_proto, _, outputs = self._local_graph()
            self._pieces[key] = PiecewiseGraph(local_proto, split_by_targets(local_proto, groups), outputs, LOCAL,
                                               self.weights)
        return self._pieces[key]

    def run_substituted(self, feeds: Mapping[str, np.ndarray], replacements: Mapping[str, np.ndarray],
                        switchable: Collection[str] = ()) -> dict[str, np.ndarray]:
        """The emulated build with some layer outputs replaced: their consumers (and their rounding
        casts) read the given values instead. Returns the final outputs.

        One session serves every subset of `switchable` (and of `replacements`): each switchable tensor
        passes through a Where that picks the given value when its switch is on, so a search trying
        many subsets builds one session, not one per trial. Where a session costs little beside a run
        (large tensors: a transformer, a detector at batch 4; the first trial tells), trials run instead the
        graph cut at the replaced tensors and pruned to what the outputs still need: the same nodes compute
        the same values (bit for bit), without the switches' copies of every tensor and without the
        layers the replacements make dead (a prefix of the network at reference values costs only its
        suffix)."""
        switches = tuple(sorted({*switchable, *replacements}))
        if self._prune is not False and not set(replacements) & {i.name for i in self.proto.graph.input}:
            return self._run_pruned(feeds, replacements)
        if self._switching is None or self._switching[0] != switches:
            self._switching = (switches, self._switching_session(switches))
        fed = dict(feeds)
        for tensor in switches:
            on = tensor in replacements
            fed[SWITCH_PREFIX + tensor] = np.asarray(on)
            fed[SUBSTITUTE_PREFIX + tensor] = np.asarray(replacements[tensor]) if on else np.zeros(
                (), self._substitute_dtype(tensor))
        values = ort_sessions.run(self._switching[1], fed, [o.name for o in self.model.outputs])
        values.update({o.name: np.asarray(replacements[o.name]) for o in self.model.outputs if o.name in replacements})
        return values

    def _run_pruned(self, feeds: Mapping[str, np.ndarray], replacements: Mapping[str, np.ndarray]
                    ) -> dict[str, np.ndarray]:
        outputs = [o.name for o in self.model.outputs if o.name not in replacements]
        values: dict[str, np.ndarray] = {}
        if outputs:
            proto = self._pruned_graph(frozenset(replacements), outputs, feeds)
            started = time.perf_counter()
            session = ort_sessions.session(proto, built=SUBSTITUTING, weights=self.weights)
            made = time.perf_counter()
            fed = {**feeds, **{t: np.asarray(v) for t, v in replacements.items()}}
            values = ort_sessions.run(session, fed, outputs)
            if self._prune is None:  # the first trial decides (the values do not depend on it)
                ran = time.perf_counter() - made
                kept = max(len(proto.graph.node), 1) / max(len(self.proto.graph.node), 1)
                self._prune = (made - started) + ran < PRUNE_WHEN_COST_BELOW * ran / kept
        values.update({o.name: np.asarray(replacements[o.name]) for o in self.model.outputs if o.name in replacements})
        return values

    def _pruned_graph(self, replaced: frozenset[str], outputs: list[str], feeds: Mapping[str, np.ndarray]
                      ) -> onnx.ModelProto:
        """The emulated graph with `replaced` as graph inputs, holding only the nodes `outputs` need. A
        Shape or Size node whose input's shape follows from the feeds' becomes a constant: a detector's
        anchors read the shapes of its feature maps, which would otherwise keep the whole backbone."""
        from trtdebug.core.reference.pieces import producers, upstream_nodes, with_nodes

        nodes = self.proto.graph.node
        cut = {t: i for t, i in producers(self.proto).items() if t not in replaced}
        kept = upstream_nodes(self.proto, cut, outputs)
        constants: dict[int, np.ndarray] = {}
        if any(nodes[i].op_type in SHAPE_OPS for i in kept):
            known = self._known_shapes(feeds)
            constants = {i: shape_value(nodes[i], known[nodes[i].input[0]]) for i in kept
                         if nodes[i].op_type in SHAPE_OPS and nodes[i].input[0] in known}
            kept = upstream_nodes(self.proto, cut, outputs, skip=frozenset(constants))
            read = {t for i in kept for t in node_dependencies(nodes[i])} | set(outputs)
            constants = {i: v for i, v in constants.items() if nodes[i].output[0] in read}
        pruned: list[onnx.NodeProto] = []
        for i in sorted(kept | set(constants)):
            if i in constants:
                pruned.append(helper.make_node("Constant", [], [nodes[i].output[0]], name=nodes[i].name,
                                               value=numpy_helper.from_array(constants[i])))
                continue
            node = onnx.NodeProto()
            node.CopyFrom(nodes[i])
            for j, t in enumerate(node.output):
                if t in replaced:  # written by a node kept for its other outputs: the replacement is read
                    node.output[j] = f"{t}::replaced"
            pruned.append(node)
        proto = with_nodes(self.proto, pruned, outputs)
        proto.graph.input.extend(helper.make_tensor_value_info(
            t, onnx.helper.np_dtype_to_tensor_dtype(self._substitute_dtype(t)), None) for t in sorted(replaced))
        return proto

    def _known_shapes(self, feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        """The shapes onnx's shape inference derives from the feeds' shapes, of the tensors Shape and Size
        nodes read (a shape that depends on values is never derived: it stays unknown)."""
        given = {name: tuple(np.shape(value)) for name, value in feeds.items()}
        key = tuple(sorted(given.items()))
        if self._shapes_for is None or self._shapes_for[0] != key:
            read = {n.input[0] for n in self.proto.graph.node if n.op_type in SHAPE_OPS and n.input}
            inferred = infer_shapes(self.proto, given, keep_value_info=False).graph
            shapes = {}
            for info in [*inferred.input, *inferred.value_info, *inferred.output]:
                dims = info.type.tensor_type.shape.dim
                if info.name in read and info.type.tensor_type.HasField("shape") \
                        and all(d.HasField("dim_value") for d in dims):
                    shapes[info.name] = tuple(d.dim_value for d in dims)
            self._shapes_for = (key, shapes)
        return self._shapes_for[1]

    def _substitute_dtype(self, tensor: str) -> np.dtype:
        """The emulated graph computes float tensors in FP32 (rounding with casts); others as declared."""
        return np.dtype(np.float32) if self.model.is_float(tensor) else self.model.dtype(tensor) or np.dtype(np.float32)

    def _switching_session(self, switches: Sequence[str]) -> Any:
        """The emulated graph with a switch on each of these tensors (run_substituted)."""
        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        graph = proto.graph
        switched = {t: SWITCHED_PREFIX + t for t in switches}
        nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            for i, t in enumerate(node.input):
                if t in switched:
                    node.input[i] = switched[t]
            nodes.append(node)
            nodes.extend(helper.make_node("Where", [SWITCH_PREFIX + t, SUBSTITUTE_PREFIX + t, t], [switched[t]],
                                          name=switched[t]) for t in node.output if t in switched)
        del graph.node[:]
        graph.node.extend(nodes)  # each switch right after its tensor's producer: still in topological order
        for tensor in switches:
            dtype = self._substitute_dtype(tensor)
            graph.input.append(helper.make_tensor_value_info(SWITCH_PREFIX + tensor, onnx.TensorProto.BOOL, []))
            graph.input.append(helper.make_tensor_value_info(
                SUBSTITUTE_PREFIX + tensor, onnx.helper.np_dtype_to_tensor_dtype(dtype), None))
        # a switched final output is the graph's; run_substituted overrides it
        return ort_sessions.session(proto, built=SUBSTITUTING, weights=self.weights)

    def _build_local(self) -> tuple[Any, dict[str, str]]:
        proto, feeds_from, outputs = self._local_graph()
        return ort_sessions.session(ort_sessions.with_outputs(proto, outputs, weights=self.weights), built=LOCAL,
                                    weights=self.weights), feeds_from

    def _local_graph(self) -> tuple[onnx.ModelProto, dict[str, str], list[str]]:
        """The folded graph with every layer's non-constant inputs cut loose into graph inputs."""
        if self._local_parts is None:
            self._local_parts = self._make_local_graph()
        return self._local_parts

    def _local_layers(self, writing: Collection[str] | None = None) -> Iterator[tuple[onnx.NodeProto, list[str]]]:
        """The folded layers a local graph holds (those writing some of `writing`, or all), each with the
        tensors it reads from the reference (its inputs, weights aside)."""
        constants = self._constants
        original = set(self.model.producer) | {i.name for i in self.model.inputs}
        for node in self.folded.proto.graph.node:
            if writing is not None and not any(o in writing for o in node.output):
                continue
            sources = [t for t in node.input if t and t not in constants]
            if any(t not in original for t in sources):
                continue  # reads a tensor the folding invented: no reference value exists
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                continue  # If/Loop/Scan bodies read outer-scope tensors that cannot be cut loose
            yield node, sources

    @functools.cached_property
    def _constants(self) -> set[str]:
        """Tensors computed from weights alone (weights included): a layer reading one reads it as a
        weight, computed in the local graph, not cut loose (a Q/DQ model's INT8 weights stored
        quantized are read through DequantizeLinear nodes of constants: the reference has no such
        tensor, its float counterpart holds their values as weights)."""
        constants = {i.name for i in self.folded.proto.graph.initializer}
        for node in self.folded.proto.graph.node:
            draws = node.op_type in RANDOM_OPS
            subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
            if not draws and not subgraph and all(t in constants for t in node.input if t):
                constants.update(t for t in node.output if t)
        return constants

    def _constant_producers(self, reads: Collection[str], kept: Collection[str]) -> list[onnx.NodeProto]:
        """The nodes (in graph order) computing the constants in `reads` that no kept layer writes."""
        producer = {t: n for n in self.folded.proto.graph.node for t in n.output if t}
        needed: set[str] = set()
        stack = [t for t in reads if t in producer and t in self._constants]
        while stack:
            node = producer[stack.pop()]
            if node.name in needed or node.name in kept:
                continue
            needed.add(node.name)
            stack.extend(t for t in node.input if t in producer)
        return [n for n in self.folded.proto.graph.node if n.name in needed]

    def _declared_shape(self, tensor: str) -> list[int | str | None] | None:
        """The shape a cut-loose integer tensor is declared with: onnx's shape inference reads a shape
        input it cannot see the values of (Resize's `sizes` cut loose from its Shape/Concat) as having
        none, and rejects the graph, unless its length is declared. Float inputs stay undeclared."""
        if self.model.is_float(tensor):
            return None
        shape = self.model.spec(tensor).shape
        return list(shape) if shape is not None else None

    def _make_local_graph(self, writing: Collection[str] | None = None
                          ) -> tuple[onnx.ModelProto, dict[str, str], list[str]]:
        """The local graph (`writing`: of only the layers that write some of these tensors)."""
        source = self.folded.proto
        original = set(self.model.producer) | {i.name for i in self.model.inputs}
        feeds_from: dict[str, str] = {}
        kept = onnx.ModelProto()  # the layers' own weights only: a copy of every weight per call cost memory
        kept.ir_version = source.ir_version
        kept.opset_import.extend(source.opset_import)
        kept.functions.extend(source.functions)
        kept.graph.name = source.graph.name
        outputs: list[str] = []
        for node, sources in self._local_layers(writing):
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            for i, t in enumerate(copy.input):
                if t in sources:
                    copy.input[i] = REF_PREFIX + t
                    feeds_from[REF_PREFIX + t] = t
            kept.graph.node.append(copy)
            outputs.extend(o for o in copy.output if o in original)
        layers = [n.name for n in kept.graph.node]
        producers = self._constant_producers({t for n in kept.graph.node for t in n.input}, layers)
        if producers:  # before their readers: the graph stays in topological order
            nodes = [*producers, *kept.graph.node]
            del kept.graph.node[:]
            kept.graph.node.extend(nodes)
        read = {t for node in kept.graph.node for t in node.input}
        kept.graph.initializer.extend(i for i in source.graph.initializer if i.name in read)
        for name, tensor in feeds_from.items():
            kept.graph.input.append(helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(self.model.dtype(tensor) or np.dtype("float32")),
                self._declared_shape(tensor)))
        cut_floats = {REF_PREFIX + t for t in feeds_from.values() if t in self.float_tensors}
        return self._rounded_graph(kept, self.float_tensors | cut_floats), feeds_from, outputs
