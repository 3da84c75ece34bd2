"""Parallel fallback search: several candidates per round give exactly the sequential plan, the
journal stays the single record (written by the parent only), and --resume works across job
counts. Real worker processes are spawned for the CLI tests; Ray is tested when installed."""

from __future__ import annotations

import json
import random
import re
import socket
import time
from pathlib import Path

import pytest

from fixtures.chain_models import planted_chain
from tests.cli import run_cli
from tests.test_search import Oracle
from trtdebug.core.search.journal import journal_path
from trtdebug.core.search.strategies import Evaluation, Evaluator, run_strategy
from trtdebug.workflows.fallback import run_fallback
from trtdebug.workflows.problem import ProblemSpec, prepare


def _names(n: int) -> list[str]:
    return [f"node{i:04d}" for i in range(n)]


def _search(strategy, ranking, nodes, oracle, jobs, known=()):
    heard: list[Evaluation] = []
    ev = Evaluator(oracle, known, [heard.append], jobs=jobs)
    return run_strategy(strategy, ranking, nodes, ev), ev, heard


@pytest.mark.parametrize("strategy", ["ranked", "bisect", "linear"])
@pytest.mark.parametrize("seed", range(6))
def test_every_job_count_finds_the_sequential_answer_in_fewer_rounds(strategy, seed):
    rng = random.Random(seed)
    nodes = _names(rng.choice([40, 200, 600]))
    culprits = set(rng.sample(nodes, rng.choice([1, 3, 6])))
    ranking = rng.sample(nodes, len(nodes)) if seed % 2 else sorted(nodes, key=lambda n: n not in culprits)
    sequential, ev1, _ = _search(strategy, ranking, nodes, Oracle(culprits), 1)
    assert ev1.rounds == ev1.builds
    for jobs in (2, 4, 8):
        oracle = Oracle(culprits)
        result, ev, heard = _search(strategy, ranking, nodes, oracle, jobs)
        assert result.kept == sequential.kept and result.prefix == sequential.prefix
        assert result.one_minimal == sequential.one_minimal and result.used_regions == sequential.used_regions
        assert max(oracle.asked.values()) == 1  # no kept set is built twice
        assert len(heard) == ev.builds == len(oracle.asked)  # every build reaches the listeners once
        if ev1.builds > 3:
            assert ev.rounds < ev1.builds


def test_a_non_monotone_pass_function_gives_the_same_answer_at_every_job_count():
    nodes = _names(120)
    a, b, c, d = nodes[5], nodes[90], nodes[44], nodes[45]

    def rule(kept: frozenset[str]) -> bool:  # {a, b} passes, or c without d
        return ({a, b} <= kept) or (c in kept and d not in kept)

    ranking = random.Random(3).sample(nodes, len(nodes))
    answers = {jobs: _search("ranked", ranking, nodes, Oracle(set(), rule), jobs)[0].kept for jobs in (1, 2, 3, 4, 8)}
    assert len(set(answers.values())) == 1, answers


