"""The TensorRT network: ONNX parsing, optimization profile, marking, and weak-typing precision.

Weak typing (TensorRT 8.6-10.x) follows the TensorRT documentation's recipe: BuilderFlag FP16 /
BF16 / INT8 enable the reduced precisions, and each layer the plan names gets `layer.precision` and
`set_output_type` (and `tensor.dtype` where the output is a network output, which set_output_type
does not change), under PREFER_PRECISION_CONSTRAINTS (or OBEY on request). Layers that move data or
compute on integers cannot take a float precision and are skipped.

Strong typing (11.x, TensorRT-RTX, or 10.x on request) never touches layers: the plan was applied to
the ONNX graph before parsing (trtdebug.artifacts.mixed_onnx).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import onnx

from trtdebug.core.model.feeds import input_shape_hint
from trtdebug.core.model.weights import Weights, save_with_weights, serialized_pieces, weight_bytes
from trtdebug.core.plans.precision_plan import PRECISIONS, PrecisionPlan, builder_precisions
from trtdebug.engines.base import BuildError
from trtdebug.engines.tensorrt.layers import NodeResolver, network_layer_nodes
from trtdebug.engines.tensorrt.support import Features, quiet_deprecations
from trtdebug.errors import UserError

if TYPE_CHECKING:
    import tensorrt as trt

Shape = tuple[int, ...]
ShapeRange = tuple[Shape, Shape, Shape]  # min, opt, max

# Layer types that take no float precision constraint: shape math, constants, casts (IDENTITY is
# weak typing's cast), control flow and Q/DQ. Data-movement layers (SHUFFLE for Reshape/Transpose/
# Flatten, CONCATENATION, SLICE, SQUEEZE, UNSQUEEZE) with float outputs *are* constrained: left
# free inside a region a plan holds in FP32, the builder may move that region's data in FP16
# (NvInfer.h, ILayer::setOutputType: without it "the output type depends on the chosen implementation").
NO_PRECISION_LAYER_TYPES = ("SHAPE", "IDENTITY", "CONSTANT", "CAST", "ASSERTION", "TRIP_LIMIT", "ITERATOR",
                            "RECURRENCE", "LOOP_OUTPUT", "CONDITION", "CONDITIONAL_INPUT", "CONDITIONAL_OUTPUT",
                            "QUANTIZE", "DEQUANTIZE")
FLOAT_DATA_TYPES = ("FLOAT", "HALF", "BF16")
# Polygraphy's mark-all filter (polygraphy/backend/trt/util.py, mark_layerwise).
LOOP_START_TYPES = ("TRIP_LIMIT", "ITERATOR", "RECURRENCE")
LOOP_END_TYPES = ("LOOP_OUTPUT",)
UNMARKABLE_LAYER_TYPES = ("SHAPE", "CONSTANT")
# Data types a marked tensor may have: the ones trtdebug can bring back to the host as NumPy.
READABLE_DATA_TYPES = ("FLOAT", "HALF", "BF16", "INT8", "UINT8", "INT32", "INT64", "BOOL", "FP8")
PRECISION_DATA_TYPE = {"fp32": "FLOAT", "fp16": "HALF", "bf16": "BF16", "int8": "INT8"}
PRECISION_FLAG = {"fp16": "FP16", "bf16": "BF16", "int8": "INT8"}


def dims_tuple(dims: trt.Dims) -> Shape:
    return tuple(int(dims[i]) for i in range(len(dims)))


def as_dims(shape: Sequence[int]) -> trt.Dims:
    """pybind11 converts a tuple to Dims where TensorRT wants one (Polygraphy and NVIDIA's samples
    pass tuples); the stubs only name Dims."""
    return cast("trt.Dims", tuple(shape))


def enum_members(enum: Any, names: Iterable[str]) -> list[Any]:
    """The members of a TensorRT enum that this version has, by name."""
    return [getattr(enum, n) for n in names if hasattr(enum, n)]


# -- parsing ----------------------------------------------------------------------------------

def create_network(trt_api: Any, builder: trt.Builder, features: Features, strong: bool) -> trt.INetworkDefinition:
    creation = trt_api.NetworkDefinitionCreationFlag
    flags = 0
    if features.need_explicit_batch:
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    if strong and features.weak_typing and features.strong_flag:  # 10.x: strong typing is opt-in
        flags |= 1 << int(creation.STRONGLY_TYPED)
    return builder.create_network(flags)


def parse_onnx(trt_api: Any, network: trt.INetworkDefinition, logger: Any, proto: onnx.ModelProto,
               modified: bool, weights: Weights | None = None) -> Any:
    """Parse into `network`; the parser must outlive the network (it owns the weights). `weights`: the
    values of `proto`'s weight placeholders (core.model.weights: a Model's graph holds its large
    weights apart), put back for the parser."""
    parser = trt_api.OnnxParser(network, logger)
    ok = _parse(parser, proto, weights or {})
    if not ok:
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)] or ["no parser message"]
        message = f"TensorRT cannot parse the model: {errors[0].splitlines()[0]}{parser_reason(errors[0])}"
        if modified:  # the typed graph of a plan: a failed candidate, not bad input
            raise BuildError(message)
        raise UserError(message + "; check the model with `polygraphy inspect model`")
    return parser


def parser_reason(error: str) -> str:
    """The API error under a parser error's generic first line, e.g. TensorRT-RTX 1.7 on a 4-D block-
    quantized (INT4) conv weight: "INVALID_NODE: Invalid Node - w_QuantizeLinear" then "Error Code 4:
    API Usage Error (The blocking dimension must be the last or second to last dimension In
    validateQuantizationHelper at ...)"; "" where there is none."""
    for line in error.splitlines()[1:]:
        found = re.search(r"Error Code \d+: [^(]*\((.+?)(?: In \w+ at .*)?\)\s*$", line)
        if found and "cuda" not in line.lower():
            return f" ({found[1].strip()})"
    return ""


