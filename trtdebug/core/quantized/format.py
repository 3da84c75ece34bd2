"""A quantized format (INT8, FP8 E4M3, INT4 weight-only): everything that differs between formats, behind
one protocol, chosen once per model by `format_of`.

Workflows and engines ask the model's format and never test the model's class: a float model has no
format (None), and a workflow then does what it does for FP16/BF16 builds. A new format is one
module beside int8.py with a class implementing `QuantFormat` and an `of(model)` that claims the
models it quantizes (by its Q/DQ pairs' code types), listed in FORMATS below.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import onnx

from trtdebug.core.analysis.defects import Defect
from trtdebug.core.analysis.metrics import CompareResult, TensorReport
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.quantized.fp8 import Fp8Format
from trtdebug.core.quantized.int4 import Int4Format
from trtdebug.core.quantized.int8 import Int8Format
from trtdebug.core.quantized.qdq import QdqPair, QuantizedModel
from trtdebug.core.quantized.scale_findings import CodeFlips
from trtdebug.core.search.strategies import Suspicion


class QuantFormat(Protocol):
    """One quantized format of one model: its Q/DQ matching, its findings, and what a fallback may
    take out of it."""

    @property
    def precision(self) -> str:
        """The plan precision that means "in this format" ("int8"); also the key of its findings in a
        compare report's marking notes and of its part of a fallback plan's provenance."""

    @property
    def model(self) -> QuantizedModel:
        """The float counterpart (what the reference runs) with the Q/DQ model and its matched pairs."""

    # -- findings ---------------------------------------------------------------------------------

    def code_flips(self, tensor: str, ref: np.ndarray, cand: np.ndarray) -> CodeFlips | None:
        """How a wrong quantized tensor's candidate codes differ from its reference's (None: the tensor
        is not quantized); taken while the comparison holds its values, for `annotate`."""

    def annotate(self, tensors: Sequence[TensorReport], plan: PrecisionPlan, reference: Mapping[str, np.ndarray],
                 flips: Mapping[str, CodeFlips] | None = None) -> dict[str, dict[str, Any]]:
        """Attach this format's defects (bad scales, code flips) to the wrong tensors they explain; return
        each quantized tensor's statistics (the report's notes.marking.<format>.tensors)."""

    def defects(self, result: CompareResult) -> list[tuple[str, Defect]]:
        """(tensor, defect) for every defect of this format in `result`, in topological order."""

    # -- fallback -----------------------------------------------------------------------------------

    def fallback_candidates(self, base: PrecisionPlan) -> list[str]:
        """The names a fallback may take out of the format (pairs or layers), in graph order: only
        those `base` leaves in it."""

    def rank(self, candidates: list[str], compare: CompareResult | None) -> list[Suspicion]:
        """`candidates` from most to least suspicious, from the base plan's compare run (None: the
        build failed, rank by static signals)."""

    def layers_of(self, kept: Iterable[str]) -> list[str]:
        """The float-counterpart layers the kept candidates take out of the format (costs count them)."""

    def candidate_kinds(self) -> dict[str, str]:
        """Candidate name -> what it is, for candidates that are no layer of the float counterpart."""

    def provenance(self, kept: Iterable[str]) -> dict[str, Any]:
        """What a plan keeping `kept` takes out of the format, in words a reader of the plan can check."""

    def identity(self) -> dict[str, Any]:
        """What else than the model file decides the format's numbers (a journal binds to it)."""

    # -- a plan made concrete -------------------------------------------------------------------------

    def plan_model(self, plan_nodes: Mapping[str, str]) -> onnx.ModelProto:
        """The Q/DQ model a plan describes, with what it keeps out of the format taken out."""

    def live_pairs(self, plan_nodes: Mapping[str, str]) -> list[QdqPair]:
        """The activation pairs a plan leaves in the format (the tensors a build quantizes)."""

    def layer_plan(self, plan: PrecisionPlan) -> PrecisionPlan:
        """The plan without its pair keys (graph edits): the layer precisions a builder sets."""


# Each format's claim on a model: its format object, or None when the model is not in that format.
FORMATS: tuple[Callable[[Model], QuantFormat | None], ...] = (Int8Format.of, Fp8Format.of, Int4Format.of)

# Weak: a model no problem holds any more takes its format with it.
_chosen: weakref.WeakKeyDictionary[Model, QuantFormat | None] = weakref.WeakKeyDictionary()


def format_of(model: Model) -> QuantFormat | None:
    """The model's quantized format, chosen on the first call and the same object after it; None for
    a float model."""
    if model not in _chosen:
        _chosen[model] = next((f for f in (claim(model) for claim in FORMATS) if f is not None), None)
    return _chosen[model]


def format_for(model: Model, plan: PrecisionPlan) -> QuantFormat | None:
    """The model's format when `plan` builds in it (its default precision is the format's); else None."""
    chosen = format_of(model)
    return chosen if chosen is not None and plan.default == chosen.precision else None