def test_parallel_search_resumes_from_a_sequential_journal_and_back():
    nodes = _names(300)
    culprits = {nodes[3], nodes[150], nodes[151]}
    ranking = random.Random(5).sample(nodes, len(nodes))
    full, _, heard = _search("ranked", ranking, nodes, Oracle(culprits), 1)
    for jobs in (1, 4):
        for cut in (3, len(heard) // 2):
            known = [Evaluation(e.kept, e.passed, replayed=True) for e in heard[:cut]]
            oracle = Oracle(culprits)
            resumed, ev, _ = _search("ranked", ranking, nodes, oracle, jobs, known)
            assert resumed.kept == full.kept
            assert not set(oracle.asked) & {e.kept for e in known}  # nothing replayed is rebuilt


def test_with_four_jobs_rounds_halve_for_at_most_a_quarter_more_builds_on_good_rankings():
    totals = {1: [0, 0], 4: [0, 0]}
    for seed in range(12):
        rng = random.Random(seed)
        nodes = _names(rng.choice([200, 1000, 2000]))
        culprits = rng.sample(nodes, rng.choice([1, 3, 8]))
        others = [n for n in nodes if n not in culprits]
        rng.shuffle(others)
        top = culprits + others[:2 * len(culprits)]  # a compare run puts culprits among few decoys
        rng.shuffle(top)
        ranking = top + others[2 * len(culprits):]
        for jobs in totals:
            _, ev, _ = _search("ranked", ranking, nodes, Oracle(set(culprits)), jobs)
            totals[jobs][0] += ev.builds
            totals[jobs][1] += ev.rounds
    builds1 = totals[1][0]
    assert totals[4][1] <= 0.5 * builds1, totals
    assert totals[4][0] <= 1.25 * builds1, totals


# -- worker processes through the CLI --------------------------------------------------------------


def _records(plan: Path) -> list[dict]:
    lines = journal_path(plan).read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parallel")
    planted = planted_chain(200, 3, seed=31)
    return planted.save(folder / "chain.onnx"), planted


def test_jobs_2_writes_the_plan_of_jobs_1_and_one_journal(chain, tmp_path):
    model, planted = chain
    plans = {}
    for jobs in (1, 2):
        plan = tmp_path / f"plan{jobs}.json"
        run = run_cli("fallback", model, "--out", plan, "--jobs", jobs)
        assert run.returncode == 0, run.stderr
        plans[jobs] = json.loads(plan.read_text())
    assert plans[2]["nodes"] == plans[1]["nodes"]
    assert set(plans[2]["nodes"]) == set(planted.culprits)
    records = _records(tmp_path / "plan2.json")
    assert records[0]["type"] == "header" and "jobs" not in json.dumps(records[0]["settings"])
    evaluations = [r for r in records if r["type"] == "evaluation"]
    assert [r["index"] for r in evaluations] == list(range(len(evaluations)))
    kept = [frozenset(r["kept"]) for r in evaluations]
    assert len(kept) == len(set(kept))
    assert plans[2]["provenance"]["builds"] == len(evaluations)


def test_resume_works_across_job_counts(chain, tmp_path):
    model, planted = chain
    plan = tmp_path / "plan.json"
    assert run_cli("fallback", model, "--out", plan, "--jobs", 1).returncode == 0
    journal = journal_path(plan)
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(lines[:6]))  # as if interrupted after a few builds
    resumed = run_cli("fallback", model, "--out", plan, "--resume", "--jobs", 2)
    assert resumed.returncode == 0, resumed.stderr
    data = json.loads(plan.read_text())
    assert set(data["nodes"]) == set(planted.culprits) and data["provenance"]["resumed"] is True
    kept = [frozenset(r["kept"]) for r in _records(plan) if r["type"] == "evaluation"]
    assert len(kept) == len(set(kept)), "an evaluation was repeated after --resume"
    again = run_cli("fallback", model, "--out", plan, "--resume", "--jobs", 1)
    assert again.returncode == 0, again.stderr
    assert json.loads(plan.read_text())["provenance"]["builds_this_run"] == 0  # all replayed


def test_jobs_must_be_a_count_or_ray(chain, tmp_path):
    model, _ = chain
    run = run_cli("fallback", model, "--out", tmp_path / "p.json", "--jobs", "zero")
    assert run.returncode == 2 and "--jobs" in run.stderr


def test_ray_tasks_find_the_sequential_plan(chain, tmp_path):
    ray = pytest.importorskip("ray")
    from trtdebug.workflows.parallel import RayJudge, problem_fingerprint

    model, planted = chain
    spec = ProblemSpec(str(model))
    case = prepare(spec)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        judge = RayJudge(spec, 2, problem_fingerprint(case))
        try:
            outcome = run_fallback(spec, tmp_path / "ray.json", prepared=case, judge=judge)
        finally:
            judge.close()
    finally:
        ray.shutdown()
    sequential = run_fallback(spec, tmp_path / "seq.json")
    assert outcome.search.kept == sequential.search.kept
    assert set(outcome.search.kept or ()) == set(planted.culprits)
    assert outcome.rounds_this_run < sequential.rounds_this_run


def _ray_connection_failure(model: Path, tmp_path: Path, address: str) -> str:
    """Run fallback against `address`: exit 4 within 30 s, one line naming the address, and no line
    of Ray's own (its Python log and its C++ retry lines) on either stream."""
    started = time.monotonic()
    run = run_cli("fallback", model, "--out", tmp_path / "p.json", "--jobs", "ray", "--ray-address", address,
                  timeout=60)
    assert time.monotonic() - started < 30, run.stderr
    assert run.returncode == 4, run.stdout + run.stderr
    *before, last = run.stderr.strip().splitlines()
    assert last.startswith("trtdebug: engine failure:") and address in last, run.stderr
    third_party = re.compile(r"^\[?\d{4}-\d\d-\d\d|rpc_client|gcs_client|worker\.py|WARNING|INFO")
    assert not [line for line in before if third_party.search(line)], run.stderr
    assert run.stdout == ""
    return last


def test_an_unreachable_ray_cluster_is_one_line_and_exit_4_at_once(chain, tmp_path):
    pytest.importorskip("ray")
    model, _ = chain
    assert "Connection refused" in _ray_connection_failure(model, tmp_path, "localhost:1")


def test_a_port_that_is_not_a_ray_head_is_one_line_and_exit_4_within_30s(chain, tmp_path):
    pytest.importorskip("ray")
    model, _ = chain
    with socket.create_server(("0.0.0.0", 0), backlog=64) as silent:  # accepts, never speaks gRPC
        port = silent.getsockname()[1]
        assert "no Ray head answered" in _ray_connection_failure(model, tmp_path, f"127.0.0.1:{port}")
