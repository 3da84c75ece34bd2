"""The one evaluation path every search uses: build with the final outputs only, run, judge.

A build that fails is a verdict (`build_failed`), not an exception: a search treats such a
candidate as failed and goes on. The judge is the tolerance of the Problem, or the user's
`--check` command.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from trtdebug.core.analysis.metrics import Verdict, judge_outputs
from trtdebug.core.plans.ban_list import BanList
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.search.user_check import CheckCommand
from trtdebug.engines.base import BuildError, Built, Engine, Marking, as_replanning
from trtdebug.errors import BuildRunFailed
from trtdebug.workflows.problem import Problem


@dataclass
class Evaluated:
    verdict: Verdict
    built: Built | None  # None when the build failed


def evaluate_build(problem: Problem, engine: Engine, plan: PrecisionPlan, bans: BanList | None = None,
                   check: CheckCommand | None = None) -> Evaluated:
    replanning = as_replanning(engine)  # the emulator switches one graph's rounding between plans
    try:
        built = (replanning.replanned(problem.model, plan, bans) if replanning is not None
                 else engine.build(problem.model, plan, bans, Marking.final_outputs_only()))
    except BuildError as exc:
        return Evaluated(Verdict(False, {}, f"build failed: {exc}", build_failed=True), None)
    try:
        produced = built.run(problem.feeds)
    except BuildRunFailed as exc:  # the candidate computes something it cannot even run on
        return Evaluated(Verdict(False, {}, str(exc)), built)
    return Evaluated(judge(problem, produced, check), built)


def judge(problem: Problem, produced: Mapping[str, np.ndarray], check: CheckCommand | None = None) -> Verdict:
    """The final outputs judged by the problem's tolerance, or by the user's --check command."""
    if check is None:
        return judge_outputs(problem.model, problem.reference, produced, problem.tolerance)
    reference = problem.reference_outputs()
    return check.verdict({name: produced[name] for name in reference if name in produced}, reference)


def evaluate_plan(problem: Problem, engine: Engine, plan: PrecisionPlan, bans: BanList | None = None,
                  check: CheckCommand | None = None) -> Verdict:
    return evaluate_build(problem, engine, plan, bans, check).verdict
