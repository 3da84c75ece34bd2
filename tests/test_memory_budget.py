"""--memory-budget: compare streams tensors a group at a time and still finds the same things.

A budget changes how many tensors are held at once (core.reference.budget, core.reference.pieces), never a value: every
report with a budget is the report without one, apart from the memory note."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures.chain_models import planted_chain
from fixtures.planted import write_all
from tests.cli import cli_command, run_cli
from trtdebug.artifacts.compare_report import write_compare_report
from trtdebug.core.model.graph import Model
from trtdebug.core.reference import ort_sessions
from trtdebug.core.reference.budget import plan_compare, weight_bytes
from trtdebug.core.reference.pieces import PiecewiseGraph, split_by_targets
from trtdebug.core.system.memory import format_size, parse_size
from trtdebug.errors import UserError
from trtdebug.workflows.compare import compare_case
from trtdebug.workflows.problem import ProblemSpec, prepare

ROWS = 65536  # the wide chain carries a [ROWS, 16] float tensor: 4 MiB per tensor
WIDE_NODES = 50  # about 200 MiB of intermediate tensors in all


# -- core.reference.budget -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, size", [
    ("8GiB", 8 * 2**30), ("500MB", 500 * 10**6), ("1.5g", 1_500_000_000), ("1000000", 10**6),
    ("64 mb", 64 * 10**6), ("2KiB", 2048), (" 3tb ", 3 * 10**12), (".5MiB", 2**19), ("7b", 7),
])
def test_parse_size_reads_decimal_and_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "12XB", "-5MB", "1.2.3GB", "8 GiB extra", "1e9", "five MB"])
def test_parse_size_refuses_what_is_not_a_size(text):
    with pytest.raises(UserError, match="memory size"):
        parse_size(text)


def test_format_size_is_binary():
    assert format_size(4 * 2**30) == "4.0 GiB"
    assert format_size(64 * 10**6) == "61.0 MiB"
    assert format_size(12) == "12 B"


@pytest.mark.parametrize("text", ["12XB", "0", "lots"])
def test_a_bad_memory_budget_is_one_line_and_exit_2(text, tmp_path):
    model = planted_chain(20, 1, seed=0).save(tmp_path / "chain.onnx")
    done = run_cli("compare", model, "--memory-budget", text)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--memory-budget" in lines[0], done.stderr


def test_a_budget_below_the_weights_is_refused_with_a_budget_that_works(tmp_path):
    """The budget covers the weights (the model's and a build's copy) before any tensor: below them,
    one line says how much is needed, as an option the CLI takes; that budget then works."""
    model = planted_chain(20, 1, seed=0).save(tmp_path / "chain.onnx")
    refused = run_cli("compare", model, "--memory-budget", "1KB")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    suggested = re.search(r"give (--memory-budget \S+)", refused.stderr)
    assert suggested, refused.stderr
    done = run_cli("compare", model, *suggested[1].split(), "--json", tmp_path / "report.json")
    assert done.returncode in (0, 1), done.stderr
    memory = json.loads((tmp_path / "report.json").read_text())["notes"]["marking"]["memory"]
    assert memory["weight_bytes"] == weight_bytes(Model.load(model)) > 0
    assert memory["budget_bytes"] == parse_size(suggested[1].split()[1])


def test_a_tiny_budget_plans_one_tensor_per_group():
    chain = planted_chain(30, 2, seed=1)
    model = Model(chain.proto)
    tensors = model.intermediate_tensors()
    plan = plan_compare(model, dict.fromkeys(tensors, 64), budget=1)
    assert plan.groups == [[t] for t in tensors]
    assert not plan.hold_reference
    roomy = plan_compare(model, dict.fromkeys(tensors, 64), budget=2**30)
    assert roomy.chunks == 1 and roomy.hold_reference


# -- core.reference.pieces -------------------------------------------------------------------------------------

def _branching_model() -> onnx.ModelProto:
    """x -> a -> b -> c -> d = c + a (a crosses every piece) -> y = d * k; e = Relu(b) a dead end."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    k = numpy_helper.from_array(np.float32(0.37), "k")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="a"),
        helper.make_node("Tanh", ["a"], ["b"], name="b"),
        helper.make_node("MatMul", ["b", "w"], ["c"], name="c"),
        helper.make_node("Relu", ["b"], ["e"], name="e"),
        helper.make_node("Add", ["c", "a"], ["d"], name="d"),
        helper.make_node("Mul", ["d", "k"], ["y"], name="y"),
    ]
    graph = helper.make_graph(nodes, "branch", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], [weight, k])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto


