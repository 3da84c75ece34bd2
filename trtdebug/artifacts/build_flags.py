"""A PrecisionPlan for other tools: trtexec flags, Polygraphy flags, a mixed-precision ONNX file.

The flags name TensorRT *network layers*. The ONNX parser names a node's main layer after the node
and helper layers otherwise (a Gemm's bias add becomes "gemm_0"), so pass `layer_names` (node ->
network layer names, from TensorRTEngine.network_layer_names) for an exact list; without it the
ONNX node names are used, which covers each node's main layer.

trtexec (TensorRT 8.6 / 10.x; option names from samples/common/sampleOptions.cpp, release/8.6 and
release/10.13):
    --fp16 --precisionConstraints=prefer --layerPrecisions=a:fp32,b:fp32 --layerOutputTypes=a:fp32,b:fp32
Polygraphy (`polygraphy convert` / `polygraphy run`; it has no per-layer output types):
    --fp16 --precision-constraints prefer --layer-precisions a:float32 b:float32

A builder flag (--fp16) lets *every* layer run in that precision. So a plan whose default is FP32
(or FP16 with BF16 layers) also constrains every other layer to the default: trtexec's `*:fp32`
entry (exact names win over `*`, and layers on integers or shape tensors are skipped: setLayerPrecisions
in samples/common/sampleEngines.cpp), Polygraphy one entry per network layer (it has no wildcard, so
`layer_names` is required there).

trtexec of TensorRT 11.x has none of these flags (no --fp16/--bf16/--int8, --precisionConstraints,
--layerPrecisions, --layerOutputTypes: networks are strongly typed), and 8.6 has no --bf16: flags a
target version lacks are refused (`target_version`); for 11.x and TensorRT-RTX write the
mixed-precision ONNX file instead. --int8 without calibration makes trtexec use placeholder dynamic
ranges, so it needs a calibration cache (--calib / --calibration-cache) or a Q/DQ model.

Both commands build what trtdebug builds: dynamic inputs get an optimization profile (trtexec
--minShapes/--optShapes/--maxShapes, Polygraphy --trt-min/opt/max-shapes; without one trtexec sets
every dynamic dimension to 1), and TF32 stays off (trtexec --noTF32; Polygraphy leaves TF32 off unless
asked with --tf32). Polygraphy's convert needs its output file (-o).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from trtdebug.artifacts.typed_converters import CONVERTER_TOOLS
from trtdebug.core.plans.precision_plan import PRECISIONS, PrecisionPlan, builder_precisions
from trtdebug.errors import UserError

Shape = tuple[int, ...]
ShapeProfile = Mapping[str, tuple[Shape, Shape, Shape]]  # dynamic input -> MIN, OPT, MAX

# Tools a plan can be exported for: build flags (weak typing, TensorRT <= 10.x), and the converters
# that write the typed ONNX (artifacts.typed_converters: the Python call that does it).
FLAG_TOOLS = ("trtexec", "polygraphy", *CONVERTER_TOOLS)
TRTEXEC_PRECISION = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "int8": "int8"}
POLYGRAPHY_PRECISION = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "int8"}
BUILD_FLAG = {"fp16": "--fp16", "bf16": "--bf16", "int8": "--int8"}
TARGET_VERSIONS = ("8.6", "10", "11")
DEFAULT_TARGET_VERSION = "10"
# What each target's trtexec lacks (sampleOptions.cpp per branch): 8.6 has no BF16 (no --bf16, and
# DataType has no BF16); 11.x dropped every weak-typing option.
LACKS = {"8.6": frozenset({"bf16"}), "10": frozenset(), "11": frozenset({"fp16", "bf16", "int8", "layers"})}


def _target(target_version: str) -> str:
    version = str(target_version).strip()
    for known in TARGET_VERSIONS:
        if version == known or version.startswith(known + "."):
            return known
    if version.split(".")[0] == "8":
        raise UserError(f"TensorRT {version}: trtdebug writes flags for 8.6, 10.x and 11.x only")
    raise UserError(f"unknown TensorRT target version {target_version!r}; use one of {', '.join(TARGET_VERSIONS)}")


def _reduced(plan: PrecisionPlan) -> list[str]:
    """The precision flags of the plan, the same set trtdebug's own TensorRT builds enable."""
    used = builder_precisions(plan)
    return [p for p in PRECISIONS if p in used and p in BUILD_FLAG]