# protobuf cannot serialize a message of 2 GiB or more; such models go to TensorRT through a file
# with external data. A module constant so that tests can lower it.
PROTOBUF_LIMIT = (1 << 31) - 1


def _parse(parser: Any, proto: onnx.ModelProto, weights: Weights) -> bool:
    data: bytes | None = None
    held = weight_bytes(proto, weights)
    if proto.ByteSize() + held <= PROTOBUF_LIMIT:
        try:
            data = b"".join(serialized_pieces(proto, weights)) if held else proto.SerializeToString()
        except ValueError:  # over protobuf's limit after all
            data = None
    if data is not None:
        return bool(parser.parse(data))
    # Through a file, as Polygraphy's OnnxFromPath/NetworkFromOnnxPath do: parse_from_file lets the
    # parser find external weights beside the model (tools/Polygraphy/polygraphy/backend/trt/loader.py).
    # onnx.save(..., save_as_external_data=True) rewrites the tensors of the proto it is given
    # (clears raw_data, points them at the file), so it gets a copy: the caller's model stays whole.
    # The folder lives until parsing is done (the parser reads the external weights while parsing).
    with tempfile.TemporaryDirectory(prefix="trtdebug-onnx-") as folder:
        path = Path(folder) / "model.onnx"
        if held:  # the placeholders' arrays written one at a time, the proto left as it is
            save_with_weights(proto, weights, path, "model.onnx.data")
        else:
            clone = onnx.ModelProto()
            clone.CopyFrom(proto)
            onnx.save(clone, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                      location="model.onnx.data")
            del clone
        return bool(parser.parse_from_file(str(path)))


# -- optimization profile ---------------------------------------------------------------------

@dataclass
class Profile:
    """One optimization profile: min/opt/max *shapes* of execution inputs (`set_shape`) and
    min/opt/max *values* of shape-tensor inputs (`set_shape_input`)."""

    shapes: dict[str, ShapeRange] = field(default_factory=dict)
    values: dict[str, ShapeRange] = field(default_factory=dict)


def shape_ranges_for(network: trt.INetworkDefinition, input_shapes: Mapping[str, Sequence[int]],
                     shape_ranges: Mapping[str, ShapeRange],
                     shape_values: Mapping[str, Any] | None = None) -> Profile:
    """The profile of a network: per execution input a given range, else the given shape, else the
    static shape; per shape-tensor input (whose *values* set shapes in the network, e.g. a Reshape's
    target fed by a graph input) a given range of values, else the values given (the feed)."""
    profile = Profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        name = tensor.name
        static = dims_tuple(tensor.shape)
        if tensor.is_shape_tensor:
            profile.values[name] = _value_range(name, static, shape_ranges, shape_values or {})
            continue
        if name in shape_ranges:
            low, opt, high = (tuple(int(d) for d in s) for s in shape_ranges[name])
            profile.shapes[name] = (low, opt, high)
        elif name in input_shapes:
            shape = tuple(int(d) for d in input_shapes[name])
            profile.shapes[name] = (shape, shape, shape)
        elif all(d >= 0 for d in static):
            profile.shapes[name] = (static, static, static)
        else:
            raise UserError(f"input {name!r} has dynamic shape {list(static)}; give one with "
                            f"{input_shape_hint(name, static)}")
        _check_range(name, static, profile.shapes[name])
    return profile