@pytest.mark.parametrize("groups", [
    [["a"], ["b"], ["c"], ["e"], ["d"], ["y"]],
    [["a", "b"], ["c", "d"], ["y"]],
    [["d"], ["a"]],  # d first: its piece runs a, b and c too; nothing is left for the second piece but e, y
])
def test_running_a_graph_in_pieces_gives_exactly_the_whole_runs_values(groups):
    proto = _branching_model()
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)}
    tensors = ["a", "b", "c", "e", "d", "y"]
    whole = ort_sessions.run(ort_sessions.session(ort_sessions.with_outputs(proto, tensors)), feeds)
    pieces = split_by_targets(proto, groups)
    assert sorted(i for p in pieces for i in p) == list(range(len(proto.graph.node)))  # each node once
    graph = PiecewiseGraph(proto, pieces, tensors)
    seen: dict[str, np.ndarray] = {}
    for values in graph.run(feeds):
        assert not set(values) & set(seen)  # every tensor arrives once
        seen.update(values)
    assert set(seen) == set(tensors)
    for t in tensors:
        assert np.array_equal(seen[t], whole[t]), t


def test_a_crossing_tensor_is_held_only_until_its_last_reader():
    proto = _branching_model()
    graph = PiecewiseGraph(proto, split_by_targets(proto, [["a"], ["b"], ["c"], ["d"]]), ["y"])
    assert graph.read_after("a", 2)  # d, in piece 3, reads a
    assert not graph.read_after("a", 3)
    assert graph.reads(3) >= {"a", "c"}


# -- the planted fixtures with one tensor per group ------------------------------------------------

def _report(model: Path, tmp: Path, budget: int | None) -> dict[str, Any]:
    result = compare_case(prepare(ProblemSpec(model=str(model), memory_budget=budget)))
    path = tmp / f"{model.stem}-{budget}.json"
    write_compare_report(result, path)
    return json.loads(path.read_text())


def _without_memory_note(report: dict[str, Any]) -> dict[str, Any]:
    report = json.loads(json.dumps(report))
    del report["notes"]["marking"]["memory"]
    return report


@pytest.mark.parametrize("name", ["clean", "overflow", "underflow", "all_zero"])
def test_planted_fixtures_report_the_same_with_one_tensor_per_group(name, tmp_path):
    model, _ = write_all(tmp_path)[name]
    whole = _report(model, tmp_path, None)
    tiny = _report(model, tmp_path, weight_bytes(Model.load(model)) + 1)  # the weights, one byte for tensors
    memory = tiny["notes"]["marking"]["memory"]
    assert memory["chunks"] == len(Model(onnx.load(model)).intermediate_tensors()) > 1
    assert not memory["reference_held"]
    assert whole["notes"]["marking"]["memory"]["chunks"] == 1
    assert _without_memory_note(tiny) == _without_memory_note(whole)


# -- a ~200 MiB chain in 64 MB --------------------------------------------------------------------

MEASURE = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _compare_measured(model: Path, report: Path, *extra: str) -> tuple[int, int]:
    """Exit code and peak RSS (KiB) of one compare, measured in a fresh process so that no earlier
    child counts."""
    command = cli_command("compare", model, "--input-shape", f"x:{ROWS}x16", "--json", report, *extra)
    done = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, check=True)
    code, peak = done.stdout.split()
    return int(code), int(peak)


