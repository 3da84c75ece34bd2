"""A model's weights held apart from its graph: a graph whose large initializers are only named
(placeholders), and the arrays that onnxruntime sessions read in place instead.

`Model` takes its weights out when it loads (an external data file is read straight into arrays), so
a model's weights exist once in the process however many sessions run it (reference, pieces,
emulated and local-error graphs), graphs are copied and rewritten without copying weight bytes, and no
graph is ever serialized with them: protobuf refuses to serialize more than 2 GiB, so a
billion-parameter model could not be run otherwise. What writes a model file or hands one to
TensorRT puts the weights back (`save_with_weights`, `with_weights`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
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
    return value is not None and value.nbytes >= SHARED_WEIGHT_BYTES and _ort_takes(value)


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


class DerivedWeights(Mapping[str, np.ndarray]):
    """Weights, and weights derived from them (a typed graph's FP16 casts) computed each time one is read,
    never held: a writer reads each once, so a model's converted weights never exist all at once."""

    def __init__(self, base: Weights):
        self.base = base
        self.derived: dict[str, Callable[[], np.ndarray]] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.derived[name]() if name in self.derived else self.base[name]

    def __iter__(self) -> Iterator[str]:
        yield from self.base
        yield from (name for name in self.derived if name not in self.base)

    def __len__(self) -> int:
        return len(self.base) + sum(1 for name in self.derived if name not in self.base)


def value_of(tensor: onnx.TensorProto, weights: Weights) -> np.ndarray:
    """An initializer's value: the held array of a placeholder, else the proto's own data."""
    return weights[tensor.name] if is_shared(tensor) else numpy_helper.to_array(tensor)


def _numpy_type(data_type: int) -> np.dtype | None:
    """The numpy type of an ONNX element type that onnxruntime's binding takes (`_ort_takes`), else None."""
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type))
    except (KeyError, TypeError, ValueError):
        return None
    return dtype if dtype.kind in "fiub" and dtype.type.__module__ == "numpy" else None


def _declared_bytes(tensor: onnx.TensorProto) -> int:
    dtype = _numpy_type(tensor.data_type)
    count = 1
    for d in tensor.dims:
        count *= int(d)
    return count * dtype.itemsize if dtype is not None else 0


def all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            if attr.HasField("g"):
                yield from all_tensors(attr.g)
            for g in attr.graphs:
                yield from all_tensors(g)


def take_weights(proto: onnx.ModelProto, folder: str | Path | None = None
                 ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """`proto` with its large initializers (SHARED_WEIGHT_BYTES and up, plain numpy types) moved out
    into arrays: each becomes a placeholder. Embedded data is converted once; external data (files in
    `folder`) is read straight into its array, never into the proto. Other external tensors (small
    ones, FP8/INT4/BF16 codes, subgraphs' and attributes') are loaded into the proto. Returns a new,
    compact proto where anything was taken (protobuf frees a message's bytes only with the message:
    `proto` still holds them)."""
    held: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(proto.graph.initializer):
        if is_shared(tensor):
            continue
        external = tensor.data_location == onnx.TensorProto.EXTERNAL
        dtype = _numpy_type(tensor.data_type)
        if dtype is None or _declared_bytes(tensor) < SHARED_WEIGHT_BYTES:
            if external:
                onnx.external_data_helper.load_external_data_for_tensor(tensor, str(folder or "."))
            continue
        shape = tuple(int(d) for d in tensor.dims)
        if external:
            info = onnx.external_data_helper.ExternalDataInfo(tensor)
            path = os.path.join(str(folder or "."), info.location)
            count = _declared_bytes(tensor) // dtype.itemsize
            value = np.fromfile(path, dtype=dtype.newbyteorder("<"), count=count, offset=int(info.offset or 0))
            if value.size != count:
                raise ValueError(f"external data of {tensor.name!r} ends early in {info.location}")
            value = value.astype(dtype, copy=False).reshape(shape)
        else:
            value = numpy_helper.to_array(tensor)
        held[tensor.name] = value
        proto.graph.initializer[i].CopyFrom(placeholder(tensor))
    for tensor in all_tensors(proto.graph):  # subgraphs' and attributes' tensors go into the proto
        if tensor.data_location == onnx.TensorProto.EXTERNAL and not is_shared(tensor):
            onnx.external_data_helper.load_external_data_for_tensor(tensor, str(folder or "."))
    if not held:
        return proto, held
    compact = onnx.ModelProto()
    compact.CopyFrom(proto)
    return compact, held


def with_weights(proto: onnx.ModelProto, weights: Weights) -> onnx.ModelProto:
    """A copy of `proto` with its placeholders' values embedded (a model below protobuf's 2 GiB)."""
    whole = onnx.ModelProto()
    _copy_fields(proto, whole, skip="graph")
    _copy_fields(proto.graph, whole.graph, skip="initializer")
    whole.graph.initializer.extend(
        numpy_helper.from_array(np.asarray(weights[t.name]), t.name) if is_shared(t) else t
        for t in proto.graph.initializer)
    return whole


def serialized_pieces(proto: onnx.ModelProto, weights: Weights) -> Iterator[bytes]:
    """`with_weights(proto, weights)` serialized, a weight at a time: protobuf merges concatenated
    messages (a repeated field's entries append), so the graph without its placeholders, then one
    message per weight holding just that initializer, read back as the whole model (its weights last
    among the initializers). Never more than one weight's bytes at once beside the arrays."""
    light = onnx.ModelProto()
    _copy_fields(proto, light, skip="graph")
    _copy_fields(proto.graph, light.graph, skip="initializer")
    light.graph.initializer.extend(t for t in proto.graph.initializer if not is_shared(t))
    yield light.SerializeToString()
    for tensor in proto.graph.initializer:
        if is_shared(tensor):
            piece = onnx.ModelProto()
            piece.graph.initializer.append(numpy_helper.from_array(np.asarray(weights[tensor.name]), tensor.name))
            yield piece.SerializeToString()


def weight_bytes(proto: onnx.ModelProto, weights: Weights) -> int:
    """Bytes of the placeholders' values: what embedding them adds to the serialized proto (from their
    entries' types and shapes: a derived weight is not computed to be counted)."""
    return sum(_declared_bytes(t) for t in proto.graph.initializer if is_shared(t))


def save_with_weights(proto: onnx.ModelProto, weights: Weights, path: str | Path, data_name: str) -> None:
    """Write `proto` to `path` with its placeholders' values in `data_name` beside it (the layout
    `onnx.save(..., save_as_external_data=True)` writes), one array at a time: the model is never
    serialized whole with its weights. `proto` itself is left as it was."""
    path = Path(path)
    written = onnx.ModelProto()
    _copy_fields(proto, written, skip="graph")
    _copy_fields(proto.graph, written.graph, skip="initializer")
    with open(path.parent / data_name, "wb") as data:
        for tensor in proto.graph.initializer:
            if not is_shared(tensor):
                written.graph.initializer.append(tensor)
                continue
            value = np.ascontiguousarray(weights[tensor.name])
            offset = data.tell()
            data.write(value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes())
            entry = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                                     data_location=onnx.TensorProto.EXTERNAL)
            for key, text in (("location", data_name), ("offset", str(offset)), ("length", str(value.nbytes))):
                entry.external_data.add(key=key, value=text)
            written.graph.initializer.append(entry)
    onnx.save(written, str(path))


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
