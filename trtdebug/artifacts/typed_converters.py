"""A PrecisionPlan as a call of the tools that write typed (strongly typed) ONNX models from an FP32
one, for TensorRT 11 and --stronglyTyped builds: the plan's kept layers become the nodes the tool
leaves in FP32, every other node goes to the plan's reduced type.

ModelOpt AutoCast (NVIDIA/TensorRT-Model-Optimizer, modelopt/onnx/autocast/convert.py):
    convert_to_mixed_precision(onnx_path, low_precision_type="fp16"|"bf16", nodes_to_exclude=[regex, ...],
                               data_max=..., keep_io_types=...)
  `nodes_to_exclude` are regular expressions matched against node names, so each name is anchored
  and escaped; AutoCast's own rule keeping nodes whose values pass `data_max` is turned off
  (data_max=inf), so the plan alone decides.
onnxconverter-common (microsoft/onnxconverter-common, onnxconverter_common/float16.py):
    float16.convert_float_to_float16(model, min_positive_val, max_finite_val, keep_io_types,
                                     node_block_list=[name, ...])
  FP16 only; its default clamps weights to [1e-7, 1e4], so FP16's own range is passed instead
  (what TensorRT's FP16 and trtdebug's emulator do with such weights).

Both keep the graph's input and output types (keep_io_types=True), as trtdebug's own typed model
does. The snippets name nodes as the ONNX file names them: a node trtdebug had to name itself
(unnamed or duplicate in the file) cannot be named to these tools, and is refused.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path

from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.errors import UserError

CONVERTER_TOOLS = ("autocast", "onnxconverter")
TOOL_NAMES = {"autocast": "ModelOpt AutoCast", "onnxconverter": "onnxconverter-common"}
FP16_MAX = 65504.0
FP16_MIN_SUBNORMAL = 2.0**-24


def _excluded(plan: PrecisionPlan, tool: str, named_by_trtdebug: Collection[str], strongly_typed: bool) -> list[str]:
    """The nodes the tool must leave in FP32, refusing what it cannot express."""
    name = TOOL_NAMES[tool]
    if strongly_typed:
        raise UserError(f"{name} converts FP32 models, and this one is typed already: give its FP32 source model "
                        "and a plan made for it, or write the typed model with --out NAME.onnx")
    allowed = ("fp16",) if tool == "onnxconverter" else ("fp16", "bf16")
    if plan.default not in allowed:
        raise UserError(f"{name} converts to {' or '.join(p.upper() for p in allowed)}; this plan's default is "
                        f"{plan.default}: use --emit trtexec|polygraphy, or --out NAME.onnx")
    other = sorted(n for n, p in plan.nodes.items() if p not in (plan.default, "fp32"))
    if other:
        raise UserError(f"{name} keeps nodes in FP32 only; the plan sets {other[0]!r} to {plan.nodes[other[0]]}: "
                        "write the typed model with --out NAME.onnx")
    kept = sorted(n for n, p in plan.nodes.items() if p == "fp32")
    renamed = [n for n in kept if n in named_by_trtdebug]
    if renamed:
        raise UserError(f"node {renamed[0]!r} has no name of its own in the model file (trtdebug named it), so "
                        f"{name} cannot be told to keep it: name the model's nodes, or write the typed model "
                        "with --out NAME.onnx")
    return kept


def _list(items: list[str]) -> str:
    if not items:
        return "[]"
    return "[\n" + "".join(f"        {item!r},\n" for item in items) + "    ]"


def autocast_snippet(plan: PrecisionPlan, model_path: str | Path, named_by_trtdebug: Collection[str] = (),
                     strongly_typed: bool = False) -> str:
    """Python that writes the plan's typed model with ModelOpt AutoCast."""
    kept = _excluded(plan, "autocast", named_by_trtdebug, strongly_typed)
    out = Path(model_path).with_suffix(f".{plan.default}.onnx")
    patterns = [f"^{re.escape(n)}$" for n in kept]
    return (
        "import onnx\n"
        "from modelopt.onnx.autocast import convert_to_mixed_precision\n\n"
        "model = convert_to_mixed_precision(\n"
        f"    onnx_path={str(model_path)!r},\n"
        f"    low_precision_type={plan.default!r},\n"
        f"    nodes_to_exclude={_list(patterns)},\n"
        "    data_max=float(\"inf\"),  # the plan decides which nodes stay FP32\n"
        "    keep_io_types=True,\n"
        ")\n"
        f"onnx.save(model, {str(out)!r})\n")


def onnxconverter_snippet(plan: PrecisionPlan, model_path: str | Path, named_by_trtdebug: Collection[str] = (),
                          strongly_typed: bool = False) -> str:
    """Python that writes the plan's typed model with onnxconverter-common."""
    kept = _excluded(plan, "onnxconverter", named_by_trtdebug, strongly_typed)
    out = Path(model_path).with_suffix(".fp16.onnx")
    return (
        "import onnx\n"
        "from onnxconverter_common import float16\n\n"
        "model = float16.convert_float_to_float16(\n"
        f"    onnx.load({str(model_path)!r}),\n"
        f"    min_positive_val={FP16_MIN_SUBNORMAL!r},\n"
        f"    max_finite_val={FP16_MAX!r},  # FP16's range: the default clamps weights to 1e4\n"
        "    keep_io_types=True,\n"
        f"    node_block_list={_list(kept)},\n"
        ")\n"
        f"onnx.save(model, {str(out)!r})\n")


def converter_snippet(tool: str, plan: PrecisionPlan, model_path: str | Path,
                      named_by_trtdebug: Collection[str] = (), strongly_typed: bool = False) -> str:
    make = autocast_snippet if tool == "autocast" else onnxconverter_snippet
    return make(plan, model_path, named_by_trtdebug, strongly_typed)
