"""The JSON report of a comparison (schema: docs/report-schema.md)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trtdebug import __version__
from trtdebug.core.analysis.metrics import CompareResult, Metrics, TensorReport
from trtdebug.core.system import files

REPORT_FORMAT = "trtdebug.compare-report"
REPORT_VERSION = 1


def _metrics_json(m: Metrics | None) -> dict[str, Any] | None:
    return None if m is None else m.to_json()


def compare_to_json(result: CompareResult) -> dict[str, Any]:
    first = result.culprits[0].tensor if result.culprits else None
    return files.versioned(REPORT_FORMAT, REPORT_VERSION, {
        "trtdebug": __version__,
        "model": result.model,
        "engine": result.engine,
        "precision": result.precision,
        "tolerance": {"atol": result.tolerance.atol, "rtol": result.tolerance.rtol,
                      "per_output": {k: list(v) for k, v in result.tolerance.per_output.items()}},
        "passed": result.passed,
        "verdict": result.verdict,
        "check": result.check or None,
        "first_introduced": first,
        "culprits": [{"tensor": c.tensor, "node": c.node, "op_type": c.op_type,
                      "creates_nonfinite": c.creates_nonfinite, "explained": c.explained, "reason": c.reason}
                     for c in result.culprits],
        "culprits_explain": result.culprits_explain,
        "outputs": {t.tensor: _output_json(t, result) for t in result.outputs},
        "tensors": [_tensor_json(t) for t in result.tensors],
        "layers": [_layer_json(layer) for layer in result.layers],
        "range_violations": [{"tensor": v.tensor, "max_abs": v.max_abs, "consumers": list(v.consumers),
                              "folded_by_builder": v.folded_by_builder} for v in result.range_violations],
        "notes": _jsonable({"marking": result.marking, "local_error": result.local_error,
                            "local_error_scope": result.local_scope,
                            "plan": {"default": result.precision, "kept": result.kept}, "bans": result.bans,
                            "reproduction": _reproduction_json(result)}),
    })


def _reproduction_json(result: CompareResult) -> dict[str, Any] | None:
    repro = result.reproduction
    if repro is None:
        return None
    return {"checked": repro.checked, "reason": repro.reason, "unmarked_passed": repro.unmarked_passed,
            "marked_passed": repro.marked_passed, "reproduces": repro.reproduces,
            "unmarked_reason": repro.unmarked_reason}


def _output_json(t: TensorReport, result: CompareResult) -> dict[str, Any]:
    """An output judged exactly as the verdict judges it, with the tolerance used."""
    atol, rtol = result.output_tolerances.get(t.tensor, (result.tolerance.atol, result.tolerance.rtol))
    return {"passed": t.status in ("ok", "absorbed"), "atol": atol, "rtol": rtol,
            "metrics": _metrics_json(t.accumulated)}


def _tensor_json(t: TensorReport) -> dict[str, Any]:
    return {"tensor": t.tensor, "node": t.node, "op_type": t.op_type, "index": t.index,
            "shape": list(t.shape), "is_output": t.is_output, "status": t.status, "layer": t.layer,
            "precision": t.precision, "fidelity": t.fidelity, "accumulated": _metrics_json(t.accumulated),
            "local": _metrics_json(t.local),
            "defects": [{"kind": d.kind, "message": d.message, "details": _jsonable(d.details)}
                        for d in t.defects]}


def _layer_json(layer: Any) -> dict[str, Any]:
    return {"name": layer.name, "onnx_nodes": list(layer.onnx_nodes), "precision": layer.precision,
            "tactic": layer.tactic, "op_type": layer.op_type, "outputs": list(layer.outputs),
            "alternatives": list(layer.alternatives)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def write_compare_report(result: CompareResult, path: str | Path) -> Path:
    return files.write_json(path, compare_to_json(result))
