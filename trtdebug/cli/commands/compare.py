"""`trtdebug compare`: every layer against onnxruntime FP32; where error starts and why."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from trtdebug.cli import console
from trtdebug.cli.options import problem_options, problem_spec, verbose_option
from trtdebug.cli.progress import quiet_option
from trtdebug.core.analysis.metrics import DEFAULT_LOCAL_SCOPE, LOCAL_SCOPES
from trtdebug.engines.base import COMPARE_MARKING, MARK_MODES
from trtdebug.errors import EXIT_OK, EXIT_PROBLEM

if TYPE_CHECKING:
    from trtdebug.core.analysis.metrics import CompareResult


@click.command("compare")
@verbose_option
@problem_options
@click.option("--mark", "mark_mode", type=click.Choice(list(MARK_MODES)), default=COMPARE_MARKING,
              show_default=True, help="How TensorRT exposes layer outputs (auto: unfused debug tensors on "
              "TensorRT >= 10.12, keeping every fusion; else marked outputs).")
@click.option("--chunk", "chunk_size", type=click.IntRange(min=1), help="Expose at most this many tensors per build.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="Rows in the worst-layers table.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write the full JSON report here.")
@click.option("--check", "check_command", metavar="CMD",
              help="Pass criterion instead of tolerance, as in fallback: a shell command; {outputs} becomes an .npz "
                   "of the engine outputs ({reference}: of the FP32 ones); exit 0 = pass.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write a self-contained HTML report: error plot, every tensor, culprits' value histograms.")
@click.option("--local-error", "local_scope", type=click.Choice(list(LOCAL_SCOPES)),
              default=DEFAULT_LOCAL_SCOPE, show_default=True,
              help="Which layers run again alone on the reference's inputs (emulator): those writing tensors out "
                   "of tolerance (enough to tell introduced from propagated error), or all (local SNR of every "
                   "layer in the reports; costs about one more run of the model).")
@click.option("--against", "against", type=click.Path(dir_okay=False, path_type=str), metavar="A.npz",
              help="A/B: with --engine results --results B, also compare B layer by layer with this capture A "
                   "(.npz or Polygraphy .json) and name the first layer where B departs from A beyond rounding.")
@quiet_option
def compare_command(mark_mode: str, chunk_size: int | None, top: int, json_path: str | None,
                    check_command: str | None, html_path: str | None, local_scope: str, against: str | None,
                    quiet: bool, **problem_args: Any) -> int:
    """Compare every layer of the engine against onnxruntime FP32 and say where error starts."""
    from trtdebug.artifacts.compare_report import write_compare_report
    from trtdebug.cli.interrupt import run_interruptible
    from trtdebug.cli.progress import progress_for, stop_display
    from trtdebug.cli.render.compare import render_compare
    from trtdebug.core.search.user_check import CheckCommand
    from trtdebug.engines.base import Marking
    from trtdebug.workflows.ab import require_captures, with_ab
    from trtdebug.workflows.compare import compare_case
    from trtdebug.workflows.problem import prepare

    check = CheckCommand(check_command) if check_command is not None else None
    spec = problem_spec(**problem_args)
    progress = progress_for(console.stderr, quiet)

    def work() -> CompareResult:
        if against is not None:
            require_captures(spec.results, against)
        progress.begin("loading the model and running the FP32 reference (onnxruntime)")
        case = prepare(spec, outputs={"--json": json_path, "--html": html_path})
        if check is not None:  # refused here, before any build, if it cannot run or fails the reference
            check.require_reference_passes(case.problem.reference_outputs())
        progress.end()
        result = compare_case(case, Marking(mode=mark_mode, chunk_size=chunk_size),  # type: ignore[arg-type]
                              progress=progress, check=check, local_scope=local_scope,
                              histograms=html_path is not None)
        return result if against is None else with_ab(result, case, spec.results, against, progress)

    result = run_interruptible(work, before_exit=lambda: stop_display(progress))
    out = console.stdout
    render_compare(result, out, top=top)
    if json_path:
        write_compare_report(result, json_path)
        out.print(f"JSON report: {json_path}", style="dim")
    if html_path:
        from trtdebug.cli.render.html import write_compare_html

        write_compare_html(result, html_path)
        out.print(f"HTML report: {html_path}", style="dim")
    return EXIT_OK if result.passed else EXIT_PROBLEM
