"""Input feeds: generated from the model's input specs, or loaded from .npz / Polygraphy JSON."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from trtdebug import logs
from trtdebug.core.model.graph import Model, TensorSpec
from trtdebug.core.system import files
from trtdebug.core.system.memory import available_memory
from trtdebug.errors import UserError

Shape = tuple[int, ...]
# Generated values per dtype kind (floats: [low, high); integers and bools: both ends inclusive).
DEFAULT_RANGES: dict[str, tuple[float, float]] = {"f": (-1.0, 1.0), "i": (0, 7), "u": (0, 7), "b": (0, 1)}
Feeds = dict[str, np.ndarray]
GiB = 1024**3

def resolve_shapes(model: Model, overrides: Mapping[str, Shape]) -> dict[str, Shape]:
    """The concrete shape of every model input; dynamic dimensions must be given by the user."""
    known = {spec.name for spec in model.inputs}
    for name in overrides:
        if name not in known:
            raise UserError(f"--input-shape names {name!r}, which is not a model input; "
                            f"inputs are: {', '.join(sorted(known))}")
    missing = [spec for spec in model.inputs if spec.name not in overrides and not spec.is_static]
    if len(missing) > 1:  # every one in the one line, so the hint pasted back runs
        given = " ".join(input_shape_hint(spec.name, spec.shape or (), sizes_note=False) for spec in missing)
        raise UserError(f"inputs {', '.join(repr(spec.name) for spec in missing)} have dynamic shapes "
                        f"({'; '.join(_fmt(spec.shape) for spec in missing)}); give them with {given} "
                        f"(the sizes you run in place of the dynamic 1s)")
    shapes = {}
    for spec in model.inputs:
        if spec.name in overrides:
            shape = overrides[spec.name]
            _check_shape_compatible(spec, shape, "--input-shape")
            if 0 in shape:
                raise UserError(f"--input-shape {spec.name}:{'x'.join(map(str, shape))} has no elements; no verdict "
                                "can be drawn from zero elements: give every dimension at least 1")
            shapes[spec.name] = shape
        elif spec.is_static:
            shapes[spec.name] = tuple(d for d in spec.shape or () if isinstance(d, int))
        else:
            raise UserError(f"input {spec.name!r} has dynamic shape {_fmt(spec.shape)}; give one with "
                            f"{input_shape_hint(spec.name, spec.shape or ())}")
    return shapes


def input_shape_hint(name: str, dims: Sequence[int | str | None], sizes_note: bool = True) -> str:
    """`--input-shape NAME:DxDx...` as the parser takes it, each dynamic dimension written as 1."""
    shape = "x".join(str(d) if isinstance(d, int) and d >= 1 else "1" for d in dims)
    return f"--input-shape {name}:{shape}" + (" (the sizes you run in place of the dynamic 1s)" if sizes_note else "")


def generate_feeds(model: Model, shapes: Mapping[str, Shape],
                   ranges: Mapping[str, tuple[float, float]] | None = None, seed: int = 0) -> Feeds:
    """Seeded random inputs. Defaults per dtype: floats uniform in [-1, 1), integers uniform in [0, 7],
    bools 0 or 1. A range given for an integer or bool input is inclusive at both ends: (1, 1) is all ones."""
    ranges = ranges or {}
    unknown = set(ranges) - {s.name for s in model.inputs}
    if unknown:
        raise UserError(f"--input-range names {sorted(unknown)[0]!r}, which is not a model input")
    check_memory(model, shapes)
    rng = np.random.default_rng(seed)
    feeds: Feeds = {}
    for spec in model.inputs:
        shape = shapes[spec.name]
        dtype = spec.dtype or np.dtype(np.float32)
        low, high = ranges.get(spec.name, DEFAULT_RANGES.get(dtype.kind, (0, 7)))
        if dtype.kind == "f":
            feeds[spec.name] = rng.uniform(low, high, size=shape).astype(dtype)
            if spec.name in model.bf16_inputs:  # bfloat16 values, held in FP32
                feeds[spec.name] = _to_bf16(feeds[spec.name])
        elif dtype.kind in "biu":
            first, last = math.ceil(low), math.floor(high)
            kind_low, kind_high = (0, 1) if dtype.kind == "b" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
            if first > last or first < kind_low or last > kind_high:
                raise UserError(f"--input-range {spec.name}:{low:g},{high:g} holds no {dtype} value between "
                                f"{kind_low} and {kind_high}; give whole numbers, e.g. --input-range "
                                f"{spec.name}:{max(kind_low, 0)},{min(kind_high, 1)}")
            feeds[spec.name] = rng.integers(first, last, size=shape, endpoint=True).astype(dtype)
        else:
            raise UserError(f"cannot generate values for input {spec.name!r} of type {dtype}; "
                            "pass them with --inputs feeds.npz")
    return feeds


def _to_bf16(value: np.ndarray) -> np.ndarray:
    bfloat16 = onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.BFLOAT16)
    return value.astype(bfloat16).astype(np.float32)


def check_memory(model: Model, shapes: Mapping[str, Shape], available: int | None = None) -> None:
    """Refuse inputs that cannot fit, before allocating any: a lower bound of what a run holds is the
    feeds, a copy of them in the reference run, and the float64 draw each input is generated from."""
    counts = {spec.name: math.prod(shapes[spec.name]) for spec in model.inputs}
    sizes = {spec.name: counts[spec.name] * (spec.dtype or np.dtype(np.float32)).itemsize for spec in model.inputs}
    needed = 2 * sum(sizes.values()) + 8 * max(counts.values(), default=0)
    available = available_memory() if available is None else available
    if available is None or needed <= available:
        return
    largest = max(sizes, key=lambda name: sizes[name])
    raise UserError(f"the inputs need at least {needed / GiB:.1f} GiB (input {largest!r} of shape "
                    f"{_fmt(tuple(shapes[largest]))} alone is {sizes[largest] / GiB:.1f} GiB) and only "
                    f"{available / GiB:.1f} GiB of memory is available; give smaller shapes with --input-shape")



def load_feeds(path: str | Path) -> Feeds:
    """Read feeds from .npz (pickle disabled) or a Polygraphy input JSON (its first iteration)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"inputs file not found: {path}")
    if path.suffix == ".npz":
        return files.load_npz(path)
    if path.suffix == ".json":
        from polygraphy.json import load_json

        logs.quiet_polygraphy()
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
            value = _cast_to_model(name, value, np.dtype(spec.dtype))
        _check_shape_compatible(spec, value.shape, "inputs file")
        if value.size == 0:  # every tensor of a zero-size batch is empty: any comparison would pass
            raise UserError(f"input {name!r} in the inputs file is empty (shape {_fmt(value.shape)}); no verdict "
                            "can be drawn from zero elements: give at least one sample")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            raise UserError(f"input {name!r} in the inputs file holds {bad} NaN/inf value(s) of {value.size}; "
                            "no verdict can be trusted on them: give finite inputs")
        checked[name] = value
    return checked


