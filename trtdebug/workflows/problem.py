"""What every workflow works on, prepared once from typed choices.

`ProblemSpec` holds a user's choices (model, inputs, precision, engine, tolerances, plan, bans);
`prepare` validates them and returns a `Case`: the Problem (model, feeds, FP32 reference,
tolerance), the engine under test, the precision plan and the ban list. Every validation error
surfaces here, before any long work starts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trtdebug.core.analysis.metrics import Tolerance
from trtdebug.core.model.feeds import DEFAULT_RANGES, generate_feeds, load_feeds, resolve_shapes, validate_feeds
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.ban_list import BanList
from trtdebug.core.plans.cast_islands import typed_plan
from trtdebug.core.plans.precision_plan import PrecisionPlan, eligible_nodes
from trtdebug.core.quantized.format import format_of
from trtdebug.core.reference.budget import ComparePlan, least_budget, plan_compare, tensor_bytes, weight_bytes
from trtdebug.core.reference.fp32_run import LazyReference, first_nonfinite, inputs_upstream, run_reference
from trtdebug.core.reference.random_ops import random_nodes
from trtdebug.core.system.files import prepare_outputs
from trtdebug.core.system.memory import default_budget, format_size, release_freed_tensors, size_argument
from trtdebug.engines import DEFAULT_ENGINE, Engine, get_engine
from trtdebug.errors import UserError
from trtdebug.workflows.quantize import DEFAULT_CALIBRATION_METHOD, Calibration, calibration_files, int8_model

Shape = tuple[int, ...]
DEFAULT_PRECISION = "fp16"


@dataclass
class Problem:
    """A model, its feeds, their FP32 reference values, and the tolerance outputs are judged by."""

    model: Model
    feeds: dict[str, np.ndarray]
    reference: Mapping[str, np.ndarray]  # a LazyReference where every tensor does not fit in the budget
    tolerance: Tolerance
    memory_budget: int | None = None  # bytes compare may hold (None: core.reference.budget's default)
    memory_plan: ComparePlan | None = None  # how compare exposes the tensors within the budget (core.reference.budget)
    notes: tuple[str, ...] = ()  # one line each, for the report (e.g. what a strongly typed model's types decide)
    reference_source: dict[str, Any] | None = None  # --reference-model: its name and the tensors matched

    @classmethod
    def prepare(cls, model: Model, feeds: Mapping[str, np.ndarray], tolerance: Tolerance,
                memory_budget: int | None = None, outputs_only: bool = False) -> Problem:
        """`outputs_only`: the problem is judged by its final outputs alone (fallback's further input
        sets): the reference holds them and computes any other tensor again when asked."""
        feeds = dict(feeds)
        release_freed_tensors()
        sizes, weights = tensor_bytes(model, feeds), weight_bytes(model)
        budget = memory_budget or default_budget()
        if budget <= weights:  # below that, the tensors' share is obeyed as far as one tensor per group
            raise UserError(_budget_too_small(model, sizes, weights, memory_budget))
        plan = plan_compare(model, sizes, budget, weights)
        held = plan.hold_reference and not outputs_only
        reference = run_reference(model, feeds) if held else LazyReference(model, feeds, plan.groups)
        return cls(model, feeds, reference, tolerance, memory_budget, plan)

    def reference_outputs(self) -> dict[str, np.ndarray]:
        return {o.name: self.reference[o.name] for o in self.model.outputs}


def _budget_too_small(model: Model, sizes: Mapping[str, int], weights: int, given: int | None) -> str:
    least = least_budget(sizes, weights)
    why = (f"the memory budget ({format_size(given)})" if given is not None else
           f"half of this machine's available memory ({format_size(default_budget())}, the default budget)")
    fix = (f"give --memory-budget {size_argument(least)} or more" if given is not None else
           f"give --memory-budget {size_argument(least)} if the machine can spare it, or run on one "
           "with more memory")
    return (f"{model.name}'s weights alone take {format_size(weights)} (the model's and a build's copy of "
            f"them), more than {why}; with its largest tensor three times over it needs "
            f"{format_size(least)}: {fix}")


@dataclass(frozen=True)
class ProblemSpec:
    """A user's choices, typed. `precision` None: the plan's default, or fp16 without a plan."""

    model: str | Path
    precision: str | None = None
    engine: str = DEFAULT_ENGINE
    input_shapes: Mapping[str, Shape] = field(default_factory=dict)  # the shapes run; OPT of a profile
    input_profiles: Mapping[str, tuple[Shape, Shape, Shape]] = field(default_factory=dict)  # MIN, OPT, MAX
    input_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    inputs: str | Path | None = None
    seed: int = 0
    atol: float | None = None
    rtol: float | None = None
    output_tolerances: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    plan: str | Path | None = None
    bans: str | Path | None = None
    results: str | Path | None = None
    obey: bool = False
    calib_inputs: tuple[str | Path, ...] = ()  # implicit INT8 on the emulator: calibration batches
    calib_method: str = DEFAULT_CALIBRATION_METHOD
    memory_budget: int | None = None  # bytes compare may hold (None: a share of available memory)
    reference_model: str | Path | None = None  # FP32 model whose tensors (matched by name) are the reference


@dataclass
class Case:
    """Everything a workflow needs: the problem, the engine under test, the plan and the bans."""

    problem: Problem
    engine: Engine
    plan: PrecisionPlan
    bans: BanList | None


def typed_by_its_onnx(model: Model) -> bool:
    """Whether the model's ONNX types decide each layer's precision (strong typing): it types tensors
    FP16/BF16 and is not quantized (Q/DQ and INT8 take the quantized-format path)."""
    return model.strongly_typed and format_of(model) is None


def load_plan(path: str | Path | None, model: Model, precision: str | None) -> PrecisionPlan:
    """The plan to build with: the file's (made for this model); for a strongly typed model, the one
    its ONNX types give (`--precision` describes weakly typed builds: typed_precision_note says so);
    else all nodes at `precision`."""
    if path is None:
        if typed_by_its_onnx(model):
            return typed_plan(model, default=model.stored_precision or DEFAULT_PRECISION)
        return PrecisionPlan(default=precision or model.stored_precision or DEFAULT_PRECISION).for_model(model)
    plan = PrecisionPlan.load(path)
    plan.check_for(model, source=str(path))
    if precision is not None and precision != plan.default:
        raise UserError(f"--precision {precision} contradicts {path}, whose default precision is "
                        f"{plan.default}; leave --precision out to use the plan's")
    return plan


def typed_precision_note(model: Model, plan: PrecisionPlan, precision: str | None) -> str | None:
    """One line where `--precision` asks a strongly typed model for another build than its types give."""
    if precision is None or not typed_by_its_onnx(model):
        return None
    if precision == plan.default and not plan.nodes:
        return None
    counts: dict[str, int] = {}
    for name in eligible_nodes(model):
        counts[plan.precision_of(name)] = counts.get(plan.precision_of(name), 0) + 1
    layers = ", ".join(f"{n} {p.upper()}" for p, n in sorted(counts.items(), key=lambda c: -c[1]))
    return (f"{model.name} is strongly typed: each layer runs at the type its ONNX gives ({layers} layers), as "
            f"TensorRT 11 and --stronglyTyped build it; --precision {precision} (a weakly typed build, "
            "TensorRT <= 10.x) applies to FP32-typed models only")


def refuse_untypable_precision(model: Model, precision: str | None, plan_path: str | Path | None) -> None:
    """A strongly typed build takes INT8 from Q/DQ nodes only: implicit INT8 cannot be honoured."""
    if precision == "int8" and plan_path is None and typed_by_its_onnx(model):
        raise UserError(f"--precision int8 cannot apply to {model.name}: it is strongly typed (FP16/BF16 tensors), and "
                        "a strongly typed build takes INT8 from Q/DQ nodes only; quantize its FP32 source (Q/DQ) "
                        "or leave --precision out")


def load_bans(path: str | Path | None, model: Model) -> BanList | None:
    return BanList.load(path, model_sha256=model.sha256) if path else None


def prepare_feeds(model: Model, spec: ProblemSpec) -> dict[str, np.ndarray]:
    if spec.inputs:
        if spec.input_ranges:  # the file's values are fed as they are: a range would be silently ignored
            raise UserError("--input-range and --inputs both say what values to feed; leave --input-range out "
                            "(or --inputs, to generate inputs)")
        feeds = validate_feeds(model, load_feeds(spec.inputs))
        for name, shape in spec.input_shapes.items():
            if name in feeds and name not in spec.input_profiles and tuple(shape) != feeds[name].shape:
                raise UserError(f"--input-shape {name}:{'x'.join(map(str, shape))} contradicts the inputs file, whose "
                                f"{name!r} has shape {'x'.join(map(str, feeds[name].shape))}; leave --input-shape out")
        return feeds
    if spec.engine == "results" and spec.results:
        return _captured_inputs(model, spec.results)
    return generate_feeds(model, resolve_shapes(model, spec.input_shapes), spec.input_ranges, spec.seed)


def _captured_inputs(model: Model, results: str | Path) -> dict[str, np.ndarray]:
    """The inputs a capture was made on: compared against the FP32 run of other (generated) inputs, a
    capture would show differences no engine made. Taken from the capture when it holds every model
    input, otherwise the user must give them."""
    from trtdebug.engines.results import load_results

    captured, _ = load_results(results)
    missing = [spec.name for spec in model.inputs if spec.name not in captured]
    if missing:
        raise UserError(f"--engine results compares {results} against the FP32 run of the inputs it was captured "
                        f"on, and it does not hold input {missing[0]!r}: give them with --inputs "
                        "(polygraphy run ... --save-inputs inputs.json)")
    return validate_feeds(model, {spec.name: captured[spec.name] for spec in model.inputs})


def input_files(spec: ProblemSpec, model: Model) -> dict[str, Path | str | None]:
    """Every file the user gave, by the name the user knows it by."""
    files: dict[str, Path | str | None] = {"model": spec.model}
    files.update({f"model's external data {p.name}": p for p in model.data_files})
    files.update({"--inputs file": spec.inputs, "--plan": spec.plan, "--bans": spec.bans, "--results": spec.results,
                  "--reference-model": spec.reference_model})
    return files


def load_model(spec: ProblemSpec, outputs: Mapping[str, str | Path | None] | None = None) -> Model:
    """The model, once `outputs` (label -> path: the files the workflow will write) are checked against
    the inputs and their folders created, so a bad output path is refused before any work."""
    model = Model.load(spec.model)
    if outputs:
        prepare_outputs(outputs, input_files(spec, model))
    return model


def prepare(spec: ProblemSpec, outputs: Mapping[str, str | Path | None] | None = None,
            model: Model | None = None) -> Case:
    """Validate every choice and run the FP32 reference. `outputs`: as load_model checks them;
    `model`: the one load_model returned already (a workflow may take a lock in between)."""
    if model is None:
        model = load_model(spec, outputs)
    refuse_random_ops(model)
    unknown = sorted(set(spec.output_tolerances) - {o.name for o in model.outputs})
    if unknown:
        raise UserError(f"--output-tol names {unknown[0]!r}, which is not a model output")
    refuse_untypable_precision(model, spec.precision, spec.plan)
    feeds = prepare_feeds(model, spec)
    model = int8_model(model, spec.precision, spec.plan, feeds, Calibration(spec.calib_inputs, spec.calib_method),
                       spec.engine)
    plan = load_plan(spec.plan, model, spec.precision)
    bans = load_bans(spec.bans, model)
    engine = open_engine(spec.engine, spec.results, spec.obey, feeds, spec.input_profiles, spec.calib_inputs,
                         spec.calib_method)
    tolerance = Tolerance.for_precision(plan.default, spec.atol, spec.rtol, spec.output_tolerances)
    problem = Problem.prepare(model, feeds, tolerance, spec.memory_budget)
    note = typed_precision_note(model, plan, spec.precision) if spec.plan is None else None
    problem.notes = (note,) if note else ()
    if spec.reference_model is not None:
        use_reference_model(problem, spec.reference_model)
    refuse_nonfinite_reference(problem, spec)
    return Case(problem, engine, plan, bans)


def refuse_random_ops(model: Model) -> None:
    """A model drawing random values has no fixed FP32 reference: every run differs, and any verdict
    would blame the random op (core.reference.random_ops says why seeding does not help)."""
    drawing = random_nodes(model.proto)
    if drawing:
        names = ", ".join(f"{n.name or '(unnamed)'} ({n.op_type})" for n in drawing[:3])
        more = f" and {len(drawing) - 3} more" if len(drawing) > 3 else ""
        raise UserError(f"the model draws random values in {names}{more}: its FP32 runs differ from each other, "
                        "so no comparison means anything; export it with the noise as a model input (or fixed)")


class MatchedReference(Mapping[str, np.ndarray]):
    """A --reference-model's values of the tensors both models name with one shape: what compare
    compares (it skips tensors not `in` a reference). Reading another tensor gives the model's own
    FP32 upcast value: running a layer alone on reference inputs needs every input it reads."""

    def __init__(self, matched: dict[str, np.ndarray], own: Mapping[str, np.ndarray]):
        self.matched, self.own = matched, own

    def __getitem__(self, tensor: str) -> np.ndarray:
        return self.matched[tensor] if tensor in self.matched else self.own[tensor]

    def __contains__(self, tensor: object) -> bool:
        return tensor in self.matched

    def __iter__(self) -> Iterator[str]:
        return iter(self.matched)

    def __len__(self) -> int:
        return len(self.matched)


def use_reference_model(problem: Problem, path: str | Path) -> None:
    """Make `path`'s FP32 run the problem's reference, matched by tensor name (an AutoCast or
    onnxconverter-common output checked against its source); tensors in only one model are skipped
    and counted in `problem.reference_source`."""
    model = problem.model
    source = Model.load(path)
    if source.strongly_typed:
        raise UserError(f"--reference-model {path} types tensors FP16/BF16; give the FP32 model the typed one was "
                        "made from")
    missing = [i.name for i in source.inputs if i.name not in problem.feeds]
    if missing:
        raise UserError(f"--reference-model {path} reads input {missing[0]!r}, which {model.name} does not have; "
                        "give the model this one was converted from")
    feeds = {i.name: np.asarray(problem.feeds[i.name]).astype(i.dtype) if i.dtype is not None else problem.feeds[i.name]
             for i in source.inputs}
    values = run_reference(source, feeds)
    own = problem.reference if not isinstance(problem.reference, LazyReference) else run_reference(model, problem.feeds)
    names = [*(i.name for i in model.inputs), *model.intermediate_tensors()]
    matched = {t: values[t] for t in names if t in values and np.shape(values[t]) == np.shape(own[t])}
    unmatched_outputs = [o.name for o in model.outputs if o.name not in matched]
    if unmatched_outputs:
        raise UserError(f"output {unmatched_outputs[0]!r} of {model.name} is not a tensor of that shape in "
                        f"--reference-model {path}; give the model this one was converted from")
    problem.reference = MatchedReference(matched, own)
    problem.reference_source = {"model": source.name, "matched": len(matched),
                                "only_in_model": len([t for t in names if t not in matched]),
                                "only_in_reference": len([t for t in values if t not in set(names)])}


def refuse_nonfinite_reference(problem: Problem, spec: ProblemSpec) -> None:
    """No verdict means anything against a reference that is not finite: name where it went non-finite and
    which generated inputs likely caused it."""
    model, reference = problem.model, problem.reference
    bad_outputs = [o.name for o in model.outputs if np.asarray(reference[o.name]).dtype.kind == "f"
                   and not np.isfinite(reference[o.name]).all()]
    if not bad_outputs:
        return
    where = first_nonfinite(model, reference)
    first = f"; it first goes non-finite at {where[1]!r} (node {where[0]!r})" if where else ""
    upstream = inputs_upstream(model, where[1]) if where else [s.name for s in model.inputs]
    if spec.inputs:
        advice = f"check the values in {spec.inputs}"
    else:
        hints = [_range_hint(name, problem.feeds[name], spec) for name in upstream]
        advice = ("the generated inputs are likely out of the model's domain: give realistic values, e.g. "
                  + " ".join(h for h in hints if h) + " (or --inputs feeds.npz)") if any(hints) else \
            "give realistic inputs with --inputs feeds.npz"
    raise UserError(f"the FP32 reference itself is not finite (output {bad_outputs[0]!r}){first}: {advice}")


def _range_hint(name: str, value: np.ndarray, spec: ProblemSpec) -> str:
    low, high = spec.input_ranges.get(name, DEFAULT_RANGES.get(value.dtype.kind, (0, 7)))
    if value.dtype.kind in "iub":
        return f"--input-range {name}:0,1" if (low, high) != (0, 1) else f"--input-range {name}:1,1"
    return f"--input-range {name}:0,1" if (low, high) != (0.0, 1.0) else ""


def open_engine(name: str, results: str | Path | None = None, obey: bool = False,
                feeds: Mapping[str, np.ndarray] | None = None,
                profiles: Mapping[str, tuple[Shape, Shape, Shape]] | None = None,
                calib_inputs: Sequence[str | Path] = (), calib_method: str = DEFAULT_CALIBRATION_METHOD) -> Engine:
    """The engine by name. TensorRT builds get an optimization profile around the feeds' shapes, or the
    user's MIN/OPT/MAX profiles, the values of shape-tensor inputs from the feeds, and, for implicit
    INT8, the --calib-inputs batches (else the feeds, as the emulator calibrates)."""
    if name == "results":
        if not results:
            raise UserError("--engine results needs --results FILE (Polygraphy --save-outputs JSON or .npz)")
        return get_engine("results", results=results)
    if results:
        raise UserError("--results only applies to --engine results")
    if name in ("tensorrt", "tensorrt-rtx"):
        feeds = feeds or {}
        # Small integer tensors may be shape-tensor inputs; the engine ignores those that are not.
        shape_values = {n: v for n, v in feeds.items() if v.dtype.kind in "iu" and v.ndim <= 1}
        batches = ([load_feeds(p) for p in calibration_files(calib_inputs)] if calib_inputs
                   else [dict(feeds)] if feeds else [])
        return get_engine(name, obey_constraints=obey, input_shapes={n: v.shape for n, v in feeds.items()},
                          shape_ranges=dict(profiles or {}), shape_input_values=shape_values,
                          calibration_feeds=batches, calibration_method=calib_method)
    if profiles:
        raise UserError(f"--input-shape NAME:MIN,OPT,MAX sets a TensorRT optimization profile; the {name} "
                        "engine runs one shape: give NAME:DxDx...")
    return get_engine(name)
