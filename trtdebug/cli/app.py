"""Command-line interface: parse options, call the library, print. No logic lives here.

Exit codes: 0 all final outputs within tolerance, 1 an accuracy problem was found, 2 bad usage or
bad input (one line on stderr, never a traceback), 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

from trtdebug import __version__
from trtdebug.errors import UserError

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# Reports are often piped to a file or CI log; 80 columns would truncate node names there.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def problem_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options every command shares: the model, its inputs, precision, engine and tolerance."""
    options = [
        click.argument("model", type=click.Path(dir_okay=True, path_type=str)),
        click.option("--precision", type=click.Choice(["fp16", "bf16", "int8", "fp32"]), default="fp16",
                     show_default=True, help="Precision of the build under test."),
        click.option("--engine", "engine_name", type=click.Choice(["emulator", "tensorrt", "tensorrt-rtx",
                                                                     "results"]),
                     default="emulator", show_default=True, help="Engine under test."),
        click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:DxDx...",
                     help="Shape of an input with dynamic dimensions, e.g. x:1x3x224x224 (repeatable)."),
        click.option("--input-range", "input_ranges", multiple=True, metavar="NAME:LOW,HIGH",
                     help="Value range of a generated input (default -1,1 for floats; repeatable)."),
        click.option("--inputs", "inputs_path", type=click.Path(path_type=str),
                     help="Input feeds: .npz or Polygraphy input JSON (default: seeded random)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of generated inputs."),
        click.option("--atol", type=float, help="Absolute tolerance (default by precision, fp16: 1e-2)."),
        click.option("--rtol", type=float, help="Relative tolerance (default by precision, fp16: 1e-2)."),
        click.option("--output-tol", "output_tols", multiple=True, metavar="NAME:ATOL,RTOL",
                     help="Tolerance for one output (repeatable)."),
        click.option("--plan", "plan_path", type=click.Path(path_type=str),
                     help="Precision plan (from `trtdebug fallback`) to build with."),
        click.option("--bans", "bans_path", type=click.Path(path_type=str),
                     help="Tactic ban list (from `trtdebug tactics`) to build with."),
        click.option("--results", "results_path", type=click.Path(path_type=str),
                     help="With --engine results: Polygraphy --save-outputs JSON or .npz of engine tensors."),
        click.option("--obey", is_flag=True,
                     help="TensorRT <= 10: OBEY precision constraints instead of PREFER."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="trtdebug")
def cli() -> None:
    """Find where a reduced-precision TensorRT engine goes wrong, and fix it."""


@cli.command("compare")
@problem_options
@click.option("--mark", "mark_mode", type=click.Choice(["outputs", "debug", "unfused"]), default="outputs",
              show_default=True, help="How TensorRT exposes layer outputs.")
@click.option("--chunk", "chunk_size", type=int, help="Expose at most this many tensors per build.")
@click.option("--top", type=int, default=10, show_default=True, help="Rows in the worst-layers table.")
@click.option("--json", "json_path", type=click.Path(path_type=str), help="Write the full JSON report here.")
@click.option("--html", "html_path", type=click.Path(path_type=str), help="Write the terminal report as HTML.")
def compare_command(mark_mode: str, chunk_size: int | None, top: int, json_path: str | None,
                    html_path: str | None, **problem_args: Any) -> int:
    """Compare every layer of the engine against onnxruntime FP32 and say where error starts."""
    from trtdebug.cli.render.compare import compare_to_json, render_compare, write_json
    from trtdebug.engines.base import Marking
    from trtdebug.workflows.compare import run_compare
    from trtdebug.workflows.problem import open_session

    session = open_session(**problem_args)
    if html_path:
        console.record = True
    result = run_compare(session.problem, session.engine, session.plan, session.bans,
                         Marking(mode=mark_mode, chunk_size=chunk_size))  # type: ignore[arg-type]
    render_compare(result, console, top=top)
    if json_path:
        write_json(compare_to_json(result), json_path)
        console.print(f"JSON report: {json_path}", style="dim")
    if html_path:
        console.save_html(html_path)
    return EXIT_OK if result.passed else EXIT_PROBLEM


@cli.command("fallback")
@problem_options
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=str),
              help="Precision plan to write (default: MODEL.plan.json here); the journal, compare report "
                   "and rebuilt artefact are written beside it.")
@click.option("--strategy", type=click.Choice(["ranked", "linear", "bisect"]), default="ranked",
              show_default=True, help="ranked: minimal set; linear/bisect: Polygraphy's first-K-layers baselines.")
@click.option("--resume", is_flag=True, help="Continue the search recorded in the plan's journal.")
@click.option("--check", "check_command", metavar="CMD",
              help="Pass criterion instead of tolerance: a shell command; {outputs} becomes an .npz of the "
                   "engine outputs ({reference}: of the FP32 ones); exit 0 = pass.")
