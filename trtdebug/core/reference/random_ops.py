"""Models whose FP32 run is not a fixed function of their inputs: ops that draw random values.

A `seed` attribute does not make them one: onnxruntime (1.32) seeds a node's generator once per
session, so two fresh sessions draw the same first values but every further run of a session draws
new ones (measured: two runs of one seeded RandomNormalLike session differ). trtdebug runs each graph
many times (reference, emulated, local-error, substituting graphs, pieces, every fallback candidate),
so no seeding makes its runs comparable: such a model is refused before any verdict.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx
from onnx import numpy_helper

RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
                        "Multinomial"})


def random_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes (subgraphs included) that draw random values: RANDOM_OPS, and Dropout in training
    mode (a training_mode input that is not a constant false)."""
    return [node for graph, node in _walk(model.graph) if node.op_type in RANDOM_OPS or _training_dropout(graph, node)]


def _walk(graph: onnx.GraphProto) -> Iterator[tuple[onnx.GraphProto, onnx.NodeProto]]:
    for node in graph.node:
        yield graph, node
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                yield from _walk(subgraph)


def _training_dropout(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    if node.op_type != "Dropout" or node.domain not in ("", "ai.onnx") or len(node.input) < 3 or not node.input[2]:
        return False
    mode = node.input[2]
    constants = {i.name: i for i in graph.initializer}
    constants.update({n.output[0]: a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute
                      if a.name == "value"})
    return mode not in constants or bool(numpy_helper.to_array(constants[mode]).any())
