"""The engine protocol: the seam that keeps TensorRT optional.

An Engine builds a model under a PrecisionPlan (and optionally a tactic BanList) with some of
its tensors exposed (Marking), and the Built result runs feeds and returns tensors keyed by their
ONNX names. Everything above this seam (compare, search, tactics, report) is engine-agnostic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from trtdebug.core.bans import BanList
    from trtdebug.core.model import Model
    from trtdebug.core.precision import PrecisionPlan

MarkMode = Literal["outputs", "debug", "unfused", "none"]


class BuildError(Exception):
    """The engine could not be built with this plan or these bans (a search treats it as a failed
    candidate, not as a crash)."""


@dataclass(frozen=True)
class Marking:
    """Which tensors to expose, and how (see docs/architecture.md)."""

    mode: MarkMode = "outputs"
    tensors: tuple[str, ...] | None = None  # None: every markable tensor
    chunk_size: int | None = None  # expose at most this many tensors per build

    @classmethod
    def final_outputs_only(cls) -> Marking:
        return cls(mode="none")


@dataclass
class LayerInfo:
    """One engine layer (possibly a fusion of several ONNX nodes)."""

    name: str
    onnx_nodes: tuple[str, ...]
    precision: str  # what the layer computes in: fp32/fp16/bf16/int8, or "" when unknown
    tactic: str = ""  # kernel / tactic / arithmetic variant chosen
    op_type: str = ""
    outputs: tuple[str, ...] = ()
    alternatives: tuple[str, ...] = ()  # other tactics seen for this layer
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Built(Protocol):
    layers: list[LayerInfo]
    # What the build exposed, for the report: mode, marked/dropped tensors, notes.
    marking_notes: dict[str, Any]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; returns every exposed tensor keyed by its ONNX tensor name."""
        ...


class Engine(Protocol):
    name: str

    def build(self, model: Model, plan: PrecisionPlan, bans: BanList | None = None,
              mark: Marking | None = None) -> Built:
        ...
