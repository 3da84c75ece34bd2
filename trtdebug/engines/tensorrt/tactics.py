"""The TensorRT side of tactics: recording the tactic each layer got, and keeping banned tactics out.

Two mechanisms, picked by feature detection:
- IAlgorithmSelector (TensorRT <= 10.x). `report_algorithms` records each layer's choice and
  `select_algorithms` returns every offered choice except banned ones. It never replays a recorded
  choice, and an unknown or all-banned tactic leaves the choices as offered: a ban never fails a
  build. A selector tactic is named "0x<implementation>:0x<tactic>".
- The editable timing cache (10.8+, 11.x). The builder logs, per autotuned op, its cache key and a
  table of the tactics it timed (fastest first); nothing in the API maps keys to layers, so the log
  is parsed exactly as NVIDIA's sampleEditableTimingCache does. A ban is applied by writing the
  next-best tactic of that op's table into the cache entry (timing 1.0 ms, as the sample does) and
  building again. A timing-cache tactic is named by its hash ("0x533a71cee0d0e") or kernel name.
TensorRT-RTX has no autotuning (its timing cache calls are no-ops), so neither applies there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trtdebug.core.plans.ban_list import BanList

if TYPE_CHECKING:
    import tensorrt as trt

MASK64 = (1 << 64) - 1
NodesOf = Callable[[str], tuple[str, ...]]


@dataclass
class TacticRecord:
    """What the builder chose for one of its layers, and what else it could have used."""

    layer: str  # the builder's name: algorithm-context name or autotuned op name
    chosen: str
    offered: tuple[str, ...] = ()
    kernels: dict[str, str] = field(default_factory=dict)  # tactic -> kernel name, where known
    cache_key: str | None = None
    excluded: tuple[str, ...] = ()  # banned tactics kept out of this build
    forced_from: str = ""  # timing cache: the banned tactic replaced by `chosen`
    note: str = ""

    @property
    def alternatives(self) -> tuple[str, ...]:
        return tuple(t for t in self.offered if t != self.chosen)


def tactic_matches(banned: Iterable[str], tactic: str, kernel: str = "") -> bool:
    """A ban names a tactic by id, hash (any 0x spelling) or kernel name."""
    wanted = {_normalize(b) for b in banned}
    return _normalize(tactic) in wanted or (bool(kernel) and kernel in wanted)


def _normalize(tactic: str) -> str:
    parts = tactic.strip().split(":")
    try:
        return ":".join(f"{int(p, 16):#x}" for p in parts)
    except ValueError:
        return tactic.strip()


# -- IAlgorithmSelector (<= 10.x) ---------------------------------------------------------------

def selector_tactic_id(algorithm: trt.IAlgorithm) -> str:
    variant = algorithm.algorithm_variant
    return f"{variant.implementation & MASK64:#x}:{variant.tactic & MASK64:#x}"


def make_algorithm_selector(trt_api: Any, bans: BanList | None, nodes_of: NodesOf) -> Any:
    """An IAlgorithmSelector that records choices and excludes banned tactics."""

    class BanningSelector(trt_api.IAlgorithmSelector):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt_api.IAlgorithmSelector.__init__(self)  # pybind11 trampolines segfault without it
            self.offered: dict[str, list[str]] = {}
            self.excluded: dict[str, list[str]] = {}
            self.chosen: dict[str, str] = {}
            self.errors: list[str] = []

        def select_algorithms(self, context: trt.IAlgorithmContext, choices: list[trt.IAlgorithm]) -> list[int]:
            everything = list(range(len(choices)))
            try:
                name = context.name
                ids = [selector_tactic_id(a) for a in choices]
                offered = self.offered.setdefault(name, [])
                offered.extend(t for t in ids if t not in offered)
                banned = bans.banned_for(name, nodes_of(name)) if bans else set()
                if not banned:
                    return everything
                keep = [i for i, t in enumerate(ids) if not tactic_matches(banned, t)]
                if not keep:  # every choice banned: building matters more than the ban
                    return everything
                self.excluded.setdefault(name, []).extend(ids[i] for i in everything if i not in keep)
                return keep
            except Exception as exc:  # TensorRT turns exceptions into -1; never fail the build
                self.errors.append(f"select_algorithms: {type(exc).__name__}: {exc}")
                return everything

        def report_algorithms(self, contexts: list[trt.IAlgorithmContext], choices: list[trt.IAlgorithm]) -> None:
            try:
                for context, algorithm in zip(contexts, choices, strict=False):
                    self.chosen[context.name] = selector_tactic_id(algorithm)
            except Exception as exc:
                self.errors.append(f"report_algorithms: {type(exc).__name__}: {exc}")

        def forget(self) -> None:
            """Drop what was recorded so far (the calibration network's choices, not the engine's)."""
            self.offered.clear()
            self.excluded.clear()
            self.chosen.clear()

        def records(self) -> list[TacticRecord]:
            names = list(dict.fromkeys([*self.chosen, *self.offered]))
            return [TacticRecord(layer=n, chosen=self.chosen.get(n, ""), offered=tuple(self.offered.get(n, ())),
                                 excluded=tuple(dict.fromkeys(self.excluded.get(n, ()))))
                    for n in names]

    return BanningSelector()


# -- editable timing cache (10.8+, 11.x) ---------------------------------------------------------

@dataclass
class ProfilingRecord:
    """One autotuned op of the verbose build log (the sample's ProfilingRecord)."""

    op: str
    key: str
    tactics: list[tuple[str, str]] = field(default_factory=list)  # (tactic hash, kernel), fastest first
    selected: str = ""


# The sample's sscanf patterns ("%128[^(](key: %128[^)])", "%*d, %*f, %*f, %*f, %128[^,], %128[^,]"),
# without their 128-character caps: those are the sample's buffer sizes, and real kernel names are
# longer (TensorRT 10.13's TREx example engines hold 160+ character conv kernel names, e.g.
# tools/experimental/trt-engine-explorer/examples/pytorch/resnet/A100/qat-residual/*.graph.json).
_OP_KEY = re.compile(r"Autotuning op (?P<op>[^(]+)\(key: (?P<key>[^)]+)\)")
_TACTIC_HEADER = "tactic_id, cost(in ms), cost/fastest_cost"
# Read from the line's first digit on, as the sample's sscanf does.
_TACTIC_ROW = re.compile(r"\d+, *[^,\s]+, *[^,\s]+, *[^,\s]+, *(?P<kernel>[^,]+), *(?P<hash>[^,]+)")
_FIRST_DIGIT = re.compile(r"\d")
_SELECTION = "(tactic hash, cost(in ms)):"


def parse_profiling_log(messages: Iterable[str]) -> dict[str, ProfilingRecord]:
    """The state machine of sampleEditableTimingCache's ProfilingLogger: 'Autotuning op X(key: K)',
    then the tactic table header, its rows, and 'The selected tactic is (tactic hash, cost(in
    ms)):H, ...'. Messages may hold several lines; each line is one step. Keyed by cache key."""
    table: dict[str, ProfilingRecord] = {}
    state = "key"
    record: ProfilingRecord | None = None
    for message in messages:
        for line in message.splitlines():
            resolved = False
            while not resolved:
                resolved = True
                if state == "key":
                    match = _OP_KEY.search(line)
                    if match:
                        record = ProfilingRecord(match["op"], match["key"].strip())
                        state = "header"
                elif state == "header":
                    if _TACTIC_HEADER in line:
                        state = "tactic"
                elif state == "tactic":
                    digit = _FIRST_DIGIT.search(line)
                    row = _TACTIC_ROW.match(line, digit.start()) if digit else None
                    if row and record is not None:
                        record.tactics.append((row["hash"].strip(), row["kernel"].strip()))
                    else:
                        state, resolved = "selection", False
                elif state == "selection" and _SELECTION in line and record is not None:
                    record.selected = line.split(_SELECTION, 1)[1].split(",", 1)[0].strip()
                    # By cache key: one op may be autotuned under several keys (weak typing times
                    # it in FP32 and FP16), and a ban must reach every one of them.
                    table[record.key] = record
                    record, state = None, "key"
    return table


def enable_editable_cache(trt_api: Any, config: trt.IBuilderConfig) -> trt.ITimingCache:
    """A fresh editable timing cache attached to `config`; it must outlive the builds using it."""
    config.set_flag(trt_api.BuilderFlag.EDITABLE_TIMING_CACHE)
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, True)  # ignore_mismatch, as the sample does
    return cache


