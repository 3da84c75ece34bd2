"""Compare's diagnosis of a real engine on the terminal: kernel faults headlined with their next
step, layers that ran another precision than the plan asked, and how many layers rounding explains."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape

from trtdebug.core.analysis.metrics import CompareResult


def render_diagnosis(result: CompareResult, console: Console) -> None:
    diagnosis = result.diagnosis
    observed = result.marking.get("observed_by")
    if isinstance(observed, str):
        repro = result.reproduction
        same = "" if repro is None or not repro.checked else (
            "; the observed build reproduces the deployed (unmarked) build's verdict" if repro.reproduces else
            "; [yellow]the observed build does NOT reproduce the deployed (unmarked) build's verdict[/]")
        console.print(f"observed by {escape(observed)}{same}", style="dim")
    kernels = diagnosis.get("kernels")
    if isinstance(kernels, dict):
        _render_kernels(kernels, console)
    ab = diagnosis.get("ab")
    if isinstance(ab, dict):
        _render_ab(ab, console)
    findings = diagnosis.get("realized_precision")
    if isinstance(findings, list):
        render_precision_findings(findings, console)


def _render_kernels(kernels: Mapping[str, Any], console: Console) -> None:
    layers = [la for la in kernels.get("layers", []) if isinstance(la, dict)]
    faulty = [la for la in layers if la.get("verdict") == "kernel_error"]
    for layer in faulty:
        where = f", engine layer [cyan]{escape(layer['engine_layer'])}[/]" if layer.get("engine_layer") else ""
        tactic = f", tactic {escape(str(layer['tactic']))}" if layer.get("tactic") else ""
        nonfinite = f", {layer['nonfinite']} inf/NaN value(s) rounding does not make" if layer.get("nonfinite") else ""
        console.print(f"[bold red]kernel error[/]: [cyan]{escape(layer['node'])}[/] (tensor "
                      f"[cyan]{escape(layer['tensor'])}[/]{where}{tactic}): error "
                      f"{_g(layer.get('local_error'))} on the engine's own inputs, rounding predicts "
                      f"{_g(layer.get('predicted_rounding'))}{nonfinite}")
        console.print(f"  more than rounding explains: a wrong kernel; next: [bold]{layer['next_step']}[/] "
                      "(bans that layer's tactic and rebuilds)")
    if layers and not faulty:
        console.print(f"rounding or kernel: all {len(layers)} layers checked on the engine's own inputs are within "
                      f"what rounding predicts (x{kernels.get('margin')}): no kernel fault; what error there is, "
                      "`trtdebug fallback` fixes",
                      style="dim")
    elif not layers and kernels.get("note"):
        console.print(f"rounding or kernel: not checked ({escape(str(kernels['note']))})", style="dim")


def _render_ab(ab: Mapping[str, Any], console: Console) -> None:
    first = ab.get("first_departure")
    layers = ab.get("layers", [])
    if not isinstance(first, dict):
        console.print(f"A/B: B ({escape(str(ab.get('b')))}) follows A ({escape(str(ab.get('a')))}) within rounding "
                      f"at all {len(layers)} layers both exposed")
        return
    console.print(f"[bold red]A/B[/]: B departs from A first at [cyan]{escape(first['node'])}[/] (tensor "
                  f"[cyan]{escape(first['tensor'])}[/]): B's own error {_g(first.get('b_local_error'))}, A's "
                  f"{_g(first.get('a_local_error'))}, rounding predicts {_g(first.get('predicted_rounding'))}")
    console.print(f"  against FP32 there: A {_g(first.get('a_error_vs_fp32'))}, B {_g(first.get('b_error_vs_fp32'))} "
                  f"(B {escape(str(ab.get('b')))}, A {escape(str(ab.get('a')))})")


def render_precision_findings(findings: list[Any], console: Console) -> None:
    for finding in findings:
        if isinstance(finding, dict):
            console.print(f"[yellow]precision[/] ({finding.get('kind')}): {escape(str(finding.get('message')))}")


def _g(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else "n/a"