def fallback_command(out_path: str | None, strategy: str, resume: bool, check_command: str | None,
                     **problem_args: Any) -> int:
    """Find the fewest layers to keep in higher precision so the outputs pass; save the plan."""
    from pathlib import Path

    from trtdebug.core.criterion import CheckCommand
    from trtdebug.workflows.fallback import progress_printer, render_fallback, run_fallback
    from trtdebug.workflows.problem import open_session

    check = CheckCommand(check_command) if check_command is not None else None
    session = open_session(**problem_args)
    out = Path(out_path or f"{Path(problem_args['model']).stem}.plan.json")
    progress = progress_printer(Console(stderr=True, highlight=False))
    outcome = run_fallback(session, out, strategy, resume, check, progress)
    render_fallback(outcome, console)
    return EXIT_OK if outcome.found else EXIT_PROBLEM


@cli.command("build")
@click.argument("model", type=click.Path(path_type=str))
@click.option("--plan", "plan_path", type=click.Path(path_type=str), required=True,
              help="Precision plan (from `trtdebug fallback`).")
@click.option("--bans", "bans_path", type=click.Path(path_type=str), help="Tactic ban list to build with.")
@click.option("--engine", "engine_name", type=click.Choice(["emulator", "tensorrt", "tensorrt-rtx"]),
              default="emulator", show_default=True, help="Engine that builds a non-ONNX --out.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=str), required=True,
              help="NAME.onnx: the mixed-precision ONNX model; any other name: the serialized engine.")
def build_command(model: str, plan_path: str, bans_path: str | None, engine_name: str, out_path: str) -> int:
    """Apply a precision plan: write the mixed-precision ONNX model or the built engine."""
    from trtdebug.workflows.fallback import build_artifact

    console.print(f"wrote {build_artifact(model, plan_path, bans_path, engine_name, out_path)}")
    return EXIT_OK


@cli.command("tactics")
@problem_options
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write the verified ban list here (JSON; use it with --bans).")
@click.option("--builds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Builds to record and diff: repeated builds can pick different tactics.")
def tactics_command(out_path: str | None, builds: int, **problem_args: Any) -> int:
    """Find the tactics (kernels) that make layers wrong and write a verified ban list."""
    from trtdebug.cli.render.tactics import render_tactics
    from trtdebug.workflows.problem import open_session
    from trtdebug.workflows.tactics import find_tactic_bans

    session = open_session(**problem_args)
    if out_path:
        _check_writable(out_path)  # before the search, which can take many builds
    with console.status("searching tactics") as status:
        search = find_tactic_bans(session.problem, session.engine, session.plan, session.bans, builds,
                                  progress=lambda step: status.update(step))
    render_tactics(search, console)
    if out_path:
        _save_output(search.bans.save, out_path)
        console.print(f"Ban list ({len(search.bans)} ban(s)): {out_path}; build with --bans {out_path}")
    return EXIT_OK if search.passed else EXIT_PROBLEM


@cli.command("selfcheck")
@click.option("--flavor", "flavors", multiple=True, type=click.Choice(["tensorrt", "tensorrt-rtx"]),
              help="Check only this TensorRT flavor (repeatable; default: both).")
def selfcheck_command(flavors: tuple[str, ...]) -> int:
    """Build (and, with a GPU, run) a tiny model through every path the installed TensorRT offers."""
    from trtdebug.cli.render.selfcheck import render_selfcheck
    from trtdebug.engines.tensorrt.selfcheck import run_selfcheck, selfcheck_exit_code

    chosen = flavors or ("tensorrt", "tensorrt-rtx")
    checks = run_selfcheck(chosen)
    render_selfcheck(checks, console)
    return selfcheck_exit_code(checks, chosen)


def _check_writable(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UserError(f"cannot write {path}: folder {folder} does not exist or is not writable")


def _save_output(save: Callable[[str], None], path: str) -> None:
    """Write an output file; a path that cannot be written is bad input, not a crash."""
    try:
        save(path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def main(argv: list[str] | None = None) -> None:
    """Entry point: turns every failure into a one-line message and an exit code."""
    try:
        code = cli.main(args=argv, prog_name="trtdebug", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.UsageError as exc:  # one line, like every other bad input
        command = exc.ctx.command_path if exc.ctx else "trtdebug"
        click.echo(f"trtdebug: error: {exc.format_message()} (see '{command} --help')", err=True)
        code = EXIT_USAGE
    except click.ClickException as exc:
        click.echo(f"trtdebug: error: {exc.format_message()}", err=True)
        code = EXIT_USAGE
    except (click.Abort, KeyboardInterrupt) as exc:
        # click turns Ctrl-C into Abort; a KeyboardInterrupt that says how to resume is its cause.
        click.echo(f"trtdebug: {str(exc) or str(exc.__cause__ or '') or 'interrupted'}", err=True)
        code = EXIT_INTERRUPTED
    except UserError as exc:
        click.echo(f"trtdebug: error: {exc}", err=True)
        code = EXIT_USAGE
    except Exception as exc:  # a bug of ours: still one line, with a way to get the traceback
        if os.environ.get("TRTDEBUG_TRACEBACK"):
            raise
        click.echo(f"trtdebug: internal error: {type(exc).__name__}: {exc} "
                   "(set TRTDEBUG_TRACEBACK=1 for the traceback and report it)", err=True)
        code = 3
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()
