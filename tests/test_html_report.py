"""The --html report: one offline file a colleague can open, checked in a real headless Chromium;
and the terminal table on an 80-column terminal (a real tmux pane)."""

from __future__ import annotations

import html
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli import run_cli
from trtdebug.cli.render.compare import chain_kind, shown_chain

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TMUX = shutil.which("tmux")



def _tensor_data(page: str) -> dict:
    found = re.search(r"<script type='application/json' id='tensor-data'>(.*?)</script>", page, re.S)
    assert found, "the page carries no tensor table data"
    return json.loads(found.group(1).replace("<\\/", "</"))


def figures(page: str) -> dict[str, tuple[list[dict], dict]]:
    """Every plotly figure of a page (or of Chromium's DOM after it ran): div id -> (traces, layout), as
    the page hands them to Plotly.newPlot."""
    decoder, found = json.JSONDecoder(), {}
    for call in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*', page):
        traces, end = decoder.raw_decode(page, call.end())
        layout, _ = decoder.raw_decode(page, re.compile(r",\s*").match(page, end).end())
        found[call.group(1)] = (traces, layout)
    return found


def chromium_flags(tmp_path: Path) -> list[str]:
    assert CHROMIUM is not None
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=10000", "--window-size=1300,2400"]


def rendered(html_path: Path, tmp_path: Path) -> str:
    """The page's DOM after Chromium ran its scripts; the page must log nothing to the console."""
    dom = subprocess.run([*chromium_flags(tmp_path), "--dump-dom", html_path.as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert not console, "the page logged: " + "\n".join(console)
    return dom.stdout


@pytest.fixture(scope="module")
def overflow_report(planted_models, tmp_path_factory) -> tuple[Path, Path]:
    model, truth = planted_models["overflow"]
    folder = tmp_path_factory.mktemp("html")
    run = run_cli("compare", model, "--html", folder / "report.html", "--json", folder / "report.json", "--quiet")
    assert run.returncode == 1, run.stderr
    assert run.stderr == "", "--quiet prints no progress"
    return folder / "report.html", folder / "report.json"


def test_compare_html_is_self_contained_and_holds_every_tensor(overflow_report, planted_models):
    html_path, json_path = overflow_report
    _, truth = planted_models["overflow"]
    page = html_path.read_text()
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)=", page), "the report must work offline"
    assert "Plotly.newPlot" in page and "plotly.js v" in page  # the library's script is inlined
    report = json.loads(json_path.read_text())
    table = _tensor_data(page)
    assert [row[1] for row in table["rows"]] == [t["tensor"] for t in report["tensors"]]
    culprit = next(row for row in table["rows"] if row[2] == truth.node)
    assert culprit[4] == "introduced" and truth.kind in culprit[5]
    assert f"Culprit: <span class='fail'>{truth.node}</span>" in page
    title = f"{truth.node} → {truth.tensor}: |values|"  # the culprit's value histogram
    # plotly writes its figures with orjson where installed (raw UTF-8), else with json (\u escapes)
    assert title in page or json.dumps(title)[1:-1] in page
    assert "FP16 max 65504" in page


def test_fallback_and_tactics_html_show_kept_nodes_journal_and_bans(planted_models, tmp_path):
    model, truth = planted_models["overflow"]
    fallback = run_cli("fallback", model, "--out", tmp_path / "plan.json", "--html", tmp_path / "fallback.html")
    assert fallback.returncode == 0, fallback.stderr
    page = (tmp_path / "fallback.html").read_text()
    kept = json.loads((tmp_path / "plan.json").read_text())["provenance"]["kept"]
    assert truth.node in kept
    assert f"kept in higher precision ({len(kept)})" in page
    journal_lines = (tmp_path / "plan.journal.jsonl").read_text().splitlines()
    evaluations = sum(1 for line in journal_lines if json.loads(line).get("type") == "evaluation")
    assert f"Journal: {evaluations} evaluations" in page

    tactics = run_cli("tactics", model, "--html", tmp_path / "tactics.html", "--quiet")
    assert tactics.returncode in (0, 1), tactics.stderr
    page = (tmp_path / "tactics.html").read_text()
    assert "Ban list and its evidence" in page and truth.node in page


def test_html_output_is_checked_before_work(planted_models, tmp_path):
    model, _ = planted_models["overflow"]
    run = run_cli("compare", model, "--html", model)
    assert run.returncode == 2 and "--html" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it: apt-get install "
                                               "chromium)")
