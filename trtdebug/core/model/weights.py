"""A model's weights held apart from its graph: a copy of the graph whose large initializers are only
named (placeholders), and the arrays that onnxruntime sessions read in place instead.

A model's weights then exist once in the process however many sessions run it (reference, pieces,
emulated and local-error graphs), and no graph is ever serialized with them: protobuf refuses to
serialize more than 2 GiB, so a billion-parameter model could not be run otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

Weights = Mapping[str, np.ndarray]
# Initializers of at least this many bytes reach onnxruntime as numpy arrays (SessionOptions.add_initializer),
# never through the serialized model: every session of the process reads the same buffers.
SHARED_WEIGHT_BYTES = 1 << 16
# A model at least this large is never serialized whole, even with no weights given: protobuf refuses
# to serialize 2 GiB; its weights are taken out as arrays first (tests lower this to try the path).
LARGE_MODEL_BYTES = 1 << 30
# What a shared initializer's entry in the serialized model names as its data: an empty file
# (onnxruntime checks that it exists, then takes the array given for the name instead).
PLACEHOLDER = "trtdebug-shared-weight"


def is_shared(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL and any(
        e.key == "location" and e.value == PLACEHOLDER for e in tensor.external_data)


def shareable(tensor: onnx.TensorProto, weights: Weights) -> bool:
    """Whether a session takes this initializer from `weights` rather than from the model."""
    if is_shared(tensor):
        return True
    value = weights.get(tensor.name)
    return value is not None and value.nbytes >= SHARED_WEIGHT_BYTES


def placeholder(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """The initializer's entry without its data: name, type and shape."""
    entry = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                             data_location=onnx.TensorProto.EXTERNAL)
    entry.external_data.add(key="location", value=PLACEHOLDER)
    return entry


def without_weights(proto: onnx.ModelProto, weights: Weights) -> onnx.ModelProto:
    """A copy of `proto` whose initializers found in `weights` (at least SHARED_WEIGHT_BYTES) are
    placeholders: copying it costs no weight bytes, and `session` feeds them from `weights`."""
    light = onnx.ModelProto()
    _copy_fields(proto, light, skip="graph")
    _copy_fields(proto.graph, light.graph, skip="initializer")
    saved = proto.graph.initializer
    light.graph.initializer.extend(placeholder(t) if shareable(t, weights) else t for t in saved)
    return light


def _copy_fields(source: Any, target: Any, skip: str) -> None:
    """Every field set in `source` but `skip` into `target` (a copy that never touches `skip`)."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(target, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def weights_of(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The model's large initializers as arrays (a model too large to serialize whole)."""
    held = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer
            if not is_shared(t) and t.data_location != onnx.TensorProto.EXTERNAL
            and _stored_bytes(t) >= SHARED_WEIGHT_BYTES}
    return {name: value for name, value in held.items() if _ort_takes(value)}


def _ort_takes(value: np.ndarray) -> bool:
    """Whether onnxruntime's Python binding can take the array (OrtValue.ortvalue_from_numpy): plain
    numpy numbers only; ml_dtypes' float8/int4/bfloat16 arrays (FP8 or INT4 codes) stay in the model."""
    return value.dtype.kind in "fiub"


def _stored_bytes(tensor: onnx.TensorProto) -> int:
    return tensor.ByteSize()


def held_weights(proto: onnx.ModelProto, known: Weights) -> dict[str, np.ndarray]:
    """`proto`'s large initializers as arrays: `known`'s array where it holds the same bits (a weight
    that a rewrite of the graph left as it was is not held twice), a new one otherwise."""
    held: dict[str, np.ndarray] = {}
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.ByteSize() < SHARED_WEIGHT_BYTES:
            continue
        value = numpy_helper.to_array(tensor)
        if not _ort_takes(value):
            continue
        same = known.get(tensor.name)
        held[tensor.name] = same if same is not None and _same_bits(same, value) else value
    return held


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape or a.dtype.kind not in "fiub":
        return False
    as_bits = np.dtype(f"u{a.dtype.itemsize}") if a.dtype.kind != "b" else a.dtype
    return bool(np.array_equal(a.view(as_bits), b.view(as_bits)))
