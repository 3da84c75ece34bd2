"""Q/DQ graphs: find the QuantizeLinear -> DequantizeLinear pairs, derive the float counterpart,
and remove chosen pairs (INT8 fallback).

Tensors are matched across the pairs structurally, whatever names the exporter used
(onnxruntime's `_QuantizeLinear_Output`, ModelOpt's, pytorch-quantization's): the output of a
DequantizeLinear *stands for* the float tensor its QuantizeLinear read. Removing every pair and
wiring each consumer of a DequantizeLinear output back to that float tensor gives the float
counterpart, with the Q/DQ model's own node and tensor names, which the FP32 reference runs.

A pair is named by its QuantizeLinear node; precision plans of Q/DQ models name pairs this way
(`{"<QuantizeLinear node>": "fp16"}`: the pair is removed, its consumers read the float tensor).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper

from trtdebug.core.model.graph import Model
from trtdebug.errors import UserError

# Integer-arithmetic operators (onnxruntime's QOperator format): no float tensor exists between
# them, so neither TensorRT nor a float counterpart can take them.
INTEGER_OPS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd",
                         "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearGlobalAveragePool",
                         "QLinearConcat", "QLinearAveragePool", "DynamicQuantizeLinear"})
QUANTIZED_DTYPES = (np.int8, np.uint8, np.int16, np.uint16)
INT4_DTYPES = (ml_dtypes.int4, ml_dtypes.uint4)
# FP8 E4M3 (the FP8 TensorRT and ModelOpt use): QuantizeLinear saturates to its largest finite value.
FP8_E4M3_MAX = 448.0
# Codes of block-scaled formats trtdebug cannot emulate: the operator, by what it is called.
UNSUPPORTED_CODE_TYPES = {onnx.TensorProto.FLOAT8E5M2: "FP8 E5M2", onnx.TensorProto.FLOAT8E4M3FNUZ: "FP8 E4M3FNUZ",
                          onnx.TensorProto.FLOAT8E5M2FNUZ: "FP8 E5M2FNUZ",
                          **({onnx.TensorProto.FLOAT4E2M1: "FP4 E2M1 (NVFP4)"}
                             if hasattr(onnx.TensorProto, "FLOAT4E2M1") else {}),
                          **({onnx.TensorProto.FLOAT8E8M0: "E8M0 block scales (MXFP8)"}
                             if hasattr(onnx.TensorProto, "FLOAT8E8M0") else {})}


@dataclass(frozen=True)
class QuantParams:
    """How one tensor is quantized: q = saturate(round_half_even(x / scale) + zero_point)."""

    scale: np.ndarray  # scalar, or one value per channel along `axis`
    zero_point: np.ndarray
    axis: int | None  # None: per tensor
    qmin: int
    qmax: int

    def broadcast(self, value: np.ndarray, ndim: int) -> np.ndarray:
        if self.axis is None or value.ndim == 0:
            return value
        shape = [1] * ndim
        shape[self.axis % ndim] = value.size
        return value.reshape(shape)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """The integer codes (as float64), saturated to [qmin, qmax]."""
        scale = self.broadcast(self.scale.astype(np.float64), x.ndim)
        zero = self.broadcast(self.zero_point.astype(np.float64), x.ndim)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.asarray(np.clip(np.rint(np.asarray(x, np.float64) / scale) + zero, self.qmin, self.qmax))

    def fake_quantize(self, x: np.ndarray) -> np.ndarray:
        """Quantize then dequantize: the values an INT8 layer reads (float32, like TensorRT)."""
        scale = self.broadcast(self.scale.astype(np.float64), x.ndim)
        zero = self.broadcast(self.zero_point.astype(np.float64), x.ndim)
        return np.asarray((self.quantize(x) - zero) * scale, dtype=np.float32)

    def clip_range(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        """The lowest and highest float values that survive quantization without clipping."""
        scale = self.broadcast(self.scale.astype(np.float64), ndim)
        zero = self.broadcast(self.zero_point.astype(np.float64), ndim)
        return (self.qmin - zero) * scale, (self.qmax - zero) * scale

    def describe(self) -> str:
        scale = self.scale.reshape(-1)
        shown = f"{float(scale[0]):.4g}" if scale.size == 1 else \
            f"{float(scale.min()):.4g}..{float(scale.max()):.4g} over {scale.size} channels"
        return f"scale {shown}, range [{self.qmin}, {self.qmax}]"

    @property
    def precision(self) -> str:
        """The plan precision of what these codes are."""
        return "int8"


@dataclass(frozen=True)
class Float8Params(QuantParams):
    """FP8 E4M3 codes: q = saturate(float8(x / scale)), rounded to nearest even as ONNX's
    QuantizeLinear (saturate=1) does, in float32; the zero point is 0."""

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """The FP8 codes' values (as float64), saturated to +-448."""
        scale = self.broadcast(self.scale.astype(np.float32), np.ndim(x))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            scaled = np.asarray(np.asarray(x, np.float32) / scale, np.float32)
        codes = np.clip(scaled, -FP8_E4M3_MAX, FP8_E4M3_MAX).astype(ml_dtypes.float8_e4m3fn)
        return np.asarray(codes.astype(np.float64))

    def fake_quantize(self, x: np.ndarray) -> np.ndarray:
        scale = self.broadcast(self.scale.astype(np.float32), np.ndim(x))
        return np.asarray(self.quantize(x).astype(np.float32) * scale, dtype=np.float32)

    def describe(self) -> str:
        return super().describe().replace(f"range [{self.qmin}, {self.qmax}]", "FP8 E4M3 range +-448 x scale")

    @property
    def precision(self) -> str:
        return "fp8"


