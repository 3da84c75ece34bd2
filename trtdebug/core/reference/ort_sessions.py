"""onnxruntime plumbing shared by the reference run and the emulator: sessions whose outputs are
any chosen set of intermediate tensors, with onnxruntime's errors turned into one-line messages."""

from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import onnxruntime as ort

from trtdebug import logs
from trtdebug.core.model import weights as shared
from trtdebug.core.model.weights import Weights, is_shared, shareable, weights_of, without_weights
from trtdebug.errors import BuildRunFailed, UserError, first_line

# onnxruntime logs kernel failures to stderr on its own; trtdebug reports them as one line instead.
ort.set_default_logger_severity(logs.onnxruntime_severity())

LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
}


def with_outputs(proto: onnx.ModelProto, tensors: Iterable[str],
                 types: Mapping[str, int] | None = None, weights: Weights | None = None) -> onnx.ModelProto:
    """A copy of the model whose graph outputs are its own outputs plus `tensors`. `weights`: the
    initializers found there are not copied, only named (`without_weights`)."""
    exposed = without_weights(proto, weights) if weights else _copy(proto)
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


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


@functools.cache
def _placeholder_folder() -> str:
    folder = tempfile.mkdtemp(prefix="trtdebug-weights-")
    open(os.path.join(folder, shared.PLACEHOLDER), "wb").close()
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _share(options: ort.SessionOptions, proto: onnx.ModelProto, weights: Weights | None, in_place: bool = True
           ) -> tuple[onnx.ModelProto, list[ort.OrtValue]]:
    """`proto` with its large weights taken from `weights` (added to `options`), and the values that
    must live as long as the session (onnxruntime reads the arrays in place). `in_place` False: the
    session copies them (its optimizers, folding constants, read initializers before any override)."""
    if weights is None:
        return proto, []
    light = proto if all(is_shared(t) or not shareable(t, weights) for t in proto.graph.initializer) \
        else without_weights(proto, weights)
    names = [t.name for t in light.graph.initializer if is_shared(t)]
    values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(weights[name])) for name in names]
    if values and not in_place:
        options.add_external_initializers(names, values)
        return light, values
    for name, value in zip(names, values, strict=True):
        options.add_initializer(name, value)
    if values:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         _placeholder_folder())
    return light, values


@functools.cache
def _shared_arena() -> bool:
    """One CPU memory arena for every session of the process, registered once.

    compare exposes every tensor of a model, a group at a time, through many sessions (reference,
    candidate and local-error pieces). onnxruntime hands its output buffers to numpy without copying;
    with an arena per session (or none) each group's tensors came from fresh pages, and faulting them in
    cost compare more time than the model's arithmetic. In one shared arena a group's buffers are the
    previous group's, freed; the process holds the peak of what was alive at once, not each session's."""
    try:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        # grow by what is asked (not powers of two); split free chunks that would waste over 1 MiB
        ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1,
                                                                  "max_dead_bytes_per_chunk": 1 << 20}))
    except Exception:  # an onnxruntime without environment allocators: each session keeps its own arena
        return False
    return True


class BuiltGraphRejected(RuntimeError):
    """onnxruntime cannot load a graph trtdebug built from the user's model (emulated, local-error,
    substituting graph, a piece): a bug of trtdebug, never the model's fault (exit 3, not 2)."""


