"""`trtdebug tactics`: tactics (kernels) that make layers wrong, and a verified ban list."""

from __future__ import annotations

from typing import Any

import click

from trtdebug.cli import console
from trtdebug.cli.options import problem_options, problem_spec
from trtdebug.errors import EXIT_OK, EXIT_PROBLEM


@click.command("tactics")
@problem_options
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write the verified ban list here (JSON; use it with --bans).")
@click.option("--builds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Builds to record and diff: repeated builds can pick different tactics.")
def tactics_command(out_path: str | None, builds: int, **problem_args: Any) -> int:
    """Find the tactics (kernels) that make layers wrong and write a verified ban list."""
    from trtdebug.cli.progress import LineProgress
    from trtdebug.cli.render.tactics import render_tactics
    from trtdebug.workflows.problem import prepare
    from trtdebug.workflows.tactics import find_tactic_bans

    case = prepare(problem_spec(**problem_args), outputs={"--out": out_path})
    search = find_tactic_bans(case.problem, case.engine, case.plan, case.bans, builds,
                              progress=LineProgress(console.stderr))
    render_tactics(search, console.stdout)
    if out_path:
        search.bans.save(out_path)
        console.stdout.print(f"Ban list ({len(search.bans)} ban(s)): {out_path}; build with --bans {out_path}")
    return EXIT_OK if search.passed else EXIT_PROBLEM