def _value_range(name: str, static: Shape, shape_ranges: Mapping[str, ShapeRange],
                 shape_values: Mapping[str, Any]) -> ShapeRange:
    """min/opt/max values of a shape-tensor input (TensorRT: "Optimization profile 0 is missing
    values for shape input tensor" without them). Its own shape must be static (0-D or 1-D)."""
    if any(d < 0 for d in static):
        raise UserError(f"shape-tensor input {name!r} has a dynamic shape {list(static)}; trtdebug needs it static")
    count = int(np.prod(static, dtype=np.int64)) if static else 1
    if name in shape_ranges:
        low, opt, high = (tuple(int(v) for v in np.asarray(s).reshape(-1)) for s in shape_ranges[name])
    elif name in shape_values:
        values = tuple(int(v) for v in np.asarray(shape_values[name]).reshape(-1))
        low = opt = high = values
    else:
        raise UserError(f"input {name!r} is a shape tensor (its values set shapes inside the network): "
                        "the optimization profile needs its values; give them with --inputs")
    if not len(low) == len(opt) == len(high) == count:
        raise UserError(f"shape-tensor input {name!r} holds {count} values; got {[list(low), list(opt), list(high)]}")
    if not all(lo <= op <= hi for lo, op, hi in zip(low, opt, high, strict=True)):
        raise UserError(f"values {[list(low), list(opt), list(high)]} of shape-tensor input {name!r} need "
                        "min <= opt <= max")
    return low, opt, high


def _check_range(name: str, static: Shape, shape_range: ShapeRange) -> None:
    low, opt, high = shape_range
    if not (len(low) == len(opt) == len(high) == len(static)):
        raise UserError(f"shape range of input {name!r} has the wrong rank; the model's shape is {list(static)}")
    for dim, lo, op, hi in zip(static, low, opt, high, strict=True):
        if not 0 <= lo <= op <= hi or (dim >= 0 and not lo == op == hi == dim):
            raise UserError(f"shape range {[list(low), list(opt), list(high)]} of input {name!r} does not fit "
                            f"the model's shape {list(static)} (need min <= opt <= max and fixed dims kept)")


def add_profile(builder: trt.Builder, config: trt.IBuilderConfig, ranges: Profile) -> Any:
    """The profile on `config`. Shape-tensor inputs get set_shape_input (values), not set_shape, as
    Polygraphy's Profile.to_trt does (tools/Polygraphy/polygraphy/backend/trt/profile.py)."""
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in ranges.shapes.items():
        profile.set_shape(name, as_dims(low), as_dims(opt), as_dims(high))
    for name, (low, opt, high) in ranges.values.items():
        profile.set_shape_input(name, list(low), list(opt), list(high))
    config.add_optimization_profile(profile)
    return profile


# -- marking ----------------------------------------------------------------------------------

def network_tensors(network: trt.INetworkDefinition) -> dict[str, trt.ITensor]:
    tensors = {}
    for i in range(network.num_inputs):
        tensors[network.get_input(i).name] = network.get_input(i)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            tensor = layer.get_output(j)
            if tensor is not None:
                tensors[tensor.name] = tensor
    return tensors


def markable_tensors(trt_api: Any, network: trt.INetworkDefinition, wanted: set[str]) -> list[str]:
    """Layer outputs that can be exposed, in network order: Polygraphy's filter (no SHAPE or
    CONSTANT outputs, nothing inside a loop), no network inputs or outputs, only tensors named in
    `wanted` (the ONNX tensors compare can match) and of a type trtdebug can read back."""
    layer_types = trt_api.LayerType
    loop_start = enum_members(layer_types, LOOP_START_TYPES)
    loop_end = enum_members(layer_types, LOOP_END_TYPES)
    excluded = enum_members(layer_types, UNMARKABLE_LAYER_TYPES)
    readable = enum_members(trt_api.DataType, READABLE_DATA_TYPES)
    names: list[str] = []
    in_loop = False
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in loop_start:
            in_loop = True
        elif layer.type in loop_end:
            in_loop = False
        if in_loop or layer.type in excluded:
            continue
        for j in range(layer.num_outputs):
            tensor = layer.get_output(j)
            if tensor is None or tensor.is_network_input or tensor.is_network_output:
                continue
            if tensor.name in wanted and tensor.dtype in readable and tensor.name not in names:
                names.append(tensor.name)
    return names


