"""trtdebug: find where a reduced-precision TensorRT engine goes wrong, and fix it."""

__version__ = "0.1.0"
