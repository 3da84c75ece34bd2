"""PrecisionPlan: which precision each ONNX node computes in, saved as versioned JSON.

A plan names a default precision (what the build is, e.g. fp16) and per-node overrides (the
layers kept in higher precision). Engines apply it: the emulator rounds the I/O of each
reduced-precision node; TensorRT <= 10.x sets layer precision constraints; TensorRT 11 and
TensorRT-RTX receive a mixed-precision ONNX graph (Cast nodes at precision boundaries).

Which inputs and outputs of a node carry its precision is decided by the operator schema: the
float tensors that share the type constraint of output 0 (so Resize's `scales` or Pow's exponent
stay as they are). Pure data-movement ops carry no precision of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import onnx

from trtdebug.core.model.graph import Model
from trtdebug.core.system import files
from trtdebug.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16", "fp8", "int8", "int4")  # from most to least precise
# The precisions of quantized formats (core.quantized): a build in one needs its Q/DQ model (or, for
# INT8 on the emulator, a calibration); layers leaving the format fall back to FP16.
QUANTIZED_PRECISIONS = ("fp8", "int8", "int4")
REDUCED = ("fp16", "bf16")
ONNX_TYPE = {"fp32": onnx.TensorProto.FLOAT, "fp16": onnx.TensorProto.FLOAT16,
             "bf16": onnx.TensorProto.BFLOAT16}

# Ops that move or select data without arithmetic: their precision follows their inputs, so a
# plan never needs to name them (TensorRT's own recipe skips shuffle, concat, slice and the like).
DATA_MOVEMENT_OPS = frozenset({
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice",
    "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Identity", "Pad", "DepthToSpace",
    "SpaceToDepth", "Shape", "Size", "Cast", "CastLike", "Constant", "ConstantOfShape", "Dropout",
    "Where", "ScatterND", "ScatterElements", "Compress", "NonZero", "TopK", "ArgMax", "ArgMin",
    "If", "Loop", "Scan", "QuantizeLinear", "DequantizeLinear", "Range", "Trilu", "OneHot",
})

PLAN_FORMAT = "trtdebug.precision-plan"
PLAN_VERSION = 1


def builder_precisions(plan: PrecisionPlan) -> set[str]:
    """Every precision a weakly typed build of `plan` must enable (TensorRT builder flags, trtexec and
    Polygraphy options alike): each one the plan uses, and FP16 with an INT8 default (INT8 with FP16
    fallback: the candidates a search makes plan nodes FP16, and a baseline built without FP16 would
    differ from every candidate in more than the nodes they move)."""
    return {plan.default, *plan.nodes.values()} | ({"fp16"} if plan.default == "int8" else set())


def precision_rank(precision: str) -> int:
    """Higher is more precise."""
    return len(PRECISIONS) - PRECISIONS.index(precision)


@dataclass(frozen=True)
class PrecisionPlan:
    default: str = "fp16"
    nodes: dict[str, str] = field(default_factory=dict)  # node name -> precision, overriding default
    model_sha256: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for precision in [self.default, *self.nodes.values()]:
            if precision not in PRECISIONS:
                raise UserError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")

    def precision_of(self, node: str) -> str:
        return self.nodes.get(node, self.default)

    def with_precision(self, nodes: list[str] | set[str] | tuple[str, ...], precision: str) -> PrecisionPlan:
        merged = dict(self.nodes)
        merged.update({n: precision for n in nodes})
        return replace(self, nodes=merged)

    def kept(self) -> list[str]:
        """Nodes overridden to a precision higher than the default (the fallback set)."""
        return sorted(n for n, p in self.nodes.items() if precision_rank(p) > precision_rank(self.default))

    def for_model(self, model: Model) -> PrecisionPlan:
        return replace(self, model_sha256=model.sha256)

    # -- persistence -----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return files.versioned(PLAN_FORMAT, PLAN_VERSION, {
            "model_sha256": self.model_sha256, "default": self.default, "nodes": dict(sorted(self.nodes.items())),
            "provenance": self.provenance})

    def save(self, path: str | Path) -> None:
        files.write_json(path, self.to_json())

    @classmethod
    def from_json(cls, data: Any, source: str = "plan") -> PrecisionPlan:
        data = files.require_format(data, PLAN_FORMAT, PLAN_VERSION, source, "precision plan")
        nodes = data.get("nodes", {})
        if not isinstance(nodes, dict):
            raise UserError(f"{source}: \"nodes\" must map node names to precisions")
        return cls(default=data.get("default", "fp16"), nodes={str(k): str(v) for k, v in nodes.items()},
                   model_sha256=data.get("model_sha256"), provenance=data.get("provenance") or {})

    @classmethod
    def load(cls, path: str | Path) -> PrecisionPlan:
        return cls.from_json(files.read_json(path, "plan file"), str(path))

    def check_for(self, model: Model, source: str = "the plan") -> None:
        """Refuse a plan made for another model: node names would silently mean nothing."""
        if self.model_sha256 and self.model_sha256 != model.sha256:
            raise UserError(f"{source} was made for another model (sha256 {self.model_sha256[:12]}…, this "
                            f"model is {model.sha256[:12]}…); run `trtdebug fallback` on this model")
        unknown = sorted(set(self.nodes) - model.plan_names())
        if unknown:
            raise UserError(f"{source} names node {unknown[0]!r}, which this model does not have")


# -- which tensors of a node carry its precision ----------------------------------------------

@lru_cache(maxsize=4096)
def _schema_slots(op_type: str, domain: str, opset: int, n_inputs: int, n_outputs: int
                  ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except Exception:
        return (), ()  # custom op: leave its tensors alone
    if not schema.outputs:
        return (), ()
    constraints = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}

    def param(formals: Sequence[Any], i: int) -> str:
        if i < len(formals):
            return formals[i].type_str
        last = formals[-1]  # variadic tail
        return last.type_str if last.option == onnx.defs.OpSchema.FormalParameterOption.Variadic else ""

    anchor = param(schema.outputs, 0)
    if "tensor(float16)" not in constraints.get(anchor, set()):
        return (), ()
    inputs = tuple(i for i in range(n_inputs) if param(schema.inputs, i) == anchor)
    outputs = tuple(i for i in range(n_outputs) if param(schema.outputs, i) == anchor)
    return inputs, outputs


def precision_slots(node: onnx.NodeProto, opset: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Input and output positions whose float type follows the node's compute precision."""
    return _schema_slots(node.op_type, node.domain or "", opset, len(node.input), len(node.output))


def is_eligible(model: Model, node: onnx.NodeProto) -> bool:
    """A node a plan can meaningfully set: it computes, and on float tensors."""
    if node.op_type in DATA_MOVEMENT_OPS:
        return False
    _, outputs = precision_slots(node, model.opset)
    return any(i < len(node.output) and model.is_float(node.output[i]) for i in outputs)


def eligible_nodes(model: Model) -> list[str]:
    return [n.name for n in model.nodes if is_eligible(model, n)]
