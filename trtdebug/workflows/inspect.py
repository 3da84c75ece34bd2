"""`trtdebug inspect engine.plan`: what an engine file really runs, from the engine inspector
alone, before any numeric compare: each layer's realized precision and the ONNX nodes it fused, set
against the plan (core.analysis.realized_precision) when the model (and a plan) are given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtdebug.core.analysis.realized_precision import PrecisionFinding, realized_precision_findings
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.engines.base import LayerInfo
from trtdebug.engines.tensorrt.layers import DETAILED_HINT, NodeResolver, read_engine_layers, to_layer_infos
from trtdebug.errors import UserError

INSPECT_FORMAT = "trtdebug.inspect-report"


@dataclass(frozen=True)
class InspectResult:
    engine: str
    tensorrt: str  # the module and version that read it
    layers: tuple[LayerInfo, ...]
    requested: dict[str, str]  # engine layer -> what the plan asks of its nodes ("" unknown)
    findings: tuple[PrecisionFinding, ...]
    model: str = ""
    plan: str = ""
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"format": INSPECT_FORMAT, "engine": self.engine, "tensorrt": self.tensorrt, "model": self.model,
                "plan": self.plan, "note": self.note,
                "layers": [{"name": la.name, "op_type": la.op_type, "onnx_nodes": list(la.onnx_nodes),
                            "realized": la.precision, "requested": self.requested.get(la.name, ""),
                            "tactic": la.tactic} for la in self.layers],
                "findings": [f.to_json() for f in self.findings]}


def inspect_engine(engine_path: str | Path, flavor: str = "tensorrt", model_path: str | Path | None = None,
                   plan_path: str | Path | None = None) -> InspectResult:
    if plan_path is not None and model_path is None:
        raise UserError("--plan needs --model: a plan names the nodes of one model")
    path = Path(engine_path)
    if not path.is_file():
        raise UserError(f"engine file not found: {path}")
    model = Model.load(model_path) if model_path is not None else None
    plan = PrecisionPlan.load(plan_path) if plan_path is not None else None
    if plan is not None and model is not None and plan.model_sha256 not in (None, model.sha256):
        raise UserError(f"{plan_path} was made for another model than {model_path}")
    raw, reader = read_engine_layers(path.read_bytes(), flavor)
    resolver = NodeResolver([n.name for n in model.nodes] if model is not None else [])
    layers = to_layer_infos(raw, resolver, "engine inspector")
    note = "" if any(la.precision for la in layers) else f"the engine reports no layer types: {DETAILED_HINT}"
    requested: dict[str, str] = {}
    findings: list[PrecisionFinding] = []
    if model is not None:
        asked = plan or PrecisionPlan(model.stored_precision or "fp16")
        requested = {la.name: "+".join(sorted({asked.precision_of(n) for n in la.onnx_nodes})) for la in layers
                     if la.onnx_nodes}
        if plan is not None or model.stored_precision:  # without either, what was asked is not known
            findings = realized_precision_findings(model, asked, layers)
        else:
            requested = {}
    return InspectResult(str(path), reader, tuple(layers), requested, tuple(findings),
                         str(model_path or ""), str(plan_path or ""), note)