def mark(network: trt.INetworkDefinition, names: Sequence[str], mode: str) -> list[str]:
    """Expose `names` as network outputs ("outputs") or debug tensors ("debug"). Returns the names
    TensorRT refused: `markDebug` returns false when the tensor is not marked (NvInfer.h,
    INetworkDefinition::markDebug; `mark_output` returns nothing)."""
    tensors = network_tensors(network)
    refused: list[str] = []
    for name in names:
        tensor = tensors.get(name)
        if tensor is None:
            raise BuildError(f"the network has no tensor {name!r} to mark")
        if mode == "outputs":
            network.mark_output(tensor)
        elif mode == "debug" and not network.mark_debug(tensor):
            refused.append(name)
    return refused


def mark_unfused(network: Any) -> None:
    """TensorRT 10.12+: every tensor that survives fusion becomes a debug tensor; fusions stay."""
    network.mark_unfused_tensors_as_debug_tensors()


# -- weak typing -------------------------------------------------------------------------------

@dataclass
class PrecisionNotes:
    flags: list[str] = field(default_factory=list)
    constraints: str = ""  # prefer | obey | "" (none needed)
    constrained: list[str] = field(default_factory=list)  # network layers given a precision
    skipped: list[str] = field(default_factory=list)  # planned, but cannot take a float precision
    held_to: str = ""  # every layer the plan does not name is constrained to this precision

    def to_json(self) -> dict[str, Any]:
        return {"flags": self.flags, "constraints": self.constraints, "constrained_layers": self.constrained,
                "skipped_layers": self.skipped, "others_held_to": self.held_to}


def builder_precision_flags(features: Features, plan: PrecisionPlan) -> list[str]:
    """BuilderFlag names a plan needs: its default's, then every other reduced precision it uses.

    An INT8 default always comes with FP16 (INT8 with FP16 fallback, as the weakly typed Q/DQ build
    does): the candidates a search makes from it plan nodes FP16, and a baseline built without the
    FP16 flag would differ from every candidate in more than the nodes they move."""
    used = builder_precisions(plan)
    ordered = [plan.default, *(p for p in PRECISIONS if p != plan.default)]
    flags = [PRECISION_FLAG[p] for p in ordered if p in used and p in PRECISION_FLAG]
    if "BF16" in flags and not features.bf16_flag:
        raise UserError(f"this TensorRT ({features.version}) has no BF16 builder flag; use --precision fp16")
    return flags


def can_take_precision(trt_api: Any, layer: trt.ILayer) -> bool:
    if layer.type in enum_members(trt_api.LayerType, NO_PRECISION_LAYER_TYPES):
        return False
    float_types = enum_members(trt_api.DataType, FLOAT_DATA_TYPES)
    for j in range(layer.num_outputs):
        tensor = layer.get_output(j)
        if tensor is None or tensor.is_shape_tensor or tensor.dtype not in float_types:
            return False
    return True


def held_to_default(plan: PrecisionPlan) -> str | None:
    """The precision every layer the plan does not name must be held to, or None.

    A builder flag lets *every* layer use its precision (BuilderFlag.FP16: "enable FP16 layer
    selection, with FP32 fallback"). A plan whose default is FP32 but names FP16 layers sets FP16,
    so the builder may run any unnamed layer in FP16 too; the same for FP16 plans with BF16 layers.
    Such plans hold every other layer to the default. An INT8 default keeps TensorRT's choice
    (INT8 with fallback): holding every layer to INT8 could not build."""
    used = {plan.default, *plan.nodes.values()}
    if plan.default == "int8" or not any(p != plan.default and p in PRECISION_FLAG for p in used):
        return None
    return plan.default


def apply_weak_typing(trt_api: Any, network: trt.INetworkDefinition, config: trt.IBuilderConfig,
                      features: Features, plan: PrecisionPlan, resolver: NodeResolver,
                      obey: bool) -> PrecisionNotes:
    """Builder flags for the plan's precisions, and per-layer constraints for the nodes it names.

    When the flags match the default (an FP16 plan with FP32 layers), only the plan's overrides are
    constrained, as in a plain `trtexec --fp16` build, so an empty plan reproduces the user's
    engine. When a flag enables a precision beyond the default (an FP32 plan with FP16 layers),
    every other layer that can take a precision is held to the default (see held_to_default).
    """
    notes = PrecisionNotes(flags=builder_precision_flags(features, plan))
    others = held_to_default(plan)
    with quiet_deprecations():
        for flag in notes.flags:
            config.set_flag(getattr(trt_api.BuilderFlag, flag))
        if not plan.nodes:
            return notes
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            metadata = str(layer.metadata) if features.layer_metadata else ""
            nodes = network_layer_nodes(metadata, layer.name, resolver)
            precisions = [plan.nodes[n] for n in nodes if n in plan.nodes]
            if not precisions and others is None:
                continue
            if not can_take_precision(trt_api, layer):
                if precisions:
                    notes.skipped.append(layer.name)
                continue
            # A layer built from several planned nodes computes in the most precise of them.
            precision = min(precisions, key=PRECISIONS.index) if precisions else others
            assert precision is not None
            _constrain(trt_api, layer, precision)
            notes.constrained.append(layer.name)
        if notes.constrained:
            constraint = "OBEY_PRECISION_CONSTRAINTS" if obey else "PREFER_PRECISION_CONSTRAINTS"
            config.set_flag(getattr(trt_api.BuilderFlag, constraint))
            notes.constraints = "obey" if obey else "prefer"
        if others is not None:
            notes.held_to = others
    return notes