def _check(plan: PrecisionPlan, target: str, calibration_cache: str | None, qdq: bool) -> list[str]:
    """The builder flags the plan needs, refusing what the target lacks."""
    reduced = _reduced(plan)
    lacking = [p for p in reduced if p in LACKS[target]]
    if target == "11" and (reduced or plan.nodes):
        raise UserError("TensorRT 11 trtexec/Polygraphy have no precision flags (networks are strongly typed): "
                        "export the plan as a mixed-precision ONNX file instead")
    if lacking:
        raise UserError(f"TensorRT {target} has no {lacking[0]} builder precision; use another precision")
    unflagged = [p for p in (plan.default, *plan.nodes.values()) if p not in TRTEXEC_PRECISION]
    if unflagged:  # FP8 / INT4 come from the model's Q/DQ nodes, not from a builder flag
        raise UserError(f"trtdebug writes no trtexec/Polygraphy flags for {unflagged[0].upper()} plans (the format "
                        "comes from Q/DQ nodes): build the Q/DQ model the plan describes, the PLAN.mixed.onnx "
                        "`trtdebug fallback` wrote beside it, as it is")
    if "int8" in reduced and not qdq and not calibration_cache:
        raise UserError("--int8 without calibration data makes trtexec use placeholder dynamic ranges: give a "
                        "calibration cache, or export a Q/DQ (explicitly quantized) model")
    return [BUILD_FLAG[p] for p in reduced]


def check_target(plan: PrecisionPlan, target_version: str, calibration_cache: str | None = None,
                 qdq: bool = False) -> None:
    """Refuse a plan the target version's tools cannot build (before anything else is asked for)."""
    _check(plan, _target(target_version), calibration_cache, qdq)


def _constrain_others(plan: PrecisionPlan) -> str | None:
    """The precision every layer the plan does not name must be held to, or None. A builder flag for
    a precision other than the default lets unnamed layers use it: an FP32-default plan with FP16
    layers would otherwise let the builder run any layer in FP16. INT8 plans keep TensorRT's choice
    (--int8 alone is an INT8 build with FP32 fallback; holding every layer to INT8 cannot build)."""
    if plan.default == "int8":
        return None
    return plan.default if any(p != plan.default for p in _reduced(plan)) else None


def _layer_precisions(plan: PrecisionPlan, layer_names: Mapping[str, Sequence[str]] | None) -> list[tuple[str, str]]:
    """(network layer, precision) for every node the plan overrides, in the plan's node order."""
    pairs: list[tuple[str, str]] = []
    for node, precision in sorted(plan.nodes.items()):
        names = list(layer_names.get(node, ())) if layer_names is not None else [node]
        pairs.extend((name, precision) for name in names)
    return pairs


def _no_separator_in(names: Sequence[str], tool: str) -> None:
    for name in names:
        if "," in name:
            raise UserError(f"input {name!r} has a comma in its name, which {tool}'s shape options cannot express; "
                            "write the mixed-precision ONNX file instead")


def trtexec_shape_args(shapes: ShapeProfile | None) -> list[str]:
    """--minShapes/--optShapes/--maxShapes=name:DxD,... (sampleOptions.cpp getShapesBuild)."""
    if not shapes:
        return []
    _no_separator_in(list(shapes), "trtexec")
    return [f"--{which}Shapes=" + ",".join(f"{name}:{'x'.join(map(str, profile[i]))}" for name, profile in
                                           shapes.items())
            for i, which in enumerate(("min", "opt", "max"))]


def polygraphy_shape_args(shapes: ShapeProfile | None) -> list[str]:
    """--trt-min-shapes name:[D,D] ... (Polygraphy's ModelArgs/TrtConfigArgs shape syntax)."""
    if not shapes:
        return []
    args: list[str] = []
    for i, which in enumerate(("min", "opt", "max")):
        args += [f"--trt-{which}-shapes", *(f"{name}:[{','.join(map(str, profile[i]))}]"
                                            for name, profile in shapes.items())]
    return args


