"""`trtdebug fallback` judges every plan on several input sets, so its plan holds on inputs it never saw:
the plan passes `trtdebug compare --plan` on the sets it searched and on another seed, on a model whose
overflow depends on the input, on planted chains and on small models of the zoo; the search stays
within its documented evaluation bound."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures.chain_models import planted_chain
from fixtures.zoo import by_name, token_feeds
from tests.cli import run_cli
from trtdebug.core.search.journal import journal_path
from trtdebug.core.search.strategies import DEFAULT_INPUT_SEEDS, target_builds

# Generated x at --seed 6 stays within |x| < 0.32, at seed 7 reaches 0.79 and at seed 8 0.97: an FP16
# tensor of x * 131008 overflows (65504) only where |x| > 0.5, so only seeds 7 and 8 need a fallback.
OVERFLOW_AT = 0.5
QUIET_SEED, LOUD_SEED, UNSEEN_SEED = 6, 7, 8


def _input_dependent_overflow(path: Path) -> Path:
    """y = x * 256 * (131008 / 256) / 131008: exact in FP32; in FP16 `scale_up`'s output overflows for |x| > 0.5,
    so it and `scale_down`, which reads it, must stay in FP32 for such inputs."""
    scale = 65504 / OVERFLOW_AT * 1.0000001
    constants = [numpy_helper.from_array(np.array(value, np.float32), name)
                 for name, value in (("c256", 256.0), ("up", scale / 256), ("down", 1 / scale))]
    nodes = [helper.make_node("Mul", ["x", "c256"], ["a"], name="scale_256"),
             helper.make_node("Mul", ["a", "up"], ["b"], name="scale_up"),
             helper.make_node("Mul", ["b", "down"], ["y"], name="scale_down")]
    graph = helper.make_graph(nodes, "overflow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _kept(plan: Path) -> set[str]:
    return set(json.loads(plan.read_text())["provenance"]["kept"])


def test_a_plan_searched_on_one_seed_fails_the_next_while_the_default_two_seeds_hold_on_an_unseen_one(tmp_path):
    model = _input_dependent_overflow(tmp_path / "overflow.onnx")
    one_set = tmp_path / "one.json"
    searched_once = run_cli("fallback", model, "--seed", QUIET_SEED, "--input-seeds", 1, "--out", one_set)
    assert searched_once.returncode == 0, searched_once.stdout + searched_once.stderr
    assert _kept(one_set) == set()  # seed 6 alone needs nothing in FP32...
    failing = run_cli("compare", model, "--plan", one_set, "--seed", LOUD_SEED)
    assert failing.returncode == 1, failing.stdout  # ...and that plan fails on seed 7

    assert DEFAULT_INPUT_SEEDS >= 2
    plan = tmp_path / "plan.json"
    searched = run_cli("fallback", model, "--seed", QUIET_SEED, "--out", plan)
    assert searched.returncode == 0, searched.stdout + searched.stderr
    assert "each judged on 2 input sets: seed 6, seed 7" in searched.stdout
    assert _kept(plan) == {"scale_up", "scale_down"}
    for seed in (QUIET_SEED, LOUD_SEED, UNSEEN_SEED):
        checked = run_cli("compare", model, "--plan", plan, "--seed", seed)
        assert checked.returncode == 0, (seed, checked.stdout)


def test_inputs_take_several_files_and_folders_and_the_journal_covers_each_set(tmp_path):
    model = _input_dependent_overflow(tmp_path / "overflow.onnx")
    folder = tmp_path / "sets"
    folder.mkdir()
    np.savez(folder / "a_quiet.npz", x=np.full((1, 4), 0.25, np.float32))
    np.savez(folder / "b_loud.npz", x=np.full((1, 4), -0.75, np.float32))
    quiet_only = tmp_path / "quiet.json"
    assert run_cli("fallback", model, "--inputs", folder / "a_quiet.npz", "--out", quiet_only).returncode == 0
    assert _kept(quiet_only) == set()

    plan = tmp_path / "plan.json"
    searched = run_cli("fallback", model, "--inputs", folder, "--out", plan)
    assert searched.returncode == 0, searched.stdout + searched.stderr
    assert _kept(plan) == {"scale_up", "scale_down"}
    same_files = run_cli("fallback", model, "--inputs", folder / "a_quiet.npz", "--inputs", folder / "b_loud.npz",
                         "--out", tmp_path / "files.json")
    assert same_files.returncode == 0 and _kept(tmp_path / "files.json") == _kept(plan)
    assert run_cli("compare", model, "--plan", plan, "--inputs", folder / "b_loud.npz").returncode == 0

    np.savez(folder / "b_loud.npz", x=np.full((1, 4), -0.8, np.float32))  # same names, other values
    refused = run_cli("fallback", model, "--inputs", folder, "--out", plan, "--resume")
    assert refused.returncode == 2 and "input feeds digest (every set)" in refused.stderr, refused.stderr
    header = json.loads(journal_path(plan).read_text().splitlines()[0])
    assert header["settings"]["input_sets"].split() == [str(folder / "a_quiet.npz"), str(folder / "b_loud.npz")]


def test_an_empty_inputs_folder_is_one_line_naming_it(tmp_path):
    model = _input_dependent_overflow(tmp_path / "overflow.onnx")
    (tmp_path / "empty").mkdir()
    refused = run_cli("fallback", model, "--inputs", tmp_path / "empty", "--out", tmp_path / "plan.json")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith(f"trtdebug: error: --inputs folder {tmp_path / 'empty'}")


@pytest.mark.parametrize(("n", "k", "seed"), [(60, 3, 21), (200, 4, 5)])
def test_a_planted_chain_plan_passes_on_an_unseen_seed_within_the_bound(tmp_path, n, k, seed):
    planted = planted_chain(n, k, seed=seed)
    model = planted.save(tmp_path / "chain.onnx")
    plan = tmp_path / "plan.json"
    assert run_cli("fallback", model, "--out", plan).returncode == 0
    assert _kept(plan) == set(planted.culprits)
    provenance = json.loads(plan.read_text())["provenance"]
    assert provenance["evaluations"] <= target_builds(provenance["candidates"], len(planted.culprits))
    for unseen in (0, 1, 5):
        assert run_cli("compare", model, "--plan", plan, "--seed", unseen).returncode == 0, unseen


@pytest.mark.slow
def test_a_zoo_gru_encoder_plan_passes_on_token_ids_it_never_saw(tmp_path):
    """romanizer_encoder (GRU, bool mask) at a tolerance FP16 misses: the search over two token sets keeps
    a few nodes; the plan passes on both and on a third, and within the documented bound."""
    zoo = by_name("romanizer_encoder")
    model = zoo.path()
    sets = []
    for seed in (0, 1, 2):
        path = tmp_path / f"tokens_{seed}.npz"
        np.savez(path, **token_feeds("src", "src_mask", vocab=160, length=12, padding=3, seed=seed))
        sets.append(path)
    tolerance = ["--atol", "1e-3", "--rtol", "1e-3"]
    plan = tmp_path / "plan.json"
    searched = run_cli("fallback", model, *tolerance, "--inputs", sets[0], "--inputs", sets[1], "--out", plan)
    assert searched.returncode == 0, searched.stdout + searched.stderr
    provenance = json.loads(plan.read_text())["provenance"]
    assert provenance["kept"] and provenance["one_minimal"]
    assert provenance["evaluations"] <= target_builds(provenance["candidates"], len(provenance["kept"]))
    for inputs in sets:
        checked = run_cli("compare", model, *tolerance, "--plan", plan, "--inputs", inputs)
        assert checked.returncode == 0, (inputs, checked.stdout)


@pytest.fixture(scope="module")
def orientation_plan(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """The zoo's PP-LCNet orientation classifier passes FP16 at 1e-3; at 3e-4, near FP16's own noise on
    it, a few layers must stay in FP32. Searched on the default two generated sets (seeds 0 and 1)."""
    zoo = by_name("orientation")
    model = zoo.path()
    folder = tmp_path_factory.mktemp("orientation")
    options = [*zoo.cli_args(folder), "--atol", "3e-4", "--rtol", "3e-4"]
    plan = folder / "plan.json"
    searched = run_cli("fallback", model, *options, "--out", plan)
    assert searched.returncode == 0, searched.stdout + searched.stderr
    return model, plan, options


@pytest.mark.slow
def test_a_zoo_cnn_plan_passes_on_the_sets_it_searched_within_the_bound(orientation_plan):
    model, plan, options = orientation_plan
    provenance = json.loads(plan.read_text())["provenance"]
    assert provenance["kept"] and provenance["one_minimal"]
    assert provenance["evaluations"] <= target_builds(provenance["candidates"], len(provenance["kept"]))
    for seed in (0, 1):
        assert run_cli("compare", model, *options, "--plan", plan, "--seed", seed).returncode == 0, seed


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="at a tolerance this close to FP16's noise on the model, the minimal "
                                       "set for seeds 0 and 1 fails on seeds 2, 3 and 4 (and three searched "
                                       "seeds at 2e-4 still fail seed 4): more sets narrow it, none promise it")
def test_a_zoo_cnn_plan_passes_on_seeds_it_never_saw(orientation_plan):
    model, plan, options = orientation_plan
    for seed in (2, 3, 4):
        assert run_cli("compare", model, *options, "--plan", plan, "--seed", seed).returncode == 0, seed


def test_further_input_sets_hold_only_their_final_outputs(tmp_path):
    """Fallback judges its further input sets by their outputs: their FP32 reference keeps the feeds and
    the outputs, not every tensor (which doubled what a convolutional detector held)."""
    from trtdebug.core.reference.fp32_run import LazyReference
    from trtdebug.workflows.input_sets import input_sets, prepare_extra_sets
    from trtdebug.workflows.problem import ProblemSpec, prepare

    path = planted_chain(30, 1, seed=2).save(tmp_path / "chain.onnx")
    spec = ProblemSpec(model=str(path))
    case = prepare(spec)
    sets = input_sets(spec)
    assert len(sets) == DEFAULT_INPUT_SEEDS > 1
    for judged in prepare_extra_sets(case, sets):
        reference = judged.problem.reference
        assert isinstance(reference, LazyReference)
        outputs = {o.name for o in case.problem.model.outputs}
        assert set(reference.held) == set(judged.problem.feeds) | outputs
        assert np.isfinite(judged.problem.reference_outputs()[next(iter(outputs))]).all()
