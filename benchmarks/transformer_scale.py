"""compare and fallback on generated transformers, against one exposed FP32 run (run by hand, not in CI).

    python -m benchmarks.transformer_scale [--layers 12 --d-model 768 --seq 256] [--billion] [--skip-fallback]
    python -m benchmarks.transformer_scale --evaluations [--layers 4 --d-model 256 --seq 64]

Models (fixtures.transformer_models): the LLaMA-style decoder with a passing mask (-1e4) and with HF's
finfo(float32).min mask (NaN in FP16: compare fails, fallback searches), the encoder with a padding
mask, and with --billion the 1.1 B decoder (22 layers, d 2048, 4.5 GB of external weights: needs about
17 GiB free; `free -g` first). Every measurement is a fresh process: time is its wall time, memory its
peak resident set (the child's ru_maxrss). Printed: seconds and MiB, and the ratios to one exposed FP32
run of the same model (onnxruntime with every tensor exposed, the reference alone).
Targets (issue): compare <= 1.5x memory and <= 2.5x time; fallback <= 2x memory.
--evaluations: the fallback row alone, in this process: what one evaluation of a plan costs (build, run,
judge: workflows.evaluate.evaluate_build) built per plan and on the emulator's switched graph, against one
run of an emulated build; target <= 1.3x one emulated run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from fixtures.transformer_models import BENCHMARK, BILLION, FEED_RANGES, TransformerConfig, save

RANGES = [arg for name, (low, high) in FEED_RANGES.items() for arg in ("--input-range", f"{name}:{low:g},{high:g}")]
EXPOSED = """
import sys
from trtdebug.core.model.feeds import generate_feeds, resolve_shapes
from trtdebug.core.model.graph import Model
from trtdebug.core.reference.fp32_run import Reference
model = Model.load(sys.argv[1])
feeds = generate_feeds(model, resolve_shapes(model, {}), {"x": (-1.0, 1.0), "attention_mask": (1.0, 1.0)})
Reference(model).run(feeds)
"""


def measure(command: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak resident MiB and exit code of `command` in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode not in (0, 1):
        print(f"  ({' '.join(command[2:4])} exited {child.returncode}: "
              f"{(child.stderr.read() if child.stderr else b'').decode().strip().splitlines()[-1:]})", flush=True)
    return seconds, usage.ru_maxrss / 1024, child.returncode


def row(label: str, model: Path, folder: Path, fallback: bool) -> None:
    exposed = measure([sys.executable, "-c", EXPOSED, str(model)])
    print(f"{label}: one exposed FP32 run {exposed[0]:.1f} s, {exposed[1]:.0f} MiB", flush=True)
    runs = [("compare", ["compare", str(model), *RANGES, "--json", str(folder / f"{model.stem}.json")])]
    if fallback:
        runs.append(("fallback", ["fallback", str(model), *RANGES, "--out", str(folder / f"{model.stem}.plan.json")]))
    for name, args in runs:
        seconds, mib, code = measure([sys.executable, "-m", "trtdebug", *args])
        builds = ""
        if name == "fallback" and code == 0:
            plan = json.loads((folder / f"{model.stem}.plan.json").read_text())
            builds = f", plan keeps {len(plan.get('nodes', {}))} node(s) in higher precision"
        print(f"  {name:<8} {seconds:7.1f} s {mib:7.0f} MiB | time {seconds / exposed[0]:5.2f}x, "
              f"memory {mib / exposed[1]:5.2f}x (exit {code}{builds})", flush=True)


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
    parser.add_argument("--billion", action="store_true", help="also the 1.1 B decoder (about 17 GiB)")
    parser.add_argument("--skip-fallback", action="store_true")
    parser.add_argument("--evaluations", action="store_true", help="only the fallback row: seconds per evaluation")
    args = parser.parse_args()
    config = TransformerConfig(layers=args.layers, d_model=args.d_model, heads=args.heads, ffn=args.ffn, seq=args.seq)
    if args.evaluations:
        with tempfile.TemporaryDirectory(prefix="trtdebug-scale-") as name:
            evaluations(config, Path(name))
        return
    print(f"decoder/encoder: {config.layers} layers, d {config.d_model}, {config.parameters / 1e6:.0f} M parameters, "
          f"1x{config.seq} tokens; time: wall; memory: peak resident set", flush=True)
    with tempfile.TemporaryDirectory(prefix="trtdebug-scale-") as name:
        folder = Path(name)
        cases = [("decoder, -1e4 mask (passes)", replace(config, mask_value="1e4"), False),
                 ("decoder, finfo.min mask (NaN in FP16)", replace(config, mask_value="finfo"), False),
                 ("encoder, padding mask", replace(config, causal=False), False)]
        if args.billion:
            cases.append(("1.1 B decoder, external data", BILLION, True))
        for i, (label, case, external) in enumerate(cases):
            model = save(case, folder / f"model{i}.onnx", external=external)
            row(label, model, folder, fallback=not args.skip_fallback and case.mask_value == "finfo")


if __name__ == "__main__":
    main()
