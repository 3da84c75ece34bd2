"""Memory budget for comparing every tensor: how large the model's tensors are, and in how many
pieces compare must expose them so that what it holds at once fits.

What compare holds at once: the model's weights and a build's copy of them (`weight_bytes`, taken
from the budget first), the FP32 reference of every tensor when that fits in half of what is left
(else only the final outputs, with the rest computed a piece at a time), plus one piece each of
reference, candidate and local-error tensors and the temporaries measuring them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from trtdebug.core.model.graph import Model, infer_shapes

# Pieces let one group be measured while the next runs, but each is a session of its own. With the reference
# streamed, many small pieces won (PP-OCRv4 detector at batch 4). With it held, a few large ones: the
# detector at batch 1 (663 MiB of tensors) 1.0 s in 5 pieces, 1.1 s in 39, 1.3 s whole; the recognizer
# (290 MiB) 3.0 s whole, 3.2 s in 5, 3.4 s in 37; at 76 MiB, 2.3 s whole against 2.7 s in 5. But two
# candidate pieces are alive beside the held reference: YOLOv8n at 4x3x640x640 (0.95 GiB of tensors, held)
# peaked at 1841 MiB in 5 pieces, 1522 MiB in 9, against 1123 MiB for one exposed onnxruntime run.
PIECE_SHARE = 32  # streamed reference: a piece is 1/32 of the tensors ...
MIN_PIECE = 16 * 2**20  # ... and at least this
HELD_PIECES = 8  # held reference: at most 8 pieces ...
HELD_MIN_PIECE = 64 * 2**20  # ... none under this (a smaller model runs whole)
# Tensors beyond this are streamed even where the budget could hold them: the fresh pages a held reference
# takes cost more than computing it again piece by piece beside the measuring (PP-OCRv4 detector at
# 4x3x640x640, 2.6 GiB of tensors: 4.3 s streamed against 5.0 s held, and a third of the memory).
HOLD_AT_MOST = 2**30


def tensor_bytes(model: Model, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Estimated size of every node output at these feeds' shapes (shape inference with the inputs'
    shapes fixed); tensors of unknown shape count as the median known one."""
    shapes = {k: tuple(np.shape(v)) for k, v in feeds.items()}
    # Inputs declared at exactly these shapes: the model's own inferred shapes are the ones wanted.
    as_declared = all(spec.is_static and spec.shape == shapes[spec.name]
                      for spec in model.inputs if spec.name in shapes)
    # custom ops: unknown shapes count as the median
    proto = model.proto if as_declared else infer_shapes(model.proto, shapes, keep_value_info=False)
    sizes: dict[str, int] = {}
    for vi in [*proto.graph.value_info, *proto.graph.output]:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if -1 not in dims:
            sizes[vi.name] = _itemsize(tt.elem_type) * math.prod(dims)
    known = sorted(sizes.values())
    fallback = known[len(known) // 2] if known else 4096
    return {t: sizes.get(t, fallback) for t in model.intermediate_tensors()}


@functools.cache
def _itemsize(elem_type: int) -> int:
    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except Exception:  # noqa: BLE001 - an undefined or unusual type counts as 4 bytes
        return 4


def weight_bytes(model: Model) -> int:
    """The weights a compare or fallback holds: the model's (once, shared by every session) and a build's
    copy of each FP32 weight (the emulator's FP16/BF16-rounded copies; TensorRT's parser holds the
    weights while it builds)."""
    values = model.weights.values()
    return sum(v.nbytes for v in values) + sum(v.nbytes for v in values if v.dtype == np.float32)


def least_budget(sizes: Mapping[str, int], weights: int) -> int:
    """The budget compare needs at the least: the weights, and the largest tensor as reference, candidate
    and local error at once (a group of one tensor; a smaller budget is obeyed as far as that)."""
    return weights + 3 * max(sizes.values(), default=0)


@dataclass(frozen=True)
class ComparePlan:
    """How compare exposes tensors under a budget."""

    budget: int  # for tensors: the budget given, less the weights
    total: int  # estimated bytes of every intermediate tensor
    hold_reference: bool  # the whole FP32 reference fits (half the budget, at most HOLD_AT_MOST): hold it
    groups: list[list[str]]  # the model's tensors, in topological order, exposed a group at a time
    weights: int = 0  # bytes of weights held (weight_bytes), taken from the budget given

    @property
    def chunks(self) -> int:
        return len(self.groups)


def plan_compare(model: Model, sizes: Mapping[str, int], budget: int, weights: int = 0) -> ComparePlan:
    """`budget`: all compare may hold; `weights` of it go to the weights (the caller checks that the
    rest holds a group: `least_budget`)."""
    budget = max(1, budget - weights)
    tensors = model.intermediate_tensors()
    total = sum(sizes.get(t, 0) for t in tensors)
    hold = total <= budget // 2 and total <= HOLD_AT_MOST
    outputs = sum(sizes.get(o.name, 0) for o in model.outputs)
    free = budget - (total if hold else outputs)
    # one piece each of reference, candidate and local tensors, plus measuring temporaries and boundaries;
    # the budget is obeyed below the shares (one tensor per group at the least)
    share = max(total // HELD_PIECES, HELD_MIN_PIECE) if hold else max(total // PIECE_SHARE, MIN_PIECE)
    piece = max(1, min(free // 6, share))
    return ComparePlan(budget, total, hold, group_tensors(tensors, sizes, piece), weights)


def group_tensors(tensors: Sequence[str], sizes: Mapping[str, int], piece: int) -> list[list[str]]:
    groups: list[list[str]] = [[]]
    used = 0
    for t in tensors:
        size = sizes.get(t, 0)
        if groups[-1] and used + size > piece:
            groups.append([])
            used = 0
        groups[-1].append(t)
        used += size
    return groups
