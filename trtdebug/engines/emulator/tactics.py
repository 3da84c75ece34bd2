"""Arithmetic variants ("tactics") of emulated layers, and the emulated autotuner that picks them.

TensorRT times several kernels per layer and keeps the fastest, and kernels differ in how they
accumulate, so two builds of one model can compute different numbers. The emulator offers the
same kind of choice, computed for real by onnxruntime, for layers that reduce (MatMul, Gemm, Conv)
in reduced precision:

- ``fp32_accumulate``: FP32 arithmetic inside the layer (the default; what the emulator always did).
- ``fp16_accumulate``: the reduction dimension K is cut into blocks of 16; each block's partial
  result is rounded to FP16 and added to an FP16 running sum, rounded after every addition, as an
  FP16-accumulating tensor-core kernel does. With a large K and terms of one sign the running sum
  grows until FP16 spacing swallows the addends. FP16 layers only.
- ``split_k2``: K split in two halves computed in FP32, each half written in the layer's precision
  (an FP16 workspace) and the two summed and rounded, as a split-K kernel does.

The emulated autotuner picks ``fp32_accumulate`` unless the model carries a preference (metadata
``trtdebug.emulator.tactics`` = JSON {onnx node: variant}: how a fixture makes it pick a wrong kernel)
or a tactic seed adds timing noise, so repeated builds differ. Banned variants are never picked; a
ban naming a variant the layer does not offer is ignored. Variants need opset >= 13 and static
reduction sizes; other layers keep their single variant.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import helper, numpy_helper

from trtdebug.core.plans.precision_plan import REDUCED
from trtdebug.errors import UserError

FP32_ACCUMULATE = "fp32_accumulate"
FP16_ACCUMULATE = "fp16_accumulate"
SPLIT_K = "split_k2"
VARIANTS = (FP32_ACCUMULATE, FP16_ACCUMULATE, SPLIT_K)  # also the default order of preference
ACCUMULATION_BLOCK = 16  # K per FP16 tensor-core MMA step (m16n8k16)
PREFERENCE_KEY = "trtdebug.emulator.tactics"
MIN_OPSET = 13  # Split/Pad/ReduceSum take their sizes as inputs from here on

# Nominal kernel times: FP32 accumulation wins by a hair, so without noise it is always picked;
# seeded noise of +-20% lets any variant win, like timing jitter on a busy GPU.
NOMINAL_MS = {FP32_ACCUMULATE: 1.00, FP16_ACCUMULATE: 1.01, SPLIT_K: 1.02}
TIMING_NOISE = 0.2

Shape = tuple[int | str | None, ...]
ShapeOf = Callable[[str], Shape | None]


class VariantEmitter(Protocol):
    """What a variant needs from the emulator's graph builder (engines.emulator.rounding.Rounder)."""

    initializers: dict[str, onnx.TensorProto]

    def value(self, name: str) -> np.ndarray: ...
    def round_tensor(self, tensor: str, precision: str) -> str: ...
    def round_into(self, source: str, target: str, precision: str) -> None: ...
    def rounding_nodes(self, source: str, target: str, precision: str) -> list[onnx.NodeProto]: ...
    def emit(self, node: onnx.NodeProto) -> None: ...
    def add_initializer(self, name: str, value: np.ndarray) -> str: ...
    def shape(self, tensor: str) -> Shape | None: ...


@dataclass(frozen=True)
class TacticChoice:
    """What the emulated autotuner did for one layer."""

    variant: str
    alternatives: tuple[str, ...]  # other variants it could still pick (offered, not banned)
    banned: tuple[str, ...] = ()  # offered variants it skipped because of a ban
    timings_ms: dict[str, float] = field(default_factory=dict)
    reason: str = "fastest"  # fastest | model preference | only variant | all banned


# -- which variants a layer offers -------------------------------------------------------------

