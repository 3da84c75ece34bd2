"""`trtdebug quantize`: a Q/DQ (explicit INT8) model from a float model, with onnxruntime's tools."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from trtdebug.cli import console
from trtdebug.cli.options import InputShape, NamedPair, calibration_options, verbose_option
from trtdebug.errors import EXIT_OK
from trtdebug.workflows.quantize import DEFAULT_GENERATED_BATCHES, DEFAULT_QUANTIZE_FORMAT, QUANTIZE_FORMATS


def compare_hint(path: str | Path, input_shapes: tuple[tuple[str, tuple[tuple[int, ...], ...]], ...],
                 quant_format: str = "int8") -> str:
    """The compare command for the written model, with the shapes it needs (as the user gave them)."""
    words = ["trtdebug", "compare", str(path), "--precision", quant_format]
    for name, profile in input_shapes:
        shapes = ["x".join(map(str, s)) for s in (profile[:1] if len(set(profile)) == 1 else profile)]
        words += ["--input-shape", f"{name}:{','.join(shapes)}"]
    return shlex.join(words)


def _options(func):  # type: ignore[no-untyped-def]
    for option in reversed(calibration_options("seeded random batches of --input-shape")):
        func = option(func)
    return func


@click.command("quantize")
@verbose_option
@click.argument("model", type=click.Path(path_type=str))
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=str),
              help="The Q/DQ model to write [default: MODEL's name with .qdq.onnx, beside it].")
@click.option("--format", "quant_format", type=click.Choice(list(QUANTIZE_FORMATS)), default=DEFAULT_QUANTIZE_FORMAT,
              show_default=True,
              help="int8: onnxruntime's quantizer; fp8: E4M3 Q/DQ on MatMul/Conv/Gemm inputs (amax calibration, "
                   "per-channel weights); int4: block-wise weight-only Q/DQ on their weights.")
@click.option("--block-size", type=click.IntRange(min=1), default=None,
              help="Values per scale of --format int4 weights, along the reduction axis [default: 32].")
@_options
@click.option("--calib-batches", type=click.IntRange(min=1), default=DEFAULT_GENERATED_BATCHES, show_default=True,
              help="Generated calibration batches (without --calib-inputs).")
@click.option("--input-shape", "input_shapes", type=InputShape(), multiple=True,
              help="Shape of an input with dynamic dimensions, for generated batches, e.g. x:1x3x224x224.")
@click.option("--input-range", "input_ranges", multiple=True, type=NamedPair("NAME:LOW,HIGH", "x:-1,1", ordered=True),
              help="Value range of generated calibration inputs (default -1,1 for floats; repeatable).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the first generated batch.")
def quantize_command(model: str, out_path: str | None, quant_format: str, block_size: int | None,
                     calib_inputs: tuple[str, ...], calib_method: str, calib_batches: int,
                     input_shapes: tuple[tuple[str, tuple[tuple[int, ...], ...]], ...],
                     input_ranges: tuple[tuple[str, tuple[float, float]], ...], seed: int) -> int:
    """Quantize MODEL to Q/DQ (explicit quantization, what TensorRT builds): INT8 (symmetric
    activations, per-channel weights, calibrated with onnxruntime.quantization), FP8 E4M3 or INT4
    weight-only (--format)."""
    from trtdebug.workflows.quantize import Calibration, run_quantize

    suffix = ".qdq.onnx" if quant_format == "int8" else f".{quant_format}.onnx"
    out = out_path or str(Path(model).with_suffix(suffix))
    outcome = run_quantize(model, out, Calibration(tuple(calib_inputs), calib_method, calib_batches, seed),
                           {name: profile[1] for name, profile in input_shapes},  # a profile's OPT shape
                           dict(input_ranges), quant_format, block_size)  # None: the library's default
    for note in outcome.notes:
        console.stderr.print(f"note: {note}", style="dim", markup=False)
    how = ("no calibration (weights only)" if quant_format == "int4"
           else f"{outcome.method} calibration on {outcome.batches} batches")
    console.stdout.print(f"wrote {outcome.path}: {outcome.pairs} {quant_format.upper()} Q/DQ pairs "
                         f"({outcome.activation_pairs} on activations), {how}", markup=False)
    console.stdout.print(f"next: {compare_hint(outcome.path, input_shapes, quant_format)}", markup=False)
    return EXIT_OK
