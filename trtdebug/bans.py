"""BanList: tactics (kernels, arithmetic variants) that later builds must not use, as versioned JSON.

An entry is keyed by the engine layer (builder layer name for TensorRT's algorithm selector, a
timing-cache key for the editable timing cache, a layer name for the emulator) and names the ONNX
nodes the layer covers, so a ban survives a rebuild even when layer names change.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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

    def to_json(self) -> dict[str, Any]:
        return {"format": BANS_FORMAT, "version": BANS_VERSION, "model_sha256": self.model_sha256,
                "provenance": self.provenance,
                "entries": [{**asdict(e), "onnx_nodes": list(e.onnx_nodes)} for e in self.entries]}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def from_json(cls, data: Any, source: str = "ban list") -> BanList:
        if not isinstance(data, dict) or data.get("format") != BANS_FORMAT:
            raise UserError(f"{source} is not a trtdebug ban list (no \"format\": \"{BANS_FORMAT}\")")
        if data.get("version") != BANS_VERSION:
            raise UserError(f"{source} is ban-list version {data.get('version')}; this trtdebug reads "
                            f"version {BANS_VERSION}")
        try:
            entries = tuple(BanEntry(**{**e, "onnx_nodes": tuple(e.get("onnx_nodes", ()))})
                            for e in data.get("entries", []))
        except TypeError as exc:
            raise UserError(f"{source} has a malformed entry ({exc})") from None
        return cls(entries, data.get("model_sha256"), data.get("provenance") or {})

    @classmethod
    def load(cls, path: str | Path) -> BanList:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"ban list not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{path} is not valid JSON; pass a file written by `trtdebug tactics`") from None
        return cls.from_json(data, str(path))

    def check_for(self, model_sha256: str, source: str = "the ban list") -> None:
        if self.model_sha256 and self.model_sha256 != model_sha256:
            raise UserError(f"{source} was made for another model; run `trtdebug tactics` on this model")
