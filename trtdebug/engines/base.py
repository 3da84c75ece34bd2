"""The engine protocol: the seam that keeps TensorRT optional.

An Engine builds a model under a PrecisionPlan (and optionally a tactic BanList) with some of
its tensors exposed (Marking), and the Built result runs feeds and returns tensors keyed by their
ONNX names. Everything above this seam (workflows, core) is engine-agnostic.

What an engine can do beyond that is declared, not probed: `Engine.capabilities` says which of
the optional protocols below the engine (or what it builds) implements, and `as_*` helpers turn a
declared capability into the typed object. A test checks that every engine's declaration matches
the methods it really has.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, get_args

import numpy as np

from trtdebug.errors import EngineError

if TYPE_CHECKING:
    from trtdebug.core.model.graph import Model
    from trtdebug.core.plans.ban_list import BanList
    from trtdebug.core.plans.precision_plan import PrecisionPlan

# "auto": the engine's least intrusive way (TensorRT >= 10.12: unfused debug tensors, else outputs)
MarkMode = Literal["outputs", "debug", "unfused", "auto", "none"]
MARK_MODES: tuple[str, ...] = tuple(m for m in get_args(MarkMode) if m != "none")  # what a user can ask for
COMPARE_MARKING: MarkMode = "auto"  # compare's default: observe without changing the engine where it can


class BuildError(EngineError):
    """The engine could not be built with this plan or these bans. A search treats it as a failed
    candidate; anywhere else it ends the run as an engine failure."""


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


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do beyond build-and-run."""

    rebuilds: bool = True  # a plan or ban list changes what it computes (False: saved results)
    exact_marking: bool = False  # exposing tensors never changes what is computed
    local_error: bool = False  # what it builds is a LocalErrorBuilt
    substitution: bool = False  # what it builds is a SubstitutingBuilt (culprits are measured, not guessed)
    serializes: bool = False  # what it builds is a SerializableBuilt (an engine file)
    records_tactics_on_request: bool = False  # the engine is a TacticRecordingEngine
    reseeds_tactics: bool = False  # the engine is a TacticReseedingEngine
    tactics: bool = False  # its LayerInfo carries tactics and a ban list changes them
    pieces: bool = False  # what it builds is a PiecewiseBuilt (exposes tensors a group at a time)
    replans: bool = False  # the engine is a ReplanningEngine (a search's plans without a build each)


class Built(Protocol):
    layers: list[LayerInfo]
    # What the build exposed, for the report: mode, marked/dropped tensors, notes.
    marking_notes: dict[str, Any]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; returns every exposed tensor keyed by its ONNX tensor name."""
        ...


class LocalErrorBuilt(Built, Protocol):
    def run_local(self, reference: Mapping[str, np.ndarray],
                  tensors: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """Every layer fed with the reference's values of its inputs: its own error, isolated.
        `tensors`: only the layers writing these (`reference` holds at least what they read)."""
        ...


class SubstitutingBuilt(Built, Protocol):
    def run_substituted(self, feeds: Mapping[str, np.ndarray], replacements: Mapping[str, np.ndarray],
                        switchable: Collection[str] = ()) -> dict[str, np.ndarray]:
        """Run with the given tensors replaced by these values (downstream layers read them as they would
        read the engine's own); returns the final outputs. `switchable`: every tensor calls of one search
        may replace, so that the engine can prepare them all once."""
        ...


class PiecewiseBuilt(LocalErrorBuilt, Protocol):
    def run_pieces(self, feeds: Mapping[str, np.ndarray], groups: Sequence[Sequence[str]]
                   ) -> Iterator[dict[str, np.ndarray]]:
        """`run`, one dict per group of tensors: each group's exposed tensors, the values of one run."""
        ...

    def run_local_piece(self, k: int, reference: Mapping[str, np.ndarray],
                        groups: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
        """`run_local` for group k's tensors; `reference` holds (at least) what they read."""
        ...

    def local_reads(self, k: int, groups: Sequence[Sequence[str]]) -> set[str]:
        """The reference tensors `run_local_piece(k, ...)` reads."""
        ...

    def run_exposing(self, feeds: Mapping[str, np.ndarray], tensors: Sequence[str]) -> dict[str, np.ndarray]:
        """One run exposing only these tensors."""
        ...


class SerializableBuilt(Built, Protocol):
    def serialize(self) -> bytes:
        """The engine file of an unmarked build."""
        ...


class Engine(Protocol):
    name: str
    capabilities: Capabilities

    def build(self, model: Model, plan: PrecisionPlan, bans: BanList | None = None,
              mark: Marking | None = None) -> Built:
        ...


class TacticRecordingEngine(Engine, Protocol):
    def recording_tactics(self) -> Engine:
        """The same engine, recording each layer's tactic and alternatives."""
        ...


class TacticReseedingEngine(Engine, Protocol):
    def with_tactic_seed(self, seed: int) -> Engine:
        """The same engine autotuning with other noise: a repeated build that may pick other tactics."""
        ...


class ReplanningEngine(Engine, Protocol):
    def replanned(self, model: Model, plan: PrecisionPlan, bans: BanList | None = None) -> Built:
        """What `build(model, plan, bans, Marking.final_outputs_only())` gives, the same values bit for
        bit, without a build where an earlier plan's build can be switched to this one."""
        ...


def as_local_error(engine: Engine, built: Built) -> LocalErrorBuilt | None:
    return cast(LocalErrorBuilt, built) if engine.capabilities.local_error else None


def as_substituting(engine: Engine, built: Built) -> SubstitutingBuilt | None:
    return cast(SubstitutingBuilt, built) if engine.capabilities.substitution else None


def as_replanning(engine: Engine) -> ReplanningEngine | None:
    return cast(ReplanningEngine, engine) if engine.capabilities.replans else None


def as_piecewise(engine: Engine, built: Built) -> PiecewiseBuilt | None:
    # the emulator's Q/DQ builds (emulator/int8.py, float_qdq.py) run whole: only its float builds run in pieces
    return cast(PiecewiseBuilt, built) if engine.capabilities.pieces and hasattr(built, "run_pieces") else None


def as_serializable(engine: Engine, built: Built) -> SerializableBuilt | None:
    return cast(SerializableBuilt, built) if engine.capabilities.serializes else None


def tactic_recording(engine: Engine) -> Engine:
    """The engine, set to record each layer's tactic and alternatives where that is optional."""
    if engine.capabilities.records_tactics_on_request:
        return cast(TacticRecordingEngine, engine).recording_tactics()
    return engine


def reseeded(engine: Engine, seed: int) -> Engine | None:
    """The engine with other autotuning noise, or None where it cannot vary its tactics on purpose."""
    if engine.capabilities.reseeds_tactics:
        return cast(TacticReseedingEngine, engine).with_tactic_seed(seed)
    return None
