"""The --html report: one offline file a colleague can open, checked in a real headless Chromium;
and the terminal table on an 80-column terminal (a real tmux pane)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli import run_cli

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TMUX = shutil.which("tmux")



def _tensor_data(page: str) -> dict:
    found = re.search(r"<script type='application/json' id='tensor-data'>(.*?)</script>", page, re.S)
    assert found, "the page carries no tensor table data"
    return json.loads(found.group(1).replace("<\\/", "</"))


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
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=10000", "--window-size=1300,2400"]
    dom = subprocess.run([*flags, "--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert not console, "the page logged: " + "\n".join(console)
    # plotly drew the error plot and one histogram per culprit
    assert dom.stdout.count('class="main-svg"') >= 2 * (1 + 3)
    assert re.search(rf'<text[^>]*class="textpoint"[^>]*>{truth.node}</text>', dom.stdout) or \
        re.search(rf">{truth.node}</tspan>|>{truth.node}</text>", dom.stdout), "the culprit is not named on the plot"
    rows = re.findall(r'<tr class="(\w+)"><td>', dom.stdout)
    assert len(rows) == len(_tensor_data(html_path.read_text())["rows"])
    assert f'<tr class="introduced"><td>3</td><td>{truth.tensor}</td>' in dom.stdout
    shot = subprocess.run([*flags, f"--screenshot={screenshot}", html_path.as_uri()], capture_output=True,
                          text=True, timeout=120)
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    print(f"screenshot of the report: {screenshot}")


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (.ci/run installs it: apt-get install tmux)")
def test_80_column_terminal_table_identifies_every_layer(tmp_path):
    socket = f"trtdebug-test-{os.getpid()}"
    done = tmp_path / "done"
    command = (f"env PYTHONPATH={ROOT} {sys.executable} -m trtdebug compare {ROOT / 'examples/overflow_convnet.onnx'}"
               f"; touch {done}; sleep 60")
    tmux = [TMUX, "-L", socket, "-f", "/dev/null"]
    subprocess.run([*tmux, "new-session", "-d", "-s", "report", "-x", "80", "-y", "40", command], check=True,
                   env={**os.environ, "TERM": "xterm-256color"})
    try:
        deadline = time.monotonic() + 120
        while not done.exists():
            assert time.monotonic() < deadline, "compare did not finish in the tmux pane"
            time.sleep(0.1)
        time.sleep(0.3)
        screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", "report", "-S", "-200"], capture_output=True,
                                text=True, check=True).stdout
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    print(screen)
    lines = screen.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in screen, "a name or number was cut short"
    worst = lines[next(i for i, line in enumerate(lines) if line.startswith("Worst layers")):]
    for node in ("conv_amplify", "relu_amplify", "rescale", "conv2", "pool", "logits"):
        row = next((line for line in worst if re.match(rf"\s+\d+\s+{node} \(", line)), None)
        assert row is not None, f"no row of the table names {node}:\n{screen}"
    assert re.search(r"^\s+3\s+conv_amplify \(Conv\) introduced overflow", screen, re.M)


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
