"""How TensorRT tensors live on the host: the NumPy dtype of each TensorRT data type, a decoder
for those NumPy has no type for (BF16, FP8), and feeds converted to an engine input's type.
The runner and the INT8 calibrator both hand TensorRT host arrays made here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from trtdebug.engines.tensorrt.cuda_buffers import (
    bf16_bits_to_float32,
    float32_to_bf16_bits,
    fp8_e4m3_bits_to_float32,
)
from trtdebug.errors import UserError


@dataclass(frozen=True)
class HostType:
    """How a TensorRT data type lives on the host: the NumPy dtype of its bytes, and a decoder."""

    dtype: np.dtype
    decode: Callable[[np.ndarray], np.ndarray] | None = None


HOST_TYPES = {
    "FLOAT": HostType(np.dtype(np.float32)), "HALF": HostType(np.dtype(np.float16)),
    "INT8": HostType(np.dtype(np.int8)), "UINT8": HostType(np.dtype(np.uint8)),
    "INT32": HostType(np.dtype(np.int32)), "INT64": HostType(np.dtype(np.int64)),
    "BOOL": HostType(np.dtype(np.bool_)),
    "BF16": HostType(np.dtype(np.uint16), bf16_bits_to_float32),
    "FP8": HostType(np.dtype(np.uint8), fp8_e4m3_bits_to_float32),
}


def host_type(trt_api: Any, data_type: Any) -> HostType:
    for name, spec in HOST_TYPES.items():
        if hasattr(trt_api.DataType, name) and data_type == getattr(trt_api.DataType, name):
            return spec
    raise UserError(f"trtdebug cannot read TensorRT tensors of type {data_type}; expose other tensors")


def host_input(name: str, value: np.ndarray, spec: HostType) -> np.ndarray:
    """A feed converted to the engine input's type (TensorRT 8.6 has no INT64: int64 -> int32)."""
    value = np.asarray(value)
    if spec.decode is bf16_bits_to_float32:
        return float32_to_bf16_bits(value.astype(np.float32))
    if value.dtype == spec.dtype:
        return np.ascontiguousarray(value)
    if value.dtype.kind in "iu" and spec.dtype.kind in "iu":
        info = np.iinfo(spec.dtype)
        if value.size and (value.min() < info.min or value.max() > info.max):
            raise UserError(f"input {name!r} has values outside the engine's {spec.dtype} range")
        return np.ascontiguousarray(value.astype(spec.dtype))
    if value.dtype.kind == spec.dtype.kind or (value.dtype.kind == "b" and spec.dtype.kind in "iu"):
        return np.ascontiguousarray(value.astype(spec.dtype))
    raise UserError(f"input {name!r} is {value.dtype}, but the engine wants {spec.dtype}")
