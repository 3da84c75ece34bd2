"""`trtdebug tactics`: tactics (kernels) that make layers wrong, and a verified ban list."""

from __future__ import annotations

from typing import Any

import click

from trtdebug.cli import console
from trtdebug.cli.options import problem_options, problem_spec, verbose_option
from trtdebug.cli.progress import quiet_option
from trtdebug.errors import EXIT_OK, EXIT_PROBLEM


@click.command("tactics")
@verbose_option
@problem_options
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write the verified ban list here (JSON; use it with --bans).")
@click.option("--builds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Builds to record and diff: repeated builds can pick different tactics.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write a self-contained HTML report: the error plot, the bans with their evidence.")
@quiet_option
def tactics_command(out_path: str | None, builds: int, html_path: str | None, quiet: bool,
                    **problem_args: Any) -> int:
    """Find the tactics (kernels) that make layers wrong and write a verified ban list."""
    from trtdebug.cli.interrupt import run_interruptible
    from trtdebug.cli.progress import progress_for, stop_display
    from trtdebug.cli.render.tactics import render_tactics
    from trtdebug.workflows.problem import prepare
    from trtdebug.workflows.tactics import TacticSearch, find_tactic_bans

    spec = problem_spec(**problem_args)
    progress = progress_for(console.stderr, quiet)

    def work() -> TacticSearch:
        progress.begin("loading the model and running the FP32 reference (onnxruntime)")
        case = prepare(spec, outputs={"--out": out_path, "--html": html_path})
        progress.end()
        return find_tactic_bans(case.problem, case.engine, case.plan, case.bans, builds, progress=progress)

    search = run_interruptible(work, before_exit=lambda: stop_display(progress))
    render_tactics(search, console.stdout)
    if out_path:
        search.bans.save(out_path)
        console.stdout.print(f"Ban list ({len(search.bans)} ban(s)): {out_path}; build with --bans {out_path}")
    if html_path:
        from trtdebug.cli.render.html import write_tactics_html

        write_tactics_html(search, html_path)
        console.stdout.print(f"HTML report: {html_path}", style="dim")
    return EXIT_OK if search.passed else EXIT_PROBLEM
