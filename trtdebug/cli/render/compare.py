"""Reports of a comparison: rich terminal output, and JSON (schema in docs/report-schema.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from trtdebug import __version__
from trtdebug.core.metrics import CompareResult, Metrics, TensorReport

REPORT_FORMAT = "trtdebug.compare-report"
REPORT_VERSION = 1


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if math.isnan(value):
        return "nan"
    return f"{value:.{digits}g}"


def verdict_line(result: CompareResult) -> str:
    if result.passed:
        return (f"[bold green]PASS[/] {result.model} on {result.engine} ({result.precision}): "
                "all outputs within tolerance")
    return (f"[bold red]FAIL[/] {result.model} on {result.engine} ({result.precision}): "
            f"{result.notes.get('verdict') or 'outputs out of tolerance'}")


def describe_tensor(t: TensorReport) -> str:
    kinds = ", ".join(d.kind for d in t.defects) or "error"
    return f"{t.node} ({t.op_type}) -> {t.tensor}: {kinds}"


def render_compare(result: CompareResult, console: Console, top: int = 10) -> None:
    tol = result.tolerance
    console.print(verdict_line(result))
    console.print(f"  tolerance atol={tol.atol:g} rtol={tol.rtol:g} (intermediate tensors: atol relative "
                  "to each tensor's max |x|)", style="dim")
    first = result.first_introduced
    if first is not None:
        console.print(f"[bold]Error first introduced at[/] [cyan]{first.node}[/] ({first.op_type}), "
                      f"tensor [cyan]{first.tensor}[/]" + (f", layer {first.layer}" if first.layer else ""))
        for defect in first.defects:
            console.print(f"  [yellow]{defect.kind}[/]: {defect.message}")
        if first.accumulated:
            m = first.accumulated
            console.print(f"  max abs err {_fmt(m.max_abs)}, max rel err {_fmt(m.max_rel)}, "
                          f"SNR {_fmt(m.snr_db)} dB, {m.frac_outside:.1%} of elements out of tolerance",
                          style="dim")
        others = len(result.introduced) - 1
        if others > 0:
            console.print(f"  {others} more layer(s) introduce error of their own; see the table", style="dim")
    elif not result.passed:
        console.print("No single layer introduces the error: it accumulates across layers "
                      "within per-layer tolerance.")
    worst = result.worst(top)
    if worst:
        console.print(_worst_table(worst, result.notes.get("local_error", False)))
    _render_notes(result, console)


def _worst_table(rows: list[TensorReport], with_local: bool) -> Table:
    table = Table(title="Worst layers", title_justify="left", show_lines=False)
    for column in ("#", "node", "op", "status", "defect", "max abs", "max rel", "SNR dB", "out of tol"):
        table.add_column(column, justify="right" if column in ("#", "max abs", "max rel", "SNR dB") else "left")
    if with_local:
        table.add_column("local SNR dB", justify="right")
    for t in rows:
        m = t.accumulated
        assert m is not None
        style = "red" if t.status == "introduced" else None
        cells = [str(t.index), t.node, t.op_type, t.status, ", ".join(d.kind for d in t.defects),
                 _fmt(m.max_abs), _fmt(m.max_rel), _fmt(m.snr_db), f"{m.frac_outside:.1%}"]
        if with_local:
            cells.append(_fmt(t.local.snr_db) if t.local else "-")
        table.add_row(*cells, style=style)
    return table


def _render_notes(result: CompareResult, console: Console) -> None:
    missing = sum(1 for t in result.tensors if t.status == "missing")
    compared = len(result.tensors) - missing
    console.print(f"{compared} tensors compared" + (f", {missing} not exposed by the engine (fused)"
                                                     if missing else ""), style="dim")
    repro = result.notes.get("reproduction")
    if repro and repro.get("checked") and not repro.get("reproduces"):
        console.print("[yellow]warning[/]: marking tensors changed the engine: the unmarked build "
                      f"{'passes' if repro['unmarked_passed'] else 'fails'} but the marked one "
                      f"{'passes' if repro['marked_passed'] else 'fails'}")
    risky = [v for v in result.range_violations if not v.folded_by_builder]
    if risky:
        names = ", ".join(v.tensor for v in risky[:3]) + (" ..." if len(risky) > 3 else "")
        console.print(f"[yellow]static check[/]: {len(risky)} constant(s) exceed the FP16 range: {names}")


# -- JSON --------------------------------------------------------------------------------------

def _metrics_json(m: Metrics | None) -> dict[str, Any] | None:
    return None if m is None else m.to_json()


def compare_to_json(result: CompareResult) -> dict[str, Any]:
    first = result.first_introduced
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "trtdebug": __version__,
        "model": result.model,
        "engine": result.engine,
        "precision": result.precision,
        "tolerance": {"atol": result.tolerance.atol, "rtol": result.tolerance.rtol,
                      "per_output": {k: list(v) for k, v in result.tolerance.per_output.items()}},
        "passed": result.passed,
        "verdict": result.notes.get("verdict", ""),
        "first_introduced": None if first is None else first.tensor,
        "outputs": {t.tensor: _metrics_json(t.accumulated) for t in result.outputs},
        "tensors": [_tensor_json(t) for t in result.tensors],
        "layers": [_layer_json(layer) for layer in result.layers],
        "range_violations": [{"tensor": v.tensor, "max_abs": v.max_abs, "consumers": list(v.consumers),
                              "folded_by_builder": v.folded_by_builder} for v in result.range_violations],
        "notes": _jsonable(result.notes),
    }


def _tensor_json(t: TensorReport) -> dict[str, Any]:
    return {"tensor": t.tensor, "node": t.node, "op_type": t.op_type, "index": t.index,
            "shape": list(t.shape), "is_output": t.is_output, "status": t.status, "layer": t.layer,
            "precision": t.precision, "accumulated": _metrics_json(t.accumulated),
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


def write_json(data: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
