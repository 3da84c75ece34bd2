"""CPU emulation of a reduced-precision TensorRT build, with onnxruntime.

What the builder does, in order:
1. FP32 graph rewriting first: constant folding and BatchNormalization folded into its
   neighbour. onnxruntime's basic optimizations do the same folds, so the emulator takes the
   graph they produce. A node of that graph is one emulated *layer*; it covers every ONNX node
   that was folded into it, as TensorRT's fused layers do.
2. Reduced precision second: a layer planned in FP16 (or BF16) reads its inputs and weights
   rounded to that type and writes its outputs rounded to it (beyond 65504 becomes inf, tiny
   values go subnormal or zero), while the arithmetic inside runs in FP32, like FP32
   accumulation. Integer and shape computations are untouched.

The rounding is done with explicit FP32 -> FP16 -> FP32 Cast pairs inside an FP32 graph:
onnxruntime's CPU provider computes FP16-typed nodes in FP32 and drops intermediate rounding, so
an FP16-typed graph would hide every overflow.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import (
    DATA_MOVEMENT_OPS,
    ONNX_TYPE,
    PrecisionPlan,
    precision_rank,
    precision_slots,
)
from trtdebug.core.quantized.format import format_of
from trtdebug.core.reference import ort_sessions
from trtdebug.engines.base import BuildError, Built, Capabilities, LayerInfo, Marking
from trtdebug.engines.emulator.tactics import Shape, ShapeOf, TacticChoice, TacticChooser, apply_variant, tensor_shapes
from trtdebug.errors import UserError

SUBSTITUTE_PREFIX = "substitute::"  # graph inputs that replace a layer output in run_substituted
SWITCH_PREFIX = "switch::"  # ... and whether they do, in this run
SWITCHED_PREFIX = "switched::"  # the value consumers read: the layer's own or the substitute
REF_PREFIX = "ref::"  # graph inputs of the local-error graph carry reference values


@dataclass
class FoldedGraph:
    """The model after the builder's FP32 folding, and which ONNX nodes each layer covers."""

    proto: onnx.ModelProto
    covers: dict[str, tuple[str, ...]]  # layer (optimized node name) -> original ONNX nodes
    folded_away: tuple[str, ...]  # ONNX nodes computed at build time (constant folding)


