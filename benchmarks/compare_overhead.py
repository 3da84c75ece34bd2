"""Overhead of `compare` over the model runs it needs: time and peak memory, on generated graphs of
100, 1,000 and 10,000 nodes and on real models from PyPI (run by hand, not in CI).

    python -m benchmarks.compare_overhead [--repeat 3] [--models silero det rec chain100 ...]

Every measurement runs in a fresh process (peak memory is that process's peak resident set):

- exposed: one onnxruntime FP32 run with every intermediate tensor exposed (the reference alone);
- runs: the model runs compare needs: that reference run, the emulator build and run, the local-error
  run of the layers compare runs again alone (those writing tensors out of tolerance), and the runs
  with tensors replaced by their reference values that measure what explains a failure (a compare run
  first tells which: its `local_tensors` and `substitutions`);
- compare: compare end to end (load, feeds, reference, build, run, local error, metrics, report).

Printed ratios: compare / runs (time; target <= 1.15 on Silero VAD, flat with size), with the quartiles
of each compare over the runs measured beside it (a single process on a shared VM moves by up to 30%:
take --repeat 21 for a ratio to two digits), and compare / exposed (time, target <= 3; peak memory,
target <= 1.5 on the detector at batch 4, 640x640). The kinds run interleaved, their order turning
each repeat.

    python -m benchmarks.compare_overhead --memory [--budget 2GiB ...] [--before /path/to/older/checkout]

measures just those two targets in one run: the detector at 4x3x640x640 (DETECTOR_RANGES), one exposed
FP32 run, then compare (default budget, then each --budget), each in a fresh process, and prints compare's
time and peak memory divided by the exposed run's. With --before, compare is also measured with the
trtdebug of another checkout (e.g. the main branch), in the same run for a fair before/after.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

Shapes = dict[str, list[int]]
Ranges = dict[str, list[float]]
# name -> (model source, input shapes, input ranges)
CASES: dict[str, tuple[str, Shapes, Ranges]] = {
    "chain100": ("chain:100", {}, {}),
    "chain1000": ("chain:1000", {}, {}),
    "chain10000": ("chain:10000", {}, {}),
    "silero": ("silero", {"input": [64, 512], "state": [2, 64, 128]}, {"sr": [16000, 16000]}),  # 64 x 32 ms
    "rec": ("rec", {"input1": [1, 1, 64, 1024]}, {"input1": [-1, 1]}),  # ddddocr conv + BiLSTM recognizer
    "det": ("det", {"x": [4, 3, 640, 640]}, {"x": [-1, 1]}),  # PP-OCRv4 DBNet text detector
}


def model_path(source: str, folder: Path) -> str:
    from fixtures import real_models

    if source.startswith("chain:"):
        from fixtures.chain_models import planted_chain

        n = int(source.split(":")[1])
        path = folder / f"chain{n}.onnx"
        if not path.is_file():
            planted_chain(n, 3, seed=n).save(path)
        return str(path)
    return str({"silero": real_models.silero_vad, "det": real_models.text_detector,
                "rec": real_models.text_recognizer}[source]())


def _problem(path: str, shapes: Shapes, ranges: Ranges):  # type: ignore[no-untyped-def]
    from trtdebug.core.model.feeds import generate_feeds, resolve_shapes
    from trtdebug.core.model.graph import Model

    model = Model.load(path)
    feeds = generate_feeds(model, resolve_shapes(model, {k: tuple(v) for k, v in shapes.items()}),
                           {k: (float(v[0]), float(v[1])) for k, v in ranges.items()})
    return model, feeds


def measure_once(kind: str, path: str, shapes: Shapes, ranges: Ranges, budget: str = "",
                 local_tensors: list[str] | None = None,
                 substitutions: list[tuple[list[str], list[str]]] | None = None) -> dict[str, Any]:
    """In this process: one measurement of `kind`; seconds and peak RSS in MiB."""
    from rich.console import Console  # imports are not what is measured

    from trtdebug.cli.render.compare import render_compare
    from trtdebug.core.analysis.metrics import Tolerance
    from trtdebug.core.plans.precision_plan import PrecisionPlan
    from trtdebug.core.reference.fp32_run import Reference
    from trtdebug.engines.emulator.engine import EmulatorEngine
    from trtdebug.workflows.compare import run_compare
    from trtdebug.workflows.problem import Problem

    start = time.perf_counter()
    if kind == "exposed":
        model, feeds = _problem(path, shapes, ranges)
        Reference(model).run(feeds)
    elif kind == "runs":
        model, feeds = _problem(path, shapes, ranges)
        reference = Reference(model).run(feeds)
        built = EmulatorEngine().build(model, PrecisionPlan("fp16"))
        built.run(feeds)
        built.run_local(reference, local_tensors or [])
        for replaced, switchable in substitutions or []:
            built.run_substituted(feeds, {t: reference[t] for t in replaced}, switchable)
    else:
        trials = _record_substitutions()
        model, feeds = _problem(path, shapes, ranges)
        if budget:  # keyword only where given: an older checkout's Problem.prepare has no budget
            from trtdebug.core.system.memory import parse_size

            problem = Problem.prepare(model, feeds, Tolerance.for_precision("fp16"), memory_budget=parse_size(budget))
        else:
            problem = Problem.prepare(model, feeds, Tolerance.for_precision("fp16"))
        result = run_compare(problem, EmulatorEngine(), PrecisionPlan("fp16"))
        # as the CLI's stdout prints
        render_compare(result, Console(file=io.StringIO(), width=160, highlight=False, emoji=False))
        result.to_json()
    seconds = time.perf_counter() - start
    notes: dict[str, Any] = {}
    if kind == "compare":
        notes["local_tensors"] = [t.tensor for t in result.tensors if t.local is not None]
        notes["substitutions"] = list(trials)
    memory = result.marking.get("memory") if kind == "compare" else None
    if memory:  # an older checkout records none
        notes.update({"chunks": memory["chunks"], "reference_held": memory["reference_held"],
                      "tensor_mib": memory["tensor_bytes"] / 2**20})
    return {"seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **notes}


_TRIALS: list[tuple[list[str], list[str]]] = []


def _record_substitutions() -> list[tuple[list[str], list[str]]]:
    """The emulator's substituted runs from now on, as (replaced tensors, switchable tensors)."""
    from trtdebug.engines.emulator.built import EmulatorBuilt

    _TRIALS.clear()
    original = EmulatorBuilt.run_substituted
    if not getattr(original, "recording", False):
        def recording(self, feeds, replacements, switchable=()):  # type: ignore[no-untyped-def]
            _TRIALS.append((sorted(replacements), list(switchable)))
            # an older checkout's run_substituted takes no switchable tensors
            return original(self, feeds, replacements, *((switchable,) if switchable else ()))

        recording.recording = True  # type: ignore[attr-defined]
        EmulatorBuilt.run_substituted = recording  # type: ignore[method-assign]
    return _TRIALS


