"""`trtdebug fallback --max-evaluations`: a search cut off by its budget writes its smallest passing plan,
exits 5 and prints a resume line that, pasted, finishes the search without repeating an evaluation."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from fixtures.chain_models import planted_chain
from tests.cli import run_cli
from trtdebug.core.search.journal import journal_path
from trtdebug.core.search.strategies import default_max_evaluations, target_builds
from trtdebug.errors import EXIT_BUDGET


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> tuple[Path, set[str]]:
    planted = planted_chain(60, 3, seed=21)
    return planted.save(tmp_path_factory.mktemp("budget") / "chain.onnx"), set(planted.culprits)


def _evaluated_sets(plan: Path) -> list[frozenset[str]]:
    records = [json.loads(line) for line in journal_path(plan).read_text().splitlines()]
    return [frozenset(r["kept"]) for r in records if r.get("type") == "evaluation"]


def _resume_line(stdout: str) -> list[str]:
    line = next(line for line in stdout.splitlines() if line.startswith("to go on: "))
    argv = shlex.split(line.removeprefix("to go on: "))
    assert argv[0] == "trtdebug"
    return argv[1:]


def test_a_search_cut_off_writes_a_passing_plan_and_the_pasted_resume_line_finishes_it(chain, tmp_path):
    model, culprits = chain
    plan = tmp_path / "plan.json"
    cut = run_cli("fallback", model, "--out", plan, "--max-evaluations", 6)
    assert cut.returncode == EXIT_BUDGET, cut.stderr
    assert "STOPPED" in cut.stdout and "not shown to be minimal" in cut.stdout
    assert len(_evaluated_sets(plan)) == 6
    written = json.loads(plan.read_text())
    assert written["provenance"]["one_minimal"] is False
    kept = set(written["provenance"]["kept"])
    assert culprits <= kept  # it passes, so it holds every planted culprit
    checked = run_cli("compare", model, "--plan", plan)
    assert checked.returncode == 0, checked.stdout

    argv = _resume_line(cut.stdout)
    assert argv[argv.index("--max-evaluations") + 1] == str(6 + default_max_evaluations(60))
    finished = run_cli(*argv)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    final = json.loads(plan.read_text())["provenance"]
    assert set(final["kept"]) == culprits and final["one_minimal"] and final["resumed"]
    evaluated = _evaluated_sets(plan)
    assert len(evaluated) == len(set(evaluated))  # nothing the cut-off run built was built again
    assert len(evaluated) <= target_builds(60, len(culprits))


def test_a_budget_spent_before_any_plan_passes_says_so_and_writes_no_plan(chain, tmp_path):
    model, _ = chain
    plan = tmp_path / "plan.json"
    cut = run_cli("fallback", model, "--out", plan, "--max-evaluations", 1)
    assert cut.returncode == EXIT_BUDGET, cut.stderr
    assert "no kept set passed within the budget of 1 evaluations; no plan was written" in cut.stdout
    assert not plan.exists()
    assert "--resume --max-evaluations" in cut.stdout


def test_the_default_budget_leaves_headroom_over_the_documented_bound():
    for n in (10, 60, 1000, 5000):
        assert default_max_evaluations(n) >= 2 * target_builds(n, max(16, n // 16))
