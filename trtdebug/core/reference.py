"""The FP32 reference: onnxruntime on the CPU with every intermediate tensor exposed.

Graph optimizations are off so every ONNX tensor exists exactly as the model defines it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from trtdebug.core import onnxrt
from trtdebug.core.model import Model


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
