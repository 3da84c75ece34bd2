"""`trtdebug selfcheck`: every TensorRT path tried for real on this machine."""

from __future__ import annotations

import click

from trtdebug.cli import console
from trtdebug.cli.options import verbose_option
from trtdebug.engines.tensorrt.support import FLAVORS


@click.command("selfcheck")
@verbose_option
@click.option("--flavor", "flavors", multiple=True, type=click.Choice(list(FLAVORS)),
              help="Check only this TensorRT flavor (repeatable; default: both).")
def selfcheck_command(flavors: tuple[str, ...]) -> int:
    """Build (and, with a GPU, run) a tiny model through every path the installed TensorRT offers."""
    from trtdebug.cli.render.selfcheck import render_selfcheck
    from trtdebug.engines.tensorrt.selfcheck import selfcheck_exit_code
    from trtdebug.workflows.selfcheck import run_selfcheck

    chosen = flavors or FLAVORS
    checks = run_selfcheck(chosen)
    render_selfcheck(checks, console.stdout)
    return selfcheck_exit_code(checks, chosen)