@dataclass(frozen=True)
class BlockParams(QuantParams):
    """Block-wise codes (INT4 weights): one scale per `block_size` consecutive values along `axis`
    of a constant of shape `shape` (the last block may be shorter)."""

    block_size: int = 0
    shape: tuple[int, ...] = ()

    def broadcast(self, value: np.ndarray, ndim: int) -> np.ndarray:
        if value.ndim == 0 or value.size == 1:
            return value.reshape(())
        axis = (self.axis or 0) % len(self.shape)
        expanded = np.repeat(value, self.block_size, axis=axis)
        return np.take(expanded, np.arange(self.shape[axis]), axis=axis)

    def blocks(self) -> int:
        return int(self.scale.size)

    def describe(self) -> str:
        scale = self.scale.reshape(-1)
        return (f"scale {float(scale.min()):.4g}..{float(scale.max()):.4g} over {scale.size} blocks of "
                f"{self.block_size}, range [{self.qmin}, {self.qmax}]")

    @property
    def precision(self) -> str:
        return "int4"


@dataclass(frozen=True)
class QdqPair:
    """One QuantizeLinear and the DequantizeLinear nodes that read it."""

    quantize: str  # the QuantizeLinear node: the pair's name in plans
    dequantize: tuple[str, ...]
    source: str  # the float tensor the QuantizeLinear reads
    quantized: str  # the QuantizeLinear's output (integer codes)
    dequantized: tuple[str, ...]  # DequantizeLinear outputs: each stands for `source`
    params: QuantParams
    is_weight: bool  # the source is a constant (weights, biases)


def _constant_values(model: Model) -> dict[str, np.ndarray]:
    return dict(model.constants())


def _quant_params(node: onnx.NodeProto, constants: Mapping[str, np.ndarray]) -> QuantParams | None:
    scale = constants.get(node.input[1]) if len(node.input) > 1 else None
    if scale is None:
        return None  # a computed scale (dynamic quantization) has no fixed meaning
    zero_name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    zero = constants.get(zero_name) if zero_name else _zero_of_output_dtype(node)
    if zero is None:
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1) if scale.size > 1 else None
    block_size = next((a.i for a in node.attribute if a.name == "block_size"), 0)
    if zero.dtype == ml_dtypes.float8_e4m3fn:
        if block_size or np.any(zero.astype(np.float32) != 0):
            return None  # block-scaled FP8 (MXFP8) or a shifted FP8 grid: not TensorRT's FP8
        return Float8Params(scale.astype(np.float32), zero, axis, -int(FP8_E4M3_MAX), int(FP8_E4M3_MAX))
    if zero.dtype.type in INT4_DTYPES:
        source = constants.get(node.input[0])
        if not block_size or source is None or scale.size <= 1:
            return None  # INT4 is block-wise on weights (AWQ/RTN exports); anything else is not emulated
        info4 = ml_dtypes.iinfo(zero.dtype)
        return BlockParams(scale.astype(np.float32), zero, axis, int(info4.min), int(info4.max),
                           block_size, tuple(source.shape))
    if zero.dtype.type not in QUANTIZED_DTYPES or block_size:
        return None  # other codes, or blocked INT8: not TensorRT's INT8
    info = np.iinfo(zero.dtype)
    return QuantParams(scale.astype(np.float32), zero, axis, int(info.min), int(info.max))