def trtexec_args(plan: PrecisionPlan, layer_names: Mapping[str, Sequence[str]] | None = None,
                 obey: bool = False, target_version: str = DEFAULT_TARGET_VERSION, calibration_cache: str | None = None,
                 qdq: bool = False, shapes: ShapeProfile | None = None) -> list[str]:
    """trtexec arguments that build with the plan (weak typing, TensorRT 8.6 / 10.x), with the
    optimization profile of dynamic inputs and without TF32, as trtdebug builds."""
    precision = _trtexec_precision_args(plan, layer_names, obey, target_version, calibration_cache, qdq)
    return [*precision, *trtexec_shape_args(shapes), "--noTF32"]


def _trtexec_precision_args(plan: PrecisionPlan, layer_names: Mapping[str, Sequence[str]] | None, obey: bool,
                            target_version: str, calibration_cache: str | None, qdq: bool) -> list[str]:
    args = _check(plan, _target(target_version), calibration_cache, qdq)
    if "--int8" in args and calibration_cache:
        args.append(f"--calib={calibration_cache}")
    pairs = _layer_precisions(plan, layer_names)
    others = _constrain_others(plan)
    if others is not None:
        pairs = [("*", others), *pairs]
    if not pairs:
        return args
    for name, _ in pairs:
        # trtexec splits the list at every ',' first and treats "'" as quoting (sampleOptions.cpp
        # getLayerPrecisions, splitNameAndValue): neither can be in a name. ':' can (last ':' splits).
        bad = next((c for c in (",", "'") if c in name), None)
        if bad is not None:
            raise UserError(f"layer {name!r} has a {'comma' if bad == ',' else 'quote'} in its name, which "
                            "trtexec's --layerPrecisions cannot express; use the Polygraphy flags or the "
                            "mixed-precision ONNX export")
        if name == "*" and (name, others) != pairs[0]:
            raise UserError("a layer named '*' is trtexec's wildcard; use the Polygraphy flags instead")
    spec = ",".join(f"{name}:{TRTEXEC_PRECISION[p]}" for name, p in pairs)
    return [*args, f"--precisionConstraints={'obey' if obey else 'prefer'}", f"--layerPrecisions={spec}",
            f"--layerOutputTypes={spec}"]


def polygraphy_args(plan: PrecisionPlan, layer_names: Mapping[str, Sequence[str]] | None = None,
                    obey: bool = False, target_version: str = DEFAULT_TARGET_VERSION,
                    calibration_cache: str | None = None, qdq: bool = False,
                    shapes: ShapeProfile | None = None) -> list[str]:
    """`polygraphy convert|run --trt` arguments that build with the plan (TensorRT 8.6 / 10.x)."""
    args = _check(plan, _target(target_version), calibration_cache, qdq)
    if "--int8" in args and calibration_cache:
        args += ["--calibration-cache", calibration_cache]
    args += polygraphy_shape_args(shapes)  # before --layer-precisions, whose values run to the end
    pairs = _layer_precisions(plan, layer_names)
    others = _constrain_others(plan)
    if others is not None:
        if layer_names is None:
            raise UserError(f"this plan must hold every other layer to {others}, and Polygraphy has no wildcard: "
                            "pass the network's layer names (TensorRTEngine.network_layer_names)")
        planned = {name for name, _ in pairs}
        pairs += [(name, others) for names in layer_names.values() for name in names if name not in planned]
    if not pairs:
        return args
    # Polygraphy splits each value at its last ':', so names may contain ':' themselves.
    return [*args, "--precision-constraints", "obey" if obey else "prefer", "--layer-precisions",
            *(f"{name}:{POLYGRAPHY_PRECISION[p]}" for name, p in pairs)]


def command_line(program: str, model_path: str | Path, args: Sequence[str], engine_path: str | Path) -> str:
    """A shell-quoted command line that builds `engine_path`, e.g. `trtexec --onnx=model.onnx
    --saveEngine=model.engine --fp16 ...` or `polygraphy convert model.onnx -o model.engine ...`."""
    if program == "trtexec":
        return shlex.join(["trtexec", f"--onnx={model_path}", f"--saveEngine={engine_path}", *args])
    return shlex.join([*program.split(), str(model_path), "-o", str(engine_path), *args])
