"""Arithmetic variants ("tactics") of emulated layers and the emulated autotuner that picks them.

Filled in by the tactics work (issue 5): until then every layer has a single variant.
"""

from __future__ import annotations

from typing import Any

import onnx


class TacticChooser:
    def __init__(self, model: Any, folded: Any, seed: int | None = None):
        self.model = model
        self.folded = folded
        self.seed = seed

    def choose(self, precisions: dict[str, str], bans: Any) -> dict[str, str]:
        return {}


def apply_variant(node: onnx.NodeProto, variant: str, precision: str, rounder: Any) -> onnx.NodeProto:
    return node