def _zero_of_output_dtype(node: onnx.NodeProto) -> np.ndarray | None:
    """Without a zero point, QuantizeLinear's `output_dtype` (opset 21) says the codes' type (uint8 by
    default)."""
    output_dtype = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
    if not output_dtype:
        return np.zeros((), np.uint8)
    try:
        return np.zeros((), helper.tensor_dtype_to_np_dtype(output_dtype))
    except (KeyError, ValueError, TypeError):
        return None


def find_pairs(model: Model) -> dict[str, QdqPair]:
    """Every QuantizeLinear whose readers are all DequantizeLinear nodes, by QuantizeLinear name."""
    constants = _constant_values(model)
    pairs: dict[str, QdqPair] = {}
    for node in model.nodes:
        if node.op_type != "QuantizeLinear":
            continue
        readers = [model.node_by_name[c] for c in model.consumers.get(node.output[0], [])]
        params = _quant_params(node, constants)
        if not readers or params is None or any(r.op_type != "DequantizeLinear" for r in readers):
            continue
        pairs[node.name] = QdqPair(node.name, tuple(r.name for r in readers), node.input[0], node.output[0],
                                   tuple(r.output[0] for r in readers), params,
                                   node.input[0] in constants)
    return pairs


def has_qdq(model: Model) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.nodes)


def without_pairs(proto: onnx.ModelProto, removed: Iterable[QdqPair],
                  bypass: Mapping[str, Iterable[QdqPair]] | None = None) -> onnx.ModelProto:
    """A copy of the Q/DQ model with `removed` pairs gone (every reader of their DequantizeLinear
    outputs reads the float tensor instead), and each node in `bypass` reading the float tensors of
    the given pairs while other readers keep the quantized values (a layer set to higher precision)."""
    removed = list(removed)
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    graph = copy.graph
    stands_for: dict[str, str] = {}
    dropped: set[str] = set()
    for pair in removed:
        stands_for.update(dict.fromkeys(pair.dequantized, pair.source))
        dropped.update((pair.quantize, *pair.dequantize))
    per_node = {node: {dq: pair.source for pair in pairs for dq in pair.dequantized}
                for node, pairs in (bypass or {}).items()}

    def resolve(tensor: str, extra: Mapping[str, str]) -> str:
        seen: set[str] = set()  # chained pairs (DQ -> Q -> DQ) resolve to the first float tensor
        while tensor not in seen and (tensor in stands_for or tensor in extra):
            seen.add(tensor)
            tensor = extra.get(tensor, stands_for.get(tensor, tensor))
        return tensor

    kept = [n for n in graph.node if n.name not in dropped]
    for node in kept:
        extra = per_node.get(node.name, {})
        for i, tensor in enumerate(node.input):
            if tensor:
                node.input[i] = resolve(tensor, extra)
    del graph.node[:]
    graph.node.extend(kept)
    for output in graph.output:  # a graph output keeps its name: it becomes a copy of the float tensor
        if output.name in stands_for:
            dq = next(p for p in removed_by_output(removed, output.name))
            graph.node.append(helper.make_node("Identity", [resolve(output.name, {})], [output.name],
                                               name=dq))
    _drop_unused(graph)
    return copy


