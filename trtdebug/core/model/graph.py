"""Load and validate an ONNX model and index its graph.

The index (nodes in topological order, producer and consumer maps, tensor types) is what every
other module uses to talk about "a layer": an ONNX node, named uniquely. Nodes without a name or
with a duplicate name are renamed here, once, so plans and reports can always refer to them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from trtdebug.core.model import weights as shared
from trtdebug.core.model.upcast import REDUCED, mentions_reduced_types, reduced_float_types, upcast_to_fp32
from trtdebug.errors import UserError

FP16_MAX = 65504.0
# The smallest positive FP16 subnormal; anything smaller in magnitude rounds to zero.
FP16_MIN_SUBNORMAL = 2.0**-24

# Inputs of these ops that the TensorRT builder folds into neighbouring layers in FP32, so their
# values never exist in reduced precision (BatchNormalization scale, bias, mean and variance).
BUILDER_FOLDED_INPUTS = {"BatchNormalization": {1, 2, 3, 4}}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype | None  # None where ONNX does not say
    shape: tuple[int | str | None, ...] | None  # int, symbolic name, or None per dim; None if unknown rank

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) and d >= 0 for d in self.shape)


@dataclass(frozen=True)
class RangeViolation:
    """A constant whose values do not fit in FP16."""

    tensor: str
    max_abs: float
    consumers: tuple[str, ...]
    folded_by_builder: bool  # only used in FP32 folding (BatchNorm statistics), so harmless


def _elem_dtype(elem_type: int) -> np.dtype | None:
    if elem_type == onnx.TensorProto.UNDEFINED:
        return None
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return None  # bfloat16, float8 and friends have no numpy dtype


def _spec_from_value_info(vi: onnx.ValueInfoProto) -> TensorSpec:
    tt = vi.type.tensor_type
    shape: tuple[int | str | None, ...] | None = None
    if tt.HasField("shape"):
        shape = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
        )
    return TensorSpec(vi.name, _elem_dtype(tt.elem_type), shape)


def subgraph_outer_inputs(node: onnx.NodeProto) -> set[str]:
    """Tensors of the enclosing graph that a node's subgraphs (If, Loop, Scan) read implicitly."""
    used: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.g and [attr.g] or []) + list(attr.graphs)
        for g in graphs:
            defined = {i.name for i in g.input} | {i.name for i in g.initializer}
            for n in g.node:
                defined.update(n.output)
            for n in g.node:
                used.update(t for t in n.input if t)
                if _has_subgraph(n):
                    used.update(subgraph_outer_inputs(n))
            used -= defined
            used.update(o.name for o in g.output if o.name not in defined)
    return used


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def node_dependencies(node: onnx.NodeProto) -> list[str]:
    """Every tensor a node reads, explicit inputs first, then subgraph outer-scope reads."""
    explicit = [t for t in node.input if t]
    if not _has_subgraph(node):
        return explicit
    return explicit + sorted(subgraph_outer_inputs(node) - set(explicit))


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Kahn's algorithm, stable with respect to file order (exporters mostly emit sorted graphs)."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    waiting_on: list[set[int]] = []
    dependents: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        deps = {producer[t] for t in node_dependencies(n) if t in producer and t not in available}
        deps.discard(i)
        waiting_on.append(deps)
        for d in deps:
            dependents.setdefault(d, []).append(i)
    ready = [i for i, w in enumerate(waiting_on) if not w]
    order: list[int] = []
    import heapq

    heapq.heapify(ready)
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in dependents.get(i, []):
            waiting_on[j].discard(i)
            if not waiting_on[j]:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        stuck = [nodes[i].name or nodes[i].op_type for i in range(len(nodes)) if i not in set(order)]
        raise UserError(f"the graph has a cycle or reads undefined tensors near node {stuck[0]!r}; "
                        "re-export the model")
    return [nodes[i] for i in order]


def _check_external_data(proto: onnx.ModelProto, folder: Path) -> list[Path]:
    """The external data files the model reads; refused when outside its folder or missing."""
    root = folder.resolve()
    found: list[Path] = []
    for tensor in shared.all_tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(root):
            raise UserError(f"external data {location!r} of tensor {tensor.name!r} lies outside the "
                            f"model's folder {folder}; move it next to the model")
        if not target.is_file():
            raise UserError(f"external data file {location!r} for tensor {tensor.name!r} is missing; "
                            f"copy it into {folder}")
        found.append(target)
    return sorted(set(found))


