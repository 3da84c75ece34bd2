"""The `build` workflow: a saved plan made concrete, as a mixed-precision ONNX model, an engine
file, or the trtexec / Polygraphy flags that build it. `write_plan_artifacts` serves fallback too."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from trtdebug.artifacts.build_flags import (
    DEFAULT_TARGET_VERSION,
    FLAG_TOOLS,
    Shape,
    ShapeProfile,
    check_target,
    command_line,
    polygraphy_args,
    trtexec_args,
)
from trtdebug.artifacts.engine_file import write_engine
from trtdebug.artifacts.mixed_onnx import write_mixed_onnx, write_model
from trtdebug.artifacts.typed_converters import CONVERTER_TOOLS, converter_snippet
from trtdebug.core.model.feeds import input_shape_hint
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.ban_list import BanList
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.quantized.format import format_for
from trtdebug.core.system.files import prepare_outputs
from trtdebug.engines.base import BuildError, Engine
from trtdebug.errors import UserError
from trtdebug.workflows.problem import ProblemSpec, load_bans, load_plan, open_engine, prepare_feeds


@dataclass(frozen=True)
class BuildOutcome:
    """What `build` wrote and the commands it emitted; built once, never changed after."""

    written: Path | None = None  # the ONNX model or engine file
    commands: Mapping[str, str] = field(default_factory=dict)  # tool -> command line that builds the plan

    def to_json(self) -> dict[str, str | dict[str, str] | None]:
        return {"written": None if self.written is None else str(self.written), "commands": dict(self.commands)}


def write_plan_artifacts(engine: Engine, model: Model, plan: PrecisionPlan, bans: BanList | None,
                         onnx_path: Path, engine_path: Path) -> tuple[list[Path], list[str]]:
    """The plan made concrete: a mixed-precision ONNX model (what strongly typed builders and the
    emulator take) and, where the engine can serialize what it built, the engine file."""
    written: list[Path] = []
    notes: list[str] = []
    quant_format = format_for(model, plan)
    if quant_format is not None:
        # A quantized plan (INT8, FP8, INT4) made concrete: the Q/DQ model with its pairs (or layers) taken out.
        write_model(quant_format.plan_model(plan.nodes), onnx_path, quant_format.model.qdq.weights)
        return [onnx_path], notes
    try:
        written.append(write_mixed_onnx(model, plan, onnx_path))
    except UserError as exc:
        notes.append(f"mixed-precision ONNX not written: {exc}")
    try:
        if write_engine(engine, model, plan, bans, engine_path):
            written.append(engine_path)
    except BuildError as exc:
        notes.append(f"engine not written: the build failed ({exc})")
    return written, notes


@dataclass(frozen=True)
class EmitOptions:
    """How to export the build flags: the TensorRT version they are for, INT8 calibration."""

    obey: bool = False
    target_version: str = DEFAULT_TARGET_VERSION
    calibration_cache: str | None = None
    qdq: bool = False


def dynamic_input_profile(model: Model, spec: ProblemSpec) -> ShapeProfile:
    """MIN, OPT, MAX of every dynamic input, from the user's --input-shape (one shape: all three)."""
    profile: dict[str, tuple[Shape, Shape, Shape]] = {}
    for tensor in model.inputs:
        if tensor.is_static:
            continue
        if tensor.name in spec.input_profiles:
            profile[tensor.name] = spec.input_profiles[tensor.name]
        elif tensor.name in spec.input_shapes:
            shape = tuple(spec.input_shapes[tensor.name])
            profile[tensor.name] = (shape, shape, shape)
        else:
            raise UserError(f"input {tensor.name!r} has dynamic dimensions: give the shapes the engine is built "
                            f"for, {input_shape_hint(tensor.name, tensor.shape or ())}, or NAME:MIN,OPT,MAX")
    return profile


