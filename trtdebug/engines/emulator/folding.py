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

from trtdebug.core.model.graph import Model
from trtdebug.core.model.weights import take_weights
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


def fold_like_builder(model: Model) -> FoldedGraph:
    """Constant folding and BatchNorm fusion in FP32, by onnxruntime's basic optimization level."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "folded.onnx")
        ort_sessions.session(model.proto, level="basic", threads=1, optimized_path=path, weights=model.weights)
        folded, weights = take_weights(onnx.load(path, load_external_data=False), tmp)
        weights = _same_as_model(weights, model.weights)
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


def _same_as_model(weights: dict[str, np.ndarray], model_weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's own array for each weight the folding left as it was (held once, not twice)."""
    for name, value in weights.items():
        same = model_weights.get(name)
        if same is not None and same.dtype == value.dtype and same.shape == value.shape and \
                np.array_equal(same.view(np.uint8), value.view(np.uint8)):
            weights[name] = same
    return weights

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
