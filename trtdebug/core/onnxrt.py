"""onnxruntime plumbing shared by the reference run and the emulator: sessions whose outputs are
any chosen set of intermediate tensors, with onnxruntime's errors turned into one-line messages."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import onnxruntime as ort

from trtdebug.errors import UserError

# onnxruntime logs kernel failures to stderr on its own; trtdebug reports them as one line instead.
ort.set_default_logger_severity(3)

LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
}


def with_outputs(proto: onnx.ModelProto, tensors: Iterable[str],
                 types: Mapping[str, int] | None = None) -> onnx.ModelProto:
    """A copy of the model whose graph outputs are its own outputs plus `tensors`."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    present = {o.name for o in exposed.graph.output}
    types = types or {}
    for name in tensors:
        if name in present:
            continue
        present.add(name)
        vi = exposed.graph.output.add()
        vi.name = name
        if types.get(name):
            vi.type.tensor_type.elem_type = types[name]
    return exposed


def session(proto: onnx.ModelProto, level: str = "disable", threads: int = 0,
            optimized_path: str | None = None, arena: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = arena  # off: a session kept for reuse does not hold its peak memory
    options.graph_optimization_level = LEVELS[level]
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    try:
        return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        newest_ir = _max_ir_version(str(exc))
        if newest_ir is None or proto.ir_version <= newest_ir:
            raise UserError(f"onnxruntime cannot load the model: {_first_line(exc)}") from None
    # A newer onnx package stamps an IR version onnxruntime does not know yet; the graph itself
    # rarely uses anything new, so retry with the newest IR version onnxruntime accepts.
    downgraded = onnx.ModelProto()
    downgraded.CopyFrom(proto)
    downgraded.ir_version = newest_ir
    return session(downgraded, level, threads, optimized_path, arena)


def _max_ir_version(message: str) -> int | None:
    match = re.search(r"max supported IR version: (\d+)", message)
    return int(match[1]) if match else None


def run(sess: ort.InferenceSession, feeds: Mapping[str, np.ndarray],
        outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    names = outputs or [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    try:
        values = sess.run(names, {k: v for k, v in feeds.items() if k in wanted})
    except Exception as exc:
        raise UserError(f"onnxruntime failed to run the model: {_first_line(exc)}") from None
    return dict(zip(names, (np.asarray(v) for v in values), strict=True))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
