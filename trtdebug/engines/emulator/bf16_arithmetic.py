"""BF16 rounding spelled in arithmetic, for models below opset 13 (where Cast to BFLOAT16 does not exist).

A float32 value rounded to BF16 keeps 8 significant bits: x -> Round(x / 2^q) * 2^q with the quantum
q = e - 7, e = floor(log2 |x|) clamped to [-126, 127] (below -126, BF16 is subnormal with the fixed
quantum 2^-133; at 127, a value rounding up to 2^128 overflows to inf, as the Cast does). ONNX Round is
half-to-even, so ties round like the Cast (round to nearest even). Every multiplication is by a power
of two read from a table, split in two halves so no factor over- or underflows: the result is exact,
bit for bit the Cast pair's (signed zeros, subnormals, inf and NaN included).

Log can be off by one near powers of two, so e is corrected by comparing |x| with 2^e and 2^(e+1).
Round and Clip with tensor bounds need opset 11.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from trtdebug.errors import UserError

MIN_OPSET = 11  # Round
BF16_CAST_OPSET = 13  # from here on, a Cast pair rounds to BF16
_HALF_RANGE = 67  # the halves of every scaling exponent lie in [-67, 67]


def refuse_bf16_below_min_opset(opset: int, precisions: Iterable[str]) -> None:
    """Before any build: BF16 rounding needs opset 11 (a user error, not a failed candidate)."""
    if opset < MIN_OPSET and "bf16" in set(precisions):
        raise UserError(f"BF16 on an opset-{opset} model: the emulator rounds to BF16 with ops of opset "
                        f"{MIN_OPSET} or newer; re-export the model with opset >= {MIN_OPSET}")


def bf16_rounding_nodes(source: str, target: str, prefix: str, opset: int) -> list[onnx.NodeProto]:
    """Nodes writing `source` (FP32) rounded to BF16 as `target` (FP32), their tensors named `prefix`::..."""
    refuse_bf16_below_min_opset(opset, ["bf16"])
    nodes: list[onnx.NodeProto] = []

    def op(op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        out = f"{prefix}::{name}"
        nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def const(value: object, name: str) -> str:
        dtype = np.int64 if isinstance(value, int) else np.float32
        return op("Constant", [], name, value=numpy_helper.from_array(np.asarray(value, dtype)))

    table = const(np.exp2(np.arange(-_HALF_RANGE, _HALF_RANGE + 1)).astype(np.float32), "pow2")

    def pow2(exponent: str, name: str) -> str:  # 2^exponent for a float tensor of integers in [-67, 67]
        index = op("Cast", [op("Add", [exponent, const(float(_HALF_RANGE), f"{name}_offset")], f"{name}_shifted")],
                   f"{name}_index", to=onnx.TensorProto.INT64)
        return op("Gather", [table, index], name)

    magnitude = op("Abs", [source], "abs")
    # NaN keeps the exponent path finite (the result is NaN all the same: x itself is multiplied)
    magnitude = op("Where", [op("IsNaN", [magnitude], "is_nan"), const(1.0, "one"), magnitude], "abs_finite")
    low, high = const(-126.0, "emin"), const(127.0, "emax")
    guess = op("Clip", [op("Floor", [op("Mul", [op("Log", [magnitude], "ln"), const(1 / np.log(2), "log2e")],
                                        "log2")], "floor"), low, high], "guess")
    # 2^guess as the product of two table entries (guess itself may lie beyond the table)
    guess_half = op("Floor", [op("Mul", [guess, const(0.5, "half")], "guess_halved")], "guess_half")
    power = op("Mul", [pow2(guess_half, "p1"), pow2(op("Sub", [guess, guess_half], "guess_rest"), "p2")], "power")
    below = op("Cast", [op("Less", [magnitude, power], "is_below")], "below", to=onnx.TensorProto.FLOAT)
    above = op("Cast", [op("Not", [op("Less", [magnitude, op("Add", [power, power], "power2")], "under_next")],
                           "is_above")], "above", to=onnx.TensorProto.FLOAT)
    exponent = op("Clip", [op("Sub", [op("Add", [guess, above], "raised"), below], "corrected"), low, high],
                  "exponent")
    # x / 2^(e - 7) = x * 2^h1 * 2^h2, h1 + h2 = 7 - e in [-120, 133]
    down = op("Sub", [const(7.0, "seven"), exponent], "down")
    h1 = op("Floor", [op("Mul", [down, const(0.5, "half2")], "down_halved")], "h1")
    h2 = op("Sub", [down, h1], "h2")
    scaled = op("Mul", [op("Mul", [source, pow2(h1, "s1")], "scaled1"), pow2(h2, "s2")], "scaled")
    steps = op("Round", [scaled], "steps")
    back = op("Mul", [steps, pow2(op("Neg", [h1], "u1"), "b1")], "back1")
    nodes.append(helper.make_node("Mul", [back, pow2(op("Neg", [h2], "u2"), "b2")], [target], name=f"{prefix}::back"))
    return nodes