def measure(kind: str, path: str, shapes: Shapes, ranges: Ranges, budget: str = "",
            checkout: str | None = None, local_tensors: list[str] | None = None,
            substitutions: list[tuple[list[str], list[str]]] | None = None) -> dict[str, Any]:
    """One measurement in a fresh process; `checkout`: the trtdebug imported there (default: this one)."""
    import os

    env = dict(os.environ)
    if checkout:
        env["PYTHONPATH"] = os.pathsep.join([checkout, str(Path(__file__).resolve().parent.parent)])
    extra = ["--one-budget", budget] if budget else []
    if local_tensors is not None:
        extra += ["--one-local", json.dumps(local_tensors)]
    if substitutions is not None:
        extra += ["--one-substitutions", json.dumps(substitutions)]
    run = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", kind, path,
                          json.dumps(shapes), json.dumps(ranges), *extra], capture_output=True, text=True,
                         check=True, env=env)
    return json.loads(run.stdout.strip().splitlines()[-1])


def memory_mode(budgets: list[str], before: str | None, repeat: int) -> None:
    """compare / one exposed FP32 run on the detector at 4x3x640x640: time and peak memory, each the
    median of `repeat` fresh processes, the kinds interleaved (this VM's speed drifts within minutes)."""
    from fixtures.real_models import DETECTOR_RANGES, text_detector

    path = str(text_detector())
    shapes: Shapes = {"x": [4, 3, 640, 640]}
    ranges: Ranges = {k: list(v) for k, v in DETECTOR_RANGES.items()}
    rows: list[tuple[str, str, str | None]] = [("one exposed FP32 run", "exposed", None)]
    if before:
        rows.append((f"compare, before ({Path(before).name})", "", before))
    rows.append(("compare, default budget", "", None))
    rows += [(f"compare, --memory-budget {b}", b, None) for b in budgets]
    samples: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in rows}
    for turn in range(repeat):
        for label, budget, checkout in rows[turn % len(rows):] + rows[:turn % len(rows)]:  # each row in turn first
            kind = "exposed" if budget == "exposed" else "compare"
            samples[label].append(measure(kind, path, shapes, ranges, "" if kind == "exposed" else budget, checkout))
    median = {label: {key: statistics.median(s[key] for s in runs) if isinstance(runs[0][key], (int, float))
                      else runs[0][key] for key in runs[0]} for label, runs in samples.items()}
    exposed = median["one exposed FP32 run"]
    print(f"PP-OCRv4 detector, 4x3x640x640; median of {repeat} fresh processes per row; peak = peak resident set")
    print(f"{'run':<34} {'time':>8} {'peak':>9} | {'t/exp':>6} {'m/exp':>6} | chunks, reference")
    print(f"{'one exposed FP32 run':<34} {exposed['seconds']:7.2f}s {exposed['peak_mib']:7.0f}M |")
    for label, _, _ in rows[1:]:
        m = median[label]
        detail = (f"{m['chunks']:.0f} chunk(s), reference {'held' if m['reference_held'] else 'streamed'}, "
                  f"tensors {m['tensor_mib'] / 1024:.2f} GiB") if "chunks" in m else "all at once"
        print(f"{label:<34} {m['seconds']:7.2f}s {m['peak_mib']:7.0f}M | {m['seconds'] / exposed['seconds']:6.2f} "
              f"{m['peak_mib'] / exposed['peak_mib']:6.2f} | {detail}", flush=True)
    print("targets: time <= 3x the exposed run, peak memory <= 1.5x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--memory", action="store_true",
                        help="compare / one exposed FP32 run on the detector at 4x3x640x640 (time, peak memory)")
    parser.add_argument("--budget", nargs="*", default=[], help="with --memory: also these --memory-budget sizes")
    parser.add_argument("--before", help="with --memory: also compare with the trtdebug of this checkout")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--one-budget", default="", help=argparse.SUPPRESS)
    parser.add_argument("--one-local", default="[]", help=argparse.SUPPRESS)
    parser.add_argument("--one-substitutions", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        kind, path, shapes, ranges = args.one
        print(json.dumps(measure_once(kind, path, json.loads(shapes), json.loads(ranges), args.one_budget,
                                      json.loads(args.one_local), json.loads(args.one_substitutions))))
        return
    if args.memory:
        memory_mode(args.budget, args.before, args.repeat)
        return
    print("time: median of --repeat fresh processes, the kinds interleaved in turning order; memory: peak resident "
          "set (MiB);")
    print("spread: quartiles of compare / runs over the repeats (each compare over the runs measured beside it)")
    print(f"{'model':<11} {'nodes':>6} | {'exposed':>14} | {'runs':>14} | {'compare':>14} | "
          f"{'t/runs':>6} {'spread':>11} {'t/exp':>6} {'m/runs':>6} {'m/exp':>6}")
    with tempfile.TemporaryDirectory(prefix="trtdebug-bench-") as folder:
        for name in args.models:
            source, shapes, ranges = CASES[name]
            path = model_path(source, Path(folder))
            from trtdebug.core.model.graph import Model

            nodes = len(Model.load(path).nodes)
            results = {}
            first = measure("compare", path, shapes, ranges)  # which runs compare needs
            kinds = ("exposed", "runs", "compare")
            samples: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
            for repeat in range(args.repeat):  # interleaved: this VM's speed drifts within minutes
                for kind in kinds[repeat % 3:] + kinds[:repeat % 3]:  # each kind first, second and last in turn
                    samples[kind].append(measure(kind, path, shapes, ranges, local_tensors=first["local_tensors"],
                                                 substitutions=first["substitutions"]))
            for kind in kinds:
                results[kind] = (statistics.median(s["seconds"] for s in samples[kind]),
                                 statistics.median(s["peak_mib"] for s in samples[kind]))
            (te, me), (tr, mr), (tc, mc) = results["exposed"], results["runs"], results["compare"]
            paired = [c["seconds"] / r["seconds"] for c, r in zip(samples["compare"], samples["runs"], strict=True)]
            low, _, high = statistics.quantiles(paired, n=4) if len(paired) > 1 else (paired[0],) * 3
            print(f"{name:<11} {nodes:>6} | {te:6.2f}s {me:5.0f}M | {tr:6.2f}s {mr:5.0f}M | {tc:6.2f}s {mc:5.0f}M | "
                  f"{tc / tr:6.2f} {low:5.2f}-{high:<5.2f} {tc / te:6.2f} {mc / mr:6.2f} {mc / me:6.2f}", flush=True)


if __name__ == "__main__":
    main()
