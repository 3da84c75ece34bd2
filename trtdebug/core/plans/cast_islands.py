"""A PrecisionPlan applied to the ONNX graph itself: a typed mixed-precision model.

Strongly typed builders (TensorRT 11.x, TensorRT-RTX, TensorRT 10.x with STRONGLY_TYPED) compute
each layer in the types its tensors carry. So a plan becomes Cast nodes: every node computes in
its planned precision, FP16 (or BF16) regions with FP32 islands, and a Cast sits wherever a
tensor crosses from one precision to another.

Rules:
- A compute node (precision.is_eligible) reads and writes its *precision slots* (the float inputs
  and outputs that share output 0's type, precision.precision_slots) in its planned type; other
  float inputs (Resize scales, BatchNorm statistics in opset >= 15) keep their original type.
- A data-movement node (Reshape, Concat, Gather, ...) has no precision of its own: its slot inputs
  are unified to the most precise type they arrive in, and its slot outputs carry that type.
- Anything else (Q/DQ, Cast's output, control flow, custom ops) reads its float inputs in their
  original types, exactly as the model had them.
- Node outputs keep their names (so engine tensors still match ONNX tensor names); only a graph
  output computed in another type is renamed and Cast back, so graph I/O types never change.
- Float initializers read in a narrower type are converted once (a new initializer); read in a
  wider type (an FP16 weight of a layer kept in FP32) they are Cast, so no weight is stored twice.
- One shared Cast per (tensor, type), created only when a consumer needs it (no orphans), always
  from the tensor's producer value (never a Cast of a Cast), and a model Cast between float types
  is looked through instead of cast again (so a layer kept in FP32 reads the value before the
  model's Cast to FP16, as the emulated build of the plan does); a model Cast nobody reads any
  more is dropped.

A strongly typed model (core.model.graph: it types tensors FP16/BF16) is rewritten from its graph
as stored, so its weights keep their stored types; `typed_plan` reads the plan its types give.
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

from trtdebug.core.model import weights as shared
from trtdebug.core.model.graph import Model, infer_shapes, subgraph_outer_inputs
from trtdebug.core.plans.precision_plan import (
    ONNX_TYPE,
    QUANTIZED_PRECISIONS,
    PrecisionPlan,
    is_eligible,
    precision_slots,
)
from trtdebug.errors import UserError

FLOAT_TYPES: tuple[int, ...] = (onnx.TensorProto.FLOAT, onnx.TensorProto.BFLOAT16,
                                onnx.TensorProto.FLOAT16)  # most precise first
TYPE_SUFFIX: dict[int, str] = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16",
                               onnx.TensorProto.BFLOAT16: "bf16"}
# Inputs of these ops are read as they are, whatever their type (Cast converts anything; Shape and
# Size only read the shape).
ANY_TYPE_INPUT_OPS = frozenset({"Cast", "Shape", "Size"})
# Ops whose output type is not tied to their float inputs in a way the slots describe.
FIXED_TYPE_OPS = frozenset({"Cast", "CastLike", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def _more_precise(a: int, b: int) -> int:
    return a if FLOAT_TYPES.index(a) <= FLOAT_TYPES.index(b) else b


def _has_subgraphs(node: onnx.NodeProto) -> bool:
    return any(a.HasField("g") or len(a.graphs) for a in node.attribute)


class _TypedGraphWriter:
    """Rewrites the graph node by node, tracking which name holds each tensor in which type."""

    def __init__(self, model: Model, held: shared.DerivedWeights | None = None):
        self.model = model
        self.held = held  # where large converted weights are derived (placeholders in the graph), or None: embedded
        self.source = model.stored_proto if model.stored_proto is not None else model.proto
        self.source_nodes = {n.name: n for n in self.source.graph.node}
        self.graph = onnx.GraphProto()
        self.graph.CopyFrom(self.source.graph)
        del self.graph.node[:]
        del self.graph.value_info[:]  # types change; shape inference restores them
        self.initializers = {i.name: i for i in self.graph.initializer}
        self.used_names = {t for n in self.source.graph.node for t in [*n.input, *n.output]}
        self.used_names |= set(self.initializers) | {i.name for i in self.graph.input}
        self.used_node_names = {n.name for n in self.source.graph.node}
        self.graph_outputs = {o.name for o in self.graph.output}
        # tensor -> {onnx type: name of a tensor holding its value in that type}
        self.available: dict[str, dict[int, str]] = {}
        self.native: dict[str, str] = {}  # tensor -> the name of its value as produced
        for name in [*self.initializers, *(i.name for i in self.graph.input)]:
            self._produced(name, name, self.original_type(name))
        self.producer_cast = {n.output[0]: n for n in self.source.graph.node if n.op_type == "Cast" and n.output}
        self.model_casts = {n.name for n in self.producer_cast.values()}

    # -- bookkeeping --------------------------------------------------------------------------

    def original_type(self, tensor: str) -> int:
        if tensor in self.initializers:
            return self.initializers[tensor].data_type
        stored = self.model.stored_type(tensor)
        if stored is not None:
            return stored
        dtype = self.model.dtype(tensor)
        return int(helper.np_dtype_to_tensor_dtype(dtype)) if dtype is not None else onnx.TensorProto.UNDEFINED

    def is_float(self, tensor: str) -> bool:
        return bool(tensor) and self.original_type(tensor) in FLOAT_TYPES

    def current_type(self, tensor: str) -> int:
        types = self.available.get(tensor)
        if not types:
            return self.original_type(tensor)
        native = self.native[tensor]
        return next(t for t, name in types.items() if name == native)

    def _produced(self, tensor: str, name: str, elem_type: int) -> None:
        self.available[tensor] = {elem_type: name}
        self.native[tensor] = name

    def fresh(self, base: str, taken: set[str]) -> str:
        candidate, k = base, 1
        while candidate in taken:
            candidate = f"{base}_{k}"
            k += 1
        taken.add(candidate)
        return candidate

    # -- getting a tensor in a type -----------------------------------------------------------

    def get(self, tensor: str, elem_type: int) -> str:
        """Name of a tensor holding `tensor`'s value in `elem_type`, creating it on first use."""
        types = self.available.setdefault(tensor, {})
        if elem_type in types:
            return types[elem_type]
        source_cast = self.producer_cast.get(tensor)
        if source_cast is not None and self._float_cast(source_cast, elem_type):
            name = self.get(source_cast.input[0], elem_type)
        elif tensor in self.initializers and _more_precise(self.original_type(tensor), elem_type) != elem_type:
            name = self._converted_initializer(tensor, elem_type)
        else:
            name = self._cast(self.native.get(tensor, tensor), tensor, elem_type)
        types[elem_type] = name
        return name

    def _float_cast(self, cast: onnx.NodeProto, elem_type: int) -> bool:
        """A model Cast x -> t between float types: t in `elem_type` is read as x in `elem_type` (cast x
        directly instead of stacking a Cast on the Cast; the precision of the reader decides, as in
        the emulated build, which rounds at layers, never at Casts)."""
        to = next((a.i for a in cast.attribute if a.name == "to"), onnx.TensorProto.UNDEFINED)
        return to in FLOAT_TYPES and self.is_float(cast.input[0]) and elem_type in FLOAT_TYPES

    def _cast(self, source: str, tensor: str, elem_type: int) -> str:
        name = self.fresh(f"{tensor}__{TYPE_SUFFIX.get(elem_type, elem_type)}", self.used_names)
        node_name = self.fresh(f"{name}__cast", self.used_node_names)
        self.graph.node.append(helper.make_node("Cast", [source], [name], name=node_name, to=elem_type))
        return name

    def _converted_initializer(self, tensor: str, elem_type: int) -> str:
        value = shared.value_of(self.initializers[tensor], self.model.weights).astype("float32")
        name = self.fresh(f"{tensor}__{TYPE_SUFFIX[elem_type]}", self.used_names)
        if elem_type == onnx.TensorProto.BFLOAT16:
            converted = helper.make_tensor(name, elem_type, value.shape, value.reshape(-1).tolist())
        elif self.held is not None and value.nbytes >= shared.SHARED_WEIGHT_BYTES:
            source, dtype = self.initializers[tensor], helper.tensor_dtype_to_np_dtype(elem_type)
            weights = self.model.weights
            self.held.derived[name] = lambda: shared.value_of(source, weights).astype("float32").astype(dtype)
            converted = shared.placeholder(onnx.TensorProto(name=name, data_type=elem_type, dims=value.shape))
        else:
            converted = numpy_helper.from_array(value.astype(helper.tensor_dtype_to_np_dtype(elem_type)), name)
        self.graph.initializer.append(converted)
        return name

    # -- nodes --------------------------------------------------------------------------------

    def add(self, node: onnx.NodeProto, precision: str | None) -> None:
        node = self.source_nodes.get(node.name, node)  # as stored (a typed model's Casts keep their `to`)
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        in_slots, out_slots = precision_slots(node, self.model.opset)
        target = self._target_type(node, precision, in_slots)
        slot_inputs = set(in_slots) if target is not None else set()
        for i, tensor in enumerate(node.input):
            if not self.is_float(tensor):
                continue
            if i in slot_inputs:
                copy.input[i] = self.get(tensor, target)  # type: ignore[arg-type]
            elif node.op_type in ANY_TYPE_INPUT_OPS:
                copy.input[i] = self.native.get(tensor, tensor)
            else:
                copy.input[i] = self.get(tensor, self.original_type(tensor))
        if _has_subgraphs(node):
            self._retarget_outer_reads(copy)
        slot_outputs = set(out_slots) if target is not None else set()
        for i, tensor in enumerate(node.output):
            if not tensor:
                continue
            elem_type = target if i in slot_outputs and self.is_float(tensor) else self.original_type(tensor)
            name = tensor
            if tensor in self.graph_outputs and elem_type != self.original_type(tensor):
                name = self.fresh(f"{tensor}__{TYPE_SUFFIX[elem_type]}", self.used_names)  # type: ignore[index]
                copy.output[i] = name
            self._produced(tensor, name, elem_type)  # type: ignore[arg-type]
        self.graph.node.append(copy)

    def _target_type(self, node: onnx.NodeProto, precision: str | None, in_slots: tuple[int, ...]) -> int | None:
        """The type a node's precision slots compute in, or None to keep the model's types."""
        if node.op_type in FIXED_TYPE_OPS or _has_subgraphs(node):
            return None
        if precision is not None:
            return ONNX_TYPE[precision]
        arriving = [self.current_type(node.input[i]) for i in in_slots
                    if i < len(node.input) and self.is_float(node.input[i])]
        if not arriving:
            return None
        common = arriving[0]
        for elem_type in arriving[1:]:
            common = _more_precise(common, elem_type)
        return common

    def _retarget_outer_reads(self, node: onnx.NodeProto) -> None:
        """Subgraphs read outer tensors by name: point them at the original-typed value."""
        renames = {}
        for tensor in subgraph_outer_inputs(node):
            if self.is_float(tensor):
                name = self.get(tensor, self.original_type(tensor))
                if name != tensor:
                    renames[tensor] = name
        if renames:
            for attr in node.attribute:
                for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    _rename_reads(graph, renames)

    def finish(self) -> None:
        """Cast graph outputs computed in another type back under their own names; drop
        initializers nobody reads any more."""
        for output in self.graph.output:
            tensor = output.name
            if self.native.get(tensor, tensor) != tensor:
                elem_type = self.original_type(tensor)
                node_name = self.fresh(f"{tensor}__cast", self.used_node_names)
                self.graph.node.append(helper.make_node("Cast", [self.native[tensor]], [tensor], name=node_name,
                                                        to=elem_type))
        self._drop_unread_model_casts()
        read = {t for n in self.graph.node for t in n.input} | {o.name for o in self.graph.output}
        for n in self.graph.node:
            read |= subgraph_outer_inputs(n)
        unused = [i for i in self.graph.initializer if i.name not in read]
        for init in unused:
            self.graph.initializer.remove(init)
        unused_names = {i.name for i in unused}
        for graph_input in [i for i in self.graph.input if i.name in unused_names]:
            self.graph.input.remove(graph_input)


    def _drop_unread_model_casts(self) -> None:
        """A model Cast whose readers now read its source instead (looked through) is dead weight."""
        while True:
            read = {t for n in self.graph.node for t in n.input} | {o.name for o in self.graph.output}
            for n in self.graph.node:
                read |= subgraph_outer_inputs(n)
            dead = [n for n in self.graph.node if n.name in self.model_casts and not read & set(n.output)]
            if not dead:
                return
            for n in dead:
                self.graph.node.remove(n)


