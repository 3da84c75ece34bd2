"""A PrecisionPlan for other tools: trtexec flags, Polygraphy flags, a mixed-precision ONNX file.

The flags name TensorRT *network layers*. The ONNX parser names a node's main layer after the node
and helper layers otherwise (a Gemm's bias add becomes "gemm_0"), so pass `layer_names` (node ->
network layer names, from TensorRTEngine.network_layer_names) for an exact list; without it the
ONNX node names are used, which covers each node's main layer.

trtexec (TensorRT <= 10.x):
    --fp16 --precisionConstraints=prefer --layerPrecisions=a:fp32,b:fp32 --layerOutputTypes=a:fp32,b:fp32
Polygraphy (`polygraphy convert` / `polygraphy run`; it has no per-layer output types):
    --fp16 --precision-constraints prefer --layer-precisions a:float32 b:float32
TensorRT 11.x and TensorRT-RTX have no such flags: build the mixed-precision ONNX file instead.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from trtdebug.core.precision import PRECISIONS, PrecisionPlan
from trtdebug.errors import UserError

FLAG_TOOLS = ("trtexec", "polygraphy")  # tools whose build flags a plan can be exported as
TRTEXEC_PRECISION = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "int8": "int8"}
POLYGRAPHY_PRECISION = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "int8"}
BUILD_FLAG = {"fp16": "--fp16", "bf16": "--bf16", "int8": "--int8"}


def _precision_flags(plan: PrecisionPlan) -> list[str]:
    used = {plan.default, *plan.nodes.values()}
    return [BUILD_FLAG[p] for p in PRECISIONS if p in used and p in BUILD_FLAG]


def _layer_precisions(plan: PrecisionPlan, layer_names: Mapping[str, Sequence[str]] | None) -> list[tuple[str, str]]:
    """(network layer, precision) for every node the plan overrides, in the plan's node order."""
    pairs: list[tuple[str, str]] = []
    for node, precision in sorted(plan.nodes.items()):
        names = list(layer_names.get(node, ())) if layer_names is not None else [node]
        pairs.extend((name, precision) for name in names)
    return pairs


def trtexec_args(plan: PrecisionPlan, layer_names: Mapping[str, Sequence[str]] | None = None,
                 obey: bool = False) -> list[str]:
    """trtexec arguments that build with the plan (weak typing, TensorRT <= 10.x)."""
    args = _precision_flags(plan)
    pairs = _layer_precisions(plan, layer_names)
    if not pairs:
        return args
    bad = next((name for name, _ in pairs if "," in name), None)
    if bad is not None:
        raise UserError(f"layer {bad!r} has a comma in its name, which trtexec's --layerPrecisions cannot "
                        "express; use the Polygraphy flags or the mixed-precision ONNX export")
    spec = ",".join(f"{name}:{TRTEXEC_PRECISION[p]}" for name, p in pairs)
    return [*args, f"--precisionConstraints={'obey' if obey else 'prefer'}", f"--layerPrecisions={spec}",
            f"--layerOutputTypes={spec}"]


def polygraphy_args(plan: PrecisionPlan, layer_names: Mapping[str, Sequence[str]] | None = None,
                    obey: bool = False) -> list[str]:
    """`polygraphy convert|run --trt` arguments that build with the plan (TensorRT <= 10.x)."""
    args = _precision_flags(plan)
    pairs = _layer_precisions(plan, layer_names)
    if not pairs:
        return args
    # Polygraphy splits each value at its last ':', so names may contain ':' themselves.
    return [*args, "--precision-constraints", "obey" if obey else "prefer", "--layer-precisions",
            *(f"{name}:{POLYGRAPHY_PRECISION[p]}" for name, p in pairs)]


def command_line(program: str, model_path: str | Path, args: Sequence[str]) -> str:
    """A shell-quoted command line, e.g. `trtexec --onnx=model.onnx --fp16 ...`."""
    if program == "trtexec":
        return shlex.join(["trtexec", f"--onnx={model_path}", *args])
    return shlex.join([*program.split(), str(model_path), *args])
