"""`trtdebug fallback --resume` replays a journal only for the same settings: every option that decides a
verdict is recorded in the journal and compared on resume; any difference is one line naming the option
and both values, exit 2. The journal lock is released however a run ends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures.chain_models import planted_chain
from tests.cli import run_cli
from trtdebug.core.search.journal import JOURNAL_FORMAT, journal_path, lock_path
from trtdebug.engines.emulator.engine import EmulatorEngine
from trtdebug.errors import UserError
from trtdebug.workflows.fallback import run_fallback
from trtdebug.workflows.problem import ProblemSpec, prepare


def _one_error(run: subprocess.CompletedProcess) -> str:
    errors = [line for line in run.stderr.splitlines() if line.startswith("trtdebug: error:")]
    assert run.returncode == 2 and len(errors) == 1 and "Traceback" not in run.stderr, run.stderr
    return errors[0]


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    return planted_chain(20, 1, seed=3).save(tmp_path_factory.mktemp("resume") / "chain.onnx")


def test_resume_with_another_calibration_method_is_refused(chain, tmp_path):
    # Implicit INT8 on the emulator: the float model is calibrated in memory, so the method decides verdicts.
    plan = tmp_path / "plan.json"
    first = run_cli("fallback", chain, "--precision", "int8", "--calib-method", "entropy", "--out", plan)
    assert first.returncode in (0, 1), first.stderr
    journal_before = journal_path(plan).read_bytes()
    resumed = run_cli("fallback", chain, "--precision", "int8", "--calib-method", "minmax", "--out", plan, "--resume")
    error = _one_error(resumed)
    assert "this journal was written with --calib-method entropy, not minmax" in error
    assert "without --resume" in error
    assert journal_path(plan).read_bytes() == journal_before  # the refused run replayed and wrote nothing
    same = run_cli("fallback", chain, "--precision", "int8", "--calib-method", "entropy", "--out", plan, "--resume")
    assert same.returncode == first.returncode, same.stderr
    assert "(0 in this run" in same.stdout  # every verdict replayed


def _feeds_file(model: Path, path: Path, scale: float) -> Path:
    from trtdebug.core.model.graph import Model

    (x,) = Model.load(model).inputs
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in x.shape]
    np.savez(path, **{x.name: (np.random.default_rng(0).uniform(-1, 1, shape) * scale).astype(np.float32)})
    return path


CHECK = f"{sys.executable} -c pass {{outputs}}"


@pytest.mark.parametrize(("first", "second", "expected"), [
    (["--atol", "0.1"], ["--atol", "0.5"], "--atol 0.1, not 0.5"),
    (["--rtol", "0.1"], [], "--rtol 0.1, not 0.01"),
    ([], ["--precision", "bf16"], "--precision fp16, not bf16"),
    ([], ["--seed", "3"], "--seed 0, not 3"),
    (["--inputs", "a.npz"], ["--inputs", "b.npz"], "input sets"),
    ([], ["--input-seeds", "3"], "input sets (--inputs / --input-seeds) seed:0 seed:1, not seed:0 seed:1 seed:2"),
    ([], ["--check", CHECK], f"--check (none), not {CHECK}"),
    (["--output-tol", "y:0.1,0.1"], [], "--output-tol y:0.1,0.1, not (none)"),
], ids=["atol", "rtol-default", "precision", "seed", "inputs", "input-seeds", "check", "output-tol"])
def test_resume_with_another_verdict_setting_is_refused_naming_it(chain, tmp_path, first, second, expected):
    _feeds_file(chain, tmp_path / "a.npz", 1.0)
    _feeds_file(chain, tmp_path / "b.npz", 0.5)
    folder = [str(tmp_path / a) if a.endswith(".npz") else a for a in first]
    again = [str(tmp_path / a) if a.endswith(".npz") else a for a in second]
    plan = tmp_path / "plan.json"
    written = run_cli("fallback", chain, *folder, "--out", plan)
    assert written.returncode in (0, 1), written.stderr
    error = _one_error(run_cli("fallback", chain, *again, "--out", plan, "--resume"))
    assert "--resume: this journal was written with " + expected in error, error
    assert error.endswith("run without --resume or with the same option"), error


def test_a_journal_of_the_previous_format_is_refused_in_one_line(chain, tmp_path):
    plan = tmp_path / "plan.json"
    header = {"format": JOURNAL_FORMAT, "version": 1, "type": "header",
              "settings": {"model_sha256": "0" * 64, "precision": "fp16"}}
    journal_path(plan).write_text(json.dumps(header) + "\n")
    error = _one_error(run_cli("fallback", chain, "--out", plan, "--resume"))
    assert "version 1" in error and "without --resume" in error, error


class InterruptingEngine(EmulatorEngine):
    def build(self, model, plan, bans=None, mark=None):
        raise KeyboardInterrupt


def test_the_lock_is_released_on_interrupt_and_on_error(chain, tmp_path):
    plan = tmp_path / "plan.json"
    spec = ProblemSpec(str(chain))
    case = prepare(spec)
    case.engine = InterruptingEngine()
    with pytest.raises(KeyboardInterrupt):
        run_fallback(spec, plan, prepared=case)
    assert not lock_path(journal_path(plan)).exists()
    with pytest.raises(UserError, match="--atol"):
        run_fallback(ProblemSpec(str(chain), atol=0.5), plan, resume=True)
    assert not lock_path(journal_path(plan)).exists()
    outcome = run_fallback(spec, plan, resume=True)  # the lock is free again
    assert outcome.resumed
