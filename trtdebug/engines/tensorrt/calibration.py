"""Implicit INT8 calibration (TensorRT <= 10.x): an entropy or min-max calibrator fed with input feeds.

TensorRT deprecated implicit quantization in 10.1 and removed calibrators in 11; models for 11.x
and TensorRT-RTX carry Q/DQ nodes instead, which need no calibrator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtdebug.core.system import files
from trtdebug.engines.tensorrt.cuda_buffers import CudaRuntime, DeviceArena
from trtdebug.engines.tensorrt.host_types import host_input, host_type
from trtdebug.engines.tensorrt.network import dims_tuple
from trtdebug.errors import UserError

# --calib-method -> TensorRT's calibrator class (python/src/infer/pyInt8.cpp). Percentile has no
# TensorRT calibrator of its own (only the legacy one's quantile), so it is emulator-only.
CALIBRATORS = {"entropy": "IInt8EntropyCalibrator2", "minmax": "IInt8MinMaxCalibrator"}


def make_calibrator(trt_api: Any, batches: Sequence[Mapping[str, np.ndarray]], cache_path: str | None,
                    runtime: CudaRuntime | None = None, memory: dict[str, bytes] | None = None,
                    method: str = "entropy", on_finished: Callable[[], None] | None = None) -> Any:
    """A calibrator (`method`: entropy or minmax) that hands TensorRT one feed dict per batch.

    `memory` keeps the cache TensorRT writes after calibrating ("cache" key) across builds: a later
    build of the same model (another plan, marking chunk, or the rebuild after a timing-cache ban,
    whose calibrator's batches are spent) reads it back instead of calibrating again, as Polygraphy's
    calibrator returns its `cache_contents` (tools/Polygraphy/polygraphy/backend/trt/calibrator.py).

    `on_finished` is called once, when calibration is over within build_serialized_network: the
    cache was read (TensorRT then builds no calibration network), or the batches ran out. What the
    builder autotuned before that belongs to the calibration network, not the engine."""
    kept = memory if memory is not None else {}
    if method not in CALIBRATORS:
        raise UserError(f"--calib-method {method} has no TensorRT calibrator; use --calib-method "
                        f"{' or '.join(CALIBRATORS)} with --engine tensorrt")
    base = getattr(trt_api, CALIBRATORS[method])

    class FeedCalibrator(base):  # type: ignore[valid-type,misc]
        def __init__(self) -> None:
            base.__init__(self)  # required by pybind11 trampolines
            self.batches = list(batches)
            self.index = 0
            self.runtime = runtime
            self.arena: DeviceArena | None = None
            self.errors: list[str] = []
            self.finished = False

        def finish(self) -> None:
            if not self.finished:
                self.finished = True
                if on_finished is not None:
                    on_finished()

        def get_batch_size(self) -> int:
            return 1  # explicit batch: the batch dimension lives in each input's shape

        def get_batch(self, names: list[str]) -> list[int] | None:
            self.release()  # TensorRT is done with the previous batch when it asks for the next
            if self.index >= len(self.batches):
                self.finish()
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
            cache = kept.get("cache") or None
            if cache is None and cache_path and Path(cache_path).is_file():
                cache = Path(cache_path).read_bytes() or None  # empty: calibrate again
            if cache is not None:
                self.finish()
            return cache

        def write_calibration_cache(self, cache: Any) -> None:
            kept["cache"] = bytes(cache)
            if cache_path:
                files.write_bytes(cache_path, kept["cache"])  # atomic: an interrupted build keeps the old one

        def release(self) -> None:
            if self.arena is not None:
                arena, self.arena = self.arena, None
                arena.close()

    return FeedCalibrator()


def calibration_batches(trt_api: Any, network: Any, profile: Any,
                        batches: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Each batch's inputs cast to the network input's type and checked against the calibration
    profile's OPT shape, which TensorRT calibrates at (Polygraphy checks calibration data against
    the same: try_setup_polygraphy_calibrator, get_input_metadata_from_network(force_opt_shapes=True),
    tools/Polygraphy/polygraphy/backend/trt/util.py)."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    checked = []
    for index, batch in enumerate(batches):
        cast = dict(batch)
        for tensor in inputs:
            name = tensor.name
            if name not in batch:
                raise UserError(f"calibration batch {index} lacks input {name!r}")
            value = host_input(name, batch[name], host_type(trt_api, tensor.dtype))
            expected = profile.shapes[name][1] if name in profile.shapes else dims_tuple(tensor.shape)
            if tuple(value.shape) != tuple(expected):
                raise UserError(f"calibration batch {index}: input {name!r} has shape {list(value.shape)}, but "
                                f"TensorRT calibrates at the profile's OPT shape {list(expected)}")
            cast[name] = value
        checked.append(cast)
    return checked
