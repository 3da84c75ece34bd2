"""`trtdebug inspect` on the terminal: the layer table, then the precision findings."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trtdebug.cli.render.diagnosis import render_precision_findings
from trtdebug.workflows.inspect import InspectResult


def render_inspect(result: InspectResult, console: Console) -> None:
    console.print(f"{escape(result.engine)}: {len(result.layers)} layers (read by {result.tensorrt})")
    table = Table("layer", "type", "ONNX nodes", "realized", "requested", "tactic")
    for layer in result.layers:
        table.add_row(escape(layer.name), layer.op_type, escape(", ".join(layer.onnx_nodes)), layer.precision,
                      result.requested.get(layer.name, ""), escape(layer.tactic))
    console.print(table)
    if result.note:
        console.print(f"[yellow]note[/]: {escape(result.note)}")
    render_precision_findings([f.to_json() for f in result.findings], console)
    if result.requested and not result.findings:
        console.print("every layer ran in the precision the plan asks of its nodes")