class Model:
    """An ONNX model with unique node names, inferred shapes and a graph index."""

    def __init__(self, proto: onnx.ModelProto, path: Path | None = None, data_files: list[Path] | None = None,
                 weights: Mapping[str, np.ndarray] | None = None):
        """`proto` is the model's own (taken, not copied): its large initializers become placeholders
        whose values are held as arrays (weights.take_weights); `weights` gives those of placeholders
        it has already."""
        self.path = path
        self.data_files = data_files or []  # external data files read with the model
        missing = [t.name for t in proto.graph.initializer if shared.is_shared(t) and t.name not in (weights or {})]
        if missing:
            raise ValueError(f"no value given for the weight placeholder {missing[0]!r}")
        _lift_initializer_inputs(proto)
        # A model stored in FP16/BF16 is analysed as its FP32 upcast (the reference needs FP32; a
        # reduced-precision build of the upcast is the model as given); its inputs keep their type.
        stored = reduced_float_types(proto)
        self.stored_precision = (
            "bf16" if onnx.TensorProto.BFLOAT16 in stored else "fp16" if stored else None)
        stored_inputs = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}
        # A model typing any tensor FP16/BF16 is strongly typed: each layer runs at the type its ONNX
        # gives (TensorRT 11, --stronglyTyped). Its graph as stored and every float tensor's stored type
        # are kept: they decide the layers' precisions and the typed models written from it.
        self.stored_proto: onnx.ModelProto | None = None
        self.stored_types: dict[str, int] = {}
        if mentions_reduced_types(proto):
            self.stored_proto = proto
            self.stored_types = _float_types(proto)
            proto = upcast_to_fp32(proto)
        self.proto = proto
        self.renamed_nodes = _make_node_names_unique(proto.graph)
        if self.stored_proto is not None:
            _make_node_names_unique(self.stored_proto.graph)  # the same names: the rule is deterministic
        self._infer_shapes()
        proto = self.proto
        self._held = {t.name: (weights or {})[t.name] for t in proto.graph.initializer if shared.is_shared(t)}
        self.proto, taken = shared.take_weights(proto)
        self._held.update(taken)
        proto = self.proto
        initializer_names = {i.name for i in proto.graph.initializer}
        self.initializer_names = initializer_names
        self.inputs = [_spec_from_value_info(i) for i in proto.graph.input if i.name not in initializer_names]
        # Feeds of FP16 inputs stay FP16 (sessions of the upcast take them as FP32); numpy has no
        # bfloat16, so BF16 inputs are FP32 arrays of bfloat16 values (`bf16_inputs`).
        self.inputs = [dataclasses.replace(i, dtype=np.dtype(np.float16))
                       if stored_inputs.get(i.name) == onnx.TensorProto.FLOAT16 else i for i in self.inputs]
        self.bf16_inputs = {i.name for i in self.inputs if stored_inputs.get(i.name) == onnx.TensorProto.BFLOAT16}
        self.outputs = [_spec_from_value_info(o) for o in proto.graph.output]
        available = initializer_names | {i.name for i in self.inputs}
        self.nodes = _topological(list(proto.graph.node), available)
        self.node_by_name = {n.name: n for n in self.nodes}
        self.producer = {o: n.name for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list[str]] = {}
        for n in self.nodes:
            for t in dict.fromkeys(node_dependencies(n)):
                self.consumers.setdefault(t, []).append(n.name)
        self._specs = {vi.name: _spec_from_value_info(vi) for vi in
                       [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]}
        for init in proto.graph.initializer:
            self._specs[init.name] = TensorSpec(init.name, _elem_dtype(init.data_type), tuple(init.dims))

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> Model:
        path = Path(path)
        if not path.exists():
            raise UserError(f"model file not found: {path}")
        if path.is_dir():
            raise UserError(f"{path} is a folder; pass the .onnx file inside it")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf raises several types for garbage input
            raise UserError(f"{path} is not a readable ONNX model ({type(exc).__name__}); "
                            "check the path or re-export the model") from None
        if not proto.graph.node and not proto.graph.output:
            raise UserError(f"{path} is not an ONNX model (no graph in it); check the path")
        if not proto.graph.node:
            raise UserError(f"{path} has no nodes: its outputs are its inputs, which no precision changes; "
                            "there is nothing to debug (check that the export kept the graph)")
        data_files = _check_external_data(proto, path.parent)
        weights: dict[str, np.ndarray] = {}
        try:
            if mentions_reduced_types(proto):  # upcast to FP32 first (Model.__init__), then taken out
                onnx.load_external_data_for_model(proto, str(path.parent))
            else:  # large weights straight from their file into arrays, never into the proto
                proto, weights = shared.take_weights(proto, path.parent)
        except Exception as exc:
            raise UserError(f"cannot read external data of {path}: {exc}") from None
        _check_opset(proto, path)
        return cls(proto, path, data_files, weights)

    @classmethod
    def from_proto(cls, proto: onnx.ModelProto, weights: Mapping[str, np.ndarray] | None = None) -> Model:
        """A model of a proto trtdebug made or was given (copied: the caller's stays as it is); `weights`:
        the values of its placeholders (a graph derived from another Model's `proto`)."""
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        _check_opset(copy, None)
        return cls(copy, weights=weights)

    def _infer_shapes(self) -> None:
        inferred = infer_shapes(self.proto)
        graph = self.proto.graph
        del graph.value_info[:]
        graph.value_info.extend(inferred.graph.value_info)
        del graph.output[:]
        graph.output.extend(inferred.graph.output)
        for node, annotated in zip(graph.node, inferred.graph.node, strict=True):
            if any(a.HasField("g") or a.graphs for a in node.attribute):  # subgraphs carry their own shapes
                node.CopyFrom(annotated)

    # -- queries -----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.path.name if self.path else (self.proto.graph.name or "model")

    @property
    def opset(self) -> int:
        return next((o.version for o in self.proto.opset_import if o.domain in ("", "ai.onnx")), 0)

    @cached_property
    def sha256(self) -> str:
        """Hash of the model as trtdebug sees it (after renaming), so plans bind to one graph: the graph
        (its large weights as placeholders), then each large weight's bytes, read in place."""
        digest = hashlib.sha256(self.proto.SerializeToString())  # the graph, its large weights as placeholders
        for tensor in self.proto.graph.initializer:
            if shared.is_shared(tensor):
                digest.update(np.ascontiguousarray(self._held[tensor.name]).data)
        return digest.hexdigest()

    @property
    def weights(self) -> dict[str, np.ndarray]:
        """Every initializer's value, converted once: sessions read their large ones in place
        (ort_sessions.session `weights`), so the process holds them once, not once per session."""
        return self._initializers

    def spec(self, tensor: str) -> TensorSpec:
        return self._specs.get(tensor, TensorSpec(tensor, None, None))

    def dtype(self, tensor: str) -> np.dtype | None:
        return self.spec(tensor).dtype

    def is_float(self, tensor: str) -> bool:
        dt = self.dtype(tensor)
        return dt is not None and dt.kind == "f"

    def node(self, name: str) -> onnx.NodeProto:
        try:
            return self.node_by_name[name]
        except KeyError:
            raise UserError(f"the model has no node named {name!r}") from None

    def node_index(self, name: str) -> int:
        return self._node_index[name]

    @cached_property
    def _node_index(self) -> dict[str, int]:
        return {n.name: i for i, n in enumerate(self.nodes)}

    def plan_names(self) -> set[str]:
        """What a precision plan may name: the nodes (a quantized model adds its Q/DQ pairs)."""
        return set(self.node_by_name)

    def intermediate_tensors(self) -> list[str]:
        """Every node output, in topological order."""
        return list(self._intermediate_tensors)

    @cached_property
    def _intermediate_tensors(self) -> tuple[str, ...]:  # reading protobuf fields costs: walked once
        return tuple(o for n in self.nodes for o in n.output if o)

    def initializer(self, name: str) -> np.ndarray:
        return self._initializers[name]

    @cached_property
    def _initializers(self) -> dict[str, np.ndarray]:
        return {i.name: shared.value_of(i, self._held) for i in self.proto.graph.initializer}

    def constants(self) -> Iterable[tuple[str, np.ndarray]]:
        """Initializers and Constant-node values."""
        yield from self._initializers.items()
        for n in self.nodes:
            if n.op_type == "Constant":
                for attr in n.attribute:
                    if attr.name == "value":
                        yield n.output[0], numpy_helper.to_array(attr.t)

    @property
    def strongly_typed(self) -> bool:
        """The ONNX types some tensor FP16/BF16: its types, not a builder flag, set each layer's precision."""
        return self.stored_proto is not None

    def stored_type(self, tensor: str) -> int | None:
        """The ONNX element type a float tensor has in the model as stored (None: not typed, or unknown)."""
        return self.stored_types.get(tensor)

    def fp16_range_violations(self) -> list[RangeViolation]:
        return list(self._fp16_range_violations)

    @cached_property
    def _fp16_range_violations(self) -> tuple[RangeViolation, ...]:  # constants never change: scanned once
        found = []
        for name, value in self.constants():
            if value.dtype.kind != "f" or value.size == 0:
                continue
            max_abs = max(float(value.max()), -float(value.min()))  # no |value| copy: weights can be gigabytes
            if not np.isfinite(max_abs):  # inf/NaN constants (masks) count by their finite values
                finite = value[np.isfinite(value)]
                max_abs = float(np.abs(finite).max()) if finite.size else 0.0
            if max_abs <= FP16_MAX:
                continue
            consumers = tuple(self.consumers.get(name, []))
            folded = bool(consumers) and all(
                _input_slots(self.node_by_name[c], name) <= BUILDER_FOLDED_INPUTS.get(
                    self.node_by_name[c].op_type, set())
                for c in consumers)
            found.append(RangeViolation(name, max_abs, consumers, folded))
        return tuple(found)


