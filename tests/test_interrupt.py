"""Ctrl-C is answered within a second even while a long native build runs, with exit 130 and one line."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from fixtures.chain_models import planted_chain
from tests.cli import run_cli, start_cli
from trtdebug.core.search.journal import journal_path

RAN = "layer outputs exposed, and running: done"  # the marked run is over; the local-error setup follows


def _start(*args: object) -> tuple[subprocess.Popen[str], list[str]]:
    process = start_cli(*args)
    lines: list[str] = []
    assert process.stderr is not None
    stream = process.stderr

    def read() -> None:
        for line in stream:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return process, lines


def _interrupt_during_build(process: subprocess.Popen[str], lines: list[str]) -> float:
    """SIGINT two seconds into the local-error session's setup (the layers writing wrong tensors: most
    of this chain), one native onnxruntime call of many seconds; the seconds until the process exited."""
    deadline = time.monotonic() + 180
    while not any(RAN in line for line in lines):
        assert process.poll() is None, "".join(lines)
        assert time.monotonic() < deadline, "the marked run never finished"
        time.sleep(0.02)
    time.sleep(2.0)
    assert process.poll() is None, "the build ended before it could be interrupted"
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    return time.monotonic() - sent


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The emulator's local-error session on this graph takes ~20 s of native onnxruntime setup,
    # where Python cannot see SIGINT: without the worker thread, Ctrl-C would wait for it.
    return planted_chain(10000, 4, seed=5).save(tmp_path_factory.mktemp("slow") / "chain10000.onnx")


@pytest.mark.slow
def test_ctrl_c_during_a_long_compare_build_exits_130_within_a_second(slow_model, tmp_path):
    report = tmp_path / "report.json"
    process, lines = _start("compare", slow_model, "--json", report)
    waited = _interrupt_during_build(process, lines)
    time.sleep(0.2)  # the reader thread drains what is left
    assert process.returncode == 130, "".join(lines)
    assert waited < 1.0, f"took {waited:.2f}s to answer Ctrl-C"
    assert lines[-1].strip() == "trtdebug: interrupted"
    assert not report.exists()


@pytest.mark.slow
def test_ctrl_c_during_fallback_ranking_build_says_how_to_resume_and_keeps_the_journal(slow_model, tmp_path):
    plan = tmp_path / "plan.json"
    process, lines = _start("fallback", slow_model, "--out", plan)
    waited = _interrupt_during_build(process, lines)
    time.sleep(0.2)
    assert process.returncode == 130, "".join(lines)
    assert waited < 1.0, f"took {waited:.2f}s to answer Ctrl-C"
    last = lines[-1].strip()
    assert last.startswith("trtdebug: interrupted; the journal") and "rerun with --resume" in last
    records = [json.loads(line) for line in journal_path(plan).read_text().splitlines()]
    assert records[0]["type"] == "header"  # a valid journal that --resume accepts
    assert not plan.exists()


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def searched_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return planted_chain(2000, 3, seed=5).save(tmp_path_factory.mktemp("search") / "chain2000.onnx")


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_fallback_interrupted_mid_search_leaves_no_lock_and_resumes(searched_model, tmp_path, jobs):
    plan = tmp_path / "plan.json"
    process, lines = _start("fallback", searched_model, "--out", plan, "--jobs", jobs)
    deadline = time.monotonic() + 180
    while not any(" -> " in line and "rank " not in line for line in lines):  # a search build is done
        assert process.poll() is None, "".join(lines)
        assert time.monotonic() < deadline, "the search never started"
        time.sleep(0.02)
    workers = _children(process.pid)
    assert len(workers) >= (jobs if jobs > 1 else 0), workers
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    assert process.returncode == 130, "".join(lines)
    assert not list(tmp_path.glob("*.lock")), "Ctrl-C left the journal's lock file behind"
    time.sleep(0.5)
    assert not [pid for pid in workers if _alive(pid)], "Ctrl-C left --jobs worker processes running"
    resumed = run_cli("fallback", searched_model, "--out", plan, "--resume", "--jobs", jobs)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(plan.read_text())["provenance"]["resumed"] is True
