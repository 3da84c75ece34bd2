"""Overhead of `compare` over the model runs it needs, on a real model (Silero VAD from PyPI).

    python -m benchmarks.compare_overhead [--repeat 5]

Prints compare's wall time (load, feeds, reference, build, run, local error, metrics, report)
divided by the time of the runs alone (reference session + run, emulator build + run, local-error
run). Target: at most 1.15.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

from rich.console import Console

from fixtures.real_models import silero_vad
from trtdebug.artifacts.compare_report import compare_to_json
from trtdebug.cli.render.compare import render_compare
from trtdebug.core.inputs import generate_feeds, resolve_shapes
from trtdebug.core.metrics import Tolerance
from trtdebug.core.model import Model
from trtdebug.core.precision import PrecisionPlan
from trtdebug.core.reference import Reference
from trtdebug.engines.emulator.engine import EmulatorEngine
from trtdebug.workflows.compare import run_compare
from trtdebug.workflows.problem import Problem

SHAPES = {"input": (64, 512), "state": (2, 64, 128)}  # a batch of 64 chunks of 32 ms audio
RANGES = {"sr": (16000.0, 16000.0)}


def _feeds(model: Model) -> dict:
    return generate_feeds(model, resolve_shapes(model, SHAPES), RANGES)


def time_runs_only(path: str) -> float:
    model = Model.load(path)
    feeds = _feeds(model)
    start = time.perf_counter()
    reference = Reference(model).run(feeds)
    built = EmulatorEngine().build(model, PrecisionPlan("fp16"))
    built.run(feeds)
    built.run_local(reference)
    return time.perf_counter() - start


def time_compare(path: str) -> float:
    start = time.perf_counter()
    model = Model.load(path)
    problem = Problem.prepare(model, _feeds(model), Tolerance.for_precision("fp16"))
    result = run_compare(problem, EmulatorEngine(), PrecisionPlan("fp16"))
    render_compare(result, Console(file=io.StringIO(), width=160))
    compare_to_json(result)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    path = str(silero_vad())
    time_compare(path)  # warm caches (imports, onnxruntime kernels registry)
    runs = [time_runs_only(path) for _ in range(args.repeat)]
    totals = [time_compare(path) for _ in range(args.repeat)]
    runs_median, total_median = statistics.median(runs), statistics.median(totals)
    print(f"model: {path}")
    print(f"runs only (reference + emulator build/run + local run): {runs_median * 1000:.1f} ms (median of "
          f"{args.repeat})")
    print(f"compare end to end:                                    {total_median * 1000:.1f} ms")
    print(f"ratio: {total_median / runs_median:.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
