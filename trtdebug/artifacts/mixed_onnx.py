"""ONNX files written for other tools: the mixed-precision model of a plan (core.plans.cast_islands builds the
graph), and any model trtdebug writes (quantized, Q/DQ pairs removed), with the > 2 GiB path."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import onnx

from trtdebug.core.model.graph import Model
from trtdebug.core.model.weights import DerivedWeights, Weights, save_with_weights, serialized_pieces, weight_bytes
from trtdebug.core.plans.cast_islands import to_mixed_precision_onnx
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.system import files

# protobuf cannot serialize a message of 2 GiB or more; beyond it the weights go to a data file.
PROTOBUF_LIMIT = 2**31 - 1


def write_mixed_onnx(model: Model, plan: PrecisionPlan, path: str | Path) -> Path:
    """The plan as a typed ONNX file (for TensorRT 11.x, TensorRT-RTX, STRONGLY_TYPED builds)."""
    weights = DerivedWeights(model.weights)
    return write_model(to_mixed_precision_onnx(model, plan, weights), path, weights)


def write_model(typed: onnx.ModelProto, path: str | Path, weights: Weights | None = None) -> Path:
    """An ONNX model written atomically, its weight placeholders' values (`weights`, core.model.weights)
    put back; beyond protobuf's 2 GiB limit, with its weights in NAME.onnx.data beside it, written an
    array at a time. `typed` is a proto of our own making: saving with external data rewrites it in place."""
    path = Path(path)
    weights = weights or {}
    held = weight_bytes(typed, weights)
    if typed.ByteSize() + held < PROTOBUF_LIMIT:
        if not held:
            return files.write_atomic(path, lambda staged: onnx.save(typed, str(staged)))
        return files.write_atomic(path, lambda staged: _write_pieces(staged, serialized_pieces(typed, weights)))
    data_name = f"{path.name}.data"
    # Both files are staged in one folder beside the destination, then renamed into place.
    with tempfile.TemporaryDirectory(dir=files.folder_for(path), prefix=f".{path.name}.") as folder:
        staged = Path(folder) / path.name
        if held:
            save_with_weights(typed, weights, staged, data_name)
        else:
            onnx.save(typed, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                      location=data_name)
        os.replace(Path(folder) / data_name, path.parent / data_name)
        os.replace(staged, path)
    return path


def _write_pieces(path: Path, pieces: Iterable[bytes]) -> None:
    with open(path, "wb") as out:
        for piece in pieces:
            out.write(piece)