def _constrain(trt_api: Any, layer: trt.ILayer, precision: str) -> None:
    data_type = getattr(trt_api.DataType, PRECISION_DATA_TYPE[precision])
    layer.precision = data_type
    for j in range(layer.num_outputs):
        layer.set_output_type(j, data_type)
        tensor = layer.get_output(j)
        if tensor.is_network_output:  # set_output_type leaves network I/O types alone
            tensor.dtype = marked_type(trt_api, data_type)


def marked_type(trt_api: Any, data_type: Any) -> Any:
    """The type a marked (or model) output of a layer computing in `data_type` is read back in. An
    INT8 layer's output stays FLOAT: as an INT8 network output TensorRT would hand back its raw
    codes, without the scale (the calibrated dynamic range) to read them. NvInfer.h, ITensor::setType:
    in weakly typed networks an output's type "merely has to be implicitly convertible from the
    inferred type", and "implicit data type conversion is supported among kFLOAT, kHALF, kINT8, and
    kFP8" (NvInfer.h, ISliceLayer::setInput)."""
    return trt_api.DataType.FLOAT if data_type == trt_api.DataType.INT8 else data_type


def has_explicit_quantization(trt_api: Any, network: trt.INetworkDefinition) -> bool:
    qdq = enum_members(trt_api.LayerType, ("QUANTIZE", "DEQUANTIZE"))
    return any(network.get_layer(i).type in qdq for i in range(network.num_layers))


# Q/DQ code types a weakly typed network cannot build (context.STRONGLY_TYPED_FORMATS says why).
STRONGLY_TYPED_CODE_TYPES = {"FP8": "FP8", "INT4": "INT4"}


def refuse_weak_float_qdq(trt_api: Any, network: trt.INetworkDefinition, features: Features) -> None:
    """A weakly typed network whose QuantizeLinear layers make FP8 or INT4 codes (a Q/DQ model that
    reached the builder without its format, e.g. under a float plan): refused in one line."""
    quantize = enum_members(trt_api.LayerType, ("QUANTIZE",))
    codes = {t: label for t, label in STRONGLY_TYPED_CODE_TYPES.items() if hasattr(trt_api.DataType, t)}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type not in quantize:
            continue
        for j in range(layer.num_outputs):
            label = next((lab for t, lab in codes.items() if layer.get_output(j).dtype == getattr(trt_api.DataType, t)),
                         None)
            if label is None:
                continue
            version = f"{features.module_name} {features.version}"
            if features.strong_flag:
                raise UserError(f"{label} Q/DQ layer {layer.name!r} builds strongly typed only; use typing=strong "
                                f"with {version}, or give the model with --precision {label.lower()}")
            raise UserError(f"{version} cannot build {label} Q/DQ layer {layer.name!r}: it needs a strongly typed "
                            "network (TensorRT 10.0 or later, or TensorRT-RTX)")


def enable_explicit_int8(trt_api: Any, config: trt.IBuilderConfig, notes: PrecisionNotes) -> None:
    """A weakly typed network with Q/DQ layers (TensorRT 8.x-10.x) builds its INT8 layers only under
    BuilderFlag.INT8: NVIDIA's QAT flows build Q/DQ ONNX with `trtexec --int8`
    (tools/pytorch-quantization/examples/torchvision/classification_flow.py,
    tools/tensorflow-quantization/examples/README.md), and trtexec sets no flag by itself for Q/DQ
    networks (samples/common/sampleEngines.cpp, setupNetworkAndConfig). Its other layers run in FP16 only under
    BuilderFlag.FP16, which the plan sets when it uses FP16 (an INT8 default does): a Q/DQ model
    built at FP32 keeps its float layers in FP32. Strongly typed networks take no precision flags:
    their Q/DQ layers say it all."""
    if "INT8" not in notes.flags:
        with quiet_deprecations():
            config.set_flag(trt_api.BuilderFlag.INT8)
        notes.flags.append("INT8")
