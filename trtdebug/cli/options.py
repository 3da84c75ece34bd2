"""Option types and the options every command shares, built from the library's own constants.

Every value is validated when it is parsed (finite numbers, ranges, LOW <= HIGH, dims >= 1), so a
bad option is one line and exit 2 before any work starts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from trtdebug.core.plans.precision_plan import PRECISIONS
from trtdebug.engines import DEFAULT_ENGINE, ENGINE_NAMES
from trtdebug.errors import UserError
from trtdebug.workflows.quantize import CALIBRATION_METHODS, DEFAULT_CALIBRATION_METHOD

if TYPE_CHECKING:
    from trtdebug.workflows.problem import ProblemSpec

Shape = tuple[int, ...]
_DIMS = re.compile(r"^\d+(x\d+)*$")


class FiniteFloat(click.ParamType):
    """A finite float, at least `minimum`."""

    name = "float"

    def __init__(self, minimum: float = -math.inf):
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            number = value
        else:
            try:
                number = float(value)
            except ValueError:
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if number < self.minimum:
            self.fail(f"{value!r} is below {self.minimum:g}", param, ctx)
        return number


def parse_dims(text: str) -> Shape:
    """`1x3x224x224` -> (1, 3, 224, 224); an empty string is a scalar; every dim at least 1."""
    if text == "":
        return ()
    if not _DIMS.match(text):
        raise ValueError(text)
    dims = tuple(int(d) for d in text.split("x"))
    if any(d < 1 for d in dims):
        raise ValueError(text)
    return dims


class InputShape(click.ParamType):
    """NAME:DxDx..., or NAME:MIN,OPT,MAX (each DxDx...) for an engine's optimization profile; names may
    contain ':' (the last one separates). Returns (name, (min, opt, max)); a single shape is all three."""

    name = "NAME:DxDx...|NAME:MIN,OPT,MAX"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> tuple[str, tuple[Shape, Shape, Shape]]:
        if isinstance(value, tuple):
            return value
        name, sep, spec = str(value).strip().rpartition(":")
        try:
            if not name or not sep:
                raise ValueError(value)
            parts = [parse_dims(p) for p in spec.split(",")]
        except ValueError:
            self.fail(f"{value!r}: write it as NAME:DxDx... (or NAME:MIN,OPT,MAX) with every dimension at "
                      "least 1, e.g. x:1x3x224x224 or x:1x3x224x224,4x3x224x224,8x3x224x224", param, ctx)
        if len(parts) == 1:
            return name, (parts[0], parts[0], parts[0])
        if len(parts) != 3:
            self.fail(f"{value!r}: a profile has three shapes, MIN,OPT,MAX", param, ctx)
        low, opt, high = parts
        if not len(low) == len(opt) == len(high) or not all(
                a <= b <= c for a, b, c in zip(low, opt, high, strict=True)):
            self.fail(f"{value!r}: MIN, OPT and MAX need the same rank and MIN <= OPT <= MAX in every "
                      "dimension", param, ctx)
        return name, (low, opt, high)


class NamedPair(click.ParamType):
    """NAME:A,B with two finite numbers; `ordered` requires A <= B, `minimum` bounds both."""

    def __init__(self, form: str, example: str, minimum: float = -math.inf, ordered: bool = False):
        self.name = form
        self.example = example
        self.minimum = minimum
        self.ordered = ordered

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> tuple[str, tuple[float, float]]:
        if isinstance(value, tuple):
            return value
        name, _, numbers = str(value).rpartition(":")
        try:
            first, second = (float(v) for v in numbers.split(","))
        except ValueError:
            first = second = math.nan
        if not name or not (math.isfinite(first) and math.isfinite(second)):
            self.fail(f"{value!r}: write it as {self.name} with finite numbers, e.g. {self.example}", param, ctx)
        if min(first, second) < self.minimum:
            self.fail(f"{value!r}: values must be at least {self.minimum:g}, e.g. {self.example}", param, ctx)
        if self.ordered and first > second:
            self.fail(f"{value!r}: LOW must not exceed HIGH, e.g. {self.example}", param, ctx)
        return name, (first, second)


class MemorySize(click.ParamType):
    """A memory size such as 8GiB, 500MB or 1.5GB (core.system.memory.parse_size), in bytes; at least one byte."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        from trtdebug.core.system.memory import parse_size
        from trtdebug.errors import UserError

        try:
            size = parse_size(str(value))
        except UserError as exc:
            self.fail(str(exc), param, ctx)
        if size < 1:
            self.fail(f"{value!r}: a memory budget must be at least one byte, e.g. 8GiB or 500MB", param, ctx)
        return size


PRECISION = click.Choice(list(PRECISIONS))
ENGINE = click.Choice(list(ENGINE_NAMES))
BUILDING_ENGINE = click.Choice([e for e in ENGINE_NAMES if e != "results"])


def calibration_options(generated_help: str = "the inputs compared") -> list[Callable[[Any], Any]]:
    """Where INT8 calibration data comes from and how ranges are chosen from it."""
    return [
        click.option("--calib-inputs", "calib_inputs", type=click.Path(path_type=str), multiple=True,
                     help="INT8 calibration batches: .npz files or a folder of them (repeatable) "
                          f"[default: {generated_help}]."),
        click.option("--calib-method", "calib_method", type=click.Choice(list(CALIBRATION_METHODS)),
                     default=DEFAULT_CALIBRATION_METHOD, show_default=True,
                     help="How INT8 ranges are chosen from calibration data."),
    ]


