"""The culprit promises, checked by substitution independently of how compare found its culprits:
with the named culprits at reference values the outputs lose at least half of their error, and no
layer compare rates `ok` or `propagated` (other than those downstream of the headline, which carry
its error) removes more of the output error alone than the headline culprit does."""

from __future__ import annotations

from collections.abc import Sequence

from trtdebug.core.analysis.culprits import output_error
from trtdebug.core.analysis.metrics import CompareResult
from trtdebug.engines.base import Marking, as_substituting
from trtdebug.workflows.problem import Case


def downstream(case: Case, tensors: Sequence[str]) -> set[str]:
    model = case.problem.model
    seen: set[str] = set()
    frontier = list(tensors)
    while frontier:
        for name in model.consumers.get(frontier.pop(), []):
            for out in model.node_by_name[name].output:
                if out and out not in seen:
                    seen.add(out)
                    frontier.append(out)
    return seen


def check_culprit_invariants(case: Case, result: CompareResult, most_bystanders: int = 24) -> None:
    problem = case.problem
    assert result.culprits, "a failing build names culprits"
    built = case.engine.build(problem.model, case.plan, case.bans, Marking(mode="none"))
    substituting = as_substituting(case.engine, built)
    assert substituting is not None
    by_node = {t.node: t.tensor for t in result.tensors}
    named = [by_node[n] for c in result.culprits for n in (c.chain or (c.node,))]
    headline = [by_node[n] for n in (result.culprits[0].chain or (result.culprits[0].node,))]
    carried = downstream(case, headline)
    bystanders = sorted((t for t in result.tensors if t.status in ("ok", "propagated") and t.accumulated is not None
                         and t.tensor not in carried and t.tensor not in named),
                        key=lambda t: -t.accumulated.max_abs)[:most_bystanders]  # type: ignore[union-attr]
    switchable = list(dict.fromkeys([*named, *(t.tensor for t in bystanders)]))

    def error_with(tensors: Sequence[str]) -> float:
        outputs = substituting.run_substituted(problem.feeds, {t: problem.reference[t] for t in tensors}, switchable)
        return output_error(problem.model, problem.reference, outputs, problem.tolerance)

    baseline = error_with([])
    assert baseline > 0
    assert error_with(named) <= 0.5 * baseline, (named, error_with(named), baseline)
    removed_by_headline = baseline - error_with(headline)
    for t in bystanders:
        removed = baseline - error_with([t.tensor])
        assert removed <= removed_by_headline + 0.02 * baseline, (
            f"{t.node} ({t.status}) removes {removed / baseline:.0%} alone, "
            f"the headline {result.culprits[0].node} {removed_by_headline / baseline:.0%}")
