"""Step 1 of an emulated build: the FP32 graph rewriting TensorRT's builder does first.

Constant folding and BatchNormalization folded into its neighbour: onnxruntime's basic
optimizations do the same folds, so the emulator takes the graph they produce. A node of that
graph is one emulated *layer*; it covers every ONNX node that was folded into it, as TensorRT's
fused layers do.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from trtdebug.core.model import weights as shared
from trtdebug.core.model.graph import Model
from trtdebug.core.reference import ort_sessions


@dataclass
class FoldedGraph:
    """The model after the builder's FP32 folding, and which ONNX nodes each layer covers."""

    proto: onnx.ModelProto  # its large weights are placeholders (core.model.weights)
    covers: dict[str, tuple[str, ...]]  # layer (optimized node name) -> original ONNX nodes
    folded_away: tuple[str, ...]  # ONNX nodes computed at build time (constant folding)
    # the placeholders' arrays: the model's own where folding left a weight as it was; emulated builds
    # add the rounded copies they make (`name::fp16`: the same for every build of this graph)
    weights: dict[str, np.ndarray] = field(default_factory=dict)


def fold_like_builder(model: Model, every_weight: bool = False) -> FoldedGraph:
    """Constant folding and BatchNorm fusion in FP32, by onnxruntime's basic optimization level.
    `every_weight`: hand onnxruntime every weight's values, those only read at run time too (slower; the
    same graph)."""
    read_at_run_time = set() if every_weight else _read_at_run_time(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "folded.onnx")
        ort_sessions.session(_with_inputs_for(model.proto, read_at_run_time), level="basic", threads=1,
                             optimized_path=path,
                             weights={k: v for k, v in model.weights.items() if k not in read_at_run_time})
        folded = onnx.load(path, load_external_data=False)
        kept = _left_as_they_were(folded, model.weights, tmp)
        folded, weights = shared.take_weights(folded, tmp)  # what the folding made or changed
        weights.update(kept)
    _restore_weights(folded, model.proto, read_at_run_time)
    weights.update({name: model.weights[name] for name in read_at_run_time})
    # onnxruntime may leave nodes unnamed or reuse names; layer names must be unique.
    seen: set[str] = set()
    for i, node in enumerate(folded.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.name or node.op_type}__{i}"
        seen.add(node.name)
    covers = _coverage(model, folded)
    covered = {n for nodes in covers.values() for n in nodes}
    folded_away = tuple(n.name for n in model.nodes if n.name not in covered)
    return FoldedGraph(folded, covers, folded_away, weights)


# op -> the input slot a weight must fill (None: any) for the op to only read it at run time: a MatMul's
# operand, a Gather's table. The basic optimizations neither fold nor rewrite such a weight while another
# input of each of its readers is computed at run time.
READ_AS_DATA: dict[str, int | None] = {"MatMul": None, "Gather": 0}


def _read_at_run_time(model: Model) -> set[str]:
    """The large weights that only READ_AS_DATA readers read. The folding session gets them as typed graph
    inputs instead of values: onnxruntime copied a 1.1 B decoder's 4.5 GB in, and wrote them out again,
    for 17 s (tests/test_transformer_scale.py checks the folded graph is the same)."""
    graph = model.proto.graph
    constant = {t.name for t in graph.initializer}
    constant |= {o for n in model.nodes if n.op_type == "Constant" for o in n.output}
    excluded = {i.name for i in graph.input} | {o.name for o in graph.output}
    found = set()
    for name in model.weights:
        readers = [model.node_by_name[n] for n in model.consumers.get(name, [])]
        if name in excluded or not readers:
            continue
        if all(node.op_type in READ_AS_DATA and list(node.input).count(name) == 1
               and READ_AS_DATA[node.op_type] in (None, list(node.input).index(name))
               and any(t and t != name and t not in constant for t in node.input) for node in readers):
            found.add(name)
    return found


def _with_inputs_for(proto: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """`proto` with these initializers turned into typed graph inputs."""
    if not names:
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)  # no weight bytes: they are placeholders
    graph = copy.graph
    moved = [t for t in graph.initializer if t.name in names]
    kept = [t for t in graph.initializer if t.name not in names]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in moved)
    return copy


def _restore_weights(folded: onnx.ModelProto, proto: onnx.ModelProto, names: set[str]) -> None:
    """The weights `_with_inputs_for` made inputs, back as initializers (placeholders of the model's arrays)."""
    if not names:
        return
    inputs = [i for i in folded.graph.input if i.name not in names]
    del folded.graph.input[:]
    folded.graph.input.extend(inputs)
    folded.graph.initializer.extend(shared.placeholder(t) for t in proto.graph.initializer if t.name in names)


# Values compared where a folded weight keeps a model weight's name: every this-many-th byte, and the ends
SAMPLE_STRIDE = 1 << 16


def _left_as_they_were(folded: onnx.ModelProto, model_weights: Mapping[str, np.ndarray], folder: str
                       ) -> dict[str, np.ndarray]:
    """The model's own arrays for the folded graph's weights that folding left as they were, their entries
    made placeholders (held once, and never read back from the file onnxruntime wrote). onnxruntime names
    what it folds or fuses anew, so a weight keeping its name is the model's; a sample of its bytes,
    read in place from the file, is compared to be sure."""
    kept: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(folded.graph.initializer):
        same = model_weights.get(tensor.name)
        external = tensor.data_location == onnx.TensorProto.EXTERNAL
        if same is None or not external or same.nbytes < shared.SHARED_WEIGHT_BYTES:
            continue
        info = onnx.external_data_helper.ExternalDataInfo(tensor)
        typed = same.dtype.kind in "fiub" and onnx.helper.np_dtype_to_tensor_dtype(same.dtype) == tensor.data_type
        if not typed or tuple(tensor.dims) != same.shape or int(info.length or -1) != same.nbytes:
            continue
        written = np.memmap(os.path.join(folder, info.location), np.uint8, "r", int(info.offset or 0), (same.nbytes,))
        ours = np.ascontiguousarray(same).reshape(-1).view(np.uint8)
        sample = np.s_[::SAMPLE_STRIDE]
        if np.array_equal(written[sample], ours[sample]) and np.array_equal(written[-64:], ours[-64:]):
            kept[tensor.name] = same
            folded.graph.initializer[i].CopyFrom(shared.placeholder(tensor))
        del written
    return kept

def _coverage(model: Model, folded: onnx.ModelProto) -> dict[str, tuple[str, ...]]:
    """Map each folded-graph node to the original nodes between its inputs and its outputs."""
    surviving = {t for n in folded.graph.node for t in [*n.input, *n.output]}
    surviving |= {i.name for i in folded.graph.initializer} | {i.name for i in folded.graph.input}
    covers: dict[str, tuple[str, ...]] = {}
    for node in folded.graph.node:
        stop = set(node.input)
        found: list[str] = []
        stack = [t for t in node.output if t in model.producer]
        seen: set[str] = set()
        while stack:
            producer = model.producer[stack.pop()]
            if producer in seen:
                continue
            seen.add(producer)
            found.append(producer)
            for t in model.node_by_name[producer].input:
                if t and t not in stop and t not in surviving and t in model.producer:
                    stack.append(t)
        if not found and node.name in model.node_by_name:
            found = [node.name]
        covers[node.name] = tuple(sorted(found, key=model.node_index))
    return covers