def fold_like_builder(model: Model) -> FoldedGraph:
    """Constant folding and BatchNorm fusion in FP32, by onnxruntime's basic optimization level."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "folded.onnx")
        ort_sessions.session(model.proto, level="basic", threads=1, optimized_path=path)
        folded = onnx.load(path)
    # onnxruntime may leave nodes unnamed or reuse names; layer names must be unique.
    seen: set[str] = set()
    for i, node in enumerate(folded.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.name or node.op_type}__{i}"
        seen.add(node.name)
    covers = _coverage(model, folded)
    covered = {n for nodes in covers.values() for n in nodes}
    folded_away = tuple(n.name for n in model.nodes if n.name not in covered)
    return FoldedGraph(folded, covers, folded_away)


def _coverage(model: Model, folded: onnx.ModelProto) -> dict[str, tuple[str, ...]]:
    """Map each folded-graph node to the original nodes between its inputs and its outputs."""
    surviving = {t for n in folded.graph.node for t in [*n.input, *n.output]}
    surviving |= {i.name for i in folded.graph.initializer} | {i.name for i in folded.graph.input}
    covers: dict[str, tuple[str, ...]] = {}
    for node in folded.graph.node:
        stop = set(node.input)
        found: list[str] = []
        stack = [t for t in node.output if t in model.producer]
        seen: set[str] = set()
        while stack:
            producer = model.producer[stack.pop()]
            if producer in seen:
                continue
            seen.add(producer)
            found.append(producer)
            for t in model.node_by_name[producer].input:
                if t and t not in stop and t not in surviving and t in model.producer:
                    stack.append(t)
        if not found and node.name in model.node_by_name:
            found = [node.name]
        covers[node.name] = tuple(sorted(found, key=model.node_index))
    return covers


class _Rounder:
    """Builds the emulated graph: the folded graph with FP16/BF16 rounding at layer I/O."""

    def __init__(self, folded: onnx.ModelProto, opset: int, shape_of: ShapeOf | None = None):
        self.opset = opset
        self.shape_of = shape_of
        self.graph = onnx.GraphProto()
        self.graph.CopyFrom(folded.graph)
        del self.graph.node[:]
        self.initializers = {i.name: i for i in folded.graph.initializer}
        self.rounded: dict[str, str] = {}  # tensor -> precision it is already rounded to
        self.cast_cache: dict[tuple[str, str], str] = {}

    def round_tensor(self, tensor: str, precision: str) -> str:
        """Name of `tensor` rounded to `precision` (values still FP32)."""
        if self.rounded.get(tensor) == precision:
            return tensor
        key = (tensor, precision)
        if key in self.cast_cache:
            return self.cast_cache[key]
        name = f"{tensor}::{precision}"
        if tensor in self.initializers:
            value = numpy_helper.to_array(self.initializers[tensor])
            if value.dtype != np.float32:
                return tensor
            self.graph.initializer.append(numpy_helper.from_array(_round(value, precision), name))
        else:
            self._cast_pair(tensor, name, precision)
        self.cast_cache[key] = name
        self.rounded[name] = precision
        return name

    # -- what tactic variants (emulator_tactics.apply_variant) use to emit a layer themselves --

    def emit(self, node: onnx.NodeProto) -> None:
        self.graph.node.append(node)

    def add_initializer(self, name: str, value: np.ndarray) -> str:
        tensor = numpy_helper.from_array(np.asarray(value), name)
        self.graph.initializer.append(tensor)
        self.initializers[name] = tensor
        return name

    def round_into(self, source: str, target: str, precision: str) -> None:
        """Write `source` rounded to `precision` as `target` (a layer's output)."""
        self._cast_pair(source, target, precision)
        self.rounded[target] = precision

    def shape(self, tensor: str) -> Shape | None:
        return self.shape_of(tensor) if self.shape_of else None

    def _cast_pair(self, source: str, target: str, precision: str) -> None:
        low = f"{target}::cast"
        self.graph.node.append(helper.make_node("Cast", [source], [low], to=ONNX_TYPE[precision],
                                                name=f"{low}::in"))
        self.graph.node.append(helper.make_node("Cast", [low], [target], to=onnx.TensorProto.FLOAT,
                                                name=f"{low}::out"))

    def add(self, node: onnx.NodeProto, precision: str, float_tensors: set[str]) -> None:
        if precision == "fp32" or node.op_type in DATA_MOVEMENT_OPS:
            self.graph.node.append(node)
            return
        in_slots, out_slots = precision_slots(node, self.opset)
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for i in in_slots:
            t = copy.input[i]
            if t and t in float_tensors:
                copy.input[i] = self.round_tensor(t, precision)
        renamed = []
        for i in out_slots:
            t = copy.output[i]
            if t and t in float_tensors:
                copy.output[i] = f"{t}::raw"
                renamed.append((copy.output[i], t))
        self.graph.node.append(copy)
        for raw, final in renamed:
            self._cast_pair(raw, final, precision)
            self.rounded[final] = precision


def _round(value: np.ndarray, precision: str) -> np.ndarray:
    if precision == "fp16":
        with np.errstate(over="ignore"):
            return value.astype(np.float16).astype(np.float32)
    if precision == "bf16":  # round to nearest even on the upper 16 bits
        bits = value.astype(np.float32).view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return rounded.astype(np.uint32).view(np.float32)
    return value


class EmulatorBuilt:
    """An emulated engine: one onnxruntime session over the rounded graph."""

    def __init__(self, model: Model, folded: FoldedGraph, plan: PrecisionPlan,
                 tactics: dict[str, str], mark: Marking, choices: Mapping[str, TacticChoice] | None = None):
        self.model = model
        self.plan = plan
        self.folded = folded
        self.tactics = tactics
        self.layer_precision = {name: _layer_precision(model, plan, nodes)
                                for name, nodes in folded.covers.items()}
        self.layers = [
            LayerInfo(name=" + ".join(folded.covers[n.name]) or n.name, onnx_nodes=folded.covers[n.name],
                      precision=self.layer_precision[n.name], tactic=tactics.get(n.name, ""),
                      op_type=n.op_type, outputs=tuple(o for o in n.output if o),
                      alternatives=choices[n.name].alternatives if choices and n.name in choices else (),
                      extra={"layer": n.name, **({"tactic_choice": asdict(choices[n.name])}
                                                  if choices and n.name in choices else {}),
                             **({"fidelity": FP32_INSIDE} if _rounds_only_at_edges(n) else {})})
            for n in folded.proto.graph.node
        ]
        self.float_tensors = self._float_tensors()
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
        self._pieces: dict[int, tuple[Any, Any]] = {}  # id(groups) -> (PiecewiseGraph, local PiecewiseGraph)
        self._local_live: dict[str, np.ndarray] = {}
        self._local_parts: tuple[onnx.ModelProto, dict[str, str], list[str]] | None = None
        self._switching: tuple[tuple[str, ...], Any] | None = None  # run_substituted's switches and session

    def _float_tensors(self) -> set[str]:
        names = {t for n in self.folded.proto.graph.node for t in [*n.input, *n.output] if t}
        floats = {t for t in names if self.model.is_float(t)}
        for init in self.folded.proto.graph.initializer:
            if init.data_type == onnx.TensorProto.FLOAT:
                floats.add(init.name)
        return floats | self._new_float_tensors(names)

    def _new_float_tensors(self, names: set[str]) -> set[str]:
        """Tensors the folding created (not in the original model): float if any input is."""
        floats: set[str] = set()
        for node in self.folded.proto.graph.node:
            for t in node.output:
                invented = t and t not in self.model.producer and node.op_type not in ("Shape", "Size")
                if invented and any(self.model.is_float(i) or i in floats for i in node.input):
                    floats.add(t)
        return floats

    def _rounded_graph(self, source: onnx.ModelProto, float_tensors: set[str]) -> onnx.ModelProto:
        shapes = tensor_shapes(self.model, self.folded.proto)
        rounder = _Rounder(source, self.model.opset, lambda t: shapes(t.removeprefix(REF_PREFIX)))
        for node in source.graph.node:
            precision = self.layer_precision[node.name]
            plain = apply_variant(node, self.tactics.get(node.name, ""), precision, rounder)
            if plain is not None:  # None: the variant emitted the layer itself
                rounder.add(plain, precision, float_tensors)
        proto = onnx.ModelProto()
        proto.CopyFrom(source)
        proto.graph.CopyFrom(rounder.graph)
        del proto.graph.value_info[:]  # names changed; onnxruntime infers what it needs
        return proto

    def _exposed(self, mark: Marking) -> list[str]:
        if mark.mode == "none":
            return []
        produced = {t for n in self.proto.graph.node for t in n.output}
        wanted = mark.tensors if mark.tensors is not None else self.model.intermediate_tensors()
        return [t for t in wanted if t in produced]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            self._session = ort_sessions.session(ort_sessions.with_outputs(self.proto, self._exposed_names))
        return ort_sessions.run(self._session, feeds)

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
        session = ort_sessions.session(ort_sessions.with_outputs(proto, wanted))
        return ort_sessions.run(session, {name: reference[tensor] for name, tensor in feeds_from.items()}, wanted)

    def run_pieces(self, feeds: Mapping[str, np.ndarray], groups: Sequence[Sequence[str]]
                   ) -> Iterator[dict[str, np.ndarray]]:
        """`run`, a group of tensors at a time (core.pieces): every layer still runs once."""
        graph = self._piecewise(groups)[0]
        return graph.run(feeds)

    def run_local_piece(self, k: int, reference: Mapping[str, np.ndarray],
                        groups: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
        """`run_local` for the layers writing group k's tensors; `reference` holds what they read."""
        graph = self._piecewise(groups)[1]
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

        graph = PiecewiseGraph(self.proto, [list(range(len(self.proto.graph.node)))], tensors)
        return next(iter(graph.run(feeds)))

    def _piecewise(self, groups: Sequence[Sequence[str]]) -> tuple[Any, Any]:
        from trtdebug.core.reference.pieces import PiecewiseGraph, split_by_targets

        key = id(groups)
        if key not in self._pieces:
            self._pieces.clear()
            graph = PiecewiseGraph(self.proto, split_by_targets(self.proto, groups), self._exposed_names)
            local_proto, _, outputs = self._local_graph()
            local = PiecewiseGraph(local_proto, split_by_targets(local_proto, groups), outputs)
            self._pieces[key] = (graph, local)
        return self._pieces[key]

    def run_substituted(self, feeds: Mapping[str, np.ndarray], replacements: Mapping[str, np.ndarray],
                        switchable: Collection[str] = ()) -> dict[str, np.ndarray]:
        """The emulated build with some layer outputs replaced: their consumers (and their rounding
        casts) read the given values instead. Returns the final outputs.

        One session serves every subset of `switchable` (and of `replacements`): each switchable tensor
        passes through a Where that picks the given value when its switch is on, so a search trying
        many subsets builds one session, not one per trial."""
        switches = tuple(sorted({*switchable, *replacements}))
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
        return ort_sessions.session(proto)  # a switched final output is the graph's; run_substituted overrides it

    def _build_local(self) -> tuple[Any, dict[str, str]]:
        proto, feeds_from, outputs = self._local_graph()
        return ort_sessions.session(ort_sessions.with_outputs(proto, outputs)), feeds_from

    def _local_graph(self) -> tuple[onnx.ModelProto, dict[str, str], list[str]]:
        """The folded graph with every layer's non-constant inputs cut loose into graph inputs."""
        if self._local_parts is None:
            self._local_parts = self._make_local_graph()
        return self._local_parts

    def _local_layers(self, writing: Collection[str] | None = None) -> Iterator[tuple[onnx.NodeProto, list[str]]]:
        """The folded layers a local graph holds (those writing some of `writing`, or all), each with the
        tensors it reads from the reference (its inputs, weights aside)."""
        initializers = {i.name for i in self.folded.proto.graph.initializer}
        original = set(self.model.producer) | {i.name for i in self.model.inputs}
        for node in self.folded.proto.graph.node:
            if writing is not None and not any(o in writing for o in node.output):
                continue
            sources = [t for t in node.input if t and t not in initializers]
            if any(t not in original for t in sources):
                continue  # reads a tensor the folding invented: no reference value exists
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                continue  # If/Loop/Scan bodies read outer-scope tensors that cannot be cut loose
            yield node, sources

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
        read = {t for node in kept.graph.node for t in node.input}
        kept.graph.initializer.extend(i for i in source.graph.initializer if i.name in read)
        for name, tensor in feeds_from.items():
            kept.graph.input.append(helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(self.model.dtype(tensor) or np.dtype("float32")),
                None))
        cut_floats = {REF_PREFIX + t for t in feeds_from.values() if t in self.float_tensors}
        proto = self._rounded_graph(kept, self.float_tensors | cut_floats)
        return proto, feeds_from, outputs


# Recurrent ops step through time inside one ONNX node, and control flow runs whole subgraphs: the
# emulator rounds such a layer's inputs and outputs, not every time step (TensorRT rounds each step).
RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})
FP32_INSIDE = "FP32 inside: the emulator rounds this layer's inputs and outputs, not each step or subgraph node"