def removed_by_output(pairs: Iterable[QdqPair], tensor: str) -> Iterable[str]:
    """The DequantizeLinear node of `pairs` that writes `tensor`."""
    for pair in pairs:
        for node, output in zip(pair.dequantize, pair.dequantized, strict=True):
            if output == tensor:
                yield node


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Drop initializers and value_info of tensors nothing reads or writes any more."""
    used = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    produced = {t for n in graph.node for t in n.output} | {i.name for i in graph.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    info = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(info)


def _fold_lone_dequantize(proto: onnx.ModelProto, model: Model) -> None:
    """DequantizeLinear nodes of constants with no QuantizeLinear before them (INT8 weights stored
    quantized) become float initializers: their dequantized values are the only float weights."""
    constants = _constant_values(model)
    graph = proto.graph
    kept = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and all(t in constants for t in node.input if t):
            value = _dequantize(node, constants)
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            continue
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unused(graph)


def _dequantize(node: onnx.NodeProto, constants: Mapping[str, np.ndarray]) -> np.ndarray:
    codes = constants[node.input[0]].astype(np.float64)
    scale = constants[node.input[1]].astype(np.float64)
    zero = constants[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else np.zeros(())
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    block_size = next((a.i for a in node.attribute if a.name == "block_size"), 0)
    if block_size:  # one scale per block of `block_size` values along `axis`
        along = axis % codes.ndim
        scale = np.repeat(scale, block_size, axis=along)[tuple(
            slice(0, codes.shape[along]) if i == along else slice(None) for i in range(codes.ndim))]
        if zero.size > 1:
            zero = np.repeat(zero, block_size, axis=along)[tuple(
                slice(0, codes.shape[along]) if i == along else slice(None) for i in range(codes.ndim))]
    elif scale.size > 1:
        shape = [1] * codes.ndim
        shape[axis % codes.ndim] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.size > 1 else zero
    return ((codes - zero) * scale).astype(np.float32)


def refuse_unemulated_codes(model: Model) -> None:
    """Block-scaled formats (NVFP4's E2M1, MXFP8's E8M0 scales) and FP8 variants other than E4M3:
    one line naming the first node, exit 2."""
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*model.proto.graph.value_info, *model.proto.graph.input, *model.proto.graph.output]}
    types.update({i.name: i.data_type for i in model.proto.graph.initializer})
    for node in model.nodes:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        attributes = {a.name: a.i for a in node.attribute}
        involved = [types.get(t) for t in node.input if t] + [attributes.get("output_dtype")]
        named = next((UNSUPPORTED_CODE_TYPES[t] for t in involved if t in UNSUPPORTED_CODE_TYPES), None)
        if named is None and attributes.get("block_size") and onnx.TensorProto.FLOAT8E4M3FN in involved:
            named = "block-scaled FP8 E4M3 (MXFP8)"
        if named is not None:
            raise UserError(f"{model.name}: {node.op_type} {node.name!r} uses {named}, which neither onnxruntime "
                            "nor numpy emulates here; trtdebug compares INT8, FP8 E4M3 and block-wise INT4 "
                            "weight Q/DQ models (docs/quantized.md)")


def integer_ops(model: Model) -> list[str]:
    """The integer-arithmetic operators (QOperator format) the model uses, sorted."""
    return sorted({n.op_type for n in model.nodes if n.op_type in INTEGER_OPS})


def float_counterpart(qdq: Model, pairs: Mapping[str, QdqPair]) -> onnx.ModelProto:
    """The Q/DQ model with every pair removed: what it computes without quantization."""
    refuse_unemulated_codes(qdq)
    integer = integer_ops(qdq)
    if integer:
        raise UserError(f"{qdq.name} uses integer operators ({', '.join(integer)}: onnxruntime's QOperator "
                        "format), which TensorRT does not take; quantize its float model in QDQ format "
                        "instead (trtdebug quantize FLOAT_MODEL.onnx)")
    proto = without_pairs(qdq.proto, pairs.values())
    _fold_lone_dequantize(proto, qdq)
    left = [n.name for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if left:
        raise UserError(f"{qdq.name}: Q/DQ node {left[0]!r} is not part of a QuantizeLinear -> DequantizeLinear "
                        "pair with constant scales, so no float counterpart exists; re-export the model "
                        "with Q/DQ pairs")
    return proto


def format_precision(qdq: Model, pairs: Mapping[str, QdqPair]) -> str:
    """The one precision a Q/DQ model's pairs are in ("int8", "fp8", "int4"); a model mixing them is
    refused (one format per model)."""
    kinds = sorted({p.params.precision for p in pairs.values()})
    if len(kinds) > 1:
        raise UserError(f"{qdq.name} mixes {' and '.join(k.upper() for k in kinds)} Q/DQ pairs; trtdebug compares "
                        "one quantized format per model: export it in one")
    return kinds[0] if kinds else "int8"


class QuantizedModel(Model):
    """The float counterpart of a Q/DQ model, which the FP32 reference runs and reports name, with
    the Q/DQ model it stands for (what an INT8 build computes).

    `implicit`: the Q/DQ model was calibrated here from a float model (TensorRT's implicit INT8,
    emulated): plans name layers, as TensorRT's layer precisions do. Otherwise plans name pairs.
    """

    def __init__(self, qdq: Model, implicit: bool = False, path: Path | None = None,
                 identity: str | None = None, calibration: Mapping[str, object] | None = None):
        self.qdq = qdq
        self.pairs = find_pairs(qdq)
        self.precision = format_precision(qdq, self.pairs)
        self.implicit = implicit
        self.calibration = dict(calibration or {})
        self._identity = identity
        super().__init__(float_counterpart(qdq, self.pairs), path or qdq.path, list(qdq.data_files), qdq.weights)
        self.stored_precision = self.precision  # what the model is built in without --precision

    @property
    def outside_precision(self) -> str:
        """The precision of the layers outside the format. A Q/DQ model the user gave is strongly typed
        (TensorRT 11, --stronglyTyped): those layers run at the ONNX's own type, FP32 in an FP32
        export. An implicit INT8 build (a float model calibrated: weak typing) sets INT8 with FP16."""
        if self.implicit:
            return "fp16"
        return self.qdq.stored_precision if self.qdq.stored_precision in ("fp16", "bf16") else "fp32"

    @cached_property
    def sha256(self) -> str:
        """What plans bind to: the Q/DQ model the user gave, or (implicit) the float model."""
        return self._identity or self.qdq.sha256

    @property
    def activation_pairs(self) -> list[QdqPair]:
        return [p for p in self.pairs.values() if not p.is_weight]

    @cached_property
    def pair_of_tensor(self) -> dict[str, QdqPair]:
        """Float tensor -> the pair that quantizes it (activations and weights)."""
        return {p.source: p for p in self.pairs.values()}

    @cached_property
    def pair_readers(self) -> dict[str, list[QdqPair]]:
        """Node -> the pairs whose dequantized values it reads (its INT8 inputs)."""
        dequantized = {dq: p for p in self.pairs.values() for dq in p.dequantized}
        readers: dict[str, list[QdqPair]] = {}
        for node in self.qdq.nodes:
            for tensor in node.input:
                if tensor in dequantized and dequantized[tensor] not in readers.get(node.name, []):
                    readers.setdefault(node.name, []).append(dequantized[tensor])
        return readers

    @cached_property
    def qdq_constants(self) -> dict[str, np.ndarray]:
        return _constant_values(self.qdq)

    def plan_names(self) -> set[str]:
        return set(self.node_by_name) | set(self.pairs)

    def int8_layers(self) -> list[str]:
        """Float-counterpart nodes that read at least one dequantized tensor: TensorRT's INT8 layers."""
        return [n.name for n in self.nodes if n.name in self.pair_readers]


def removal_for_plan(model: QuantizedModel, plan_nodes: Mapping[str, str]
                     ) -> tuple[list[QdqPair], dict[str, list[QdqPair]]]:
    """What a plan takes out of INT8: pairs it names (removed) and layers it names (they read the
    float tensors of their input pairs; other readers stay INT8)."""
    removed = [model.pairs[n] for n, p in plan_nodes.items() if p != model.precision and n in model.pairs]
    bypass = {n: model.pair_readers.get(n, []) for n, p in plan_nodes.items()
              if p != model.precision and n not in model.pairs and n in model.node_by_name}
    return removed, {n: pairs for n, pairs in bypass.items() if pairs}


def qdq_for_plan(model: QuantizedModel, plan_nodes: Mapping[str, str]) -> onnx.ModelProto:
    """The Q/DQ model a plan describes: the pairs and layers it keeps out of INT8 taken out."""
    removed, bypass = removal_for_plan(model, plan_nodes)
    return without_pairs(model.qdq.proto, removed, bypass)


