"""Engines under test, all behind the protocol in `trtdebug.engines.base`."""

from __future__ import annotations

from trtdebug.engines.base import BuildError, Built, Engine, LayerInfo, Marking
from trtdebug.errors import UserError

ENGINE_NAMES = ("emulator", "tensorrt", "tensorrt-rtx", "results")
DEFAULT_ENGINE = "emulator"


def get_engine(name: str, **options: object) -> Engine:
    """Create an engine by name; TensorRT modules are only imported when asked for."""
    if name == "emulator":
        from trtdebug.engines.emulator.engine import EmulatorEngine

        return EmulatorEngine(**options)  # type: ignore[arg-type]
    if name in ("tensorrt", "tensorrt-rtx"):
        from trtdebug.engines.tensorrt.engine import TensorRTEngine

        return TensorRTEngine(flavor=name, **options)  # type: ignore[arg-type]
    if name == "results":
        from trtdebug.engines.results import ResultsEngine

        return ResultsEngine(**options)  # type: ignore[arg-type]
    raise UserError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_NAMES)}")


__all__ = ["DEFAULT_ENGINE", "ENGINE_NAMES", "BuildError", "Built", "Engine", "LayerInfo", "Marking", "get_engine"]
