"""Step 2 of an emulated build: reduced precision at each layer's inputs and outputs.

A layer planned in FP16 (or BF16) reads its inputs and weights rounded to that type and writes
its outputs rounded to it (beyond 65504 becomes inf, tiny values go subnormal or zero), while the
arithmetic inside runs in FP32, like FP32 accumulation. Integer and shape computations are
untouched; a fused layer computes in the highest precision any of its ONNX nodes asks for.

The rounding is done with explicit FP32 -> FP16 -> FP32 Cast pairs inside an FP32 graph (weights:
rounded copies): onnxruntime's CPU provider computes FP16-typed nodes in FP32 and drops
intermediate rounding, so an FP16-typed graph would hide every overflow. BF16 below opset 13 (which
has no Cast to BF16) is rounded in arithmetic instead, bit for bit the same (bf16_arithmetic).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from trtdebug.core.model.graph import Model
from trtdebug.core.model.weights import is_shared, placeholder, value_of
from trtdebug.core.plans.precision_plan import (
    DATA_MOVEMENT_OPS,
    ONNX_TYPE,
    PrecisionPlan,
    precision_rank,
    precision_slots,
)
from trtdebug.core.reference import ort_sessions
from trtdebug.engines.emulator.bf16_arithmetic import BF16_CAST_OPSET, bf16_rounding_nodes
from trtdebug.engines.emulator.folding import FoldedGraph
from trtdebug.engines.emulator.tactics import Shape, ShapeOf, apply_variant


class Rounder:
    """Builds the emulated graph: the folded graph with FP16/BF16 rounding at layer I/O.

    The folded graph's large weights are placeholders (core.model.weights) whose arrays are in
    `weights`; their rounded copies are placeholders too, their arrays added to `weights` (which
    may hold them already, from an earlier graph of the same folded graph: rounding is the same)."""

    def __init__(self, folded: onnx.ModelProto, opset: int, shape_of: ShapeOf | None = None,
                 weights: dict[str, np.ndarray] | None = None):
        self.opset = opset
        self.shape_of = shape_of
        self.weights = weights if weights is not None else {}
        self.graph = onnx.GraphProto()
        self.graph.CopyFrom(folded.graph)
        del self.graph.node[:]
        self.initializers = {i.name: i for i in folded.graph.initializer}
        self.rounded: dict[str, str] = {}  # tensor -> precision it is already rounded to
        self.cast_cache: dict[tuple[str, str], str] = {}

    def value(self, name: str) -> np.ndarray:
        """An initializer's value (a placeholder's array, or the proto's data)."""
        return value_of(self.initializers[name], self.weights)

    def round_tensor(self, tensor: str, precision: str) -> str:
        """Name of `tensor` rounded to `precision` (values still FP32)."""
        if self.rounded.get(tensor) == precision:
            return tensor
        key = (tensor, precision)
        if key in self.cast_cache:
            return self.cast_cache[key]
        name = f"{tensor}::{precision}"
        if tensor in self.initializers:
            if self.initializers[tensor].data_type != onnx.TensorProto.FLOAT:
                return tensor
            if is_shared(self.initializers[tensor]):  # a large weight: rounded once, held as an array
                if name not in self.weights:
                    self.weights[name] = round_values(self.weights[tensor], precision)
                self.graph.initializer.append(placeholder(onnx.TensorProto(
                    name=name, data_type=onnx.TensorProto.FLOAT, dims=self.initializers[tensor].dims)))
            else:
                rounded = round_values(self.value(tensor), precision)
                self.graph.initializer.append(numpy_helper.from_array(rounded, name))
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
        self.graph.node.extend(self.rounding_nodes(source, target, precision))

    def rounding_nodes(self, source: str, target: str, precision: str) -> list[onnx.NodeProto]:
        """Nodes writing `source` rounded to `precision` as `target`, both FP32: a Cast pair, or for BF16
        below opset 13 (no Cast to BF16 there) the same rounding in arithmetic."""
        low = f"{target}::cast"
        if precision == "bf16" and self.opset < BF16_CAST_OPSET:
            return bf16_rounding_nodes(source, target, low, self.opset)
        return [helper.make_node("Cast", [source], [low], to=ONNX_TYPE[precision], name=f"{low}::in"),
                helper.make_node("Cast", [low], [target], to=onnx.TensorProto.FLOAT, name=f"{low}::out")]

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
        renamed = raw_outputs(copy, out_slots, float_tensors)
        self.graph.node.append(copy)
        for raw, final in renamed:
            self._cast_pair(raw, final, precision)
            self.rounded[final] = precision


def raw_outputs(node: onnx.NodeProto, out_slots: Iterable[int], floats: set[str]) -> list[tuple[str, str]]:
    """Rename `node`'s float precision-carrying outputs to `<name>::raw` (their rounding writes the
    name); returns (raw, name) for each."""
    renamed = []
    for i in out_slots:
        t = node.output[i]
        if t and t in floats:
            node.output[i] = f"{t}::raw"
            renamed.append((node.output[i], t))
    return renamed