def _rounds_only_at_edges(node: onnx.NodeProto) -> bool:
    return node.op_type in RECURRENT_OPS or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _layer_precision(model: Model, plan: PrecisionPlan, nodes: tuple[str, ...]) -> str:
    """A fused layer computes in the highest precision any of its ONNX nodes asks for."""
    precisions = [plan.precision_of(n) for n in nodes
                  if model.node_by_name[n].op_type not in DATA_MOVEMENT_OPS] or ["fp32"]
    return max(precisions, key=precision_rank)


class EmulatorEngine:
    """Emulates TensorRT FP16/BF16 builds on the CPU (see the module docstring)."""

    name = "emulator"
    # Exposing a tensor never changes what the emulator computes; its autotuner can be reseeded.
    capabilities = Capabilities(exact_marking=True, local_error=True, substitution=True, reseeds_tactics=True,
                                tactics=True, pieces=True)

    def __init__(self, tactic_seed: int | None = None) -> None:
        self._folded: dict[str, FoldedGraph] = {}
        self.tactic_seed = tactic_seed

    def with_tactic_seed(self, seed: int) -> EmulatorEngine:
        """The same emulator with other autotuner timing noise: a repeated build that may pick
        other tactics (the hook `trtdebug.workflows.tactics` uses to diff repeated builds)."""
        engine = EmulatorEngine(tactic_seed=seed)
        engine._folded = self._folded
        return engine

    def folded(self, model: Model) -> FoldedGraph:
        if model.sha256 not in self._folded:
            self._folded[model.sha256] = fold_like_builder(model)
        return self._folded[model.sha256]

    def build(self, model: Model, plan: PrecisionPlan, bans: Any = None,
              mark: Marking | None = None) -> Built:
        quant_format = format_of(model)
        if quant_format is not None:
            from trtdebug.engines.emulator.int8 import build_int8

            return build_int8(self, quant_format.model, plan, bans, mark or Marking())
        if "int8" in (plan.default, *plan.nodes.values()):
            raise UserError("an INT8 plan needs its model prepared for INT8 (trtdebug compare/fallback "
                            "--precision int8 do this: a Q/DQ model as quantized, a float model calibrated)")
        return self.build_folded(model, self.folded(model), plan, bans, mark)

    def build_folded(self, model: Model, folded: FoldedGraph, plan: PrecisionPlan, bans: Any = None,
                     mark: Marking | None = None) -> EmulatorBuilt:
        """Build from an already folded graph (the INT8 path folds nothing: see emulator/int8.py)."""
        precisions = {name: _layer_precision(model, plan, nodes) for name, nodes in folded.covers.items()}
        chooser = TacticChooser(model, folded, seed=self.tactic_seed)
        tactics = chooser.choose(precisions, bans)
        try:
            return EmulatorBuilt(model, folded, plan, tactics, mark or Marking(), chooser.choices)
        except UserError as exc:
            raise BuildError(str(exc)) from None
