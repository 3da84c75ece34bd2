"""BanList: tactics (kernels, arithmetic variants) that later builds must not use, as versioned JSON.

An entry is keyed by the engine layer (builder layer name for TensorRT's algorithm selector, a
timing-cache key for the editable timing cache, a layer name for the emulator) and names the ONNX
nodes the layer covers, so a ban survives a rebuild even when layer names change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from trtdebug.core.system import files
from trtdebug.errors import UserError

BANS_FORMAT = "trtdebug.ban-list"
BANS_VERSION = 1


@dataclass(frozen=True)
class BanEntry:
    layer: str  # engine layer name (as the engine reports it)
    tactic: str  # the banned tactic: name, hash or variant
    onnx_nodes: tuple[str, ...] = ()
    cache_key: str | None = None  # editable timing cache key ("0x" + 32 hex), TensorRT 10.8+ / 11
    engine: str = ""  # which engine found it: emulator, tensorrt, tensorrt-rtx
    evidence: dict[str, Any] = field(default_factory=dict)  # errors before/after, builds used

    def matches(self, layer: str, onnx_nodes: tuple[str, ...] | list[str] = ()) -> bool:
        """Same layer name, or (names differ between builds) the same covered ONNX nodes."""
        return layer == self.layer or (bool(self.onnx_nodes) and tuple(onnx_nodes) == self.onnx_nodes)


@dataclass(frozen=True)
class BanList:
    entries: tuple[BanEntry, ...] = ()
    model_sha256: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def banned_for(self, layer: str, onnx_nodes: tuple[str, ...] | list[str] = ()) -> set[str]:
        return {e.tactic for e in self.entries if e.matches(layer, onnx_nodes)}

    def by_cache_key(self) -> dict[str, set[str]]:
        keys: dict[str, set[str]] = {}
        for e in self.entries:
            if e.cache_key:
                keys.setdefault(e.cache_key, set()).add(e.tactic)
        return keys

    def __len__(self) -> int:
        return len(self.entries)

    def extended(self, entries: Iterable[BanEntry]) -> BanList:
        """These bans plus `entries`, each (layer, ONNX nodes, tactic) once."""
        merged = {(e.layer, e.onnx_nodes, e.tactic): e for e in self.entries}
        for e in entries:
            merged.setdefault((e.layer, e.onnx_nodes, e.tactic), e)
        return replace(self, entries=tuple(merged.values()))

    def to_json(self) -> dict[str, Any]:
        return files.versioned(BANS_FORMAT, BANS_VERSION, {
            "model_sha256": self.model_sha256, "provenance": self.provenance,
            "entries": [{**asdict(e), "onnx_nodes": list(e.onnx_nodes)} for e in self.entries]})

    def save(self, path: str | Path) -> None:
        files.write_json(path, self.to_json())

    @classmethod
    def from_json(cls, data: Any, source: str = "ban list") -> BanList:
        data = files.require_format(data, BANS_FORMAT, BANS_VERSION, source, "ban list")
        entries = data.get("entries", [])
        if not isinstance(entries, list):
            raise UserError(f"{source}: \"entries\" must be a list of bans; regenerate it with `trtdebug tactics`")
        return cls(tuple(_entry(e, i, source) for i, e in enumerate(entries)), data.get("model_sha256"),
                   data.get("provenance") or {})

    @classmethod
    def load(cls, path: str | Path, model_sha256: str | None = None) -> BanList:
        """Read a ban list; with `model_sha256`, refuse one made for another model (even an empty one)."""
        data = files.read_json(path, "ban list", hint="pass a file written by `trtdebug tactics`")
        bans = cls.from_json(data, str(path))
        if model_sha256 is not None:
            bans.check_for(model_sha256, str(path))
        return bans

    def check_for(self, model_sha256: str, source: str = "the ban list") -> None:
        if self.model_sha256 and self.model_sha256 != model_sha256:
            raise UserError(f"{source} was made for another model; run `trtdebug tactics` on this model")


def _entry(data: Any, index: int, source: str) -> BanEntry:
    """One ban from JSON, with the fields a build relies on checked."""
    where = f"{source}: entry {index}"
    if not isinstance(data, dict):
        raise UserError(f"{where} is not an object; regenerate the ban list with `trtdebug tactics`")
    for key in ("layer", "tactic"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise UserError(f"{where} needs a non-empty string \"{key}\"; regenerate the ban list")
    nodes = data.get("onnx_nodes", [])
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise UserError(f"{where}: \"onnx_nodes\" must be a list of node names")
    if not isinstance(data.get("evidence", {}), dict):
        raise UserError(f"{where}: \"evidence\" must be an object")
    try:
        return BanEntry(**{**data, "onnx_nodes": tuple(nodes)})
    except TypeError as exc:  # unknown keys
        raise UserError(f"{where} is malformed ({exc})") from None
