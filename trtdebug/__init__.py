"""trtdebug: find where a reduced-precision TensorRT engine goes wrong, and fix it.

The Python API (docs/api.md): `trtdebug.compare`, `fallback`, `tactics`, `build`, `quantize`. They load
on first use (module `__getattr__`), so `import trtdebug` stays fast and loads neither onnxruntime nor
TensorRT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trtdebug.errors import EngineError, UserError

__version__ = "0.1.0"

API = ("compare", "fallback", "tactics", "build", "quantize", "problem_spec")
__all__ = ["EngineError", "UserError", "__version__", *API]

if TYPE_CHECKING:
    from trtdebug.api import build, compare, fallback, problem_spec, quantize, tactics  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in API:
        from trtdebug import api  # the workflows, numpy and onnx load only now

        return getattr(api, name)
    raise AttributeError(f"module 'trtdebug' has no attribute {name!r}")