def _static(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def reduction_length(node: onnx.NodeProto, shape_of: ShapeOf) -> int | None:
    """The static length K of the layer's reduction, or None where variants cannot apply."""
    if node.op_type == "MatMul":
        a, b = shape_of(node.input[0]), shape_of(node.input[1])
        if a is None or b is None or len(a) < 2 or len(b) < 2:
            return None  # 1-D operands: a dot product TensorRT runs as a plain reduction
        return _static(a[-1]) or _static(b[-2])
    if node.op_type == "Gemm":
        b = shape_of(node.input[1])
        if b is None or len(b) != 2:
            return None
        return _static(b[1] if _attr(node, "transB", 0) else b[0])
    if node.op_type == "Conv":
        w = shape_of(node.input[1])
        if _attr(node, "group", 1) != 1 or w is None or len(w) < 3:
            return None
        return _static(w[1])  # blocks of input channels (each with its whole kernel window)
    return None


def offered_variants(node: onnx.NodeProto, precision: str, opset: int, shape_of: ShapeOf,
                     is_float: Callable[[str], bool], constants: set[str]) -> tuple[str, ...]:
    """The variants this layer has; () for layers with a single kernel and nothing to choose."""
    if precision not in REDUCED or not node.output or not is_float(node.output[0]):
        return ()
    k = reduction_length(node, shape_of)
    if k is None:
        return ()
    # Conv variants regroup the weights at build time, so weights and bias must be constants.
    variable_conv = node.op_type == "Conv" and any(t and t not in constants for t in node.input[1:])
    if opset < MIN_OPSET or k < 2 or variable_conv:
        return (FP32_ACCUMULATE,)
    variants = [FP32_ACCUMULATE]
    if precision == "fp16" and k > ACCUMULATION_BLOCK:
        variants.append(FP16_ACCUMULATE)
    variants.append(SPLIT_K)
    return tuple(variants)


# -- the emulated autotuner ----------------------------------------------------------------------

def model_preferences(proto: onnx.ModelProto) -> dict[str, str]:
    """{onnx node: variant} from the model metadata; how a fixture makes the autotuner pick."""
    raw = next((p.value for p in proto.metadata_props if p.key == PREFERENCE_KEY), None)
    if raw is None:
        return {}
    try:
        prefs = json.loads(raw)
    except json.JSONDecodeError:
        prefs = None
    if not isinstance(prefs, dict) or not all(isinstance(v, str) for v in prefs.values()):
        raise UserError(f"model metadata {PREFERENCE_KEY!r} must be JSON {{node name: variant}}; fix or remove it")
    unknown = sorted(set(prefs.values()) - set(VARIANTS))
    if unknown:
        raise UserError(f"model metadata {PREFERENCE_KEY!r} names unknown variant {unknown[0]!r}; "
                        f"use one of {', '.join(VARIANTS)}")
    return {str(k): v for k, v in prefs.items()}


def timings(layer: str, seed: int | None) -> dict[str, float]:
    """Emulated kernel timings: nominal, plus noise that depends only on (seed, layer)."""
    if seed is None:
        return dict(NOMINAL_MS)
    rng = np.random.default_rng([seed, zlib.crc32(layer.encode())])
    noise = rng.uniform(1 - TIMING_NOISE, 1 + TIMING_NOISE, size=len(VARIANTS))
    return {v: round(NOMINAL_MS[v] * float(n), 4) for v, n in zip(VARIANTS, noise, strict=True)}


class TacticChooser:
    """Picks one variant per layer of the folded graph, as TensorRT's autotuner picks kernels."""

    def __init__(self, model: Any, folded: Any, seed: int | None = None):
        self.model = model
        self.folded = folded
        self.seed = seed
        self.shape_of = tensor_shapes(model, folded.proto)
        self.preferences = model_preferences(model.proto)
        self.constants = {i.name for i in folded.proto.graph.initializer}
        self.choices: dict[str, TacticChoice] = {}

    def choose(self, precisions: Mapping[str, str], bans: Any) -> dict[str, str]:
        self.choices = {}
        for node in self.folded.proto.graph.node:
            offered = offered_variants(node, precisions.get(node.name, "fp32"), self.model.opset,
                                       self.shape_of, self._is_float, self.constants)
            if offered:
                self.choices[node.name] = self._choose_one(node.name, offered, self._banned(node.name, bans))
        return {layer: choice.variant for layer, choice in self.choices.items()}

    def _is_float(self, tensor: str) -> bool:
        return bool(self.model.is_float(tensor))

    def _banned(self, layer: str, bans: Any) -> set[str]:
        if not bans:
            return set()
        covers = tuple(self.folded.covers.get(layer, ()))
        return set(bans.banned_for(layer, covers)) | set(bans.banned_for(display_name(layer, covers), covers))

    def _preferred(self, layer: str) -> str | None:
        for node in self.folded.covers.get(layer, (layer,)):
            if node in self.preferences:
                return self.preferences[node]
        return self.preferences.get(layer)

    def _choose_one(self, layer: str, offered: tuple[str, ...], banned: set[str]) -> TacticChoice:
        allowed = [v for v in offered if v not in banned]
        skipped = tuple(v for v in offered if v in banned)
        times = {v: t for v, t in timings(layer, self.seed).items() if v in offered}
        if not allowed:  # like an empty selection in TensorRT: the builder's default still runs
            return TacticChoice(FP32_ACCUMULATE, (), skipped, times, "all banned")
        preferred = self._preferred(layer)
        if preferred in allowed:
            variant, reason = preferred, "model preference"
        else:
            variant = min(allowed, key=lambda v: (times[v], VARIANTS.index(v)))
            reason = "only variant" if len(allowed) == 1 else "fastest"
        return TacticChoice(variant, tuple(v for v in allowed if v != variant), skipped, times, reason)


def display_name(layer: str, covers: tuple[str, ...]) -> str:
    """The name an emulated layer carries in LayerInfo: the ONNX nodes it covers."""
    return " + ".join(covers) or layer


def tensor_shapes(model: Any, folded: onnx.ModelProto) -> ShapeOf:
    """Static shapes of the folded graph's tensors: the model's, plus folded-in initializers."""
    initializer_dims = {i.name: tuple(int(d) for d in i.dims) for i in folded.graph.initializer}

    def shape_of(tensor: str) -> Shape | None:
        if tensor in initializer_dims:
            return initializer_dims[tensor]
        shape: Shape | None = model.spec(tensor).shape
        return shape

    return shape_of


# -- emitting a variant into the emulated graph --------------------------------------------------

def apply_variant(node: onnx.NodeProto, variant: str, precision: str,
                  rounder: VariantEmitter) -> onnx.NodeProto | None:
    """The node to round and add as usual, or None where the variant emitted the layer itself."""
    if variant in ("", FP32_ACCUMULATE) or precision not in REDUCED:
        return node
    if variant not in (FP16_ACCUMULATE, SPLIT_K):
        raise UserError(f"unknown emulator variant {variant!r} for layer {node.name!r}")
    k = reduction_length(node, rounder.shape)
    if k is None:
        raise UserError(f"layer {node.name!r} has no static reduction size, so variant {variant!r} "
                        "cannot be emulated")
    block = ACCUMULATION_BLOCK if variant == FP16_ACCUMULATE else math.ceil(k / 2)
    accumulate_in = "fp16" if variant == FP16_ACCUMULATE else precision
    emit = _Subgraph(rounder, f"{node.name}::{variant}")
    if node.op_type == "MatMul":
        _emit_matmul(emit, node, k, block, precision, accumulate_in)
    elif node.op_type == "Gemm":
        _emit_gemm(emit, node, k, block, precision, accumulate_in)
    else:
        _emit_conv(emit, node, k, block, precision, accumulate_in)
    return None


class _Subgraph:
    """Emits uniquely named nodes and constants for one layer's variant."""

    def __init__(self, rounder: VariantEmitter, prefix: str):
        self.rounder = rounder
        self.prefix = prefix
        self.count = 0

    def name(self, what: str) -> str:
        self.count += 1
        return f"{self.prefix}::{what}{self.count}"

    def op(self, op_type: str, inputs: list[str], what: str, **attrs: Any) -> str:
        out = self.name(what)
        self.rounder.emit(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def ints(self, values: list[int], what: str) -> str:
        return self.rounder.add_initializer(self.name(what), np.asarray(values, np.int64))

    def constant(self, value: np.ndarray, what: str) -> str:
        return self.rounder.add_initializer(self.name(what), value)


def _rank(rounder: VariantEmitter, tensor: str) -> int:
    shape = rounder.shape(tensor)
    if shape is None:
        raise UserError(f"rank of {tensor!r} is unknown, so its accumulation variant cannot be emulated")
    return len(shape)


def _pad_axis(emit: _Subgraph, tensor: str, rank: int, axis: int, amount: int) -> str:
    """Zeros appended along one axis (they add nothing to a sum)."""
    if amount == 0:
        return tensor
    pads = [0] * (2 * rank)
    pads[rank + (axis % rank)] = amount
    return emit.op("Pad", [tensor, emit.ints(pads, "pads")], "pad")


def _blockwise_matmul(emit: _Subgraph, a: str, b: str, rank_a: int, rank_b: int, k: int, block: int,
                      accumulate_in: str) -> str:
    """A @ B with K cut into blocks: every block's product, then their rounded running sum."""
    blocks = math.ceil(k / block)
    a = _pad_axis(emit, a, rank_a, -1, blocks * block - k)
    b = _pad_axis(emit, b, rank_b, -2, blocks * block - k)
    # A [..., M, K] -> [..., blocks, M, block];  B [..., K, N] -> [..., blocks, block, N]
    a = emit.op("Reshape", [a, emit.ints([0] * (rank_a - 1) + [blocks, block], "shape")], "a_blocks")
    a = emit.op("Transpose", [a], "a_blocks_t", perm=[*range(rank_a - 2), rank_a - 1, rank_a - 2, rank_a])
    b = emit.op("Reshape", [b, emit.ints([0] * (rank_b - 2) + [blocks, block, -1], "shape")], "b_blocks")
    partials = emit.op("MatMul", [a, b], "partials")  # [..., blocks, M, N]
    return _running_sum(emit, partials, -3, accumulate_in)


def _running_sum(emit: _Subgraph, partials: str, axis: int, accumulate_in: str) -> str:
    """Sum over `axis` in order, rounding each partial and every running sum to `accumulate_in`."""
    partials = emit.rounder.round_tensor(partials, accumulate_in)
    first = emit.op("Gather", [partials, emit.ints([0], "index")], "first", axis=axis)
    zeros = emit.op("ConstantOfShape", [emit.op("Shape", [first], "shape")], "zeros",
                    value=numpy_helper.from_array(np.zeros(1, np.float32)))
    zeros = emit.op("Squeeze", [zeros, emit.ints([axis], "axes")], "zeros_squeezed")
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "part"], ["sum"], name="add"),
         *emit.rounder.rounding_nodes("sum", "acc_out", accumulate_in)],
        f"{emit.prefix}::accumulate",
        [helper.make_tensor_value_info("acc_in", onnx.TensorProto.FLOAT, None),
         helper.make_tensor_value_info("part", onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("acc_out", onnx.TensorProto.FLOAT, None)])
    return emit.op("Scan", [zeros, partials], "accumulated", body=body, num_scan_inputs=1,
                   scan_input_axes=[axis])