@pytest.fixture(scope="module")
def wide_chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[str, ...]]:
    chain = planted_chain(WIDE_NODES, 4, seed=3)
    for value in [*chain.proto.graph.input, *chain.proto.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "rows"
    return chain.save(tmp_path_factory.mktemp("wide") / "wide.onnx"), chain.culprits


@pytest.mark.slow
def test_a_64mb_budget_finds_the_same_culprit_in_chunks_with_less_memory(wide_chain, tmp_path):
    model, planted = wide_chain
    code, peak = _compare_measured(model, tmp_path / "whole.json")
    budget_code, budget_peak = _compare_measured(model, tmp_path / "budget.json", "--memory-budget", "64MB")
    whole = json.loads((tmp_path / "whole.json").read_text())
    budgeted = json.loads((tmp_path / "budget.json").read_text())

    memory = budgeted["notes"]["marking"]["memory"]
    assert memory["tensor_bytes"] >= 190 * 2**20  # the intermediates really are ~200 MiB
    assert memory["budget_bytes"] == 64 * 10**6 and memory["chunks"] > 1 and not memory["reference_held"]
    assert budget_code == code == 1
    assert budgeted["culprits"] == whole["culprits"] and budgeted["culprits"]
    assert budgeted["culprits"][0]["node"] in planted
    assert budgeted["first_introduced"] == whole["first_introduced"]
    assert ({t["tensor"]: t["status"] for t in budgeted["tensors"]}
            == {t["tensor"]: t["status"] for t in whole["tensors"]})
    assert budget_peak < peak, f"peak RSS {budget_peak} KiB with the budget, {peak} KiB without"


@pytest.mark.slow
def test_the_report_says_how_many_chunks(wide_chain, tmp_path):
    model, _ = wide_chain
    done = run_cli("compare", model, "--input-shape", f"x:{ROWS}x16", "--memory-budget", "64MB")
    assert done.returncode == 1, done.stderr
    notes = [line for line in done.stdout.splitlines() if line.startswith("compared in ")]
    assert len(notes) == 1 and notes[0].endswith(
        "chunks within the 61.0 MiB memory budget (FP32 reference computed again chunk by chunk)"), done.stdout


def test_run_ahead_keeps_one_piece_in_flight_and_hands_errors_over():
    """compare runs the next piece while it measures one: never more than the current piece and the next
    are alive, an error in the run reaches the caller, and stopping early stops the thread."""
    import threading
    import time

    from trtdebug.core.reference.pieces import run_ahead

    produced: list[int] = []

    def pieces(n: int, fail_at: int = -1):
        for i in range(n):
            if i == fail_at:
                raise RuntimeError("piece failed")
            produced.append(i)
            yield i

    seen = []
    for item in run_ahead(pieces(6)):
        time.sleep(0.05)  # the caller is slow: the producer waits for it
        assert len(produced) <= item + 2, "more than one piece ran ahead"
        seen.append(item)
    assert seen == list(range(6))

    with pytest.raises(RuntimeError, match="piece failed"):
        list(run_ahead(pieces(5, fail_at=3)))

    before = {t for t in threading.enumerate() if t.name == "trtdebug-run-ahead"}
    early = run_ahead(pieces(100))
    next(early)
    early.close()
    deadline = time.monotonic() + 5
    while any(t.is_alive() for t in threading.enumerate() if t.name == "trtdebug-run-ahead" and t not in before):
        assert time.monotonic() < deadline, "the run-ahead thread outlived its iterator"
        time.sleep(0.01)


def _sizes_by_full_inference(model: Model, feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """What compare's size estimate must equal: onnx shape inference of the whole model, weights and
    all, with its inputs fixed at the feeds' shapes (unknown shapes: the median known size)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    for vi in proto.graph.input:
        if vi.name in feeds:
            del vi.type.tensor_type.shape.dim[:]
            for d in feeds[vi.name].shape:
                vi.type.tensor_type.shape.dim.add().dim_value = int(d)
    del proto.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(proto)
    sizes = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            item = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)).itemsize
            sizes[vi.name] = item * int(np.prod([d.dim_value for d in dims]))
    known = sorted(sizes.values())
    return {t: sizes.get(t, known[len(known) // 2]) for t in model.intermediate_tensors()}


def test_size_estimates_equal_full_shape_inference(tmp_path, silero_path):
    """Sizes come from a weightless copy (dynamic inputs) or the model's own shapes (inputs declared at
    the feeds' shapes): both must give what inferring the whole model at the feeds' shapes gives."""
    from trtdebug.core.model.feeds import generate_feeds, resolve_shapes
    from trtdebug.core.reference.budget import tensor_bytes

    planted_chain(60, 2, seed=3).save(tmp_path / "chain.onnx")
    # a weight that is also an input (a default value a caller may override), on a dynamic batch
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), helper.make_node("Relu", ["y"], ["z"], name="r")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64]),
              helper.make_tensor_value_info("w", TensorProto.FLOAT, [64, 64])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((64, 64), np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "overridable.onnx")
    cases = [(tmp_path / "chain.onnx", {}, {}), (write_all(tmp_path)["residual_overflow"][0], {}, {}),
             (tmp_path / "overridable.onnx", {"x": (8, 64)}, {}),
             (silero_path, {"input": (16, 512), "state": (2, 16, 128)}, {"sr": (16000.0, 16000.0)})]
    for path, shapes, ranges in cases:
        model = Model.load(path)
        feeds = generate_feeds(model, resolve_shapes(model, shapes), ranges)
        assert tensor_bytes(model, feeds) == _sizes_by_full_inference(model, feeds), path.name


def test_a_streamed_reference_computes_a_tensor_from_just_the_nodes_it_needs(tmp_path, monkeypatch):
    """onnxruntime runs every node of a graph whatever is fetched: a streamed reference asked for one early
    tensor (a culprit's) runs a graph of just its upstream nodes, and gets the held reference's value."""
    from trtdebug.core.model.feeds import generate_feeds, resolve_shapes
    from trtdebug.core.reference.fp32_run import LazyReference, run_reference

    model = Model.load(planted_chain(60, 1, seed=3).save(tmp_path / "chain.onnx"))
    feeds = generate_feeds(model, resolve_shapes(model, {}))
    reference = LazyReference(model, feeds, [model.intermediate_tensors()])
    made = []
    session = ort_sessions.session
    monkeypatch.setattr(ort_sessions, "session", lambda proto, *a, **k: made.append(proto) or session(proto, *a, **k))
    early = model.intermediate_tensors()[4]
    assert reference.fetch([early])[early].tobytes() == run_reference(model, feeds)[early].tobytes()
    assert len(made[0].graph.node) == 5 and [o.name for o in made[0].graph.output] == [early]