def _cast_to_model(name: str, value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """An inputs-file array in the model's dtype, said in one note; refused where the cast would change
    values beyond rounding (an int64 beyond int32's range, a float64 beyond float32's: inf)."""
    if not np.can_cast(value.dtype, dtype, casting="same_kind"):
        raise UserError(f"input {name!r} has dtype {value.dtype}, but the model wants {dtype}")
    if value.size and value.dtype.kind in "iu" and dtype.kind in "iu":
        low, high = np.iinfo(dtype).min, np.iinfo(dtype).max
        bad = value[(value < low) | (value > high)]
    elif value.size and value.dtype.kind == "f" and dtype.kind == "f":
        bad = value[np.isfinite(value) & (np.abs(value) > np.finfo(dtype).max)]
    else:
        bad = value[:0]
    if bad.size:
        raise UserError(f"input {name!r} is {value.dtype} in the inputs file and holds {bad.flat[0]}, which "
                        f"{dtype} (the model's dtype) cannot hold; save values in {dtype}'s range")
    logs.notes.info(f"input {name!r} is {value.dtype} in the inputs file; cast to {dtype}")
    return value.astype(dtype)


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


def feeds_sha256(feeds: Mapping[str, np.ndarray], *salt: str) -> str:
    """Identity of a set of tensors (names, dtypes, shapes, values), with optional salt strings first."""
    digest = hashlib.sha256("|".join(salt).encode()) if salt else hashlib.sha256()
    for name in sorted(feeds):
        value = np.ascontiguousarray(feeds[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()