FLOAT_ELEM_TYPES = (onnx.TensorProto.FLOAT, *REDUCED)


def _float_types(proto: onnx.ModelProto) -> dict[str, int]:
    """Every float tensor's element type in `proto` as stored (types inferred where not declared)."""
    inferred = infer_shapes(proto)
    graph = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*graph.value_info, *graph.input, *graph.output]}
    types.update({i.name: i.data_type for i in proto.graph.initializer})
    return {name: t for name, t in types.items() if t in FLOAT_ELEM_TYPES}


def _input_slots(node: onnx.NodeProto, tensor: str) -> set[int]:
    return {i for i, t in enumerate(node.input) if t == tensor}


# Initializers up to this many elements keep their values for shape inference: shape inputs (Reshape,
# Slice, Resize scales...) are small; the weights, whose shapes are all inference reads, are not.
VALUES_FOR_SHAPES = 1024


def infer_shapes(proto: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None,
                 keep_value_info: bool = True) -> onnx.ModelProto:
    """onnx shape inference of `proto` (inputs at `input_shapes` where given), on a copy whose weights
    are typed inputs instead of values: copying megabytes of weights into onnx's C++ and back cost more
    than inferring (a 50 MB recognizer: 330 ms against 70 ms). Returns that copy, annotated; where
    inference fails (custom ops), the copy as it was."""
    light = onnx.ModelProto()
    light.ir_version = proto.ir_version
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    graph = light.graph
    graph.node.extend(proto.graph.node)
    graph.output.extend(proto.graph.output)
    graph.sparse_initializer.extend(proto.graph.sparse_initializer)
    if keep_value_info:
        graph.value_info.extend(proto.graph.value_info)
    shapes = input_shapes or {}
    for vi in proto.graph.input:
        graph.input.append(vi)
        if vi.name in shapes:
            dims = graph.input[-1].type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[vi.name]:
                dims.add().dim_value = int(d)
    inputs = {vi.name for vi in proto.graph.input}
    for init in proto.graph.initializer:
        if math.prod(init.dims) <= VALUES_FOR_SHAPES:
            graph.initializer.append(init)
        elif init.name not in inputs:  # an input with a default value is typed already
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    try:
        return onnx.shape_inference.infer_shapes(light)
    except Exception:  # noqa: BLE001 - custom ops: the model still works, with fewer known shapes
        return light


