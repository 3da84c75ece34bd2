"""The Python API: the CLI's analysing commands as functions returning typed results (docs/api.md).

Each function takes a model path or an `onnx.ModelProto` and keyword options named as the CLI's flags
(`--input-shape` -> `input_shape`), with the CLI's defaults; both build their ProblemSpec with
`problem_spec`, so the two cannot drift. Bad input raises `UserError` (the CLI's exit 2) with the
message the CLI prints; an engine failure raises `EngineError` (exit 4).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

import onnx

from trtdebug.core.analysis.metrics import CompareResult
from trtdebug.core.plans.precision_plan import PRECISIONS
from trtdebug.core.search.strategies import DEFAULT_INPUT_SEEDS, DEFAULT_STRATEGY, STRATEGIES
from trtdebug.core.search.user_check import CheckCommand
from trtdebug.core.system.memory import parse_size
from trtdebug.engines import ENGINE_NAMES
from trtdebug.engines.base import COMPARE_MARKING, MARK_MODES, Marking
from trtdebug.errors import UserError
from trtdebug.workflows.build import BuildOutcome, EmitOptions, build_artifact
from trtdebug.workflows.compare import LOCAL_SCOPES, compare_case
from trtdebug.workflows.fallback import FallbackOutcome, run_fallback
from trtdebug.workflows.problem import ProblemSpec, prepare
from trtdebug.workflows.progress import SILENT, Progress
from trtdebug.workflows.quantize import (
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_GENERATED_BATCHES,
    DEFAULT_QUANTIZE_FORMAT,
    Calibration,
    QuantizeOutcome,
    run_quantize,
)
from trtdebug.workflows.tactics import TacticSearch, find_tactic_bans

Shape = tuple[int, ...]
ModelSource: TypeAlias = str | Path | onnx.ModelProto
# NAME -> a shape, or (MIN, OPT, MAX) shapes: a TensorRT optimization profile
InputShapes = Mapping[str, Shape | tuple[Shape, Shape, Shape]]


def problem_spec(model: str | Path, *, precision: str | None = None, engine: str = "emulator",
                 input_shape: InputShapes | None = None, input_range: Mapping[str, tuple[float, float]] | None = None,
                 inputs: str | Path | None = None, seed: int = 0, atol: float | None = None,
                 rtol: float | None = None, output_tol: Mapping[str, tuple[float, float]] | None = None,
                 plan: str | Path | None = None, bans: str | Path | None = None, results: str | Path | None = None,
                 obey: bool = False, calib_inputs: Sequence[str | Path] = (),
                 calib_method: str = DEFAULT_CALIBRATION_METHOD,
                 memory_budget: int | str | None = None, reference_model: str | Path | None = None) -> ProblemSpec:
    """The options every analysing command shares, checked, as the ProblemSpec the workflows take."""
    _choice("precision", precision, PRECISIONS, optional=True)
    _choice("engine", engine, ENGINE_NAMES)
    if seed < 0:
        raise UserError(f"--seed {seed} is negative: give a seed of 0 or more")
    for flag, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UserError(f"--{flag} {value!r} is not a finite number of at least 0")
    for name, (low, high) in (input_range or {}).items():
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise UserError(f"--input-range {name}:{low},{high}: LOW and HIGH must be finite, LOW <= HIGH")
    profiles = {name: _profile(name, shape) for name, shape in (input_shape or {}).items()}
    budget = parse_size(memory_budget) if isinstance(memory_budget, str) else memory_budget
    if budget is not None and budget < 1:
        raise UserError(f"--memory-budget {memory_budget!r}: a memory budget must be at least one byte, "
                        "e.g. 8GiB or 500MB")
    return ProblemSpec(model=model, precision=precision, engine=engine,
                       input_shapes={name: shapes[1] for name, shapes in profiles.items()},
                       input_profiles={name: shapes for name, shapes in profiles.items() if len(set(shapes)) > 1},
                       input_ranges=dict(input_range or {}), inputs=inputs, seed=seed, atol=atol, rtol=rtol,
                       output_tolerances=dict(output_tol or {}), plan=plan, bans=bans, results=results, obey=obey,
                       calib_inputs=tuple(calib_inputs), calib_method=calib_method, memory_budget=budget,
                       reference_model=reference_model)


def compare(model: ModelSource, *, mark: str = COMPARE_MARKING, chunk: int | None = None, check: str | None = None,
            local_error: str = "wrong", histograms: bool = False, progress: Progress = SILENT,
            **options: object) -> CompareResult:
    """`trtdebug compare`: every layer against onnxruntime FP32. `options`: those of `problem_spec`."""
    _choice("mark", mark, MARK_MODES)
    _choice("local-error", local_error, LOCAL_SCOPES)
    if chunk is not None and chunk < 1:
        raise UserError(f"--chunk {chunk}: expose at least one tensor per build")
    with _model_path(model) as path:
        case = prepare(problem_spec(path, **options))  # type: ignore[arg-type]
        return compare_case(case, Marking(mode=mark, chunk_size=chunk),  # type: ignore[arg-type]
                            progress=progress, check=_check(check), local_scope=local_error,
                            histograms=histograms)


def fallback(model: ModelSource, *, out: str | Path | None = None, strategy: str = DEFAULT_STRATEGY,
             resume: bool = False, check: str | None = None, inputs: Sequence[str | Path] = (),
             input_seeds: int = DEFAULT_INPUT_SEEDS, max_evaluations: int | None = None,
             progress: Progress = SILENT, **options: object) -> FallbackOutcome:
    """`trtdebug fallback`: the fewest nodes to keep in higher precision; writes the plan to `out`
    (default: MODEL.plan.json in the working folder) with its journal and compare report beside it.
    Every plan is judged on each of `inputs` (files or folders), or on inputs generated at
    `input_seeds` seeds; `max_evaluations` bounds the search (default: twice its documented bound)."""
    _choice("strategy", strategy, STRATEGIES)
    if input_seeds < 1:
        raise UserError(f"--input-seeds {input_seeds}: judge plans on at least one set of inputs")
    if max_evaluations is not None and max_evaluations < 1:
        raise UserError(f"--max-evaluations {max_evaluations}: allow at least one evaluation")
    with _model_path(model) as path:
        plan_path = Path(out or f"{Path(path).stem}.plan.json")
        return run_fallback(problem_spec(path, **options), plan_path,  # type: ignore[arg-type]
                            strategy=strategy, resume=resume, check=_check(check), progress=progress,
                            inputs=tuple(inputs), input_seeds=input_seeds, max_evaluations=max_evaluations)


def tactics(model: ModelSource, *, out: str | Path | None = None, builds: int = 1, progress: Progress = SILENT,
            **options: object) -> TacticSearch:
    """`trtdebug tactics`: a verified tactic ban list, saved to `out` when given."""
    if builds < 1:
        raise UserError(f"--builds {builds}: build at least once")
    with _model_path(model) as path:
        case = prepare(problem_spec(path, **options), outputs={"--out": out})  # type: ignore[arg-type]
        search = find_tactic_bans(case.problem, case.engine, case.plan, case.bans, builds, progress=progress)
    if out is not None:
        search.bans.save(out)
    return search


def build(model: ModelSource, *, plan: str | Path, bans: str | Path | None = None, engine: str = "emulator",
          out: str | Path | None = None, emit: Sequence[str] = (), obey: bool = False, target_version: str = "10",
          calib_cache: str | Path | None = None, qdq: bool = False, input_shape: InputShapes | None = None,
          inputs: str | Path | None = None, input_range: Mapping[str, tuple[float, float]] | None = None,
          seed: int = 0, calib_inputs: Sequence[str | Path] = (),
          calib_method: str = DEFAULT_CALIBRATION_METHOD) -> BuildOutcome:
    """`trtdebug build`: the plan applied (`out` NAME.onnx or an engine file), or the commands that build it.
    An implicit INT8 engine file calibrates on `calib_inputs` with `calib_method`, as compare and fallback do."""
    if out is None and not emit:
        raise UserError("trtdebug build needs --out FILE (NAME.onnx or an engine file) or --emit trtexec|polygraphy")
    with _model_path(model) as path:
        spec = problem_spec(path, input_shape=input_shape, inputs=inputs, input_range=input_range, seed=seed,
                            calib_inputs=calib_inputs, calib_method=calib_method)
        return build_artifact(path, plan, bans, engine, out, tuple(emit),
                              EmitOptions(obey, target_version, None if calib_cache is None else str(calib_cache),
                                          qdq), spec)


def quantize(model: ModelSource, *, out: str | Path | None = None, calib_inputs: Sequence[str | Path] = (),
             calib_method: str = DEFAULT_CALIBRATION_METHOD, calib_batches: int = DEFAULT_GENERATED_BATCHES,
             input_shape: InputShapes | None = None,
             input_range: Mapping[str, tuple[float, float]] | None = None, seed: int = 0,
             format: str = DEFAULT_QUANTIZE_FORMAT, block_size: int | None = None) -> QuantizeOutcome:
    """`trtdebug quantize`: a Q/DQ model (`format`: int8, fp8 or int4 weight-only) written to `out`
    (default: MODEL.qdq.onnx beside a model path)."""
    if calib_batches < 1:
        raise UserError(f"--calib-batches {calib_batches}: calibrate on at least one batch")
    with _model_path(model) as path:
        spec = problem_spec(path, input_shape=input_shape, input_range=input_range, seed=seed)
        target = out or (Path(model).with_suffix(".qdq.onnx") if isinstance(model, str | Path)
                         else Path(f"{Path(path).stem}.qdq.onnx"))
        return run_quantize(path, target, Calibration(tuple(calib_inputs), calib_method, calib_batches, seed),
                            dict(spec.input_shapes), dict(spec.input_ranges), format, block_size)


def _choice(flag: str, value: str | None, choices: Sequence[str], optional: bool = False) -> None:
    if (value is not None or not optional) and value not in choices:
        raise UserError(f"--{flag} {value!r} is not one of {', '.join(choices)}")


def _profile(name: str, shape: Shape | tuple[Shape, Shape, Shape]) -> tuple[Shape, Shape, Shape]:
    """A shape is its own MIN, OPT and MAX; three shapes are a profile (MIN <= OPT <= MAX)."""
    if all(isinstance(d, int) for d in shape):
        dims = tuple(int(d) for d in shape)  # type: ignore[arg-type]
        if any(d < 1 for d in dims):
            raise UserError(f"--input-shape {name}: every dimension must be at least 1, e.g. (1, 3, 224, 224)")
        return dims, dims, dims
    if len(shape) != 3:
        raise UserError(f"--input-shape {name}: give one shape or three (MIN, OPT, MAX)")
    low, opt, high = (tuple(s) for s in shape)  # type: ignore[arg-type]
    if not (len(low) == len(opt) == len(high)
            and all(1 <= a <= b <= c for a, b, c in zip(low, opt, high, strict=True))):
        raise UserError(f"--input-shape {name}: MIN, OPT and MAX need the same rank and MIN <= OPT <= MAX in "
                        "every dimension")
    return low, opt, high


def _check(command: str | None) -> CheckCommand | None:
    return CheckCommand(command) if command is not None else None


@contextlib.contextmanager
def _model_path(model: ModelSource) -> Iterator[str | Path]:
    """A path to the model: the one given, or a ModelProto saved to a temporary folder for the run."""
    if isinstance(model, str | Path):
        yield model
        return
    if not isinstance(model, onnx.ModelProto):
        raise UserError(f"model must be a path or an onnx.ModelProto, not {type(model).__name__}")
    with tempfile.TemporaryDirectory(prefix="trtdebug-") as folder:
        path = Path(folder) / f"{model.graph.name or 'model'}.onnx"
        large = model.ByteSize() > 2**31 - 2**20  # protobuf's 2 GiB limit: weights go to external data
        onnx.save(model, str(path), save_as_external_data=large)
        yield path