def session(proto: onnx.ModelProto, level: str = "disable", threads: int = 0,
            optimized_path: str | None = None, spin: bool = True, built: str = "",
            weights: Weights | None = None) -> ort.InferenceSession:
    """`spin` False: onnxruntime's idle threads sleep instead of spinning, leaving the CPUs to work that
    runs beside the session (compare measures one piece while the next runs).
    `built`: what trtdebug built `proto` as ("the local-error graph"); empty for the user's model.
    `weights`: arrays for the model's large initializers, read in place by the session (shared with
    every other session given them); a model over weights.LARGE_MODEL_BYTES is never serialized with its weights."""
    options = ort.SessionOptions()
    if weights is None and proto.ByteSize() >= shared.LARGE_MODEL_BYTES:
        weights = weights_of(proto)
    proto, values = _share(options, proto, weights, in_place=level == "disable")
    if optimized_path and values:  # an optimized model written whole could exceed protobuf's 2 GiB
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         os.path.basename(optimized_path) + ".data")
    # Never prepacked: prepacking copies each MatMul weight into the session (shared arrays held twice),
    # and a prepacked constant weight computes a few ulps apart from the same values read as a tensor,
    # so a graph's values would depend on which weights are shared, or are switched (emulator/switched.py).
    options.add_session_config_entry("session.disable_prepacking", "1")
    if _shared_arena():
        options.add_session_config_entry("session.use_env_allocators", "1")
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = LEVELS[level]
    options.log_severity_level = logs.onnxruntime_severity()
    if threads:
        options.intra_op_num_threads = threads
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    try:
        made = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        made._trtdebug_weights = values  # onnxruntime reads them in place: they live as long as the session
        return made
    except Exception as exc:
        newest_ir = _max_ir_version(str(exc))
        if newest_ir is None or proto.ir_version <= newest_ir:
            if built:
                raise BuiltGraphRejected(f"onnxruntime cannot load {built} trtdebug built from the model (a bug "
                                         f"in trtdebug, not in the model): {first_line(exc)}") from None
            raise UserError(_load_error(proto, exc)) from None
    # A newer onnx package stamps an IR version onnxruntime does not know yet; the graph itself
    # rarely uses anything new, so retry with the newest IR version onnxruntime accepts.
    downgraded = onnx.ModelProto()
    downgraded.CopyFrom(proto)
    downgraded.ir_version = newest_ir
    return session(downgraded, level, threads, optimized_path, spin, built, weights)


def _load_error(proto: onnx.ModelProto, exc: BaseException) -> str:
    """onnxruntime's load failure as one line naming the cause and what to do."""
    unknown = re.search(r"(?:Fatal error: )?([\w.]*):(\w+)\(-?\d+\) is not a registered function/op", str(exc))
    if unknown:
        domain, op = unknown[1], unknown[2]
        node = next((n.name for n in proto.graph.node if n.op_type == op and n.domain == domain), "")
        where = f"node {node!r} is op {op} of domain {domain}" if node else f"op {op} of domain {domain}"
        return (f"{where}, which onnxruntime has no kernel for, so trtdebug can compute no FP32 reference "
                "(with any --engine, --engine results included); replace it with standard ONNX ops for "
                "debugging, e.g. the op's ONNX decomposition that a TensorRT plugin stands in for")
    return f"onnxruntime cannot load the model: {first_line(exc)}"


def _max_ir_version(message: str) -> int | None:
    match = re.search(r"max supported IR version: (\d+)", message)
    return int(match[1]) if match else None


def run(sess: ort.InferenceSession, feeds: Mapping[str, np.ndarray],
        outputs: list[str] | None = None, built: str = "") -> dict[str, np.ndarray]:
    """`built`: what trtdebug built the session's graph as (a reduced-precision build: its failure on
    inputs the FP32 model ran is the build's, BuildRunFailed); empty for the user's model."""
    names = outputs or [o.name for o in sess.get_outputs()]
    wanted = {i.name: FLOAT_TYPES.get(i.type) for i in sess.get_inputs()}
    given = {k: _as_type(np.asarray(v), wanted[k]) for k, v in feeds.items() if k in wanted}
    try:
        values = sess.run(names, given)
    except Exception as exc:
        if built:
            raise BuildRunFailed(f"{built} fails on inputs the FP32 model runs ({first_line(exc)}): a value computed "
                                 "in reduced precision decides a shape or an index there") from None
        raise UserError(f"onnxruntime failed to run the model: {first_line(exc)}") from None
    return dict(zip(names, (np.asarray(v) for v in values), strict=True))


FLOAT_TYPES: dict[str, np.dtype] = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16),
               "tensor(double)": np.dtype(np.float64)}


def _as_type(value: np.ndarray, wanted: np.dtype | None) -> np.ndarray:
    """FP16 feeds of a model stored in FP16 go into its FP32 upcast as FP32 (exactly)."""
    if wanted is not None and value.dtype.kind == "f" and value.dtype != wanted:
        return value.astype(wanted)
    return value
