"""Self-contained HTML reports (`--html`) of compare, fallback and tactics, for sharing.

One file that works offline: plotly's script is inlined once (no CDN), the data ride along as
JSON, and a few lines of plain JavaScript make the tensor table sortable and filterable. Plots:
error against topological position (accumulated and local, coloured by defect kind, culprits
marked, hover names node, op and metrics); for each culprit a histogram of reference and
candidate magnitudes with the reduced precision's representable range marked.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from trtdebug import __version__
from trtdebug.cli.render.compare import chain_kind, shown_chain
from trtdebug.core.analysis.histograms import REPRESENTABLE, ValueHistogram
from trtdebug.core.analysis.metrics import CompareResult, Metrics, TensorReport
from trtdebug.core.system import files
from trtdebug.workflows.fallback import FallbackOutcome
from trtdebug.workflows.tactics import TacticSearch

ZERO_ERROR = 1e-9  # where an exactly right tensor sits on the log axis
KIND_COLOURS = {"ok": "#9aa5b1", "propagated": "#f0a35e", "missing": "#d0d0d0", "overflow": "#d62728",
                "underflow": "#1f77b4", "all_zero": "#9467bd", "nan": "#8c564b", "layout": "#e377c2",
                "precision": "#ff7f0e", "shape": "#17becf", "saturation": "#bcbd22"}
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


# -- public entry points ---------------------------------------------------------------------------

def write_compare_html(result: CompareResult, path: str | Path) -> Path:
    sections = [_summary_section(result), _error_plot_section(result, "error-plot"),
                _histogram_section(result), _table_section(result)]
    return _write_page(path, f"trtdebug compare: {result.model}", sections)


def write_fallback_html(outcome: FallbackOutcome, path: str | Path) -> Path:
    result = outcome.search
    kept = list(result.kept or ())
    state = ("FOUND" if kept else "PASS") if result.kept is not None else "NO PLAN"
    lines = [f"<b class='{'pass' if result.kept is not None else 'fail'}'>{state}</b> "
             + (f"keep {len(kept)} of {len(outcome.candidates)} eligible nodes in {outcome.keep_precision}"
                if result.kept is not None else html.escape(result.message)),
             f"{result.strategy} search, {outcome.builds} builds ({outcome.builds_this_run} in this run)"
             + (", resumed from the journal" if outcome.resumed else ""),
             f"{outcome.keep_precision} share of the model: {outcome.flops_share:.1%} of FLOPs, "
             f"{outcome.params_share:.1%} of parameters" if kept else "",
             f"journal: {html.escape(str(outcome.journal))}"]
    sections = [_section("Fallback", "".join(f"<p>{line}</p>" for line in lines if line))]
    for compare, title in ((outcome.ranking_compare, "Before: the base plan"),
                           (outcome.compare, "With the plan")):
        if compare is not None:
            sections.append(_error_plot_section(compare, f"error-{len(sections)}", kept=kept, title=title))
    if kept:
        rows = [[node, outcome.op_types.get(node, ""), "; ".join(outcome.reasons.get(node) or ("found by the search",))]
                for node in kept]
        sections.append(_section(f"Nodes kept in {outcome.keep_precision}",
                                 _static_table(["node", "op", "why it was suspected"], rows)))
    if outcome.history:
        sections.append(_journal_section(outcome))
    shown = outcome.ranking_compare or outcome.compare
    if shown is not None:
        sections += [_histogram_section(shown), _table_section(shown)]
    return _write_page(path, f"trtdebug fallback: {shown.model if shown else outcome.journal.name}", sections)


def write_tactics_html(search: TacticSearch, path: str | Path) -> Path:
    summary = [f"Default tactics: {_verdict_html(search.baseline)}",
               f"With {len(search.bans)} ban(s) ({len(search.kept)} new): {_verdict_html(search.final)}",
               f"{search.builds} build(s) in all"] + [html.escape(note) for note in search.notes]
    sections = [_section("Tactics", "".join(f"<p>{line}</p>" for line in summary))]
    rows = []
    for d in search.decisions:
        ev = d.entry.evidence
        rows.append(["kept" if d.kept else "rejected", d.entry.layer, d.entry.tactic, ev.get("tactic_after") or "-",
                     ev.get("tensor", ""), _evidence_error(ev.get("before")), _evidence_error(ev.get("after")),
                     ev.get("status_after", ""), ", ".join(ev.get("created_errors") or []) or "-",
                     ", ".join(str(n) for n in ev.get("builds_used") or []), d.reason])
    if rows:
        sections.append(_section("Ban list and its evidence", _static_table(
            ["", "layer", "banned tactic", "then", "tensor", "error before", "error after", "status after",
             "errors created", "compares", "why"], rows)))
    if search.ranking:
        sections.append(_section("Tactics in failing builds", _static_table(
            ["layer", "tactic", "failing builds", "passing builds"],
            [[r.layer, r.tactic, str(r.bad_builds), str(r.good_builds)] for r in search.ranking])))
    sections.append(_error_plot_section(search.baseline, "error-baseline", title="Default tactics"))
    if search.final is not search.baseline:
        sections.append(_error_plot_section(search.final, "error-final", title="With the bans"))
    sections += [_histogram_section(search.baseline), _table_section(search.baseline)]
    return _write_page(path, f"trtdebug tactics: {search.model}", sections)


# -- the error plot --------------------------------------------------------------------------------

def scaled_error(m: Metrics) -> float:
    """max |c - r| / max |r|: the error on the scale the tolerance judges intermediate tensors by
    (atol is relative to each tensor's max |r|); inf where values became inf or NaN."""
    if m.new_nonfinite or not math.isfinite(m.max_abs):
        return math.inf
    value = m.max_abs / m.ref_max_abs if m.ref_max_abs > 0 else m.max_abs
    return max(value, ZERO_ERROR)


def output_error(result: CompareResult, t: TensorReport, m: Metrics) -> float:
    """Where an output sits against the plot's atol line, on the side its verdict puts it.

    Outputs are judged by |c - r| <= atol + rtol * |r| with an absolute atol (per output with
    --output-tol), not by the intermediate tensors' relative rule, so their max |c - r| / max |r|
    can sit below the line while they fail. A failing output has some |c - r| above its own atol:
    drawn at atol * max|c - r| / its atol, it is above the line. A passing one has every |c - r|
    within atol + rtol * max|r|: drawn at atol * max|c - r| / that bound, it is at or below it."""
    if m.new_nonfinite or not math.isfinite(m.max_abs):
        return math.inf
    atol, rtol = result.output_tolerances.get(t.tensor, result.tolerance.for_output(t.tensor))
    failed = _output_failed(t)
    bound = atol if failed else atol + rtol * m.ref_max_abs
    if bound <= 0:
        return math.inf if failed else ZERO_ERROR
    return max(result.tolerance.atol * m.max_abs / bound, ZERO_ERROR)


def _output_failed(t: TensorReport) -> bool:
    return t.status not in ("ok", "absorbed")  # as CompareResult.to_json's `outputs` judges it


def _category(t: TensorReport) -> str:
    return t.defects[0].kind if t.defects else t.status


def _hover(t: TensorReport, m: Metrics, which: str) -> str:
    # Kept short: a 10,000-tensor model carries two of these per tensor.
    if which == "local":
        return f"<b>{html.escape(t.node)}</b> alone: max abs {_fmt(m.max_abs)}, SNR {_fmt(m.snr_db)} dB"
    defects = ", ".join(d.kind for d in t.defects)
    tensor = "" if t.tensor == t.node else f" → {html.escape(t.tensor)}"
    output = (f"<br>output, judged by |c − r| ≤ atol + rtol·|r|: {'FAIL' if _output_failed(t) else 'pass'}"
              if t.is_output else "")
    return (f"<b>{html.escape(t.node)}</b>{tensor} ({html.escape(t.op_type)}) #{t.index}<br>{t.status}"
            f"{' ' + defects if defects else ''}: max abs {_fmt(m.max_abs)}, max rel {_fmt(m.max_rel)}, "
            f"SNR {_fmt(m.snr_db)} dB, {m.frac_outside:.2%} out of tol{output}")


LABELLED_CULPRITS = 8  # culprits numbered on the plot and named in its legend; the rest share one entry


def error_figure(result: CompareResult, kept: Sequence[str] = (), title: str = "") -> go.Figure:
    measured = [t for t in result.tensors if t.accumulated is not None]

    def error_of(t: TensorReport, m: Metrics, which: str = "accumulated") -> float:
        return output_error(result, t, m) if t.is_output and which == "accumulated" else scaled_error(m)

    finite = [e for t in measured for which, m in (("accumulated", t.accumulated), ("local", t.local))
              if m is not None for e in [error_of(t, m, which)] if math.isfinite(e)]
    ceiling = 10 ** math.ceil(math.log10(max([1.0, *finite]) * 10))  # the row where inf and NaN errors sit

    def y_of(t: TensorReport, m: Metrics, which: str = "accumulated") -> float:
        error = error_of(t, m, which)
        return ceiling if math.isinf(error) else float(f"{error:.4g}")

    figure = go.Figure()
    by_kind: dict[str, list[TensorReport]] = {}
    for t in measured:
        by_kind.setdefault(_category(t), []).append(t)
    for kind in sorted(by_kind, key=lambda k: (k in ("ok", "propagated"), k)):
        rows = [t for t in by_kind[kind] if not t.is_output]
        if rows:
            figure.add_trace(go.Scatter(
                x=[t.index for t in rows], y=[y_of(t, t.accumulated) for t in rows if t.accumulated],
                mode="markers", name=f"{kind} ({len(rows)})",
                marker={"color": KIND_COLOURS.get(kind, "#333"), "size": 7},
                hovertext=[_hover(t, t.accumulated, "accumulated") for t in rows if t.accumulated],
                hoverinfo="text", legendgroup="accumulated", legendgrouptitle_text="accumulated error, by kind"))
    for failed, colour in ((True, "#d62728"), (False, "#2ca02c")):
        outputs = [t for t in measured if t.is_output and _output_failed(t) is failed]
        if outputs:
            figure.add_trace(go.Scatter(
                x=[t.index for t in outputs], y=[y_of(t, t.accumulated) for t in outputs if t.accumulated],
                mode="markers", name=f"output {'fails' if failed else 'passes'} ({len(outputs)})",
                marker={"symbol": "star", "size": 15, "color": colour, "line": {"color": "#000", "width": 1}},
                hovertext=[_hover(t, t.accumulated, "accumulated") for t in outputs if t.accumulated],
                hoverinfo="text", legendgroup="outputs",
                legendgrouptitle_text="outputs, drawn against their own tolerance"))
    local = [t for t in measured if t.local is not None]
    if local:
        figure.add_trace(go.Scatter(
            x=[t.index for t in local], y=[y_of(t, t.local, "local") for t in local if t.local], mode="markers",
            name="local error (layer alone)", marker={"symbol": "circle-open", "color": "#444", "size": 9},
            hovertext=[_hover(t, t.local, "local") for t in local if t.local], hoverinfo="text",
            legendgroup="local", legendgrouptitle_text="fed the FP32 reference"))
    headline = [c.tensor for c in result.culprits]
    culprits = sorted((t for t in result.introduced if t.accumulated is not None),
                      key=lambda t: headline.index(t.tensor) if t.tensor in headline else len(headline))
    # Each culprit is numbered on the plot and named in the legend: names written beside neighbouring
    # points would overlap one another.
    for number, t in enumerate(culprits[:LABELLED_CULPRITS], start=1):
        assert t.accumulated is not None
        figure.add_trace(go.Scatter(
            x=[t.index], y=[y_of(t, t.accumulated)], mode="markers+text", text=[str(number)],
            textposition="middle right", textfont={"size": 12, "color": "#000"},
            name=f"{number}. {t.node} ({t.op_type})",
            marker={"symbol": "hexagram-open", "size": 17, "color": "#000", "line": {"width": 2}},
            hovertext=[_hover(t, t.accumulated, "accumulated")], hoverinfo="text", legendgroup="culprits",
            legendgrouptitle_text=f"culprits: error introduced ({len(culprits)})"))
    rest = culprits[LABELLED_CULPRITS:]
    if rest:
        figure.add_trace(go.Scatter(
            x=[t.index for t in rest], y=[y_of(t, t.accumulated) for t in rest if t.accumulated], mode="markers",
            name=f"and {len(rest)} more", marker={"symbol": "hexagram-open", "size": 13, "color": "#000"},
            hovertext=[_hover(t, t.accumulated, "accumulated") for t in rest if t.accumulated],
            hoverinfo="text", legendgroup="culprits"))
    if kept:
        index_of = {t.node: t for t in result.tensors}
        shown = [index_of[n] for n in kept if n in index_of]
        figure.add_trace(go.Scatter(
            x=[t.index for t in shown], y=[ceiling * 3] * len(shown), mode="markers",
            name=f"kept in higher precision ({len(kept)})",
            marker={"symbol": "triangle-down", "size": 11, "color": "#2ca02c"},
            hovertext=[f"<b>{html.escape(t.node)}</b> ({html.escape(t.op_type)}) kept" for t in shown],
            hoverinfo="text"))
    # Lines drawn by hand: plotly places a shape on a log axis by its value but an annotation by its
    # log10, so add_hline's label of a line at 10 would sit at 1e10.
    for y, dash, colour, label, anchor in (
            (result.tolerance.atol, "dash", "#888", f"atol {result.tolerance.atol:g} (× max |ref|)", "top"),
            (ceiling, "dot", "#d62728", "inf / NaN", "bottom")):
        figure.add_shape(type="line", xref="paper", x0=0, x1=1, yref="y", y0=y, y1=y,
                         line={"dash": dash, "color": colour, "width": 1})
        figure.add_annotation(xref="paper", x=1 if anchor == "top" else 0, xanchor="right" if anchor == "top"
                              else "left", yref="y", y=math.log10(y), yanchor=anchor, text=label,
                              showarrow=False, font={"color": colour})
    figure.update_layout(
        title=title or "Error by topological position", height=520, template="plotly_white",
        xaxis_title="topological position (node index)", yaxis_title="max |candidate − reference| / max |reference|",
        yaxis_type="log", legend={"groupclick": "toggleitem"}, margin={"l": 70, "r": 20, "t": 60, "b": 50})
    return figure


def _error_plot_section(result: CompareResult, div_id: str, kept: Sequence[str] = (), title: str = "") -> str:
    figure = error_figure(result, kept, title)
    return _section(title or "Error by layer", f"<p class='dim'>{_verdict_html(result)}</p>" + _plot(figure, div_id))


# -- culprit histograms ----------------------------------------------------------------------------

def histogram_figure(hist: ValueHistogram, precision: str, node: str) -> go.Figure:
    edges = hist.edges
    centers = [(a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)]
    width = edges[1] - edges[0]
    low, high = edges[0], edges[-1]
    zero_x, inf_x = low - 2 * width - 0.5, high + 2 * width + 0.5
    marks = REPRESENTABLE.get(precision)
    if marks:
        zero_x = min(zero_x, math.log10(marks[0]) - 1)
        inf_x = max(inf_x, math.log10(marks[1]) + 1)
    figure = go.Figure()
    for name, counts, index, colour in (("FP32 reference", hist.reference, 0, "#1f77b4"),
                                        (f"engine ({precision})", hist.candidate, 1, "#d62728")):
        zeros, infs, nans = (hist.special[k][index] for k in ("zero", "inf", "nan"))
        figure.add_trace(go.Bar(
            x=[zero_x, *centers, inf_x], y=[zeros, *counts, infs + nans], width=width, name=name,
            marker_color=colour, opacity=0.6,
            hovertemplate="%{y} values<extra>" + name + "</extra>"))
    if marks:
        label = precision.upper()
        figure.add_vline(x=math.log10(marks[1]), line_color="#d62728", line_dash="dash",
                         annotation_text=f"{label} max {marks[1]:.6g}", annotation_position="top left")
        figure.add_vline(x=math.log10(marks[0]), line_color="#1f77b4", line_dash="dash",
                         annotation_text=f"{label} smallest subnormal {marks[0]:.3g}", annotation_position="top right")
    ticks = list(range(math.ceil(min(low, zero_x + 1)), math.floor(max(high, inf_x - 1)) + 1))
    step = max(1, len(ticks) // 12)
    ticks = ticks[::step]
    figure.update_layout(
        title=f"{node} → {hist.tensor}: |values|", barmode="overlay", height=360, template="plotly_white",
        yaxis_type="log", yaxis_title="count", xaxis_title="|value| (log scale; 0 and inf/NaN at the ends)",
        xaxis={"tickvals": [zero_x, *ticks, inf_x], "ticktext": ["0", *[f"1e{k}" for k in ticks], "inf/NaN"]},
        margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return figure


MIN_PLOTTED_BINS = 3  # fewer occupied bins than this, on both sides, make no shape to look at: words say it


def describe_values(hist: ValueHistogram, index: int) -> str:
    """One side's values in words: zeros, infinities, NaNs and the magnitudes between."""
    zeros, infs, nans = (hist.special[k][index] for k in ("zero", "inf", "nan"))
    counts = hist.reference if index == 0 else hist.candidate
    occupied = [i for i, c in enumerate(counts) if c]
    parts = [f"{zeros:,} zero" if zeros else "", f"{infs:,} inf" if infs else "", f"{nans:,} NaN" if nans else ""]
    if occupied:
        low, high = 10 ** hist.edges[occupied[0]], 10 ** hist.edges[occupied[-1] + 1]
        parts.append(f"{sum(counts):,} of magnitude {_fmt(low)} to {_fmt(high)}")
    return ", ".join(p for p in parts if p) or "no values"


def _plotted_bins(hist: ValueHistogram) -> int:
    return max(sum(1 for c in hist.reference if c), sum(1 for c in hist.candidate if c))


def _histogram_section(result: CompareResult) -> str:
    if not result.histograms:
        return ""
    nodes = {t.tensor: t.node for t in result.tensors}
    note = ("" if result.precision in REPRESENTABLE else
            f"<p class='dim'>{html.escape(result.precision)}: the representable range depends on each "
            "tensor's quantization scale, which is not marked.</p>")
    parts = []
    for i, (name, h) in enumerate(result.histograms.items()):
        words = (f"<p class='values' data-tensor='{html.escape(name)}'><b>{html.escape(nodes.get(name, name))} → "
                 f"{html.escape(name)}</b>: FP32 reference {describe_values(h, 0)}; engine "
                 f"({html.escape(result.precision)}) {describe_values(h, 1)}</p>")
        plot = (_plot(histogram_figure(h, result.precision, nodes.get(name, name)), f"hist-{i}")
                if _plotted_bins(h) >= MIN_PLOTTED_BINS else "")
        parts.append(words + plot)
    return _section("Culprits: reference against engine values", note + "".join(parts))


# -- the tensor table --------------------------------------------------------------------------------

TABLE_COLUMNS = ["#", "tensor", "node", "op", "status", "defects", "max abs", "max rel", "SNR dB", "out of tol",
                 "local SNR dB", "layer", "precision"]


def _number(value: float | None) -> float | str | None:
    """JSON has no inf or NaN: they travel as strings the table's sort understands."""
    if value is None:
        return None
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(f"{value:.4g}")


def _table_rows(result: CompareResult) -> list[list[Any]]:
    rows = []
    for t in result.tensors:
        m = t.accumulated
        rows.append([t.index, t.tensor, t.node, t.op_type, t.status, ", ".join(d.kind for d in t.defects),
                     _number(m.max_abs) if m else None, _number(m.max_rel) if m else None,
                     _number(m.snr_db) if m else None, _number(m.frac_outside * 100) if m else None,
                     _number(t.local.snr_db) if t.local else None, t.layer, t.precision])
    return rows


def _table_section(result: CompareResult) -> str:
    data = _script_json({"columns": TABLE_COLUMNS, "rows": _table_rows(result)})
    body = ("<div class='controls'><input id='tensor-filter' type='search' placeholder='filter: node, tensor, op, "
            "defect, layer' size='40'> <select id='status-filter'><option value=''>every status</option>"
            + "".join(f"<option>{s}</option>" for s in ("introduced", "propagated", "ok", "missing"))
            + "</select> <span id='tensor-count' class='dim'></span></div>"
            f"<script type='application/json' id='tensor-data'>{data}</script>"
            "<div class='scroll'><table id='tensor-table' class='data'><thead></thead><tbody></tbody></table></div>")
    return _section(f"Every compared tensor ({len(result.tensors)})", body)


TABLE_SCRIPT = """
(function () {
  var holder = document.getElementById('tensor-data');
  if (!holder) return;
  var data = JSON.parse(holder.textContent), rows = data.rows, sortColumn = 0, ascending = true;
  var table = document.getElementById('tensor-table'), filter = document.getElementById('tensor-filter');
  var status = document.getElementById('status-filter'), count = document.getElementById('tensor-count');
  var numeric = {'inf': Infinity, '-inf': -Infinity, 'nan': NaN};
  function key(v) { return (typeof v === 'string' && v in numeric) ? numeric[v] : v; }
  function text(v, i) { return v === null ? '-' : (i === 9 && typeof v === 'number' ? v + '%' : String(v)); }
  function escape(s) { return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;'); }
  table.tHead.innerHTML = '<tr>' + data.columns.map(function (c, i) {
    return '<th data-column="' + i + '" title="click to sort">' + escape(c) + '</th>'; }).join('') + '</tr>';
  function render() {
    var words = filter.value.toLowerCase(), wanted = status.value;
    var shown = rows.filter(function (r) {
      return (!wanted || r[4] === wanted) &&
        (!words || [r[1], r[2], r[3], r[5], r[11]].join(' ').toLowerCase().indexOf(words) >= 0); });
    shown.sort(function (a, b) {
      var x = key(a[sortColumn]), y = key(b[sortColumn]);
      if (x === y) return 0; if (x === null || x !== x) return 1; if (y === null || y !== y) return -1;
      return (x < y ? -1 : 1) * (ascending ? 1 : -1); });
    table.tBodies[0].innerHTML = shown.map(function (r) {
      return '<tr class="' + r[4] + '">' + r.map(function (v, i) {
        return '<td>' + escape(text(v, i)) + '</td>'; }).join('') + '</tr>'; }).join('');
    count.textContent = shown.length + ' of ' + rows.length + ' tensors';
  }
  table.tHead.addEventListener('click', function (e) {
    var c = Number(e.target.getAttribute('data-column'));
    if (isNaN(c)) return;
    ascending = (c === sortColumn) ? !ascending : true; sortColumn = c; render(); });
  filter.addEventListener('input', render); status.addEventListener('change', render);
  render();
})();
"""


# -- the fallback journal ------------------------------------------------------------------------------

def _journal_section(outcome: FallbackOutcome) -> str:
    history = outcome.history
    figure = go.Figure()
    for label, colour, chosen in (("pass", "#2ca02c", lambda e: e.passed),
                                  ("fail", "#d62728", lambda e: not e.passed and not e.build_failed),
                                  ("build failed", "#7f7f7f", lambda e: e.build_failed)):
        points = [(i + 1, e) for i, e in enumerate(history) if chosen(e)]
        if points:
            figure.add_trace(go.Scatter(
                x=[i for i, _ in points], y=[len(e.kept) for _, e in points], mode="markers", name=label,
                marker={"color": colour, "size": 9},
                hovertext=[f"evaluation {i}: {e.phase}, keep {len(e.kept)}, {e.seconds:.2f}s"
                           + (" (replayed)" if e.replayed else "") for i, e in points], hoverinfo="text"))
    figure.update_layout(title="The search, evaluation by evaluation", height=360, template="plotly_white",
                         xaxis_title="evaluation (journal order)", yaxis_title="nodes kept in higher precision",
                         margin={"l": 60, "r": 20, "t": 50, "b": 50})
    rows = [[str(i + 1), e.phase, str(len(e.kept)), "pass" if e.passed else ("build failed" if e.build_failed
                                                                              else "fail"),
             f"{e.seconds:.2f}", "yes" if e.replayed else "", e.reason] for i, e in enumerate(history)]
    return _section(f"Journal: {len(history)} evaluations", _plot(figure, "journal-plot") + _static_table(
        ["#", "phase", "kept", "verdict", "seconds", "replayed", "reason"], rows))


# -- page assembly -------------------------------------------------------------------------------------

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1300px; padding: 0 20px 40px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 17px; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 28px; }
.pass { color: #1a7f37; } .fail { color: #c62828; } .dim { color: #666; }
table.data { border-collapse: collapse; font-size: 12.5px; }
table.data th, table.data td { border-bottom: 1px solid #eee; padding: 3px 8px; text-align: left; white-space: nowrap; }
table.data th { position: sticky; top: 0; background: #f6f8fa; cursor: pointer; }
table.data tr.introduced td { background: #fdecea; } table.data tr.propagated td { color: #8a5a00; }
.scroll { max-height: 600px; overflow: auto; border: 1px solid #eee; } .controls { margin: 8px 0; }
"""


def _plot(figure: go.Figure, div_id: str) -> str:
    return str(figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG))


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _static_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<div class='scroll'><table class='data'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _summary_section(result: CompareResult) -> str:
    lines = [_verdict_html(result),
             f"tolerance atol={result.tolerance.atol:g} rtol={result.tolerance.rtol:g}; intermediate tensors: "
             "atol relative to each tensor's max |reference|"]
    for number, culprit in enumerate(result.culprits):
        report = result.tensor(culprit.tensor)
        share = "" if culprit.explained is None else (
            f" <span class='dim'>(its reference value removes {culprit.explained:.0%} of the output error)</span>")
        label = "Culprit" if number == 0 else "Also"
        if culprit.chain:  # named as the terminal names it: the layers that add the error together
            together = "" if culprit.explained is None else (
                f" <span class='dim'>(together remove {culprit.explained:.0%} of the output error)</span>")
            names = " -> ".join(shown_chain(culprit.chain))
            lines.append(f"<b>{label}: <span class='fail'>{html.escape(chain_kind(culprit.reason))}: "
                         f"{html.escape(names)}</span></b> ({html.escape(culprit.op_type)}){together}")
            continue
        lines.append(f"<b>{label}: <span class='fail'>{html.escape(culprit.node)}"
                     f"</span></b> ({html.escape(culprit.op_type)}), tensor {html.escape(culprit.tensor)}{share}")
        lines += [f"&nbsp;&nbsp;{html.escape(d.kind)}: {html.escape(d.message)}" for d in report.defects]
    for t in result.outputs:
        failed = _output_failed(t)
        m = t.accumulated
        numbers = "" if m is None else f": max abs {_fmt(m.max_abs)}, {_share(m.frac_outside)} of it out of tolerance"
        passed = "false" if failed else "true"
        lines.append(f"<span class='output' data-output='{html.escape(t.tensor)}' data-passed='{passed}'>"
                     f"output {html.escape(t.tensor)} <b class='{'fail' if failed else 'pass'}'>"
                     f"{'fails' if failed else 'passes'}</b>{numbers}</span>")
    others = [t for t in result.introduced if t.tensor not in {c.tensor for c in result.culprits}]
    if others:
        names = ", ".join(html.escape(t.node) for t in others[:5])
        lines.append(f"{len(others)} more layer(s) introduce smaller errors of their own: {names}"
                     + (" ..." if len(others) > 5 else ""))
    if not result.passed and not result.culprits:
        lines.append("No single layer introduces the error: it accumulates across layers within per-layer tolerance.")
    missing = sum(1 for t in result.tensors if t.status == "missing")
    lines.append(f"{len(result.tensors) - missing} tensors compared"
                 + (f", {missing} not exposed by the engine (fused)" if missing else ""))
    return _section("Verdict", "".join(f"<p>{line}</p>" for line in lines))


def _verdict_html(result: CompareResult) -> str:
    if result.passed:
        return (f"<b class='pass'>PASS</b> {html.escape(result.model)} on {html.escape(result.engine)} "
                f"({html.escape(result.precision)}): all outputs within tolerance")
    return (f"<b class='fail'>FAIL</b> {html.escape(result.model)} on {html.escape(result.engine)} "
            f"({html.escape(result.precision)}): {html.escape(result.verdict or 'outputs out of tolerance')}")


def _evidence_error(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "-"
    max_abs = metrics.get("max_abs")
    return f"max abs {'inf' if max_abs is None else f'{max_abs:.3g}'}, {metrics.get('frac_outside') or 0.0:.1%} out"


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.3g}"


def _share(fraction: float) -> str:
    """A share that is not zero never reads 0.00%."""
    return "under 0.01%" if 0 < fraction < 1e-4 else f"{fraction:.2%}"


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")


def _write_page(path: str | Path, title: str, sections: Sequence[str]) -> Path:
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<meta name='generator' content='trtdebug {__version__}'><style>{STYLE}</style>"
            f"<script>{get_plotlyjs()}</script></head><body><h1>{html.escape(title)}</h1>"
            + "".join(sections) + f"<script>{TABLE_SCRIPT}</script></body></html>")
    return files.write_bytes(path, page.encode("utf-8"))
