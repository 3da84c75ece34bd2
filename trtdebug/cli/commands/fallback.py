"""`trtdebug fallback`: the fewest layers to keep in higher precision; plan, artefacts, report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from trtdebug.cli import console
from trtdebug.cli.options import problem_options, problem_spec, verbose_option
from trtdebug.cli.progress import quiet_option
from trtdebug.core.search.strategies import (
    BUDGET_HEADROOM,
    DEFAULT_BUDGET_MIN_KEPT,
    DEFAULT_INPUT_SEEDS,
    DEFAULT_STRATEGY,
    STRATEGIES,
)
from trtdebug.errors import EXIT_BUDGET, EXIT_OK, EXIT_PROBLEM


@click.command("fallback")
@verbose_option
@problem_options(several_inputs=True)
@click.option("--input-seeds", type=click.IntRange(min=1), default=DEFAULT_INPUT_SEEDS, show_default=True,
              help="Without --inputs: judge every plan on inputs generated at this many seeds (--seed, --seed + 1, "
                   "...); a plan is kept only when it passes on all of them.")
@click.option("--max-evaluations", type=click.IntRange(min=1), metavar="N",
              help="Stop after N evaluations (over every run of the journal) and write the smallest passing plan "
                   f"found; exit 5 [default: {BUDGET_HEADROOM:g}x the documented bound for a set of "
                   f"max({DEFAULT_BUDGET_MIN_KEPT}, N/16) of the N candidates].")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=str),
              help="Precision plan to write (default: MODEL.plan.json here); the journal, compare report "
                   "and rebuilt artefact are written beside it.")
@click.option("--strategy", type=click.Choice(list(STRATEGIES)), default=DEFAULT_STRATEGY,
              show_default=True, help="ranked: minimal set; linear/bisect: Polygraphy's first-K-layers baselines.")
@click.option("--resume", is_flag=True, help="Continue the search recorded in the plan's journal.")
@click.option("--check", "check_command", metavar="CMD",
              help="Pass criterion instead of tolerance: a shell command; {outputs} becomes an .npz of the "
                   "engine outputs ({reference}: of the FP32 ones); exit 0 = pass.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write a self-contained HTML report: kept nodes on the error plot, the search's progression.")
@click.option("--jobs", default="1", show_default=True, metavar="N|ray",
              help="Candidates evaluated at once: N worker processes (one per GPU where several are visible), "
                   "or 'ray' for one Ray task per candidate on a cluster. The plan is the same as with 1.")
@click.option("--ray-address", metavar="ADDRESS",
              help="Ray cluster to submit evaluations to (implies --jobs ray unless --jobs N sets the count).")
@quiet_option
def fallback_command(out_path: str | None, strategy: str, resume: bool, check_command: str | None,
                     html_path: str | None, jobs: str, ray_address: str | None, quiet: bool, input_seeds: int,
                     max_evaluations: int | None, inputs_path: tuple[str, ...], **problem_args: Any) -> int:
    """Find the fewest layers to keep in higher precision so the outputs pass; save the plan."""
    from trtdebug.cli.interrupt import run_interruptible
    from trtdebug.cli.progress import progress_for, stop_display
    from trtdebug.cli.render.fallback import render_fallback
    from trtdebug.core.search.user_check import CheckCommand
    from trtdebug.workflows.fallback import FallbackOutcome, output_paths, run_fallback

    check = CheckCommand(check_command) if check_command is not None else None
    out = Path(out_path or f"{Path(problem_args['model']).stem}.plan.json")
    if jobs != "ray" and not (jobs.isdigit() and int(jobs) >= 1):
        raise click.BadParameter(f"{jobs!r} is neither a positive count nor 'ray'", param_hint="--jobs")
    if ray_address is not None:  # a malformed address is refused before the model is loaded
        from trtdebug.workflows.parallel import ray_endpoint

        ray_endpoint(ray_address)
    spec = problem_spec(**problem_args)  # the --inputs files go to run_fallback, every one an input set
    progress = progress_for(console.stderr, quiet)

    def work() -> FallbackOutcome:
        return run_fallback(spec, out, strategy=strategy, resume=resume, check=check,
                            jobs=jobs if jobs == "ray" else int(jobs), ray_address=ray_address, progress=progress,
                            other_outputs={"--html": html_path}, inputs=inputs_path, input_seeds=input_seeds,
                            max_evaluations=max_evaluations)

    def interrupted() -> str:
        journal = output_paths(out)["journal"]
        if not journal.is_file():
            return "interrupted before the search started; nothing was written"
        return f"interrupted; the journal {journal} keeps every finished build: rerun with --resume to continue"

    outcome = run_interruptible(work, interrupted, before_exit=lambda: stop_display(progress))
    render_fallback(outcome, console.stdout, resume_command(outcome))
    if html_path:
        from trtdebug.cli.render.html import write_fallback_html

        write_fallback_html(outcome, html_path)
        console.stdout.print(f"HTML report: {html_path}", style="dim")
    if outcome.budget_exhausted:
        return EXIT_BUDGET
    return EXIT_OK if outcome.found else EXIT_PROBLEM


def resume_command(outcome: Any) -> str:
    """This command line again, with --resume and a budget that lets the search go on."""
    args = list(sys.argv[1:])
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--max-evaluations":
            skip = True
            continue
        if arg == "--resume" or arg.startswith("--max-evaluations="):
            continue
        kept.append(arg)
    budget = outcome.search.evaluations + outcome.default_max_evaluations
    return shlex.join(["trtdebug", *kept, "--resume", "--max-evaluations", str(budget)])
