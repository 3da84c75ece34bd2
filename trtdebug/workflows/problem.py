"""Turn command-line choices into the objects every command works on: model, feeds and reference
(a Problem), engine, precision plan and ban list. Validation errors surface here, once."""

from __future__ import annotations

from dataclasses import dataclass

from trtdebug.core.bans import BanList
from trtdebug.core.inputs import (
    generate_feeds,
    load_feeds,
    parse_named_pair,
    parse_shape_overrides,
    parse_value_ranges,
    resolve_shapes,
    validate_feeds,
)
from trtdebug.core.metrics import Tolerance
from trtdebug.core.model import Model
from trtdebug.core.precision import PrecisionPlan
from trtdebug.engines import Engine, get_engine
from trtdebug.errors import UserError
from trtdebug.workflows.compare import Problem


@dataclass
class Session:
    problem: Problem
    engine: Engine
    plan: PrecisionPlan
    bans: BanList | None


def parse_output_tolerances(specs: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    tolerances = {}
    for spec in specs:
        name, atol, rtol = parse_named_pair(spec, "--output-tol", "NAME:ATOL,RTOL", "logits:1e-2,1e-3")
        tolerances[name] = (atol, rtol)
    return tolerances


def load_plan(path: str | None, model: Model, precision: str) -> PrecisionPlan:
    if path is None:
        return PrecisionPlan(default=precision).for_model(model)
    plan = PrecisionPlan.load(path)
    plan.check_for(model, source=path)
    return plan


def open_session(model: str, precision: str = "fp16", engine_name: str = "emulator",
                 input_shapes: tuple[str, ...] = (), input_ranges: tuple[str, ...] = (),
                 inputs_path: str | None = None, seed: int = 0, atol: float | None = None,
                 rtol: float | None = None, output_tols: tuple[str, ...] = (), plan_path: str | None = None,
                 bans_path: str | None = None, results_path: str | None = None, obey: bool = False) -> Session:
    loaded = Model.load(model)
    per_output = parse_output_tolerances(output_tols)
    unknown = set(per_output) - {o.name for o in loaded.outputs}
    if unknown:
        raise UserError(f"--output-tol names {sorted(unknown)[0]!r}, which is not a model output")
    if inputs_path:
        feeds = validate_feeds(loaded, load_feeds(inputs_path))
    else:
        shapes = resolve_shapes(loaded, parse_shape_overrides(input_shapes))
        feeds = generate_feeds(loaded, shapes, parse_value_ranges(input_ranges), seed)
    plan = load_plan(plan_path, loaded, precision)
    bans = BanList.load(bans_path) if bans_path else None
    if bans is not None:  # an empty ban list is falsy but still belongs to one model
        bans.check_for(loaded.sha256, source=bans_path or "the ban list")
    engine = _engine(engine_name, results_path, obey, {name: value.shape for name, value in feeds.items()})
    tolerance = Tolerance.for_precision(plan.default, atol, rtol, per_output)
    return Session(Problem.prepare(loaded, feeds, tolerance), engine, plan, bans)


def _engine(name: str, results_path: str | None, obey: bool, input_shapes: dict[str, tuple[int, ...]]) -> Engine:
    if name == "results":
        if not results_path:
            raise UserError("--engine results needs --results FILE (Polygraphy --save-outputs JSON or .npz)")
        return get_engine("results", results=results_path)
    if results_path:
        raise UserError("--results only applies to --engine results")
    if name in ("tensorrt", "tensorrt-rtx"):
        # The optimization profile is built around the shapes of the feeds actually used.
        return get_engine(name, obey_constraints=obey, input_shapes=input_shapes)
    return get_engine(name)