def _check_opset(proto: onnx.ModelProto, path: Path | None) -> None:
    where = f"{path}: " if path else ""
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise UserError(f"{where}the model declares no ai.onnx opset; re-export it with an opset_import")
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise UserError(f"{where}opset {opset} is newer than this onnx/onnxruntime supports ({newest}); "
                        f"re-export with opset <= {newest} or upgrade onnx and onnxruntime")
    if opset < 7:
        raise UserError(f"{where}opset {opset} is too old for onnxruntime (needs >= 7); "
                        "convert it with onnx.version_converter")


def _lift_initializer_inputs(proto: onnx.ModelProto) -> None:
    """IR < 4 requires every initializer to be listed as a graph input too; such an input is a
    constant, not an input. Drop those entries and stamp IR 4, so every graph derived from the model
    (folded, rewritten, cut into pieces) may carry initializers of its own, and onnxruntime folds
    them as constants (an initializer that is also an input is overridable, so never folded)."""
    if proto.ir_version >= 4:
        return
    initializers = {i.name for i in proto.graph.initializer}
    kept = [i for i in proto.graph.input if i.name not in initializers]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    proto.ir_version = 4


def _make_node_names_unique(graph: onnx.GraphProto) -> list[tuple[str, str]]:
    """Give every node a unique, non-empty name; returns (old, new) for each renamed node."""
    seen: set[str] = set()
    renamed = []
    taken = {n.name for n in graph.node if n.name}
    for i, node in enumerate(graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        base = node.name or f"{node.op_type}_{i}"
        candidate, k = base, 1
        while candidate in seen or (candidate != node.name and candidate in taken):
            candidate = f"{base}_{k}"
            k += 1
        renamed.append((node.name, candidate))
        node.name = candidate
        seen.add(candidate)
    return renamed
