"""`trtdebug inspect`: an engine file's layers, their realized precision and fused ONNX nodes."""

from __future__ import annotations

import click

from trtdebug.cli import console
from trtdebug.cli.options import verbose_option
from trtdebug.engines.tensorrt.support import FLAVORS
from trtdebug.errors import EXIT_OK, EXIT_PROBLEM


@click.command("inspect")
@verbose_option
@click.argument("engine_file", type=click.Path(dir_okay=False, path_type=str))
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=str),
              help="The ONNX the engine was built from: layers are mapped to its nodes.")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False, path_type=str),
              help="The precision plan it was built with (needs --model): layers that ran another precision.")
@click.option("--flavor", type=click.Choice(list(FLAVORS)), default=FLAVORS[0], show_default=True,
              help="Which TensorRT deserializes the engine.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write the layers and findings as JSON here.")
def inspect_command(engine_file: str, model_path: str | None, plan_path: str | None, flavor: str,
                    json_path: str | None) -> int:
    """What an engine really runs: each layer's precision and fused nodes, against the plan (needs TensorRT)."""
    from trtdebug.cli.render.inspect import render_inspect
    from trtdebug.core.system import files
    from trtdebug.workflows.inspect import inspect_engine

    result = inspect_engine(engine_file, flavor, model_path, plan_path)
    render_inspect(result, console.stdout)
    if json_path:
        files.write_json(json_path, result.to_json())
        console.stdout.print(f"JSON report: {json_path}", style="dim")
    return EXIT_PROBLEM if result.findings else EXIT_OK
