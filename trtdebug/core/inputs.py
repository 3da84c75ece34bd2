"""Input feeds: generated from the model's input specs, or loaded from .npz / Polygraphy JSON."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from trtdebug.core import files
from trtdebug.core.model import Model, TensorSpec
from trtdebug.errors import UserError

Shape = tuple[int, ...]
Feeds = dict[str, np.ndarray]

def resolve_shapes(model: Model, overrides: Mapping[str, Shape]) -> dict[str, Shape]:
    """The concrete shape of every model input; dynamic dimensions must be given by the user."""
    known = {spec.name for spec in model.inputs}
    for name in overrides:
        if name not in known:
            raise UserError(f"--input-shape names {name!r}, which is not a model input; "
                            f"inputs are: {', '.join(sorted(known))}")
    shapes = {}
    for spec in model.inputs:
        if spec.name in overrides:
            shape = overrides[spec.name]
            _check_shape_compatible(spec, shape, "--input-shape")
            shapes[spec.name] = shape
        elif spec.is_static:
            shapes[spec.name] = tuple(d for d in spec.shape or () if isinstance(d, int))
        else:
            raise UserError(f"input {spec.name!r} has dynamic shape {_fmt(spec.shape)}; "
                            f"give one with --input-shape {spec.name}:" +
                            "x".join(str(d) if isinstance(d, int) else "N" for d in spec.shape or ()))
    return shapes


def generate_feeds(model: Model, shapes: Mapping[str, Shape],
                   ranges: Mapping[str, tuple[float, float]] | None = None, seed: int = 0) -> Feeds:
    """Seeded random inputs: floats uniform in [-1, 1], integers in [0, 8), bools balanced."""
    ranges = ranges or {}
    unknown = set(ranges) - {s.name for s in model.inputs}
    if unknown:
        raise UserError(f"--input-range names {sorted(unknown)[0]!r}, which is not a model input")
    rng = np.random.default_rng(seed)
    feeds: Feeds = {}
    for spec in model.inputs:
        shape = shapes[spec.name]
        dtype = spec.dtype or np.dtype(np.float32)
        low, high = ranges.get(spec.name, (-1.0, 1.0) if dtype.kind == "f" else (0, 8))
        if dtype.kind == "f":
            feeds[spec.name] = rng.uniform(low, high, size=shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        elif dtype.kind in "iu":
            feeds[spec.name] = rng.integers(int(low), max(int(high), int(low) + 1), size=shape).astype(dtype)
        else:
            raise UserError(f"cannot generate values for input {spec.name!r} of type {dtype}; "
                            "pass them with --inputs feeds.npz")
    return feeds


def load_feeds(path: str | Path) -> Feeds:
    """Read feeds from .npz (pickle disabled) or a Polygraphy input JSON (its first iteration)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"inputs file not found: {path}")
    if path.suffix == ".npz":
        return files.load_npz(path)
    if path.suffix == ".json":
        from polygraphy.json import load_json

        try:
            loaded = load_json(str(path))
        except Exception as exc:
            raise UserError(f"{path} is not a Polygraphy input JSON file ({type(exc).__name__}); "
                            "write it with `polygraphy run --save-inputs` or use .npz") from None
        iteration = loaded[0] if isinstance(loaded, list) and loaded else loaded
        if not isinstance(iteration, Mapping):
            raise UserError(f"{path} holds no input feeds; expected a list of {{name: array}} dicts")
        return {str(k): np.asarray(v) for k, v in iteration.items()}
    raise UserError(f"unsupported inputs file {path.name}; use .npz or Polygraphy .json")


def validate_feeds(model: Model, feeds: Mapping[str, np.ndarray]) -> Feeds:
    """Check names, dtypes and shapes against the model; returns feeds in the model's input order."""
    expected = {spec.name: spec for spec in model.inputs}
    extra = sorted(set(feeds) - set(expected))
    if extra:
        raise UserError(f"inputs file has {extra[0]!r}, which is not a model input; "
                        f"inputs are: {', '.join(expected)}")
    missing = [name for name in expected if name not in feeds]
    if missing:
        raise UserError(f"inputs file lacks model input {missing[0]!r}")
    checked: Feeds = {}
    for name, spec in expected.items():
        value = np.asarray(feeds[name])
        if spec.dtype is not None and value.dtype != spec.dtype:
            if not np.can_cast(value.dtype, spec.dtype, casting="same_kind"):
                raise UserError(f"input {name!r} has dtype {value.dtype}, but the model wants {spec.dtype}")
            value = value.astype(spec.dtype)
        _check_shape_compatible(spec, value.shape, "inputs file")
        checked[name] = value
    return checked


def _check_shape_compatible(spec: TensorSpec, shape: Shape, where: str) -> None:
    if spec.shape is None:
        return
    ok = len(spec.shape) == len(shape) and all(
        not isinstance(d, int) or d <= 0 or d == s for d, s in zip(spec.shape, shape, strict=False))
    if not ok:
        raise UserError(f"{where}: input {spec.name!r} shape {_fmt(shape)} does not fit the model's "
                        f"{_fmt(spec.shape)}")


def _fmt(shape: tuple | None) -> str:
    if shape is None:
        return "unknown"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
