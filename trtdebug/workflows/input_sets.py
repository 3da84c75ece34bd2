"""Several input sets for one fallback search: a plan is kept only when it passes on every one.

A plan searched on one set of inputs can fail on the next real input (a speech embedding model,
an INT8 tagger and a TTS model did), so `fallback` judges every candidate on several sets: the
`--inputs` files given (several, or a folder of .npz / Polygraphy JSON files), or, by default,
inputs generated at DEFAULT_INPUT_SEEDS (core.search.strategies) seeds (--seed, --seed + 1, ...). The first set is the
primary one: it calibrates implicit INT8, ranks the suspects and feeds the final compare report.

An evaluation builds the plan once and judges it on each set in turn, stopping at the first set
that fails; its verdict is that set's, named. The cost over one set: one FP32 reference run per
extra set up front, and one engine run and judgement more per set for each candidate that passes
the sets before it (failing candidates mostly stop at the first).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from trtdebug.core.analysis.metrics import Verdict
from trtdebug.core.model.feeds import feeds_sha256
from trtdebug.core.plans.ban_list import BanList
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.search.strategies import DEFAULT_INPUT_SEEDS
from trtdebug.core.search.user_check import CheckCommand
from trtdebug.engines.base import Engine
from trtdebug.errors import UserError
from trtdebug.workflows.evaluate import evaluate_build, judge
from trtdebug.workflows.problem import Case, Problem, ProblemSpec, prepare_feeds, refuse_nonfinite_reference

INPUT_SUFFIXES = (".npz", ".json")


@dataclass(frozen=True)
class InputSet:
    """One set of inputs: a ProblemSpec that differs from the user's only in its inputs or seed."""

    spec: ProblemSpec
    label: str  # how messages name it: the file, or "seed N"


def input_sets(spec: ProblemSpec, inputs: Sequence[str | Path] = (),
               seeds: int = DEFAULT_INPUT_SEEDS) -> list[InputSet]:
    """The input sets a search judges on, the primary first: the `inputs` files (folders expanded,
    sorted by name; `spec.inputs` counts as the first), or generated inputs at `seeds` seeds from
    `spec.seed` on."""
    given = [*([spec.inputs] if spec.inputs else []), *inputs]
    if given:
        return [InputSet(replace(spec, inputs=path), str(path)) for path in input_files(given)]
    if seeds < 1:
        raise UserError(f"--input-seeds {seeds}: give at least 1 set of generated inputs")
    return [InputSet(replace(spec, seed=seed), f"seed {seed}") for seed in range(spec.seed, spec.seed + seeds)]


def input_files(paths: Sequence[str | Path]) -> list[Path]:
    """The input files named, folders expanded to their .npz and .json files (sorted by name)."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix in INPUT_SUFFIXES and p.is_file())
            if not inside:
                raise UserError(f"--inputs folder {path} holds no .npz or .json input files; save each set of "
                                "inputs with np.savez (or Polygraphy's --save-inputs)")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"--inputs {path} does not exist; give input files (.npz or Polygraphy JSON) or a "
                            "folder of them")
    return found


@dataclass
class JudgedSet:
    problem: Problem
    label: str


def prepare_extra_sets(case: Case, sets: Sequence[InputSet]) -> list[JudgedSet]:
    """The problems of the sets after the primary one (`case` is the primary's): the same model,
    engine and tolerance, each set's own feeds and FP32 reference."""
    primary = case.problem
    extra: list[JudgedSet] = []
    for input_set in sets[1:]:
        feeds = prepare_feeds(primary.model, input_set.spec)
        problem = Problem.prepare(primary.model, feeds, primary.tolerance, input_set.spec.memory_budget,
                                  outputs_only=True)
        refuse_nonfinite_reference(problem, input_set.spec)
        extra.append(JudgedSet(problem, input_set.label))
    return extra


def sets_sha256(primary: Problem, extra: Sequence[JudgedSet]) -> str:
    """One digest of every set's feeds, in order."""
    digest = hashlib.sha256()
    for problem in [primary, *(judged.problem for judged in extra)]:
        digest.update(feeds_sha256(problem.feeds).encode())
    return digest.hexdigest()


def evaluate_on_sets(primary: Problem, extra: Sequence[JudgedSet], engine: Engine, plan: PrecisionPlan,
                     bans: BanList | None = None, check: CheckCommand | None = None,
                     primary_label: str = "the first input set") -> Verdict:
    """Build `plan` once and judge it on the primary set, then on each extra set, stopping at the
    first that fails; a failure on an extra set names it."""
    evaluated = evaluate_build(primary, engine, plan, bans, check)
    if not evaluated.verdict.passed or not extra or evaluated.built is None:
        if extra and not evaluated.verdict.passed and not evaluated.verdict.build_failed:
            return _named(evaluated.verdict, primary_label)
        return evaluated.verdict
    for judged in extra:
        verdict = judge(judged.problem, evaluated.built.run(judged.problem.feeds), check)
        if not verdict.passed:
            return _named(verdict, judged.label)
    return evaluated.verdict


def _named(verdict: Verdict, label: str) -> Verdict:
    return replace(verdict, reason=f"on {label}: {verdict.reason}" if verdict.reason else f"fails on {label}")