def round_values(value: np.ndarray, precision: str) -> np.ndarray:
    """`value` rounded to `precision` (to nearest even; FP16: beyond 65504 is inf), as FP32: `value`
    itself where no bit changes."""
    if precision not in ("fp16", "bf16"):
        return value
    if value.size >= CAST_SESSION_ELEMENTS:
        return _rounded_by_cast(np.ascontiguousarray(value, dtype=np.float32), precision)
    if precision == "fp16":
        with np.errstate(over="ignore"):
            rounded = value.astype(np.float16).astype(np.float32)
    else:
        bits = value.astype(np.float32).view(np.uint32).astype(np.uint64)  # the upper 16 bits, to nearest even
        rounded = (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
        rounded = np.where(np.isnan(value), value.astype(np.float32), rounded)  # the carry would make NaN inf
    unchanged = value.dtype == np.float32 and np.array_equal(rounded.view(np.uint32), value.view(np.uint32))
    return value if unchanged else rounded


# Arrays from this size on are rounded by onnxruntime's Cast kernels, vectorized and threaded: NumPy's
# one-threaded conversion took about 8 s of the 1.1 B decoder's build. The same bits (tested).
CAST_SESSION_ELEMENTS = 1 << 16
ROUNDING_CHUNK = 1 << 22  # elements rounded at a time while the values come out unchanged


def _rounded_by_cast(value: np.ndarray, precision: str) -> np.ndarray:
    """`value` rounded; `value` itself where rounding changes no bit (a model stored in FP16, upcast to
    FP32 when loaded, rounds to itself in FP16): no second copy of its weights then."""
    session = _cast_pair_session(precision)
    flat = value.reshape(-1)
    scratch = np.empty(min(flat.size, ROUNDING_CHUNK), np.float32)
    rounded: np.ndarray | None = None
    for start in range(0, flat.size, ROUNDING_CHUNK):
        part = flat[start:start + ROUNDING_CHUNK]
        if rounded is not None:  # changed already: the rest is rounded in place, a chunk at a time
            _cast(session, part, rounded[start:start + part.size])
            continue
        _cast(session, part, scratch[:part.size])
        if not np.array_equal(scratch[:part.size].view(np.uint32), part.view(np.uint32)):
            rounded = np.empty_like(flat)
            rounded[:start] = flat[:start]
            rounded[start:start + part.size] = scratch[:part.size]
    return value if rounded is None else rounded.reshape(value.shape)


def _cast(session: ort.InferenceSession, source: np.ndarray, target: np.ndarray) -> None:
    binding = session.io_binding()  # written straight into `target`, both contiguous
    binding.bind_cpu_input("x", source)
    binding.bind_output("y", "cpu", 0, np.float32, [source.size], target.ctypes.data)
    session.run_with_iobinding(binding)


@functools.cache
def _cast_pair_session(precision: str) -> ort.InferenceSession:
    low = f"x::{precision}"
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], [low], to=ONNX_TYPE[precision]),
         helper.make_node("Cast", [low], ["y"], to=onnx.TensorProto.FLOAT)], f"round_to_{precision}",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", BF16_CAST_OPSET)])
    model.ir_version = 8
    return ort_sessions.session(model, built=f"the {precision.upper()} rounding graph")


# Recurrent ops step through time inside one ONNX node, and control flow runs whole subgraphs: the
# emulator rounds such a layer's inputs and outputs, not every time step (TensorRT rounds each step).
RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})
FP32_INSIDE = "FP32 inside: the emulator rounds this layer's inputs and outputs, not each step or subgraph node"


def rounds_only_at_edges(node: onnx.NodeProto) -> bool:
    return node.op_type in RECURRENT_OPS or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def layer_precision(model: Model, plan: PrecisionPlan, nodes: tuple[str, ...]) -> str:
    """A fused layer computes in the highest precision any of its ONNX nodes asks for."""
    precisions = [plan.precision_of(n) for n in nodes
                  if model.node_by_name[n].op_type not in DATA_MOVEMENT_OPS] or ["fp32"]
    return max(precisions, key=precision_rank)


def float_tensors(model: Model, folded: FoldedGraph) -> set[str]:
    """The folded graph's float tensors: the ones a reduced-precision layer rounds."""
    names = {t for n in folded.proto.graph.node for t in [*n.input, *n.output] if t}
    floats = {t for t in names if model.is_float(t)}
    for init in folded.proto.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            floats.add(init.name)
    return floats | _new_float_tensors(model, folded)


def _new_float_tensors(model: Model, folded: FoldedGraph) -> set[str]:
    """Tensors the folding created (not in the original model): float if any input is."""
    floats: set[str] = set()
    for node in folded.proto.graph.node:
        for t in node.output:
            invented = t and t not in model.producer and node.op_type not in ("Shape", "Size")
            if invented and any(model.is_float(i) or i in floats for i in node.input):
                floats.add(t)
    return floats


def rounded_graph(source: onnx.ModelProto, opset: int, precisions: Mapping[str, str], tactics: Mapping[str, str],
                  floats: set[str], shape_of: ShapeOf, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """`source` (the folded graph, or a part of it) with each layer rounded to its precision
    (`precisions`, by layer name) and emitted by its tactic's arithmetic variant. `weights`: the
    arrays of `source`'s weight placeholders; the rounded weights' arrays are added to it."""
    rounder = Rounder(source, opset, shape_of, weights)
    for node in source.graph.node:
        precision = precisions[node.name]
        plain = apply_variant(node, tactics.get(node.name, ""), precision, rounder)
        if plain is not None:  # None: the variant emitted the layer itself
            rounder.add(plain, precision, floats)
    proto = onnx.ModelProto()
    proto.CopyFrom(source)
    proto.graph.CopyFrom(rounder.graph)
    del proto.graph.value_info[:]  # names changed; onnxruntime infers what it needs
    return proto