def problem_options(func: Callable[..., Any] | None = None, *, several_inputs: bool = False) -> Any:
    """Options every analysing command shares: the model, its inputs, precision, engine, tolerance.
    `several_inputs`: --inputs is repeatable and takes folders (a tuple of paths), as fallback judges
    every plan on several input sets."""
    if func is None:
        return lambda f: problem_options(f, several_inputs=several_inputs)
    inputs_option = click.option(
        "--inputs", "inputs_path", type=click.Path(path_type=str), multiple=True,
        help="Input sets to judge every plan on: .npz or Polygraphy input JSON files, or a folder of them "
             "(repeatable) [default: generated at --input-seeds seeds].") if several_inputs else click.option(
        "--inputs", "inputs_path", type=click.Path(path_type=str),
        help="Input feeds: .npz or Polygraphy input JSON (default: seeded random).")
    options = [
        click.argument("model", type=click.Path(dir_okay=True, path_type=str)),
        click.option("--precision", type=PRECISION, default=None,
                     help="Precision of the build under test [default: fp16, or the --plan's]."),
        click.option("--engine", "engine_name", type=ENGINE, default=DEFAULT_ENGINE, show_default=True,
                     help="Engine under test."),
        click.option("--input-shape", "input_shapes", type=InputShape(), multiple=True,
                     help="Shape of an input with dynamic dimensions, e.g. x:1x3x224x224; NAME:MIN,OPT,MAX gives "
                          "TensorRT builds a profile (inputs are generated at OPT). Repeatable."),
        click.option("--input-range", "input_ranges", multiple=True,
                     type=NamedPair("NAME:LOW,HIGH", "x:-1,1", ordered=True),
                     help="Value range of a generated input: floats in [LOW, HIGH), integers and bools "
                          "LOW..HIGH inclusive (defaults -1,1 and 0,7; mask:1,1 is all ones). Repeatable."),
        inputs_option,
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Seed of generated inputs."),
        click.option("--atol", type=FiniteFloat(0.0), help="Absolute tolerance (default by precision, fp16: 1e-2)."),
        click.option("--rtol", type=FiniteFloat(0.0), help="Relative tolerance (default by precision, fp16: 1e-2)."),
        click.option("--output-tol", "output_tols", multiple=True,
                     type=NamedPair("NAME:ATOL,RTOL", "logits:1e-2,1e-3", minimum=0.0),
                     help="Tolerance for one output (repeatable)."),
        click.option("--plan", "plan_path", type=click.Path(path_type=str),
                     help="Precision plan (from `trtdebug fallback`) to build with."),
        click.option("--bans", "bans_path", type=click.Path(path_type=str),
                     help="Tactic ban list (from `trtdebug tactics`) to build with."),
        click.option("--reference-model", "reference_model", type=click.Path(path_type=str),
                     help="FP32 model the reference runs instead of the model's own FP32 upcast (e.g. the source "
                          "of an AutoCast or onnxconverter-common output); tensors are matched by name."),
        click.option("--results", "results_path", type=click.Path(path_type=str),
                     help="With --engine results: Polygraphy --save-outputs JSON or .npz of engine tensors."),
        click.option("--obey", is_flag=True,
                     help="TensorRT <= 10: OBEY precision constraints instead of PREFER."),
        *calibration_options(),
        click.option("--memory-budget", "memory_budget", type=MemorySize(),
                     help="Memory the comparison may hold, e.g. 8GiB or 500MB: tensors are exposed and compared "
                          "a group at a time to stay within it [default: half the available memory]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def problem_spec(model: str, precision: str | None = None, engine_name: str = DEFAULT_ENGINE,
                 input_shapes: tuple[tuple[str, tuple[Shape, Shape, Shape]], ...] = (),
                 input_ranges: tuple[tuple[str, tuple[float, float]], ...] = (), inputs_path: str | None = None,
                 seed: int = 0, atol: float | None = None, rtol: float | None = None,
                 output_tols: tuple[tuple[str, tuple[float, float]], ...] = (), plan_path: str | None = None,
                 bans_path: str | None = None, results_path: str | None = None, obey: bool = False,
                 calib_inputs: tuple[str, ...] = (), calib_method: str = DEFAULT_CALIBRATION_METHOD,
                 memory_budget: int | None = None, reference_model: str | None = None) -> ProblemSpec:
    """The parsed shared options as the library's typed ProblemSpec, built by the API's own
    problem_spec, so the CLI and the Python API cannot drift."""
    from trtdebug.api import problem_spec as api_problem_spec  # onnxruntime loads only when a command runs

    given = [name for name, _ in input_shapes]
    twice = next((name for name in given if given.count(name) > 1), None)
    if twice is not None:  # a dict would keep the last one silently
        raise UserError(f"--input-shape gives input {twice!r} {given.count(twice)} times; give each input once")
    return api_problem_spec(model, precision=precision, engine=engine_name, input_shape=dict(input_shapes),
                            input_range=dict(input_ranges), inputs=inputs_path, seed=seed, atol=atol, rtol=rtol,
                            output_tol=dict(output_tols), plan=plan_path, bans=bans_path, results=results_path,
                            obey=obey, calib_inputs=calib_inputs, calib_method=calib_method,
                            memory_budget=memory_budget, reference_model=reference_model)


def _set_verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        from trtdebug import logs

        logs.set_verbose(True)


def verbose_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """`-v` after the command name too (`trtdebug compare -v ...`), the same as `trtdebug -v compare ...`."""
    return click.option("--verbose", "-v", is_flag=True, expose_value=False, callback=_set_verbose,
                        help="Show the log lines and warnings of onnxruntime, Polygraphy, TensorRT and numpy.")(func)
