"""Requested versus realized precision: what each engine layer really ran in (the engine inspector's
output types, TensorRT >= 8.6 with detailed profiling verbosity) set against what the plan asked of
the ONNX nodes it covers, before any number is compared.

Findings:
- `fused_into_reduced`: the plan keeps a node in a higher precision, but TensorRT fused it into a
  layer that ran lower (a kept FP32 Conv inside an FP16 "Conv + Add + Relu");
- `fell_back`: every node of a layer asked for a reduced precision, but the layer ran higher (TensorRT
  chose FP32, silently: no kernel, or faster);
- `typed_precision_lost`: the ONNX is typed in FP16/BF16 (TensorRT 11 builds exactly its types), but
  no compute layer of the engine ran in it: the engine was built from another (FP32) ONNX.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trtdebug.core.analysis.metrics import EngineLayer
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PRECISIONS, PrecisionPlan, eligible_nodes, precision_rank

FINDING_KINDS = ("fused_into_reduced", "fell_back", "typed_precision_lost")


@dataclass(frozen=True)
class PrecisionFinding:
    kind: str  # one of FINDING_KINDS
    layer: str  # the engine layer ("" for a finding about the whole engine)
    nodes: tuple[str, ...]  # the ONNX nodes it concerns
    requested: str
    realized: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "layer": self.layer, "nodes": list(self.nodes), "requested": self.requested,
                "realized": self.realized, "message": self.message}


def realized_precision_findings(model: Model, plan: PrecisionPlan, layers: Sequence[EngineLayer]
                                ) -> list[PrecisionFinding]:
    """Every layer whose realized precision differs from what the plan asked of its nodes."""
    eligible = set(eligible_nodes(model))
    findings: list[PrecisionFinding] = []
    compute = []  # (layer, realized) of layers covering precision-carrying nodes
    for layer in layers:
        nodes = [n for n in layer.onnx_nodes if n in eligible]
        realized = layer.precision
        if not nodes or realized not in PRECISIONS:
            continue
        compute.append((layer, realized))
        requested = {n: plan.precision_of(n) for n in nodes}
        higher = [n for n, p in requested.items() if precision_rank(p) > precision_rank(realized)]
        if higher:
            asked = requested[higher[0]]
            findings.append(PrecisionFinding(
                "fused_into_reduced", layer.name, tuple(higher), asked, realized,
                f"{', '.join(higher)} kept in {asked.upper()} by the plan, but fused into {layer.name!r}, which ran "
                f"in {realized.upper()}"))
        elif all(precision_rank(p) < precision_rank(realized) for p in requested.values()):
            asked = max(requested.values(), key=precision_rank)
            findings.append(PrecisionFinding(
                "fell_back", layer.name, tuple(nodes), asked, realized,
                f"{layer.name!r} ran in {realized.upper()} although the plan asks {asked.upper()} of "
                f"{', '.join(nodes)}: TensorRT chose the higher precision silently"))
    typed = model.stored_precision
    if typed and compute and all(r == "fp32" for _, r in compute):
        findings.append(PrecisionFinding(
            "typed_precision_lost", "", (), typed, "fp32",
            f"the ONNX is typed in {typed.upper()}, but every compute layer of the engine ran in FP32: it was "
            "built without the typed model's reduced precision (from an FP32 export?)"))
    return findings