def _emit_matmul(emit: _Subgraph, node: onnx.NodeProto, k: int, block: int, precision: str,
                 accumulate_in: str) -> None:
    r = emit.rounder
    a, b = (r.round_tensor(t, precision) for t in node.input[:2])
    total = _blockwise_matmul(emit, a, b, _rank(r, node.input[0]), _rank(r, node.input[1]), k, block,
                              accumulate_in)
    r.round_into(total, node.output[0], precision)


def _emit_gemm(emit: _Subgraph, node: onnx.NodeProto, k: int, block: int, precision: str,
               accumulate_in: str) -> None:
    r = emit.rounder
    a, b = (r.round_tensor(t, precision) for t in node.input[:2])
    if _attr(node, "transA", 0):
        a = emit.op("Transpose", [a], "a_t", perm=[1, 0])
    if _attr(node, "transB", 0):
        b = emit.op("Transpose", [b], "b_t", perm=[1, 0])
    total = _blockwise_matmul(emit, a, b, 2, 2, k, block, accumulate_in)
    alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))
    if alpha != 1.0:
        total = emit.op("Mul", [total, emit.constant(np.array(alpha, np.float32), "alpha")], "scaled")
    if len(node.input) > 2 and node.input[2]:
        c = r.round_tensor(node.input[2], precision)
        if beta != 1.0:
            c = emit.op("Mul", [c, emit.constant(np.array(beta, np.float32), "beta")], "c_scaled")
        total = emit.op("Add", [total, c], "biased")
    r.round_into(total, node.output[0], precision)


