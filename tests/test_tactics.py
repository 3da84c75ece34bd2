"""`trtdebug tactics`: find the faulty tactic, ban it, verify; diff repeated builds; ban lists as input."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures.tactic_models import faulty_accumulation
from trtdebug.cli.app import main
from trtdebug.core.analysis.metrics import Tolerance
from trtdebug.core.model.feeds import generate_feeds, resolve_shapes
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.ban_list import BANS_FORMAT, BanList
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.engines.base import BuildError, Capabilities, LayerInfo, Marking
from trtdebug.engines.emulator.engine import EmulatorEngine
from trtdebug.workflows.evaluate import evaluate_plan
from trtdebug.workflows.problem import Problem
from trtdebug.workflows.tactics import BuildRecord, find_tactic_bans, rank_tactics


def _problem(proto: onnx.ModelProto) -> Problem:
    model = Model.from_proto(proto)
    feeds = generate_feeds(model, resolve_shapes(model, {}), {}, 0)
    return Problem.prepare(model, feeds, Tolerance.for_precision("fp16"))


def _cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


@pytest.fixture(scope="module")
def faulty_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tactics") / "faulty.onnx"
    onnx.save(faulty_accumulation()[0], path)
    return path


# -- the emulator fixture, end to end -------------------------------------------------------------

def test_ban_list_names_exactly_the_faulty_layer_and_variant():
    proto, truth = faulty_accumulation()
    problem = _problem(proto)
    plan = PrecisionPlan("fp16").for_model(problem.model)
    search = find_tactic_bans(problem, EmulatorEngine(), plan)
    assert not search.baseline.passed and search.passed
    assert [(e.onnx_nodes, e.tactic) for e in search.bans.entries] == [((truth.node,), truth.variant)]
    entry = search.bans.entries[0]
    assert entry.evidence["tensor"] == truth.tensor
    assert entry.evidence["before"]["frac_outside"] == 1.0 and entry.evidence["after"]["frac_outside"] == 0.0
    assert entry.evidence["tactic_after"] != truth.variant
    assert search.builds == 3  # default build, the ban alone, all kept bans together
    assert not search.rejected
    # the ban flows through evaluate_plan too, which fallback and build use
    assert not evaluate_plan(problem, EmulatorEngine(), plan).passed
    assert evaluate_plan(problem, EmulatorEngine(), plan, search.bans).passed


def test_cli_tactics_writes_a_ban_list_that_makes_compare_pass(faulty_path, tmp_path, capsys):
    bans_path = tmp_path / "bans.json"
    code, out, _ = _cli(capsys, "tactics", faulty_path, "--precision", "fp16", "--out", bans_path)
    assert code == 0, out
    assert "big_matmul" in out and "fp16_accumulate" in out and "kept" in out
    data = json.loads(bans_path.read_text())
    assert data["format"] == BANS_FORMAT and data["version"] == 1
    assert data["model_sha256"] == Model.load(faulty_path).sha256
    [entry] = data["entries"]
    assert entry["layer"] == "big_matmul" and entry["tactic"] == "fp16_accumulate"
    assert entry["onnx_nodes"] == ["big_matmul"] and entry["engine"] == "emulator"
    assert {"before", "after", "builds_used"} <= set(entry["evidence"])
    assert _cli(capsys, "compare", faulty_path)[0] == 1
    assert _cli(capsys, "compare", faulty_path, "--bans", bans_path)[0] == 0


def test_build_diff_ranks_the_faulty_tactic_first_when_builds_differ():
    proto, truth = faulty_accumulation(pin_faulty_tactic=False)
    problem = _problem(proto)
    search = find_tactic_bans(problem, EmulatorEngine(), PrecisionPlan("fp16"), builds=8)
    outcomes = [r.passed for r in search.records]
    assert True in outcomes and False in outcomes  # seeded autotuner noise: builds differ
    top = search.ranking[0]
    assert (top.onnx_nodes, top.tactic, top.bad_only) == ((truth.node,), truth.variant, True)
    assert top.bad_builds == outcomes.count(False)
    # the default build passes, so the search ran on a failing build and banned the same tactic
    assert search.baseline.passed is False and any("default build passes" in n for n in search.notes)
    assert [(e.onnx_nodes, e.tactic) for e in search.bans.entries] == [((truth.node,), truth.variant)]
    assert len(search.records_with_bans) == 8 and all(r.passed for r in search.records_with_bans)


def test_rank_tactics_needs_passing_and_failing_builds():
    def record(index: int, passed: bool, tactics: dict[str, str]) -> BuildRecord:
        return BuildRecord(index, passed, "", {(k,): v for k, v in tactics.items()}, {(k,): k for k in tactics})

    good = record(0, True, {"a": "t1", "b": "t1"})
    bad = [record(1, False, {"a": "t2", "b": "t1"}), record(2, False, {"a": "t2", "b": "t2"})]
    ranked = rank_tactics([good, *bad])
    assert [(r.layer, r.tactic, r.bad_builds, r.good_builds) for r in ranked] == [
        ("a", "t2", 2, 0), ("b", "t2", 1, 0), ("b", "t1", 1, 1)]
    assert rank_tactics(bad) == [] and rank_tactics([good]) == []


def test_precision_errors_are_not_banned(planted_models):
    path, truth = planted_models["overflow"]
    model = Model.load(path)
    problem = Problem.prepare(model, generate_feeds(model, resolve_shapes(model, {}), {}, 0),
                              Tolerance.for_precision("fp16"))
    search = find_tactic_bans(problem, EmulatorEngine(), PrecisionPlan("fp16"))
    assert not search.passed and len(search.bans) == 0
    assert all("still introduces error" in d.reason for d in search.rejected)
    assert any("fallback" in note for note in search.notes)


# -- the loop through the Engine protocol, on an engine whose tactics we script ------------------

class ScriptedEngine:
    """A fake engine over a graph of Mul-by-constant and Add nodes. Each layer has tactics in
    order of preference; a tactic listed in `corrupts` scales the tensors it names by 1.5."""

    name = "scripted"
    capabilities = Capabilities(exact_marking=True, tactics=True)  # so a compare is exactly one build

    def __init__(self, tactics: Mapping[str, list[str]], corrupts: Mapping[tuple[str, str], set[str]]):
        self.tactics = tactics
        self.corrupts = corrupts

    def build(self, model: Model, plan: PrecisionPlan, bans: BanList | None = None,
              mark: Marking | None = None) -> ScriptedBuilt:
        layers = []
        for node in model.nodes:
            options = self.tactics.get(node.name, [])
            banned = bans.banned_for(node.name, (node.name,)) if bans else set()
            allowed = [t for t in options if t not in banned] or options[:1]
            chosen = allowed[0] if allowed else ""
            layers.append(LayerInfo(node.name, (node.name,), plan.default, chosen, node.op_type,
                                    tuple(node.output), tuple(allowed[1:])))
        wrong = {t for layer in layers for t in self.corrupts.get((layer.name, layer.tactic), set())}
        return ScriptedBuilt(model, layers, wrong)


class ScriptedBuilt:
    def __init__(self, model: Model, layers: list[LayerInfo], wrong: set[str]):
        self.model = model
        self.layers = layers
        self.wrong = wrong
        self.marking_notes: dict[str, object] = {}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = dict(feeds)
        for node in self.model.nodes:
            a, b = (values[t] if t in values else self.model.initializer(t) for t in node.input)
            out = a * b if node.op_type == "Mul" else a + b
            values[node.output[0]] = out * 1.5 if node.output[0] in self.wrong else out
        return {k: v for k, v in values.items() if k not in feeds}


def _graph(nodes: list[tuple[str, str, str, str]]) -> onnx.ModelProto:
    """(op, input, other input, name) per node; every node writes the tensor named like itself."""
    made = [helper.make_node(op, [a, b], [name], name=name) for op, a, b, name in nodes]
    graph = helper.make_graph(made, "scripted", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info(nodes[-1][3], TensorProto.FLOAT, [4])],
                              [numpy_helper.from_array(np.float32(k), f"k{k}") for k in (2, 3, 4, 5)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto


BRANCHES = _graph([("Mul", "x", "k2", "a"), ("Mul", "x", "k3", "b"), ("Mul", "x", "k4", "c"),
                   ("Mul", "x", "k5", "d"), ("Add", "a", "b", "ab"), ("Add", "c", "d", "cd"),
                   ("Add", "ab", "cd", "y")])
TWO_TACTICS = {name: ["t1", "t2"] for name in "abcd"}


def test_bisection_keeps_only_the_ban_that_fixes_its_layer():
    # a's t1 is faulty (t2 is fine); c is wrong whatever tactic it gets (a precision problem)
    engine = ScriptedEngine(TWO_TACTICS, {("a", "t1"): {"a"}, ("c", "t1"): {"c"}, ("c", "t2"): {"c"}})
    search = find_tactic_bans(_problem(BRANCHES), engine, PrecisionPlan("fp16"))
    assert [s.layer.name for s in search.suspects] == ["a", "c"]
    assert [(d.entry.layer, d.entry.tactic) for d in search.kept] == [("a", "t1")]
    [rejected] = search.rejected
    assert rejected.entry.layer == "c" and "still introduces error with t2" in rejected.reason
    assert search.builds == 5  # default, both banned, each half alone, kept bans together
    assert not search.passed  # c is still wrong


def test_a_ban_that_creates_another_error_is_rejected():
    # banning a's t1 fixes a, but its t2 breaks b, which was right before
    engine = ScriptedEngine(TWO_TACTICS, {("a", "t1"): {"a"}, ("a", "t2"): {"b"}})
    search = find_tactic_bans(_problem(BRANCHES), engine, PrecisionPlan("fp16"))
    [decision] = search.decisions
    assert not decision.kept and "creates another at b" in decision.reason
    assert decision.entry.evidence["created_errors"] == ["b"]
    assert len(search.bans) == 0 and not search.passed


def test_errors_revealed_downstream_are_found_in_another_round():
    # p and q both have a faulty default tactic; with no local error, q only shows once p is fixed
    chain = _graph([("Mul", "x", "k2", "p"), ("Mul", "p", "k3", "q"), ("Add", "q", "x", "y")])
    engine = ScriptedEngine({"p": ["t1", "t2"], "q": ["t1", "t2"]}, {("p", "t1"): {"p"}, ("q", "t1"): {"q"}})
    search = find_tactic_bans(_problem(chain), engine, PrecisionPlan("fp16"))
    assert [(e.layer, e.tactic) for e in search.bans.entries] == [("p", "t1"), ("q", "t1")]
    assert search.passed


def test_given_bans_are_applied_and_kept():
    engine = ScriptedEngine(TWO_TACTICS, {("a", "t1"): {"a"}, ("b", "t1"): {"b"}})
    problem = _problem(BRANCHES)
    first = find_tactic_bans(problem, engine, PrecisionPlan("fp16"))
    assert len(first.bans) == 2 and first.passed
    again = find_tactic_bans(problem, engine, PrecisionPlan("fp16"), first.bans)
    assert again.baseline.passed and not again.decisions and len(again.bans) == 2


# -- bad input ---------------------------------------------------------------------------------

def _one_line_error(capsys, *args) -> str:
    code, _, err = _cli(capsys, *args)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("trtdebug: error: ")
    return err


def test_missing_or_corrupt_ban_lists_are_one_line_errors(faulty_path, tmp_path, capsys):
    assert "ban list not found" in _one_line_error(capsys, "compare", faulty_path, "--bans", tmp_path / "no.json")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{ not json")
    assert "not valid JSON" in _one_line_error(capsys, "compare", faulty_path, "--bans", corrupt)
    corrupt.write_text(json.dumps({"format": BANS_FORMAT, "version": 1, "entries": [{"tactic": "x"}]}))
    assert 'entry 0 needs a non-empty string "layer"' in _one_line_error(capsys, "tactics", faulty_path,
                                                                          "--bans", corrupt)
    corrupt.write_text(json.dumps({"format": BANS_FORMAT, "version": 99, "entries": []}))
    assert "version 99" in _one_line_error(capsys, "compare", faulty_path, "--bans", corrupt)


def test_bans_for_another_model_are_refused(faulty_path, tmp_path, capsys):
    other, _ = faulty_accumulation(seed=1)  # same graph, other weights
    other_path = tmp_path / "other.onnx"
    onnx.save(other, other_path)
    bans = BanList(model_sha256=Model.load(other_path).sha256)
    bans.save(tmp_path / "other_bans.json")
    err = _one_line_error(capsys, "compare", faulty_path, "--bans", tmp_path / "other_bans.json")
    assert "made for another model" in err


def test_unwritable_out_is_refused_before_searching(faulty_path, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    err = _one_line_error(capsys, "tactics", faulty_path, "--out", tmp_path / "a_file" / "bans.json")
    assert "cannot create the folder" in err


def test_a_default_build_that_fails_is_a_one_line_error():
    class Unbuildable(ScriptedEngine):
        def build(self, *args, **kwargs):
            raise BuildError("no kernel for layer a")

    with pytest.raises(BuildError, match="tactic search needs failed: no kernel for layer a"):
        find_tactic_bans(_problem(BRANCHES), Unbuildable(TWO_TACTICS, {}), PrecisionPlan("fp16"))


# -- --builds: bounded ---------------------------------------------------------------------------

def test_a_huge_builds_count_is_capped_with_a_note(faulty_path, capsys):
    code, out, _ = _cli(capsys, "tactics", faulty_path, "--builds", 1_000_000)
    assert code in (0, 1)
    assert "--builds 1000000 capped at 64" in out
    builds = int(out.rsplit(" build(s) in all", 1)[0].split()[-1])
    assert builds <= 2 * 64 + 10  # recorded with and without bans, plus the search's own


def test_an_engine_that_always_builds_the_same_is_recorded_twice():
    class Untuned(ScriptedEngine):  # no tactics to report, no autotuning to reseed
        capabilities = Capabilities(exact_marking=True)

    engine = Untuned({}, {})
    search = find_tactic_bans(_problem(BRANCHES), engine, PrecisionPlan("fp16"), builds=50)
    assert len(search.records) == 2
    assert any("recorded 2 of 50 builds" in note for note in search.notes)
