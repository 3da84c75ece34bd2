"""The fallback search: exact culprits on real ONNX chains through the emulator, 1-minimality,
baselines, build budgets, journal replay after an interrupt, and failed builds as failed candidates."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from fixtures.chain_models import planted_chain
from trtdebug.core.analysis.metrics import Verdict
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.search.journal import Journal, JournalSettings, journal_path
from trtdebug.core.search.strategies import (
    Evaluation,
    Evaluator,
    ddmin,
    isolate,
    kept_set_check,
    ranked_search,
    run_strategy,
    target_builds,
)
from trtdebug.engines.base import BuildError, Capabilities
from trtdebug.engines.emulator.engine import EmulatorEngine
from trtdebug.errors import UserError
from trtdebug.workflows.evaluate import evaluate_plan
from trtdebug.workflows.fallback import run_fallback
from trtdebug.workflows.problem import ProblemSpec, prepare

# -- the algorithms on a pass function we control -------------------------------------------------


class Oracle:
    """Passes when every culprit is kept; counts how often each kept set is asked about."""

    def __init__(self, culprits: set[str], extra_rule=None):
        self.culprits = culprits
        self.extra_rule = extra_rule
        self.asked: Counter[frozenset[str]] = Counter()

    def __call__(self, kept: frozenset[str]) -> Verdict:
        self.asked[kept] += 1
        passed = self.culprits <= kept and (self.extra_rule is None or self.extra_rule(kept))
        return Verdict(passed, {}, "" if passed else "outputs out of tolerance: y")


def _names(n: int) -> list[str]:
    return [f"node{i:04d}" for i in range(n)]


@pytest.mark.parametrize("n", [50, 200, 1000, 2000])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_ranked_search_stays_near_the_build_budget_even_when_the_ranking_is_useless(n, k):
    """A random ranking is the worst case: the budget 2*log2(N) + k*log2(N) holds on average, and
    no run exceeds it by more than 15% (dense culprits in small graphs come closest)."""
    nodes = _names(n)
    builds = []
    for seed in range(10):
        rng = random.Random(seed * 7919 + n * 10 + k)
        culprits = set(rng.sample(nodes, k))
        oracle = Oracle(culprits)
        result = ranked_search(rng.sample(nodes, n), nodes, Evaluator(oracle))
        assert set(result.kept) == culprits
        assert max(oracle.asked.values()) == 1
        builds.append(result.builds)
    assert sum(builds) / len(builds) <= target_builds(n, k), builds
    assert max(builds) <= 1.15 * target_builds(n, k), builds


def test_misleading_ranking_switches_to_graph_regions():
    nodes = _names(400)
    culprits = {nodes[10], nodes[11], nodes[300]}
    ranking = list(reversed(nodes))  # culprits ranked last: the passing prefix is nearly everything
    result = ranked_search(ranking, nodes, Evaluator(Oracle(culprits)))
    assert result.used_regions and result.prefix is not None and result.prefix > 200
    assert set(result.kept) == culprits


def test_good_ranking_needs_about_log_n_builds():
    nodes = _names(1000)
    culprits = [nodes[900], nodes[901], nodes[17]]
    ranking = culprits + [n for n in nodes if n not in culprits]
    result = ranked_search(ranking, nodes, Evaluator(Oracle(set(culprits))))
    assert set(result.kept) == set(culprits) and not result.used_regions
    assert result.builds <= 2 + 10 + 2 * 3 + 3  # bounds, prefix bisection, isolation, minimality


def test_ddmin_result_is_one_minimal_for_a_non_monotone_pass_function():
    nodes = _names(60)
    # Passes with {a, b}, or with {c} alone, but keeping d alongside c breaks it again.
    a, b, c, d = nodes[5], nodes[40], nodes[22], nodes[23]

    def rule(kept: frozenset[str]) -> bool:
        return ({a, b} <= kept) or (c in kept and d not in kept)

    ev = Evaluator(Oracle(set(), rule))
    found = ddmin(nodes[:30] + [a, b], ev)
    assert rule(frozenset(found))
    for node in found:
        assert not rule(frozenset(found) - {node}), f"{node} could be dropped: not 1-minimal"
    assert set(found) in ({a, b}, {c})


def _poisoned(n: int, k: int) -> tuple[list[str], Oracle, list[str]]:
    """k culprits, each ranked just before a "poison" node whose higher-precision output breaks
    the build unless its "antidote" (ranked after every poison) is kept too: passing is not
    monotone, isolation returns a set that fails, and the whole prefix (3k nodes, 2k of them
    removable) is minimized one node at a time."""
    nodes = _names(n)
    culprits, poisons, antidotes = nodes[:k], nodes[k:2 * k], nodes[2 * k:3 * k]

    def rule(kept: frozenset[str]) -> bool:
        return all(antidote in kept for poison, antidote in zip(poisons, antidotes, strict=True) if poison in kept)

    ranking = [x for pair in zip(culprits, poisons, strict=True) for x in pair] + antidotes + nodes[3 * k:]
    return nodes, Oracle(set(culprits), rule), ranking


@pytest.mark.parametrize(("n", "k"), [(400, 8), (1000, 20)])
def test_minimizing_a_non_monotone_prefix_stays_within_the_build_budget(n, k):
    """The minimizing phase used to start over from the first node after each removal: 539
    evaluations against a budget of 219 for N = 1000, k = 20 (k per removal)."""
    nodes, oracle, ranking = _poisoned(n, k)
    result = ranked_search(ranking, nodes, Evaluator(oracle))
    assert set(result.kept) == oracle.culprits and result.one_minimal
    assert max(oracle.asked.values()) == 1
    assert result.evaluations <= target_builds(n, k), result.evaluations


def test_ddmin_costs_one_pass_and_one_recheck_at_single_node_granularity():
    nodes = _names(90)
    needed = set(nodes[:10])  # needed nodes first: a restart after each removal re-asks all of them
    ev = Evaluator(Oracle(needed))
    assert set(ddmin(nodes, ev, granularity=len(nodes), subsets=False)) == needed
    assert ev.builds <= len(nodes) + len(needed), ev.builds


def test_isolate_finds_adjacent_pairs_and_keeps_candidate_order():
    nodes = _names(64)
    culprits = {nodes[20], nodes[21], nodes[50]}
    ev = Evaluator(Oracle(culprits))
    assert isolate(nodes, ev) == [nodes[20], nodes[21], nodes[50]]


def test_memo_never_rebuilds_a_kept_set_and_known_evaluations_are_not_rebuilt():
    oracle = Oracle({"b"})
    known = [Evaluation(frozenset({"a", "b"}), True, replayed=True)]
    ev = Evaluator(oracle, known)
    assert ev.passes({"b", "a"}) and ev.passes(["b"]) and ev.passes(("b",))
    assert oracle.asked == Counter({frozenset({"b"}): 1})
    assert ev.builds == 1 and ev.evaluations == 2


def test_a_candidate_whose_build_fails_counts_as_failed_not_as_a_crash():
    nodes = _names(30)

    def check(kept: frozenset[str]) -> Verdict:
        if nodes[3] in kept and nodes[4] not in kept:  # a precision boundary the builder rejects
            return Verdict(False, {}, "build failed: no implementation for layer node0003 in fp32 feeding fp16",
                           build_failed=True)
        return Verdict({nodes[7]} <= kept, {})

    seen: list[Evaluation] = []
    result = ranked_search(nodes[3:] + nodes[:3], nodes, Evaluator(check, listeners=[seen.append]))
    assert result.kept == (nodes[7],)
    failed = [e for e in seen if e.build_failed]
    assert failed and all(not e.passed and "build failed" in e.reason for e in failed)


# -- real models through the emulator --------------------------------------------------------------


def _session(path: Path, **options):
    return prepare(ProblemSpec(str(path), **options))


def _fallback(session, out: Path, **options):
    """run_fallback on a prepared session, whose engine a test may have substituted."""
    return run_fallback(ProblemSpec(str(session.problem.model.path)), out, prepared=session, **options)


@pytest.mark.parametrize(("n", "k", "seed"), [(50, 1, 0), (50, 3, 1), (50, 8, 2), (200, 3, 3), (200, 8, 4)])
def test_fallback_finds_exactly_the_planted_culprits(tmp_path, n, k, seed):
    planted = planted_chain(n, k, seed=seed)
    assert any(kind.endswith("pair") for kind in planted.kinds) == (k >= 2)
    session = _session(planted.save(tmp_path / "chain.onnx"))
    outcome = _fallback(session, tmp_path / "plan.json")
    assert outcome.found
    assert set(outcome.search.kept) == set(planted.culprits)
    assert outcome.builds <= target_builds(n, k)
    plan = PrecisionPlan.load(tmp_path / "plan.json")
    assert set(plan.kept()) == set(planted.culprits)
    assert plan.provenance["builds"] == outcome.builds and plan.provenance["strategy"] == "ranked"


def test_found_set_is_one_minimal_on_the_real_engine(tmp_path):
    planted = planted_chain(80, 5, seed=7)
    session = _session(planted.save(tmp_path / "chain.onnx"))
    outcome = _fallback(session, tmp_path / "plan.json")
    kept = set(outcome.search.kept)
    base = session.plan

    def passes(nodes: set[str]) -> bool:
        return evaluate_plan(session.problem, session.engine, base.with_precision(sorted(nodes), "fp32")).passed

    assert passes(kept)
    for node in kept:
        assert not passes(kept - {node}), f"{node} can go back to fp16: the set is not 1-minimal"


def test_misleading_ranking_on_a_real_model_still_finds_the_culprits(tmp_path):
    planted = planted_chain(120, ["tiny_constant", "overflow_pair"], seed=5)
    session = _session(planted.save(tmp_path / "chain.onnx"))
    candidates = [n.name for n in session.problem.model.nodes]
    evaluate = kept_set_check(lambda plan: evaluate_plan(session.problem, session.engine, plan, None),
                              session.plan, "fp32")
    # A ranking that puts every bystander above the culprits: the passing prefix is everything.
    ranking = [n for n in candidates if n not in planted.culprits] + list(planted.culprits)
    result = ranked_search(ranking, candidates, Evaluator(evaluate))
    assert result.used_regions and result.prefix == len(candidates)
    assert set(result.kept) == set(planted.culprits)
    assert result.builds <= target_builds(len(candidates), 3)


def test_baselines_keep_a_passing_prefix(tmp_path):
    planted = planted_chain(60, 3, seed=11)
    path = planted.save(tmp_path / "chain.onnx")
    outcomes = {s: run_fallback(ProblemSpec(str(path)), tmp_path / f"{s}.json", strategy=s)
                for s in ("linear", "bisect", "ranked")}
    last_culprit = max(outcomes["linear"].candidates.index(c) for c in planted.culprits)
    for strategy in ("linear", "bisect"):
        outcome = outcomes[strategy]
        assert outcome.found and outcome.compare is not None and outcome.compare.passed
        assert outcome.search.kept == tuple(outcome.candidates[:last_culprit + 1])
    assert outcomes["linear"].builds == last_culprit + 2  # K = 0 .. last_culprit + 1
    assert outcomes["bisect"].builds < outcomes["linear"].builds
    assert len(outcomes["ranked"].search.kept) == 3


def test_build_failure_through_the_engine_protocol_counts_as_failed(tmp_path):
    planted = planted_chain(60, 3, seed=2)
    session = _session(planted.save(tmp_path / "chain.onnx"))

    class PickyEngine(EmulatorEngine):
        """Rejects every plan with exactly two layers in fp32, as a builder may reject a plan."""

        capabilities = replace(EmulatorEngine.capabilities, replans=False)  # every plan goes through build

        def build(self, model, plan, bans=None, mark=None):
            if len(plan.kept()) == 2:
                raise BuildError("no kernel for this precision combination")
            return super().build(model, plan, bans, mark)

    session.engine = PickyEngine()
    outcome = _fallback(session, tmp_path / "plan.json")
    assert set(outcome.search.kept) == set(planted.culprits)
    records = _journal_records(tmp_path / "plan.json")
    failed = [r for r in records if r["build_failed"]]
    assert failed and all(len(r["kept"]) == 2 and not r["passed"] for r in failed)
    assert all("build failed" in r["reason"] for r in failed)


def _journal_records(plan: Path) -> list[dict]:
    lines = journal_path(plan).read_text().splitlines()
    return [json.loads(line) for line in lines if json.loads(line)["type"] == "evaluation"]


class InterruptingEngine(EmulatorEngine):
    """Stands for Ctrl-C: raises KeyboardInterrupt in the build after `allowed` builds."""

    capabilities = replace(EmulatorEngine.capabilities, replans=False)  # every plan goes through build

    def __init__(self, allowed: int):
        super().__init__()
        self.allowed = allowed

    def build(self, model, plan, bans=None, mark=None):
        if self.allowed == 0:
            raise KeyboardInterrupt
        self.allowed -= 1
        return super().build(model, plan, bans, mark)


@pytest.mark.parametrize("interrupt_after", [1, 4, 9])
def test_interrupted_search_resumes_without_repeating_an_evaluation(tmp_path, interrupt_after):
    planted = planted_chain(200, 8, seed=4)
    path = planted.save(tmp_path / "chain.onnx")
    reference = run_fallback(ProblemSpec(str(path)), tmp_path / "reference.json")

    session = _session(path)
    session.engine = InterruptingEngine(interrupt_after)
    with pytest.raises(KeyboardInterrupt, match="--resume"):
        _fallback(session, tmp_path / "plan.json")
    journaled = _journal_records(tmp_path / "plan.json")
    assert len(journaled) == interrupt_after  # the compare run is the first: its verdict is journaled too

    resumed = run_fallback(ProblemSpec(str(path)), tmp_path / "plan.json", resume=True)
    assert resumed.resumed and resumed.search.kept == reference.search.kept
    records = _journal_records(tmp_path / "plan.json")
    kept_sets = [frozenset(r["kept"]) for r in records]
    assert len(kept_sets) == len(set(kept_sets)), "an evaluation was repeated"
    assert resumed.builds == reference.builds == len(records)
    assert resumed.builds_this_run == reference.builds - interrupt_after


def test_resume_ignores_a_torn_last_line_and_continues_cleanly(tmp_path):
    planted = planted_chain(60, 3, seed=8)
    path = planted.save(tmp_path / "chain.onnx")
    session = _session(path)
    session.engine = InterruptingEngine(5)
    with pytest.raises(KeyboardInterrupt):
        _fallback(session, tmp_path / "plan.json")
    journal = journal_path(tmp_path / "plan.json")
    with open(journal, "ab") as handle:
        handle.write(b'{"type": "evaluation", "kept": ["n00')  # a write cut short by a crash
    resumed = run_fallback(ProblemSpec(str(path)), tmp_path / "plan.json", resume=True)
    assert set(resumed.search.kept) == set(planted.culprits)
    lines = journal.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # every line parses again
    assert resumed.builds_this_run == resumed.builds - 5


def test_resume_with_other_settings_is_refused(tmp_path):
    planted = planted_chain(40, 1, seed=9)
    path = planted.save(tmp_path / "chain.onnx")
    run_fallback(ProblemSpec(str(path)), tmp_path / "plan.json")
    with pytest.raises(UserError, match=r"--resume: this journal was written with --atol 0.01, not 0.5") as info:
        run_fallback(ProblemSpec(str(path), atol=0.5), tmp_path / "plan.json", resume=True)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"--seed 0, not 3"):
        run_fallback(ProblemSpec(str(path), seed=3), tmp_path / "plan.json", resume=True)


def test_fallback_refuses_an_engine_that_does_not_build(tmp_path):
    session = _session(planted_chain(30, 1, seed=1).save(tmp_path / "chain.onnx"))

    class SavedResults:
        name = "saved"
        capabilities = Capabilities(rebuilds=False)

    session.engine = SavedResults()
    with pytest.raises(UserError, match="no precision plan changes"):
        _fallback(session, tmp_path / "plan.json")


def test_journal_refuses_another_model(tmp_path):
    journal = tmp_path / "plan.journal.jsonl"
    settings = JournalSettings(
        model_sha256="a" * 64, precision="fp16", keep_precision="fp32", engine="emulator", obey=False,
        calib_method=None, calib_inputs_sha256=None, check=None, atol=0.01, rtol=0.01, output_tolerances=None,
        input_shapes=None, input_ranges=None, seed=0, input_sets="seed:0", feeds_sha256="c" * 64,
        base_plan_sha256="d" * 64, bans_sha256=None, quantized_sha256=None)
    Journal(journal, settings, resume=False).close()
    with pytest.raises(UserError, match=r"^--resume: this journal was written with model digest aaaaaaaaaaaa…, "
                                        r"not bbbbbbbbbbbb…; run without --resume or with the same option$"):
        Journal(journal, replace(settings, model_sha256="b" * 64), resume=True)


@pytest.mark.parametrize("jobs", [1, 4])
def test_a_search_stops_at_its_evaluation_budget_with_the_smallest_passing_set(jobs):
    nodes = _names(300)
    culprits = {nodes[3], nodes[150], nodes[151]}
    oracle = Oracle(culprits)

    def many(sets):
        return [(oracle(kept), 0.0) for kept in sets]

    ev = Evaluator(oracle, check_many=many if jobs > 1 else None, jobs=jobs, max_evaluations=7)
    result = run_strategy("ranked", nodes, nodes, ev)
    assert result.budget_exhausted and not result.one_minimal
    assert ev.evaluations == 7
    passing = [kept for kept in oracle.asked if culprits <= kept]
    assert passing and set(result.kept) == min(passing, key=len)
    unlimited = run_strategy("ranked", nodes, nodes, Evaluator(Oracle(culprits)))
    assert not unlimited.budget_exhausted and set(unlimited.kept) == culprits