def typed_plan(model: Model, default: str | None = None) -> PrecisionPlan:
    """The plan a strongly typed model's own types give: each compute node at the type of its output
    (TensorRT 11 and --stronglyTyped build it so). The default is the reduced type most nodes use;
    nodes typed otherwise (FP32 islands) are overrides. `default`: where no node says."""
    by_node: dict[str, str] = {}
    for node in model.nodes:
        if not is_eligible(model, node):
            continue
        _, out_slots = precision_slots(node, model.opset)
        stored = next((model.stored_type(node.output[i]) for i in out_slots
                       if i < len(node.output) and model.stored_type(node.output[i]) is not None), None)
        if stored is not None:
            by_node[node.name] = TYPE_SUFFIX[stored]
    reduced = [p for p in by_node.values() if p != "fp32"]
    chosen = max(sorted(set(reduced)), key=reduced.count) if reduced else (default or "fp32")
    return PrecisionPlan(chosen, {n: p for n, p in by_node.items() if p != chosen}).for_model(model)


def _rename_reads(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Rename reads of outer-scope tensors inside a subgraph (and its nested subgraphs), leaving
    names the subgraph defines itself alone."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    defined |= {o for n in graph.node for o in n.output}
    active = {k: v for k, v in renames.items() if k not in defined}
    if not active:
        return
    for node in graph.node:
        for i, tensor in enumerate(node.input):
            if tensor in active:
                node.input[i] = active[tensor]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_reads(sub, active)
    for output in graph.output:
        if output.name in active:  # subgraph outputs bind by position, so renaming them is safe
            output.name = active[output.name]


def to_mixed_precision_onnx(model: Model, plan: PrecisionPlan,
                            weights: shared.DerivedWeights | None = None) -> onnx.ModelProto:
    """The model with every compute node typed in its planned precision (see the module docstring).
    With `weights` (over the model's, core.model.weights), large converted weights are placeholders
    derived there when read (never held all at once); without, they are embedded."""
    quantized = [p for p in (plan.default, *plan.nodes.values()) if p in QUANTIZED_PRECISIONS]
    if quantized:
        name = quantized[0].upper()
        raise UserError(f"a typed graph cannot express {name} by a plan: strongly typed builds take {name} from "
                        "Q/DQ nodes in the model; quantize the model (Q/DQ) and use --precision fp16 or fp32")
    writer = _TypedGraphWriter(model, weights)
    for node in model.nodes:
        writer.add(node, plan.precision_of(node.name) if is_eligible(model, node) else None)
    writer.finish()
    typed = onnx.ModelProto()
    typed.CopyFrom(model.proto)
    typed.graph.CopyFrom(writer.graph)
    # annotated from a copy whose weights are typed inputs (the converted FP16 weights are not copied
    # through onnx's C++ and back); custom ops: the graph is still valid, only less annotated
    inferred = infer_shapes(typed)
    typed.graph.value_info.extend(inferred.graph.value_info)
    del typed.graph.output[:]
    typed.graph.output.extend(inferred.graph.output)
    for node, annotated in zip(typed.graph.node, inferred.graph.node, strict=True):
        if _has_subgraphs(node):  # subgraphs carry their own shapes
            node.CopyFrom(annotated)
    return typed