def _check_bans_carried(bans: BanList | None, out: str | Path | None, emit: tuple[str, ...]) -> None:
    """Tactics are chosen when an engine is built: only an engine file built here carries bans. A
    mixed-precision ONNX model or an --emit command line would silently build without them."""
    if not bans:
        return
    if emit:
        raise UserError("--bans cannot be carried by --emit's command lines (no trtexec or Polygraphy flag "
                        "bans a tactic); build the engine here instead: --bans FILE --out NAME.engine")
    if out is not None and str(out).endswith(".onnx"):
        raise UserError("--bans cannot be carried by a mixed-precision ONNX model (tactics are chosen when an "
                        "engine is built); build the engine here instead (--out NAME.engine), or leave --bans out")


def build_artifact(model_path: str | Path, plan_path: str | Path, bans_path: str | Path | None = None,
                   engine_name: str = "emulator", out: str | Path | None = None,
                   emit: tuple[str, ...] = (), emit_options: EmitOptions | None = None,
                   inputs: ProblemSpec | None = None) -> BuildOutcome:
    """`trtdebug build`: the plan applied to its model. `out` NAME.onnx writes the mixed-precision ONNX
    model, any other name the engine file (its optimization profile from `inputs`: shapes, MIN/OPT/MAX
    profiles and shape-tensor values); `emit` names tools whose build command to return."""
    model = Model.load(model_path)
    spec = inputs or ProblemSpec(model_path)
    options = emit_options or EmitOptions()
    given: dict[str, str | Path | None] = {"model": model_path, "--plan": plan_path, "--bans": bans_path,
                                           "--inputs": spec.inputs}
    given.update({f"model's external data {p.name}": p for p in model.data_files})
    written = {"--out": out, "--out's external data": f"{out}.data" if out and str(out).endswith(".onnx") else None}
    prepare_outputs(written, given)
    plan = load_plan(plan_path, model, None)
    bans = load_bans(bans_path, model)
    _check_bans_carried(bans, out, emit)
    commands: dict[str, str] = {}
    engine_path = out if out is not None and not str(out).endswith(".onnx") else Path(model_path).with_suffix(".engine")
    for tool in emit:
        if tool not in FLAG_TOOLS:
            raise UserError(f"unknown --emit {tool!r}; choose one of {', '.join(FLAG_TOOLS)}")
        if tool in CONVERTER_TOOLS:  # the Python call that writes the typed model (TensorRT 11)
            commands[tool] = converter_snippet(tool, plan, model_path, {new for _, new in model.renamed_nodes},
                                                       model.strongly_typed)
            continue
        check_target(plan, options.target_version, options.calibration_cache, options.qdq)
        make_args = trtexec_args if tool == "trtexec" else polygraphy_args
        args = make_args(plan, obey=options.obey, target_version=options.target_version,
                         calibration_cache=options.calibration_cache, qdq=options.qdq,
                         shapes=dynamic_input_profile(model, spec))
        commands[tool] = command_line("trtexec" if tool == "trtexec" else "polygraphy convert",
                                              model_path, args, engine_path)
    if out is None:
        return BuildOutcome(None, commands)
    path = Path(out)
    if path.suffix == ".onnx":
        return BuildOutcome(write_mixed_onnx(model, plan, path), commands)
    # Implicit INT8 calibrates as compare and fallback do (problem.prepare): --calib-inputs, else the feeds.
    engine = open_engine(engine_name, obey=options.obey, feeds=prepare_feeds(model, spec), profiles=spec.input_profiles,
                         calib_inputs=spec.calib_inputs, calib_method=spec.calib_method)
    try:
        serialized = write_engine(engine, model, plan, bans, path)
    except BuildError as exc:
        raise BuildError(f"the {engine_name} build with {plan_path} failed: {exc}") from None
    if not serialized:
        raise UserError(f"the {engine_name} engine has no serialized form; write the mixed-precision ONNX "
                        "model instead: --out NAME.onnx")
    return BuildOutcome(path, commands)
