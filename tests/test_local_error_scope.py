"""compare runs layers again on the reference's inputs only where that decides something (tensors out of
tolerance), and says exactly what `--local-error all` says about where error is introduced."""

from __future__ import annotations

import json

import pytest

from fixtures.chain_models import planted_chain
from tests.cli import run_cli
from trtdebug.core.analysis.metrics import Tolerance
from trtdebug.core.model.feeds import generate_feeds, resolve_shapes
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.reference.budget import weight_bytes
from trtdebug.engines.emulator.engine import EmulatorEngine
from trtdebug.workflows.compare import run_compare
from trtdebug.workflows.problem import Problem


@pytest.fixture(scope="module")
def four_culprits(tmp_path_factory):
    """Four planted culprits in one chain: the later ones read inputs the first already made wrong."""
    chain = planted_chain(80, 4, seed=1)
    return chain, chain.save(tmp_path_factory.mktemp("scope") / "chain80.onnx")


def _compare(path, scope, budget=None):
    model = Model.load(path)
    feeds = generate_feeds(model, resolve_shapes(model, {}), seed=0)
    if budget == "least":  # what the weights take, and one byte for tensors: one tensor per group
        budget = weight_bytes(model) + 1
    problem = Problem.prepare(model, feeds, Tolerance.for_precision("fp16"), memory_budget=budget)
    return run_compare(problem, EmulatorEngine(), PrecisionPlan("fp16"), local_scope=scope)


@pytest.mark.parametrize("budget", [None, "least"], ids=["whole", "one tensor per group"])
def test_local_error_of_wrong_tensors_only_decides_as_every_layers_does(four_culprits, budget):
    chain, path = four_culprits
    everywhere, wrong_only = _compare(path, "all", budget), _compare(path, "wrong", budget)
    assert [(t.tensor, t.status) for t in wrong_only.tensors] == [(t.tensor, t.status) for t in everywhere.tensors]
    assert {t.node for t in wrong_only.introduced} == set(chain.culprits)
    assert [c.node for c in wrong_only.culprits] == [c.node for c in everywhere.culprits]
    by_tensor = {t.tensor: t for t in wrong_only.tensors}
    model = Model.load(path)
    # the case local error exists for: a culprit whose inputs were already wrong
    assert any(by_tensor.get(i) is not None and by_tensor[i].status != "ok"
               for t in wrong_only.introduced for i in model.node_by_name[t.node].input)
    measured = [t for t in wrong_only.tensors if t.accumulated is not None]
    assert all(t.local is not None for t in measured if t.accumulated.bad)
    assert all(t.local is None for t in measured if not t.accumulated.bad)
    assert all(t.local is not None for t in everywhere.tensors if t.accumulated is not None)
    assert (wrong_only.local_scope, everywhere.local_scope) == ("wrong", "all")


def test_compare_local_error_option_reaches_the_json_report(four_culprits, tmp_path):
    _, path = four_culprits
    for scope in ("wrong", "all"):
        report = tmp_path / f"{scope}.json"
        run = run_cli("compare", path, "--local-error", scope, "--json", report)
        assert run.returncode == 1, run.stderr
        data = json.loads(report.read_text())
        assert data["notes"]["local_error_scope"] == scope
        with_local = [t for t in data["tensors"] if t.get("local")]
        assert len(with_local) == (80 if scope == "all" else 45)


@pytest.mark.parametrize("scope", ["wrong", "all"])
def test_streamed_reference_keeps_what_local_error_reads_across_groups(planted_models, scope):
    """One tensor per group, the reference computed again group by group: the skip Add's layer reads the
    stem's output, which an earlier group's layer read too, and still finds it."""
    path, truth = planted_models["residual_overflow"]
    streamed, whole = _compare(path, scope, budget="least"), _compare(path, scope)
    assert streamed.marking["memory"]["reference_held"] is False
    assert [(t.tensor, t.status) for t in streamed.tensors] == [(t.tensor, t.status) for t in whole.tensors]
    assert streamed.first_introduced is not None and streamed.first_introduced.node == truth.node
    assert streamed.tensor("skip").local is not None

