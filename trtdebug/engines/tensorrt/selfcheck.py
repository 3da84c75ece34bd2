"""`trtdebug selfcheck`: which TensorRT paths work on this machine, tried for real.

Builds (and, where a GPU and cuda-python are present, runs) a tiny model through every path the
installed TensorRT and TensorRT-RTX offer: weak and strong typing, each marking mode, chunked
marking, the algorithm selector and the editable timing cache. Runs are compared against
onnxruntime FP32. Nothing is claimed that did not run: a path that cannot be tried says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtdebug.core.model.graph import Model
from trtdebug.core.plans.ban_list import BanEntry, BanList
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.reference.fp32_run import run_reference
from trtdebug.engines.base import Marking
from trtdebug.errors import UserError

STATUSES = ("ok", "failed", "skipped")
TOLERANCE = 5e-2  # FP16 on values of magnitude ~1


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | failed | skipped
    detail: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, str | float]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "seconds": self.seconds}


def tiny_model() -> onnx.ModelProto:
    """input -> conv_a -> relu_a -> conv_b -> + proj(input) -> sigmoid: six small nodes."""
    rng = np.random.default_rng(0)

    def weight(name: str, shape: tuple[int, ...], scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "conv_a.w", "conv_a.b"], ["conv_a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv_a"], ["relu_a"], name="relu_a"),
        helper.make_node("Conv", ["relu_a", "conv_b.w", "conv_b.b"], ["conv_b"], name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["input", "proj.w"], ["input_proj"], name="proj"),
        helper.make_node("Add", ["conv_b", "input_proj"], ["residual"], name="residual"),
        helper.make_node("Sigmoid", ["residual"], ["output"], name="output"),
    ]
    initializers = [weight("conv_a.w", (4, 3, 3, 3), 0.3), weight("conv_a.b", (4,), 0.1),
                    weight("conv_b.w", (4, 4, 3, 3), 0.3), weight("conv_b.b", (4,), 0.1),
                    weight("proj.w", (4, 3, 1, 1), 0.5)]
    graph = helper.make_graph(nodes, "trtdebug_selfcheck",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 8, 8])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="trtdebug")
    model.ir_version = 8
    return model


def attempt(name: str, action: Callable[[], str]) -> Check:
    """One row: ok with what `action` returns, or failed with the one line of why it raised."""
    start = time.perf_counter()
    try:
        detail = action()
        status = "ok"
    except UserError as exc:
        status, detail = "failed", _first_line(str(exc))
    except Exception as exc:  # a broken path is a finding here, not a crash
        status, detail = "failed", f"{type(exc).__name__}: {_first_line(str(exc))}"
    return Check(name, status, detail, round(time.perf_counter() - start, 2))


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


class _Probe:
    """Runs one check: builds (and runs) through an engine, compares with the reference."""

    def __init__(self, model: Model, feeds: dict[str, np.ndarray], reference: dict[str, np.ndarray]):
        self.model = model
        self.feeds = feeds
        self.reference = reference

    def check(self, name: str, action: Callable[[], str]) -> Check:
        return attempt(name, action)

    def build_and_run(self, engine: Any, plan: PrecisionPlan, mark: Marking, runs: bool,
                      bans: BanList | None = None) -> tuple[Any, str]:
        built = engine.build(self.model, plan, bans, mark)
        notes = built.marking_notes
        summary = f"{len(built.layers)} engine layers ({notes.get('layer_info', '')})"
        if mark.mode == "auto":
            summary += f", observed by {notes.get('mode')}"
        if mark.mode in ("outputs", "debug"):
            summary += f", {len(notes.get('marked', []))} marked, {len(notes.get('dropped', []))} dropped"
        if not runs:
            return built, summary + "; built only (no GPU here to run it)"
        values = built.run(self.feeds)
        self._compare(values, mark)
        exposed = len([t for t in values if t in self.model.producer and t != "output"])
        return built, summary + f"; ran, final output within {TOLERANCE} of FP32, {exposed} tensors exposed"

    def _compare(self, values: dict[str, np.ndarray], mark: Marking) -> None:
        if "output" not in values:
            raise UserError("the engine did not return the model output")
        for name, value in values.items():
            if name not in self.reference:
                continue
            ref = np.asarray(self.reference[name], dtype=np.float64)
            if not np.allclose(np.asarray(value, dtype=np.float64).reshape(ref.shape), ref, atol=TOLERANCE,
                               rtol=TOLERANCE):
                raise UserError(f"tensor {name!r} differs from onnxruntime FP32 beyond {TOLERANCE}")
        if mark.mode in ("outputs", "debug") and len(values) < 2:
            raise UserError(f"--mark {mark.mode} exposed no intermediate tensor")


def run_selfcheck(flavors: Iterable[str] = ("tensorrt", "tensorrt-rtx")) -> list[Check]:
    """Every check, in order. A missing TensorRT is reported as skipped, not as a failure."""
    from trtdebug.engines.tensorrt.cuda_buffers import CudaRuntime

    checks: list[Check] = []
    try:
        devices = CudaRuntime().device_count()
        checks.append(Check("cuda-python", "ok", f"{devices} GPU(s) visible"))
    except UserError as exc:
        checks.append(Check("cuda-python", "skipped", f"{exc}; engines can be built but not run"))
    model = Model.from_proto(tiny_model())
    feeds = {"input": np.random.default_rng(1).uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)}
    probe = _Probe(model, feeds, run_reference(model, feeds))
    for flavor in flavors:
        checks.extend(_flavor_checks(flavor, probe))
    return checks


def _flavor_checks(flavor: str, probe: _Probe) -> list[Check]:
    from trtdebug.engines.tensorrt.engine import TensorRTEngine

    try:
        first = TensorRTEngine(flavor)
    except UserError as exc:
        return [Check(flavor, "skipped", str(exc))]
    features = first.features
    checks = [Check(flavor, "ok", f"{features.module_name} {features.version}")]
    runs = first.device_available()
    targets: tuple[str, ...] = ()
    if features.compute_capability:  # TensorRT-RTX: build for this GPU, or ahead of time for one
        targets = ("CURRENT",) if runs else ("SM89",)
    plan = PrecisionPlan("fp16", {"conv_b": "fp32"})
    typings = (["weak"] if features.weak_typing else []) + (["strong"] if features.strong_flag else [])
    for typing in typings:
        engine = TensorRTEngine(flavor, typing=typing, compute_capabilities=targets)
        markings = [Marking(mode) for mode in features.marking_modes()]  # type: ignore[arg-type]
        markings += [Marking("outputs", chunk_size=2), Marking("auto")]
        for marking in markings:
            label = f"{flavor}: {typing} typing, --mark {marking.mode}"
            if marking.chunk_size:
                label += f" --chunk {marking.chunk_size}"
            checks.append(probe.check(label, partial(_build_summary, probe, engine, plan, marking, runs)))
    label = f"{flavor}: inspect (realized precision from the engine inspector)"
    engine = TensorRTEngine(flavor, compute_capabilities=targets)
    checks.append(probe.check(label, partial(_inspect_check, probe, engine, flavor)) if runs else
                  Check(label, "skipped", "deserializing an engine needs a GPU"))
    for control, available in (("selector", features.algorithm_selector),
                               ("timing-cache", features.editable_timing_cache and not features.is_rtx)):
        label = f"{flavor}: tactics via {control}"
        if not available:
            why = "TensorRT-RTX does no autotuning" if features.is_rtx else f"not in {features.version}"
            checks.append(Check(label, "skipped", why))
            continue
        engine = TensorRTEngine(flavor, record_tactics=True, tactic_control=control, compute_capabilities=targets)
        checks.append(probe.check(label, partial(_tactic_check, probe, engine, runs)))
    return checks


def _inspect_check(probe: _Probe, engine: Any, flavor: str) -> str:
    """An engine file read back alone (trtdebug inspect): every compute layer must report its precision."""
    from trtdebug.engines.tensorrt.layers import DETAILED_HINT, NodeResolver, read_engine_layers, to_layer_infos

    built = engine.build(probe.model, PrecisionPlan("fp16"), None, Marking("none"))
    raw, reader = read_engine_layers(built.serialize(), flavor)
    layers = to_layer_infos(raw, NodeResolver([n.name for n in probe.model.nodes]), "engine inspector")
    typed = [la for la in layers if la.precision]
    if not typed:
        raise UserError(f"the inspector reported {len(layers)} layers but no precision: {DETAILED_HINT}")
    precisions = sorted({la.precision for la in typed})
    return f"{reader}: {len(typed)}/{len(layers)} layers report a precision ({', '.join(precisions)})"


def _build_summary(probe: _Probe, engine: Any, plan: PrecisionPlan, marking: Marking, runs: bool) -> str:
    return probe.build_and_run(engine, plan, marking, runs)[1]


def engine_kernel(layer: Any) -> str:
    """The kernel the engine itself reports for a layer (inspector / build-log TacticName)."""
    return str(layer.extra.get("kernel") or "")


def _tactic_check(probe: _Probe, engine: Any, runs: bool) -> str:
    """Record tactics, ban one layer's choice, rebuild. Proven only if the engine reports a kernel
    for that layer before and after and they differ (as NVIDIA's sampleEditableTimingCache checks):
    the same kernel, no recorded tactic, or no reported kernel is a failure."""
    plan = PrecisionPlan("fp16")
    built, _ = probe.build_and_run(engine, plan, Marking("none"), runs)
    recorded = [layer for layer in built.layers if layer.tactic and layer.extra.get("tactic_layer")]
    if not recorded:
        raise UserError("no tactic was recorded: the ban path cannot be checked")
    candidates = [layer for layer in recorded if layer.alternatives and engine_kernel(layer)]
    if not candidates:
        raise UserError(f"recorded {len(recorded)} tactics, but no layer had both alternatives and a kernel "
                        "reported by the engine: the ban cannot be proven")
    target = candidates[0]
    before = engine_kernel(target)
    ban = BanEntry(layer=str(target.extra.get("tactic_layer", target.name)), tactic=target.tactic,
                   onnx_nodes=target.onnx_nodes, cache_key=target.extra.get("cache_key"), engine=engine.name)
    rebuilt, _ = probe.build_and_run(engine, plan, Marking("none"), runs, BanList((ban,)))
    after_layer = next((la for la in rebuilt.layers if la.onnx_nodes == target.onnx_nodes), None)
    after = engine_kernel(after_layer) if after_layer is not None else ""
    if not after:
        raise UserError(f"after banning {target.tactic} of {target.name!r} the engine reports no kernel for it")
    if after == before:
        raise UserError(f"banned {target.tactic} of {target.name!r}, but the engine still uses kernel {before}")
    return f"banned {target.tactic} of {target.name!r}: engine kernel {before} -> {after}"


def environment(checks: Iterable[Check] = ()) -> dict[str, str]:
    """The header of a selfcheck report: versions and the GPU, each where it can be found."""
    import platform

    from trtdebug import __version__ as trtdebug_version

    info = {"trtdebug": str(trtdebug_version), "python": platform.python_version(), "os": platform.platform()}
    for check in checks:  # "tensorrt" / "tensorrt-rtx" rows carry "<module> <version>"
        if check.name in ("tensorrt", "tensorrt-rtx"):
            info[check.name] = check.detail if check.status == "ok" else "not installed"
    try:
        from trtdebug.engines.tensorrt.cuda_buffers import CudaRuntime

        runtime = CudaRuntime()
        info["cuda-python"] = _cuda_python_version()
        info.update(runtime.device_description(0) if runtime.device_count() else {"gpu": "none visible"})
    except Exception as exc:  # no cuda-python, no driver, no GPU: say so, never fail the report
        info.setdefault("gpu", f"unavailable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
    return info


def _cuda_python_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for package in ("cuda-bindings", "cuda-python"):
        try:
            return version(package)
        except PackageNotFoundError:
            continue
    return "unknown"


def selfcheck_exit_code(checks: Iterable[Check], flavors: Iterable[str] = ("tensorrt", "tensorrt-rtx")) -> int:
    """0: every path tried works; 1: a path failed; 2: no TensorRT of any flavor is installed."""
    checks = list(checks)
    if any(c.status == "failed" for c in checks):
        return 1
    installed = [c for c in checks if c.name in set(flavors) and c.status == "ok"]
    return 0 if installed else 2
