"""Two `trtdebug fallback` runs on one --out: the second is refused naming the first's pid; the lock
file a killed run leaves behind is taken over by the next run."""

from __future__ import annotations

import json
import signal
import time

from fixtures.chain_models import planted_chain
from tests.cli import run_cli, start_cli
from trtdebug.core.search.journal import journal_path, lock_path


def test_a_second_fallback_on_the_same_out_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path):
    slow = planted_chain(1500, 10, seed=5).save(tmp_path / "slow.onnx")  # a search of many seconds
    plan = tmp_path / "plan.json"
    first = start_cli("fallback", slow, "--out", plan)
    try:
        deadline = time.monotonic() + 120
        while not journal_path(plan).is_file() or journal_path(plan).stat().st_size == 0:
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        journal_before = journal_path(plan).read_bytes()
        second = run_cli("fallback", slow, "--out", plan)
        assert first.poll() is None, "the first run ended before the second started; make the model slower"
        assert second.returncode == 2, second.stderr
        errors = [line for line in second.stderr.splitlines() if line.startswith("trtdebug: error:")]
        assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr
        assert "done in" not in second.stderr, second.stderr  # refused before its FP32 reference ran
        assert f"process {first.pid}" in errors[0] and "another --out" in errors[0]
        assert journal_path(plan).read_bytes().startswith(journal_before)  # the second run wrote nothing
    finally:
        first.send_signal(signal.SIGKILL)  # a crash: no cleanup runs
        first.communicate(timeout=60)
    lock = lock_path(journal_path(plan))
    assert lock.read_text().strip() == str(first.pid)  # left behind, naming a dead process

    small = planted_chain(20, 1, seed=3).save(tmp_path / "small.onnx")
    third = run_cli("fallback", small, "--out", plan)
    assert third.returncode == 0, third.stderr
    assert json.loads(plan.read_text())["format"] == "trtdebug.precision-plan"
    assert not lock.exists()  # a finished run removes its lock file
