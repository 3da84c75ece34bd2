"""`trtdebug build`: a saved plan as a mixed-precision ONNX model, an engine file, or build flags."""

from __future__ import annotations

import click

from trtdebug.artifacts.build_flags import DEFAULT_TARGET_VERSION, FLAG_TOOLS, TARGET_VERSIONS
from trtdebug.cli import console
from trtdebug.cli.options import (
    BUILDING_ENGINE,
    InputShape,
    NamedPair,
    calibration_options,
    problem_spec,
    verbose_option,
)
from trtdebug.engines import DEFAULT_ENGINE
from trtdebug.errors import EXIT_OK, UserError

# Implicit INT8 engine files calibrate as compare and fallback do.
CALIB_INPUTS, CALIB_METHOD = calibration_options("the --inputs feeds")


@click.command("build")
@verbose_option
@click.argument("model", type=click.Path(path_type=str))
@click.option("--plan", "plan_path", type=click.Path(path_type=str), required=True,
              help="Precision plan (from `trtdebug fallback`).")
@click.option("--bans", "bans_path", type=click.Path(path_type=str),
              help="Tactic ban list to build with: engine files only (a mixed-precision ONNX model or an "
                   "--emit command cannot carry bans, and is refused).")
@click.option("--engine", "engine_name", type=BUILDING_ENGINE, default=DEFAULT_ENGINE, show_default=True,
              help="Engine that builds a non-ONNX --out.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=str),
              help="NAME.onnx: the mixed-precision ONNX model; any other name: the serialized engine.")
@click.option("--emit", "emit", type=click.Choice(list(FLAG_TOOLS)), multiple=True,
              help="Print the command that builds the plan with this tool (trtexec, polygraphy: TensorRT <= 10.x), or "
                   "the Python call that writes its typed ONNX (autocast: ModelOpt AutoCast, onnxconverter: "
                   "onnxconverter-common; TensorRT 11). Repeatable.")
@click.option("--obey", is_flag=True, help="OBEY precision constraints instead of PREFER (TensorRT <= 10).")
@click.option("--target-version", type=click.Choice(list(TARGET_VERSIONS)), default=DEFAULT_TARGET_VERSION,
              show_default=True,
              help="With --emit: the TensorRT version the flags are for (11 has no precision flags).")
@click.option("--calib-cache", "calibration_cache", type=click.Path(dir_okay=False, path_type=str),
              help="With --emit and an INT8 plan: the calibration cache the build reads.")
@click.option("--qdq", is_flag=True, help="With --emit and an INT8 plan: the model is quantized (Q/DQ nodes).")
@click.option("--input-shape", "input_shapes", type=InputShape(), multiple=True,
              help="Engine files: NAME:DxDx... or NAME:MIN,OPT,MAX, the optimization profile (repeatable).")
@click.option("--inputs", "inputs_path", type=click.Path(path_type=str),
              help="Engine files: feeds (.npz or Polygraphy JSON) whose shapes and shape-tensor values the "
                   "profile uses.")
@click.option("--input-range", "input_ranges", multiple=True,
              type=NamedPair("NAME:LOW,HIGH", "shape:1,8", ordered=True),
              help="Engine files without --inputs: range of a generated input (shape-tensor values; repeatable).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Engine files without --inputs: seed of generated inputs.")
@CALIB_INPUTS
@CALIB_METHOD
def build_command(model: str, plan_path: str, bans_path: str | None, engine_name: str, out_path: str | None,
                  emit: tuple[str, ...], obey: bool, target_version: str, calibration_cache: str | None,
                  qdq: bool, input_shapes: tuple, inputs_path: str | None, input_ranges: tuple, seed: int,
                  calib_inputs: tuple[str, ...], calib_method: str) -> int:
    """Apply a precision plan: write the mixed-precision ONNX model or the built engine, or print the
    trtexec / Polygraphy command that builds it."""
    from trtdebug.workflows.build import EmitOptions, build_artifact

    if out_path is None and not emit:
        raise UserError("trtdebug build needs --out FILE (NAME.onnx or an engine file) or --emit "
                        + "|".join(FLAG_TOOLS))
    spec = problem_spec(model, input_shapes=input_shapes, inputs_path=inputs_path, input_ranges=input_ranges,
                        seed=seed, calib_inputs=calib_inputs, calib_method=calib_method)
    outcome = build_artifact(model, plan_path, bans_path, engine_name, out_path, emit,
                             EmitOptions(obey, target_version, calibration_cache, qdq), spec)
    for command in outcome.commands.values():
        console.stdout.print(command, markup=False, soft_wrap=True)
    if outcome.written is not None:
        console.stdout.print(f"wrote {outcome.written}", markup=False)
    return EXIT_OK