def _emit_conv(emit: _Subgraph, node: onnx.NodeProto, channels: int, block: int, precision: str,
               accumulate_in: str) -> None:
    """Channel blocks as the groups of one grouped convolution, then their rounded running sum."""
    r = emit.rounder
    if node.input[1] not in r.initializers:
        raise UserError(f"conv {node.name!r} has non-constant weights, so its accumulation variant "
                        "cannot be emulated")
    weight = r.value(node.input[1]).astype(np.float32)
    out_channels, rank = weight.shape[0], weight.ndim
    blocks = math.ceil(channels / block)
    grouped = np.zeros((blocks * out_channels, block, *weight.shape[2:]), np.float32)
    for g in range(blocks):
        part = weight[:, g * block:(g + 1) * block]
        grouped[g * out_channels:(g + 1) * out_channels, :part.shape[1]] = part
    x = _pad_axis(emit, r.round_tensor(node.input[0], precision), rank, 1, blocks * block - channels)
    w = r.round_tensor(emit.constant(grouped, "grouped_weight"), precision)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "group"}
    y = emit.op("Conv", [x, w], "partials", group=blocks, **attrs)  # [N, blocks * O, *spatial]
    flat = emit.op("Reshape", [y, emit.ints([0, blocks, out_channels, -1], "shape")], "partials_flat")
    total = _running_sum(emit, flat, 1, accumulate_in)  # [N, O, prod(spatial)]
    y_shape = emit.op("Shape", [y], "y_shape")
    batch = emit.op("Slice", [y_shape, emit.ints([0], "start"), emit.ints([1], "end")], "batch")
    spatial = emit.op("Slice", [y_shape, emit.ints([2], "start"), emit.ints([rank], "end")], "spatial")
    out_shape = emit.op("Concat", [batch, emit.ints([out_channels], "channels"), spatial], "out_shape", axis=0)
    total = emit.op("Reshape", [total, out_shape], "accumulated_nd")
    if len(node.input) > 2 and node.input[2] and node.input[2] in r.initializers:
        bias = r.value(node.input[2]).astype(np.float32)
        broadcastable = emit.constant(bias.reshape(out_channels, *[1] * (rank - 2)), "bias")
        total = emit.op("Add", [total, r.round_tensor(broadcastable, precision)], "biased")
    elif len(node.input) > 2 and node.input[2]:
        raise UserError(f"conv {node.name!r} has a non-constant bias, so its accumulation variant "
                        "cannot be emulated")
    r.round_into(total, node.output[0], precision)
