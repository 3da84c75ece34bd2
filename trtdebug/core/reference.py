"""The FP32 reference: onnxruntime on the CPU with every intermediate tensor exposed.

Graph optimizations are off so every ONNX tensor exists exactly as the model defines it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from trtdebug.core import onnxrt
from trtdebug.core.model import Model, node_dependencies


class Reference:
    """Runs the model in FP32 and returns every tensor (inputs, intermediates, outputs)."""

    def __init__(self, model: Model):
        self.model = model
        tensors = model.intermediate_tensors()
        types = {t: _elem_type(model, t) for t in tensors}
        self._session = onnxrt.session(onnxrt.with_outputs(model.proto, tensors, types))

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = onnxrt.run(self._session, feeds)
        values.update({k: np.asarray(v) for k, v in feeds.items()})
        return values


def run_reference(model: Model, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return Reference(model).run(feeds)


def _elem_type(model: Model, tensor: str) -> int:
    import onnx

    dtype = model.dtype(tensor)
    return int(onnx.helper.np_dtype_to_tensor_dtype(dtype)) if dtype is not None else 0


def first_nonfinite(model: Model, reference: Mapping[str, np.ndarray]) -> tuple[str, str] | None:
    """(node, tensor) of the first tensor, in topological order, whose reference values are not finite."""
    for node in model.nodes:
        for tensor in node.output:
            value = reference.get(tensor)
            if value is not None and np.asarray(value).dtype.kind == "f" and not np.isfinite(value).all():
                return node.name, tensor
    return None


def inputs_upstream(model: Model, tensor: str) -> list[str]:
    """Graph inputs `tensor` depends on, in the model's input order."""
    inputs = {spec.name for spec in model.inputs}
    seen, stack, found = set(), [tensor], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current in inputs:
            found.add(current)
        producer = model.producer.get(current)
        if producer is not None:
            stack.extend(t for t in node_dependencies(model.node_by_name[producer]) if t)
    return [spec.name for spec in model.inputs if spec.name in found]
