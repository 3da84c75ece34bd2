"""Loading TensorRT or TensorRT-RTX lazily, and what the loaded module can do.

Nothing here imports TensorRT at trtdebug import time. Capabilities are found by feature detection
(does the module have this name?), never by comparing version strings: TensorRT 8.6, 10.x, 11.x and
TensorRT-RTX differ in which names they have, and that is what the code depends on. The one
exception is the explicit-batch flag, which only the 8.x parser needs (see docs/trt-api.md).
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from trtdebug.errors import UserError, first_line

FLAVORS = ("tensorrt", "tensorrt-rtx")

INSTALL_HINT = {
    "tensorrt": "TensorRT is not installed: pip install tensorrt-cu12 (or tensorrt-cu13) and "
                "`pip install trtdebug[tensorrt]`",
    "tensorrt-rtx": "TensorRT-RTX is not installed: `pip install trtdebug[rtx]`",
}

# Module names to try, in order. The `tensorrt_rtx` wheel wraps the raw bindings wheel.
MODULE_NAMES = {"tensorrt": ("tensorrt",), "tensorrt-rtx": ("tensorrt_rtx", "tensorrt_rtx_bindings")}


def load_tensorrt(flavor: str = "tensorrt") -> ModuleType:
    """Import the TensorRT Python module for a flavor, or raise a one-line UserError."""
    if flavor not in MODULE_NAMES:
        raise UserError(f"unknown TensorRT flavor {flavor!r}; use one of {', '.join(FLAVORS)}")
    for name in MODULE_NAMES[flavor]:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        except Exception as exc:  # a broken install (missing libnvinfer, CUDA mismatch) raises others
            raise UserError(f"{name} is installed but cannot be imported ({type(exc).__name__}: "
                            f"{first_line(exc)}); check that its CUDA libraries match") from None
        # `tensorrt-stubs` installs a `tensorrt` folder of .pyi files only: it imports as an empty
        # namespace package, which is not TensorRT.
        if hasattr(module, "Builder"):
            return module
    raise UserError(INSTALL_HINT[flavor])


@dataclass(frozen=True)
class Features:
    """What the loaded TensorRT module offers (docs/trt-api.md, section 8)."""

    module_name: str
    version: str
    is_rtx: bool
    weak_typing: bool  # BuilderFlag.FP16/INT8, layer.precision, set_output_type (8.6-10.x)
    strong_flag: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED exists
    need_explicit_batch: bool  # the 8.x ONNX parser needs EXPLICIT_BATCH
    bf16_flag: bool
    debug_tensors: bool  # mark_debug + IDebugListener (10.0+)
    unfused_debug: bool  # mark_unfused_tensors_as_debug_tensors (10.12+)
    editable_timing_cache: bool  # EDITABLE_TIMING_CACHE + TimingCacheKey (10.8+, 11.x)
    algorithm_selector: bool  # IAlgorithmSelector (<= 10.x)
    calibrators: bool  # IInt8EntropyCalibrator2 (<= 10.x)
    layer_metadata: bool  # ILayer.metadata "[ONNX Layer: name]"
    compute_capability: bool  # TensorRT-RTX ahead-of-time targets

    @classmethod
    def detect(cls, trt: Any) -> Features:
        def has(obj: Any, name: str) -> bool:
            return hasattr(obj, name)

        creation = trt.NetworkDefinitionCreationFlag
        is_rtx = "rtx" in trt.__name__ or has(trt, "ComputeCapability")
        major = leading_int(getattr(trt, "__version__", "0"))
        return cls(
            module_name=trt.__name__,
            version=str(getattr(trt, "__version__", "unknown")),
            is_rtx=is_rtx,
            weak_typing=has(trt.BuilderFlag, "FP16"),
            strong_flag=has(creation, "STRONGLY_TYPED"),
            need_explicit_batch=not is_rtx and major < 10 and has(creation, "EXPLICIT_BATCH"),
            bf16_flag=has(trt.BuilderFlag, "BF16"),
            debug_tensors=has(trt.INetworkDefinition, "mark_debug") and has(trt, "IDebugListener"),
            unfused_debug=has(trt.INetworkDefinition, "mark_unfused_tensors_as_debug_tensors"),
            editable_timing_cache=has(trt.BuilderFlag, "EDITABLE_TIMING_CACHE") and has(trt, "TimingCacheKey"),
            algorithm_selector=has(trt, "IAlgorithmSelector"),
            calibrators=has(trt, "IInt8EntropyCalibrator2"),
            layer_metadata=has(trt.ILayer, "metadata"),
            compute_capability=has(trt, "ComputeCapability"),
        )

    @property
    def flavor(self) -> str:
        return "tensorrt-rtx" if self.is_rtx else "tensorrt"

    def marking_modes(self) -> tuple[str, ...]:
        modes = ["none", "outputs"]
        if self.debug_tensors:
            modes.append("debug")
        if self.unfused_debug:
            modes.append("unfused")
        return tuple(modes)


def leading_int(version: str) -> int:
    """The major version number: the leading integer of `__version__` (tarball wheels add parts)."""
    match = re.match(r"\s*(\d+)", str(version))
    return int(match[1]) if match else 0


@contextmanager
def quiet_deprecations() -> Iterator[None]:
    """TensorRT 10.x warns on every call of an API it deprecated (layer precision, calibrators,
    algorithm selectors); trtdebug uses them on purpose, so the warnings would only be noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def make_logger(trt: Any) -> Any:
    """A TensorRT logger that keeps every message: build errors for messages, the verbose log for
    the editable timing cache and for layer information when no GPU can deserialize the engine."""

    class CapturingLogger(trt.ILogger):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # required by pybind11 trampolines
            self.messages: list[tuple[int, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            self.messages.append((int(severity), str(msg)))

        def errors(self) -> list[str]:
            worst = int(trt.ILogger.ERROR)
            return [m for s, m in self.messages if s <= worst]

        def lines(self) -> list[str]:
            return [m for _, m in self.messages]

        def clear(self) -> None:
            self.messages.clear()

    return CapturingLogger()
