"""The `trtdebug` command group and its entry point: every failure becomes one line and an exit
code (trtdebug.errors lists them)."""

from __future__ import annotations

import os
import sys

import click

from trtdebug import __version__, logs
from trtdebug.cli import console
from trtdebug.cli.commands.build import build_command
from trtdebug.cli.commands.compare import compare_command
from trtdebug.cli.commands.fallback import fallback_command
from trtdebug.cli.commands.inspect import inspect_command
from trtdebug.cli.commands.quantize import quantize_command
from trtdebug.cli.commands.selfcheck import selfcheck_command
from trtdebug.cli.commands.tactics import tactics_command
from trtdebug.errors import (
    EXIT_ENGINE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_USAGE,
    EngineError,
    UserError,
    environment_fault,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog="Exit codes: 0 pass, 1 accuracy problem found, 2 bad usage or input, 3 internal error "
                    "(please report it), 4 engine or GPU runtime failure, 5 fallback stopped at its evaluation "
                    "budget (plan not shown minimal), 130 interrupted.")
@click.version_option(__version__, prog_name="trtdebug")
@click.option("--verbose", "-v", is_flag=True,
              help="Show the log lines and warnings of onnxruntime, Polygraphy, TensorRT and numpy.")
def cli(verbose: bool) -> None:
    """Find where a reduced-precision TensorRT engine goes wrong, and fix it."""
    logs.set_verbose(verbose)


for command in (compare_command, fallback_command, tactics_command, build_command, quantize_command,
                selfcheck_command, inspect_command):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: turns every failure into a one-line message and an exit code."""
    console.protect_streams()
    console.show_notes()
    logs.set_verbose(False)  # until the options say otherwise: quiet from the first import on
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
    except EngineError as exc:
        click.echo(f"trtdebug: engine failure: {exc}", err=True)
        code = EXIT_ENGINE
    except Exception as exc:  # a bug of ours: still one line, with a way to get the traceback
        if os.environ.get("TRTDEBUG_TRACEBACK"):
            raise
        fault = environment_fault(exc)
        if fault:  # a full disk or a forbidden folder is the machine's, not a bug
            click.echo(f"trtdebug: error: {fault}", err=True)
            sys.exit(EXIT_USAGE)
        click.echo(f"trtdebug: internal error: {type(exc).__name__}: {exc} "
                   "(please report it; TRTDEBUG_TRACEBACK=1 shows the traceback)", err=True)
        code = EXIT_INTERNAL
    sys.stdout.flush()  # a closed pipe is dropped here, not reported by the interpreter at exit
    failure = console.stdout_failure()
    if failure is not None and code in (EXIT_OK, EXIT_PROBLEM):  # the verdict never reached the user
        click.echo(f"trtdebug: error: cannot write the results to standard output: "
                   f"{failure.strerror or failure} (redirect them to a place with room)", err=True)
        code = EXIT_USAGE
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()