def records_from_profiling(table: dict[str, ProfilingRecord]) -> list[TacticRecord]:
    return [TacticRecord(layer=r.op, chosen=r.selected, offered=tuple(h for h, _ in r.tactics),
                         kernels=dict(r.tactics), cache_key=r.key) for r in table.values()]


def force_unbanned_tactics(trt_api: Any, cache: trt.ITimingCache, records: Sequence[TacticRecord],
                           bans: BanList, nodes_of: NodesOf) -> bool:
    """Where a record's chosen tactic is banned, write the fastest unbanned tactic of its table
    into the cache. Returns whether anything changed (then the caller builds again)."""
    by_key = bans.by_cache_key()
    changed = False
    for record in records:
        banned = set(by_key.get(record.cache_key or "", set())) | bans.banned_for(record.layer,
                                                                                   nodes_of(record.layer))
        if not banned or not tactic_matches(banned, record.chosen, record.kernels.get(record.chosen, "")):
            continue
        replacement = next((h for h in record.offered
                            if not tactic_matches(banned, h, record.kernels.get(h, ""))), None)
        if replacement is None or record.cache_key is None:
            record.note = "every tactic TensorRT timed for this op is banned; kept its choice"
            continue
        try:
            key = trt_api.TimingCacheKey.parse(record.cache_key)
            updated = cache.update(key, trt_api.TimingCacheValue(int(replacement, 16), 1.0))
        except (ValueError, RuntimeError, TypeError) as exc:
            record.note = f"could not edit the timing cache entry: {exc}"
            continue
        if not updated:
            record.note = "TensorRT refused the timing cache update; kept its choice"
            continue
        record.excluded = (record.chosen,)
        record.forced_from, record.chosen = record.chosen, replacement
        changed = True
    return changed
