"""A plan built into an engine file, where the engine has a serialized form."""

from __future__ import annotations

from pathlib import Path

from trtdebug.core.model.graph import Model
from trtdebug.core.plans.ban_list import BanList
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.system import files
from trtdebug.engines.base import Engine, Marking, as_serializable


def write_engine(engine: Engine, model: Model, plan: PrecisionPlan, bans: BanList | None, path: str | Path) -> bool:
    """Build without marking and save the engine; False when this engine has no serialized form.
    Raises BuildError when the build fails."""
    if not engine.capabilities.serializes:
        return False
    built = as_serializable(engine, engine.build(model, plan, bans, Marking.final_outputs_only()))
    assert built is not None
    files.write_bytes(path, bytes(built.serialize()))
    return True
