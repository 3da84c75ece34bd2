"""Implicit INT8 calibration (TensorRT <= 10.x): an entropy calibrator fed with input feeds.

TensorRT deprecated implicit quantization in 10.1 and removed calibrators in 11; models for 11.x
and TensorRT-RTX carry Q/DQ nodes instead, which need no calibrator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtdebug.engines.tensorrt.cuda_buffers import CudaRuntime, DeviceArena
from trtdebug.errors import UserError


def make_calibrator(trt_api: Any, batches: Sequence[Mapping[str, np.ndarray]], cache_path: str | None,
                    runtime: CudaRuntime | None = None) -> Any:
    """An IInt8EntropyCalibrator2 that hands TensorRT one feed dict per batch."""

    class FeedCalibrator(trt_api.IInt8EntropyCalibrator2):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt_api.IInt8EntropyCalibrator2.__init__(self)  # required by pybind11 trampolines
            self.batches = list(batches)
            self.index = 0
            self.runtime = runtime
            self.arena: DeviceArena | None = None
            self.errors: list[str] = []

        def get_batch_size(self) -> int:
            return 1  # explicit batch: the batch dimension lives in each input's shape

        def get_batch(self, names: list[str]) -> list[int] | None:
            self.release()  # TensorRT is done with the previous batch when it asks for the next
            if self.index >= len(self.batches):
                return None  # None ends calibration
            feeds = self.batches[self.index]
            self.index += 1
            try:
                missing = [n for n in names if n not in feeds]
                if missing:
                    raise UserError(f"calibration feeds lack input {missing[0]!r}")
                self.runtime = self.runtime or CudaRuntime()
                self.arena = DeviceArena(self.runtime)
                pointers = [self.arena.upload(np.ascontiguousarray(feeds[n])) for n in names]
                self.arena.synchronize()
                return pointers
            except Exception as exc:  # TensorRT swallows exceptions from here; keep the reason
                self.errors.append(str(exc))
                return None

        def read_calibration_cache(self) -> bytes | None:
            if cache_path and Path(cache_path).is_file():
                return Path(cache_path).read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            if cache_path:
                Path(cache_path).write_bytes(bytes(cache))

        def release(self) -> None:
            if self.arena is not None:
                arena, self.arena = self.arena, None
                arena.close()

    return FeedCalibrator()