def test_report_renders_in_headless_chromium_without_errors(overflow_report, planted_models, tmp_path):
    html_path, _ = overflow_report
    _, truth = planted_models["overflow"]
    screenshot = tmp_path / "report.png"
    dom = rendered(html_path, tmp_path)
    # plotly drew the error plot and one histogram per culprit
    assert dom.count('class="main-svg"') >= 2 * (1 + 3)
    assert re.search(rf'class="legendtext"[^>]*>\d+\. {truth.node} \(', dom), "the culprit is not named on the plot"
    rows = re.findall(r'<tr class="(\w+)"><td>', dom)
    assert len(rows) == len(_tensor_data(html_path.read_text())["rows"])
    assert f'<tr class="introduced"><td>3</td><td>{truth.tensor}</td>' in dom
    shot = subprocess.run([*chromium_flags(tmp_path), f"--screenshot={screenshot}", html_path.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    print(f"screenshot of the report: {screenshot}")


def _tmux_screen(args: list[str], tmp_path: Path) -> str:
    """What `trtdebug compare ARGS` leaves on a real 80-column tmux pane."""
    assert TMUX is not None
    socket = f"trtdebug-test-{os.getpid()}-{tmp_path.name}"
    done = tmp_path / "done"
    command = (f"env PYTHONPATH={ROOT} {sys.executable} -m trtdebug compare {shlex.join(args)}"
               f"; touch {done}; sleep 60")
    tmux = [TMUX, "-L", socket, "-f", "/dev/null"]
    subprocess.run([*tmux, "new-session", "-d", "-s", "report", "-x", "80", "-y", "40", command], check=True,
                   env={**os.environ, "TERM": "xterm-256color"})
    try:
        deadline = time.monotonic() + 180
        while not done.exists():
            assert time.monotonic() < deadline, "compare did not finish in the tmux pane"
            time.sleep(0.1)
        time.sleep(0.3)
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", "report", "-S", "-300"], capture_output=True,
                              text=True, check=True).stdout
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (.ci/run installs it: apt-get install tmux)")
def test_80_column_terminal_table_identifies_every_layer(tmp_path):
    screen = _tmux_screen([str(ROOT / "examples/overflow_convnet.onnx")], tmp_path)
    print(screen)
    lines = screen.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in screen, "a name or number was cut short"
    worst = lines[next(i for i, line in enumerate(lines) if line.startswith("Worst layers")):]
    for node in ("conv_amplify", "relu_amplify", "rescale", "conv2", "pool", "logits"):
        row = next((line for line in worst if re.match(rf"\s+\d+\s+{node} \(", line)), None)
        assert row is not None, f"no row of the table names {node}:\n{screen}"
    assert re.search(r"^\s+3\s+conv_amplify \(Conv\) introduced overflow", screen, re.M)


NUMBER = r"(?:-?[\d.]+(?:e[+-]\d+)?|-?inf|nan|-)"
PIECE = (rf"(?:max abs {NUMBER}|max rel {NUMBER}|SNR {NUMBER} dB|[<>]?[\d.]+% out of tol|local SNR {NUMBER} dB)")


@pytest.mark.slow
@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (.ci/run installs it: apt-get install tmux)")
@pytest.mark.parametrize("name", ["overflow", "ppocrv6_rec", "yolov8n_nudenet_tight"])
def test_80_column_table_never_wraps_a_layers_numbers(name, planted_models, tmp_path):
    """Two lines (or more) per layer on 80 columns: the numbers break only between whole pieces."""
    args_of, _ = REPORTS[name]
    report = tmp_path / "report.json"
    screen = _tmux_screen([*args_of(planted_models, tmp_path), "--local-error", "all", "--json", str(report)],
                          tmp_path)
    print(screen)
    lines = screen.splitlines()
    assert max(len(line) for line in lines) <= 80
    start = next(i for i, line in enumerate(lines) if line.startswith("Worst layers"))
    table = []
    for line in lines[start + 1:]:
        if not line.startswith(" "):
            break
        table.append(line)
    heads = [line for line in table if re.match(r"\s{0,3}\d+  \S", line)]
    numbers = [line for line in table if line not in heads]
    assert heads and numbers
    for line in numbers:
        assert re.fullmatch(rf" {{6}}{PIECE}(?:  {PIECE})*", line), f"a broken line of numbers: {line!r}\n{screen}"
    tensors = {t["node"]: t for t in json.loads(report.read_text())["tensors"]}
    for head in heads:
        node = re.match(r"\s*\d+  (.*?) \(", head).group(1)
        assert node in tensors, f"{node!r} is cut short or wrapped:\n{screen}"


def test_value_histograms_are_taken_only_for_the_html_report(planted_models):
    """Only the HTML report shows histograms: a compare without it (and every fallback round) skips them."""
    from trtdebug.core.analysis.metrics import Tolerance
    from trtdebug.core.model.feeds import generate_feeds, resolve_shapes
    from trtdebug.core.model.graph import Model
    from trtdebug.core.plans.precision_plan import PrecisionPlan
    from trtdebug.engines.emulator.engine import EmulatorEngine
    from trtdebug.workflows.compare import run_compare
    from trtdebug.workflows.problem import Problem

    path, truth = planted_models["overflow"]
    model = Model.load(path)
    problem = Problem.prepare(model, generate_feeds(model, resolve_shapes(model, {})), Tolerance.for_precision("fp16"))
    assert run_compare(problem, EmulatorEngine(), PrecisionPlan("fp16")).histograms == {}
    taken = run_compare(problem, EmulatorEngine(), PrecisionPlan("fp16"), histograms=True).histograms
    assert truth.tensor in taken and taken[truth.tensor].tensor == truth.tensor


# -- the report tells the truth, on planted defects and on real models ----------------------------------

def _mask_model(path: Path) -> Path:
    """An additive attention mask as exported models write it: zeros and -3.4e38, which FP16 makes -inf."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero"),
             numpy_helper.from_array(np.array(-3.4e38, np.float32), "lowest")]
    nodes = [helper.make_node("Greater", ["x", "zero"], ["positive"], name="positive"),
             helper.make_node("Where", ["positive", "zero", "lowest"], ["mask"], name="mask"),
             helper.make_node("Add", ["mask", "zero"], ["masked"], name="masked")]
    graph = helper.make_graph(nodes, "mask", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("masked", TensorProto.FLOAT, [1, 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _zoo(name: str, folder: Path) -> list[str]:
    from fixtures.zoo import by_name

    model = by_name(name)
    return [str(model.path()), *model.cli_args(folder)]


# name -> (model and options, whether it fails); the zoo models are real ones (fixtures/zoo.py)
REPORTS = {
    "overflow": (lambda planted, folder: [str(planted["overflow"][0])], True),
    "mask": (lambda planted, folder: [str(_mask_model(folder / "mask.onnx"))], True),
    "yolov8n_nudenet": (lambda planted, folder: _zoo("yolov8n_nudenet", folder), False),
    # its box output is judged by a tight rtol: wrong by far less than atol × its max |ref| of 162
    "yolov8n_nudenet_tight": (lambda planted, folder: [*_zoo("yolov8n_nudenet", folder), "--rtol", "1e-4"], True),
    "ppocrv6_rec": (lambda planted, folder: _zoo("ppocrv6_rec", folder), True),
}


@dataclass(frozen=True)
class Reports:
    text: str
    report: dict
    page: str
    html_path: Path


@pytest.fixture(scope="module")
def reports(planted_models, tmp_path_factory) -> dict[str, Reports]:
    made = {}
    for name, (args_of, fails) in REPORTS.items():
        folder = tmp_path_factory.mktemp(name)
        run = run_cli("compare", *args_of(planted_models, folder), "--html", folder / "report.html",
                      "--json", folder / "report.json", "--quiet")
        assert run.returncode == (1 if fails else 0), run.stdout + run.stderr
        made[name] = Reports(run.stdout, json.loads((folder / "report.json").read_text()),
                             (folder / "report.html").read_text(), folder / "report.html")
    return made


def _points(traces: list[dict]) -> list[tuple[str, int, float]]:
    """(trace name, x, y) of every accumulated-error point: the local error's and kept nodes' left out."""
    return [(t["name"], x, y) for t in traces if not t["name"].startswith(("local error", "kept in"))
            for x, y in zip(t["x"], t["y"], strict=True)]


def _nonfinite(metrics: dict | None) -> bool:
    return metrics is not None and (metrics["new_nonfinite"] > 0 or metrics["max_abs"] is None)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REPORTS))
def test_error_plot_puts_points_and_labels_where_they_belong(reports, name):
    made = reports[name]
    traces, layout = figures(made.page)["error-plot"]
    assert layout["yaxis"]["type"] == "log"
    points = _points(traces)
    # inf and NaN errors sit on one row, and its label on that row too (annotations on a log axis take log10)
    label = next(a for a in layout["annotations"] if a["text"] == "inf / NaN")
    row = 10 ** label["y"]
    line = next(s for s in layout["shapes"] if s["line"]["dash"] == "dot")
    assert line["y0"] == pytest.approx(row)
    by_index = {t["index"]: t for t in made.report["tensors"]}
    for trace, x, y in points:
        on_row = y == pytest.approx(row)
        assert on_row is _nonfinite(by_index[x]["accumulated"]), f"{trace} #{x} at {y}, the inf row is {row}"
    atol = made.report["tolerance"]["atol"]
    tolerance_label = next(a for a in layout["annotations"] if a["text"].startswith("atol"))
    assert 10 ** tolerance_label["y"] == pytest.approx(atol)
    # every output's star on its verdict's side of the tolerance line
    for output, judged in made.report["outputs"].items():
        index = next(t["index"] for t in made.report["tensors"] if t["tensor"] == output)
        stars = [(trace, y) for trace, x, y in points if x == index]
        assert stars, f"output {output} is not drawn"
        for trace, y in stars:
            assert (y <= atol) if judged["passed"] else (y >= atol), f"{trace}: output {output} at {y}, atol {atol}"
        assert any(trace.startswith("output passes" if judged["passed"] else "output fails") for trace, _ in stars)
    # culprits: numbered on the plot, named in the legend in the verdict's order; no names beside points
    numbered = [t for t in traces if t["name"][:1].isdigit()]
    named = [re.match(r"\d+\. (.*) \(", t["name"]).group(1) for t in numbered]
    culprits = [c["node"] for c in made.report["culprits"]]
    assert named[:len(culprits)] == culprits[:len(named)]
    assert all(re.fullmatch(r"\d+", text) for t in traces for text in t.get("text") or [])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REPORTS))
def test_html_verdict_agrees_with_text_and_json(reports, name):
    made = reports[name]
    report, page = made.report, made.page
    state = "PASS" if report["passed"] else "FAIL"
    verdict = re.search(r"<section><h2>Verdict</h2><p><b class='(\w+)'>(\w+)</b> (.*?)</p>", page)
    assert verdict and verdict.group(2) == state and verdict.group(1) == state.lower()
    first_line = made.text.splitlines()[0]
    assert first_line.startswith(state) and html.unescape(verdict.group(3)) == first_line[len(state) + 1:]
    if report["verdict"]:
        assert html.unescape(verdict.group(3)).endswith(report["verdict"])
    outputs = dict(re.findall(r"data-output='([^']*)' data-passed='(\w+)'", page))
    assert {html.unescape(k): v == "true" for k, v in outputs.items()} == \
        {k: v["passed"] for k, v in report["outputs"].items()}
    named = re.findall(r"<b>(?:Culprit|Also): <span class='fail'>(.*?)</span>", page)
    html_culprits = [html.unescape(n) for n in named]
    text_culprits = re.findall(r"^(?:Culprit|Also): (.*?) \(", made.text, re.M)
    named_in_json = [f"{chain_kind(c['reason'])}: {' -> '.join(shown_chain(c['chain']))}" if c["chain"] else c["node"]
                     for c in report["culprits"]]  # a chain is named by its layers, as the terminal does
    assert html_culprits == text_culprits == named_in_json


@pytest.mark.slow
def test_a_histogram_with_nothing_to_draw_says_what_the_values_are(reports):
    page = reports["mask"].page
    words = re.search(r"<p class='values' data-tensor='masked'>(.*?)</p>", page)
    assert words, "the culprit's values are not described"
    assert "FP32 reference 33 zero, 31 of magnitude" in words.group(1) and "e+38" in words.group(1)
    assert "engine (fp16) 33 zero, 31 inf" in words.group(1)
    assert not [k for k in figures(page) if k.startswith("hist-")], "an empty histogram is drawn"
    for made in reports.values():  # elsewhere every culprit's values are described, and drawn where they spread
        described = re.findall(r"<p class='values' data-tensor='([^']*)'>", made.page)
        drawn = [k for k in figures(made.page) if k.startswith("hist-")]
        assert len(described) >= len(drawn)
        for key in drawn:
            bars = figures(made.page)[key][0]
            assert max(sum(1 for count in bar["y"][1:-1] if count) for bar in bars) >= 3


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
@pytest.mark.parametrize("name", ["mask", "ppocrv6_rec"])
def test_reports_of_real_models_render_in_chromium(reports, name, tmp_path):
    made = reports[name]
    dom = rendered(made.html_path, tmp_path)
    traces, _ = figures(made.page)["error-plot"]
    legend = [html.unescape(t) for t in re.findall(r'class="legendtext"[^>]*>([^<]*)<', dom)]
    for culprit in made.report["culprits"][:8]:
        assert any(re.fullmatch(rf"\d+\. {re.escape(culprit['node'])} \(.*\)", entry) for entry in legend), legend
    drawn = re.findall(r'class="textpoint"[^>]*><text[^>]*>([^<]*)<', dom)
    assert drawn and all(re.fullmatch(r"\d+", text) for text in drawn), drawn
    screenshot = tmp_path / f"{name}.png"
    shot = subprocess.run([*chromium_flags(tmp_path), f"--screenshot={screenshot}", made.html_path.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    print(f"screenshot of the report: {screenshot}")
