"""Find the tactics (kernels) that make a build wrong, and a verified ban list that avoids them.

The loop works through the Engine protocol only: a build's LayerInfo says which tactic each layer
got (`tactic`) and which others it could still get (`alternatives`), and `engine.build(..., bans)`
excludes banned tactics. One search:

Two optional engine hooks: ``recording_tactics() -> Engine`` for engines that record tactics
only on request (recording costs TensorRT an algorithm selector or an editable timing cache), and
``with_tactic_seed(seed) -> Engine`` for engines that can vary their autotuning on purpose (the
emulator); engines without it are simply built again.

1. Record builds (``builds`` > 1): repeated builds can pick different tactics. Tactics that
   appear in failing builds only are ranked.
2. Compare the default build layer by layer; where it passes but a recorded build fails, search
   on that failing build instead.
3. Suspects are the layers where error is introduced and that have another tactic to pick.
   Rebuild banning all suspects' tactics at once; if that removes any of their errors, bisect the
   suspects down to single bans. A ban is kept only if its layer no longer introduces error and no
   tensor that was right before becomes wrong. Errors that bans reveal downstream (they were
   hidden as propagated) start another round.
4. Rebuild with every kept ban, compare again, and re-record the builds with the bans.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from trtdebug import __version__
from trtdebug.core.analysis.metrics import CompareResult, EngineLayer, TensorReport
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.ban_list import BanEntry, BanList
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.engines.base import BuildError, Built, Engine, Marking, reseeded, tactic_recording
from trtdebug.errors import UserError
from trtdebug.workflows.compare import run_compare
from trtdebug.workflows.evaluate import evaluate_build
from trtdebug.workflows.problem import Problem
from trtdebug.workflows.progress import SILENT, Progress

MAX_ROUNDS = 3  # bans can reveal errors hidden downstream; a few rounds catch chains of them

LayerKey = tuple[str, ...]


def layer_key(layer: EngineLayer) -> LayerKey:
    """What identifies a layer across builds: the ONNX nodes it covers (names can change)."""
    return tuple(layer.onnx_nodes) or (layer.name,)


# -- counting builds -----------------------------------------------------------------------------

@dataclass
class BuildTally:
    builds: int = 0


class CountingEngine:
    """Forwards to an engine and counts its builds; every compare costs at least one."""

    def __init__(self, engine: Engine, tally: BuildTally):
        self.engine = engine
        self.tally = tally
        self.name = engine.name
        self.capabilities = replace(engine.capabilities, replans=False)  # each evaluation it counts is a build

    def build(self, model: Model, plan: PrecisionPlan, bans: BanList | None = None,
              mark: Marking | None = None) -> Built:
        self.tally.builds += 1
        return self.engine.build(model, plan, bans, mark)



def repeated_engine(engine: CountingEngine, index: int) -> CountingEngine:
    """The engine for the index-th repeated build: reseeded where the engine supports it."""
    other = reseeded(engine.engine, index) if index else None
    return engine if other is None else CountingEngine(other, engine.tally)


# -- recording and diffing builds ---------------------------------------------------------------

@dataclass(frozen=True)
class BuildRecord:
    index: int
    passed: bool
    reason: str
    tactics: Mapping[LayerKey, str]  # layer -> tactic it got
    names: Mapping[LayerKey, str]  # layer -> its name in this build
    engine: CountingEngine | None = field(default=None, repr=False, compare=False)  # what built it, to search on

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "passed": self.passed, "reason": self.reason,
                "tactics": [{"onnx_nodes": list(key), "layer": self.names.get(key, " + ".join(key)), "tactic": tactic}
                            for key, tactic in self.tactics.items()]}


MAX_BUILDS = 64  # recorded builds: enough to see a tactic that turns up in one build of 20 (TensorRT's noise)


def builds_to_record(count: int) -> tuple[int, str | None]:
    """How many builds to record for `--builds count`, and the note that says why, if fewer."""
    if count > MAX_BUILDS:
        return MAX_BUILDS, f"--builds {count} capped at {MAX_BUILDS}: more builds do not find rarer tactics in time"
    return count, None


def record_builds(problem: Problem, engine: CountingEngine, plan: PrecisionPlan, bans: BanList | None,
                  count: int) -> list[BuildRecord]:
    """Build `count` times (final outputs only, as deployed) and note tactics and verdicts. An engine
    that can neither reseed its autotuning nor report tactics builds the same thing every time: two
    builds show that, and more would only repeat it."""
    records = []
    varies = reseeded(engine.engine, 1) is not None
    for index in range(count):
        repeat = repeated_engine(engine, index)
        evaluated = evaluate_build(problem, repeat, plan, bans)
        verdict, layers = evaluated.verdict, evaluated.built.layers if evaluated.built else []
        records.append(BuildRecord(index, verdict.passed, verdict.reason,
                                   {layer_key(x): x.tactic for x in layers if x.tactic},
                                   {layer_key(x): x.name for x in layers}, repeat))
        if index == 1 and not varies and not any(r.tactics for r in records):
            break
    return records


@dataclass(frozen=True)
class TacticRank:
    layer: str
    onnx_nodes: LayerKey
    tactic: str
    bad_builds: int
    good_builds: int

    @property
    def bad_only(self) -> bool:
        return self.good_builds == 0

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "onnx_nodes": list(self.onnx_nodes), "tactic": self.tactic,
                "bad_builds": self.bad_builds, "good_builds": self.good_builds}


def rank_tactics(records: Sequence[BuildRecord]) -> list[TacticRank]:
    """Tactics seen in failing builds, those never seen in a passing build first, then by how
    many failing builds used them. Empty unless some builds pass and some fail."""
    bad = [r for r in records if not r.passed and r.tactics]
    good = [r for r in records if r.passed]
    if not bad or not good:
        return []
    counts: dict[tuple[LayerKey, str], list[int]] = {}
    names: dict[LayerKey, str] = {}
    for record in records:
        names.update(record.names)
        for key, tactic in record.tactics.items():
            counts.setdefault((key, tactic), [0, 0])[0 if record.passed else 1] += 1
    ranks = [TacticRank(names.get(key, " + ".join(key)), key, tactic, n_bad, n_good)
             for (key, tactic), (n_good, n_bad) in counts.items() if n_bad]
    order = list(counts)
    return sorted(ranks, key=lambda r: (not r.bad_only, -r.bad_builds, r.good_builds,
                                        order.index((r.onnx_nodes, r.tactic))))


# -- suspects, trials and decisions -------------------------------------------------------------

@dataclass(frozen=True)
class Suspect:
    layer: EngineLayer
    tensors: tuple[TensorReport, ...]  # the tensors where this layer introduces error

    @property
    def key(self) -> LayerKey:
        return layer_key(self.layer)

    def ban(self, engine: str, evidence: dict[str, Any] | None = None) -> BanEntry:
        return BanEntry(layer=self.layer.name, tactic=self.layer.tactic, onnx_nodes=tuple(self.layer.onnx_nodes),
                        cache_key=self.layer.extra.get("cache_key"), engine=engine, evidence=evidence or {})

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer.name, "onnx_nodes": list(self.layer.onnx_nodes), "tactic": self.layer.tactic,
                "tensors": [t.tensor for t in self.tensors]}


@dataclass(frozen=True)
class Trial:
    """One rebuild with some suspects' tactics banned."""

    number: int  # the how-many-th compare of the search
    banned: tuple[Suspect, ...]
    before: CompareResult
    result: CompareResult | None  # None: the build failed
    error: str = ""

    def status(self, tensor: str) -> str:
        if self.result is None:
            return "build failed"
        return next((t.status for t in self.result.tensors if t.tensor == tensor), "missing")

    def fixes(self, suspect: Suspect) -> bool:
        return self.result is not None and all(self.status(t.tensor) == "ok" for t in suspect.tensors)

    def created_errors(self) -> list[str]:
        """Tensors introduced now that were right before (errors revealed downstream of a fixed
        layer were already wrong, as propagated, and do not count)."""
        if self.result is None:
            return []
        was_ok = {t.tensor for t in self.before.tensors if t.status == "ok"}
        return [t.tensor for t in self.result.introduced if t.tensor in was_ok]

    def tactic_of(self, suspect: Suspect) -> str:
        layers = self.result.layers if self.result else []
        return next((x.tactic for x in layers if layer_key(x) == suspect.key), "")


@dataclass(frozen=True)
class BanDecision:
    suspect: Suspect
    kept: bool
    reason: str
    entry: BanEntry
    trials: tuple[int, ...]  # compares that tested this ban

    def to_json(self) -> dict[str, Any]:
        return {"suspect": self.suspect.to_json(), "kept": self.kept, "reason": self.reason,
                "ban": {**asdict(self.entry), "onnx_nodes": list(self.entry.onnx_nodes)}, "trials": list(self.trials)}


def find_suspects(result: CompareResult) -> tuple[list[Suspect], list[Suspect]]:
    """Layers where error is introduced, split into (bannable, not bannable: no tactic or no
    alternative the builder could pick instead)."""
    by_tensor = {t: layer for layer in result.layers for t in layer.outputs}
    by_node = {n: layer for layer in result.layers for n in layer.onnx_nodes}
    grouped: dict[LayerKey, tuple[EngineLayer, list[TensorReport]]] = {}
    for tensor in result.introduced:
        layer = by_tensor.get(tensor.tensor) or by_node.get(tensor.node)
        if layer is not None:
            grouped.setdefault(layer_key(layer), (layer, []))[1].append(tensor)
    suspects = [Suspect(layer, tuple(tensors)) for layer, tensors in grouped.values()]
    bannable = [s for s in suspects if s.layer.tactic and s.layer.alternatives]
    return bannable, [s for s in suspects if s not in bannable]


def _metrics(tensor: TensorReport | None) -> dict[str, Any] | None:
    if tensor is None or tensor.accumulated is None:
        return None
    m = tensor.accumulated.to_json()
    return {k: m[k] for k in ("max_abs", "max_rel", "snr_db", "frac_outside", "new_nonfinite")}


def _tensor(result: CompareResult | None, name: str) -> TensorReport | None:
    if result is None:
        return None
    return next((t for t in result.tensors if t.tensor == name), None)


# -- the search ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TacticSearch:
    """What the tactic search found: built once when it ends, never changed after."""

    model: str
    engine: str
    precision: str
    baseline: CompareResult
    final: CompareResult
    bans: BanList  # the bans given plus the bans kept
    suspects: tuple[Suspect, ...] = ()
    unbannable: tuple[Suspect, ...] = ()
    decisions: tuple[BanDecision, ...] = ()
    records: tuple[BuildRecord, ...] = ()
    records_with_bans: tuple[BuildRecord, ...] = ()
    ranking: tuple[TacticRank, ...] = ()
    builds: int = 0
    notes: tuple[str, ...] = ()

    @property
    def kept(self) -> list[BanDecision]:
        return [d for d in self.decisions if d.kept]

    @property
    def rejected(self) -> list[BanDecision]:
        return [d for d in self.decisions if not d.kept]

    @property
    def passed(self) -> bool:
        """The final build with the bans passes, and so does every re-recorded build."""
        return self.final.passed and all(r.passed for r in self.records_with_bans)

    def to_json(self) -> dict[str, Any]:
        """The search's facts as JSON-ready data: verdicts, every decision, the bans, the recorded builds."""
        return {"model": self.model, "engine": self.engine, "precision": self.precision, "passed": self.passed,
                "builds": self.builds,
                "baseline": {"passed": self.baseline.passed, "verdict": self.baseline.verdict},
                "final": {"passed": self.final.passed, "verdict": self.final.verdict},
                "bans": self.bans.to_json(),
                "suspects": [s.to_json() for s in self.suspects],
                "unbannable": [s.to_json() for s in self.unbannable],
                "decisions": [d.to_json() for d in self.decisions],
                "records": [r.to_json() for r in self.records],
                "records_with_bans": [r.to_json() for r in self.records_with_bans],
                "ranking": [r.to_json() for r in self.ranking], "notes": list(self.notes)}


class _Search:
    def __init__(self, problem: Problem, engine: CountingEngine, plan: PrecisionPlan, given: BanList | None,
                 progress: Progress):
        self.problem = problem
        self.engine = engine
        self.plan = plan
        self.given = given or BanList(model_sha256=problem.model.sha256)
        self.progress = progress
        self.compares = 0

    def compare(self, bans: BanList, label: str) -> CompareResult:
        self.compares += 1
        self.progress.advance(f"compare {self.compares}: {label}")
        return run_compare(self.problem, self.engine, self.plan, bans if len(bans) else None,
                           progress=self.progress)

    def with_bans(self, base: BanList, suspects: Sequence[Suspect]) -> BanList:
        return base.extended([s.ban(self.engine.name) for s in suspects])

    def trial(self, before: CompareResult, base: BanList, suspects: Sequence[Suspect], label: str) -> Trial:
        bans = self.with_bans(base, suspects)
        try:
            result: CompareResult | None = self.compare(bans, label)
            error = ""
        except BuildError as exc:
            result, error = None, str(exc)
        return Trial(self.compares, tuple(suspects), before, result, error)

    def round(self, before: CompareResult, base: BanList, suspects: list[Suspect]) -> list[BanDecision]:
        """Ban all suspects, then bisect to single bans, and decide each one."""
        together = self.trial(before, base, suspects, f"ban the tactics of {len(suspects)} suspect layer(s)")
        tested: dict[LayerKey, list[Trial]] = {s.key: [together] for s in suspects}
        if len(suspects) == 1 or not any(together.fixes(s) for s in suspects):
            alone = {s.key: together for s in suspects}
        else:
            alone = self.bisect(before, base, suspects, tested)
        return [self.decide(s, alone[s.key], tested[s.key]) for s in suspects]

    def bisect(self, before: CompareResult, base: BanList, group: list[Suspect],
               tested: dict[LayerKey, list[Trial]]) -> dict[LayerKey, Trial]:
        """The trial that decides each suspect: its ban alone, or a group ban that fixed none."""
        decided: dict[LayerKey, Trial] = {}
        middle = len(group) // 2
        for half in (group[:middle], group[middle:]):
            trial = self.trial(before, base, half, "bisect: ban " + ", ".join(s.layer.name for s in half))
            for s in half:
                tested[s.key].append(trial)
            if len(half) > 1 and any(trial.fixes(s) for s in half):
                decided.update(self.bisect(before, base, half, tested))
            else:
                decided.update({s.key: trial for s in half})
        return decided

    def decide(self, suspect: Suspect, trial: Trial, tested: list[Trial]) -> BanDecision:
        kept, reason = _judge(suspect, trial)
        first = suspect.tensors[0]
        evidence = {
            "tensor": first.tensor,
            "before": _metrics(first),
            "after": _metrics(_tensor(trial.result, first.tensor)),
            "status_after": trial.status(first.tensor),
            "tactic_after": trial.tactic_of(suspect),
            "created_errors": trial.created_errors(),
            "outputs_pass_after": bool(trial.result and trial.result.passed),
            "decided_by_compare": trial.number,
            "builds_used": [t.number for t in tested],
        }
        return BanDecision(suspect, kept, reason, suspect.ban(self.engine.name, evidence),
                           tuple(t.number for t in tested))


def _judge(suspect: Suspect, trial: Trial) -> tuple[bool, str]:
    if trial.result is None:
        return False, f"the build fails with this ban ({trial.error})"
    if len(trial.banned) > 1 and not trial.fixes(suspect):
        return False, f"banning it (with {len(trial.banned) - 1} other suspect(s)) does not remove the error"
    if not trial.fixes(suspect):
        after = trial.tactic_of(suspect) or "another tactic"
        return False, f"the layer still introduces error with {after}: not this tactic's fault"
    created = trial.created_errors()
    if created:
        return False, f"removes the error but creates another at {', '.join(created[:3])}"
    return True, f"removes the error (the builder picks {trial.tactic_of(suspect) or 'another tactic'})"


def find_tactic_bans(problem: Problem, engine: Engine, plan: PrecisionPlan, bans: BanList | None = None,
                     builds: int = 1, progress: Progress = SILENT) -> TacticSearch:
    """The whole search (module docstring); `bans` are applied throughout and kept in the result."""
    if not engine.capabilities.rebuilds:
        raise UserError("`trtdebug tactics` rebuilds the model; --engine results only replays captured "
                        "outputs: use --engine emulator or tensorrt")
    if builds < 1:
        raise UserError(f"--builds must be at least 1, not {builds}")
    tally = BuildTally()
    search = _Search(problem, CountingEngine(tactic_recording(engine), tally), plan, bans, progress)
    progress.begin("searching tactics")
    builds, capped = builds_to_record(builds)
    records = record_builds(problem, search.engine, plan, bans, builds) if builds > 1 else []
    try:
        baseline, notes = _baseline(search, records)
        final, decisions, suspects, unbannable = _ban_rounds(search, baseline)
    except BuildError as exc:  # trials catch their own; this is the default build or the verification
        raise BuildError(f"a build the tactic search needs failed: {exc}") from None
    finally:
        progress.end()
    found = search.given.extended([d.entry for d in decisions if d.kept])
    records_with_bans = (record_builds(problem, search.engine, plan, found, builds)
                         if records and len(found) > len(search.given) else [])
    notes.extend(_explain(baseline, suspects, unbannable, decisions, records))
    if capped:
        notes.append(capped)
    if 1 < len(records) < builds:
        notes.append(f"recorded {len(records)} of {builds} builds: {engine.name} neither reseeds its autotuning nor "
                     "reports tactics, so every build is the same")
    found = BanList(found.entries, problem.model.sha256,
                    {"tool": f"trtdebug {__version__}", "command": "tactics", "engine": engine.name,
                     "precision": plan.default, "builds": tally.builds})
    return TacticSearch(problem.model.name, engine.name, plan.default, baseline, final, found, tuple(suspects),
                        tuple(unbannable), tuple(decisions), tuple(records), tuple(records_with_bans),
                        tuple(rank_tactics(records)), tally.builds, tuple(notes))


def _baseline(search: _Search, records: list[BuildRecord]) -> tuple[CompareResult, list[str]]:
    """Compare the default build; where it passes but a recorded build fails (flaky tactics),
    compare that build instead and search on it."""
    baseline = search.compare(search.given, "default build")
    failing = next((r for r in records if not r.passed and r.engine is not None), None)
    if not baseline.passed or failing is None or failing.engine is None or failing.engine is search.engine:
        return baseline, []
    search.engine = failing.engine
    note = f"the default build passes but recorded build {failing.index + 1} fails: searching on that build"
    return search.compare(search.given, f"recorded build {failing.index + 1}"), [note]


def _ban_rounds(search: _Search, baseline: CompareResult
                ) -> tuple[CompareResult, list[BanDecision], list[Suspect], list[Suspect]]:
    """Rounds of suspects -> decisions -> rebuild with the kept bans, until nothing new is kept."""
    result, bans = baseline, search.given
    decisions: list[BanDecision] = []
    all_suspects: list[Suspect] = []
    unbannable: list[Suspect] = []
    tried: set[tuple[LayerKey, str]] = set()
    for _ in range(MAX_ROUNDS):
        suspects, not_bannable = find_suspects(result)
        unbannable.extend(s for s in not_bannable if s.key not in {u.key for u in unbannable})
        suspects = [s for s in suspects if (s.key, s.layer.tactic) not in tried]
        if not suspects:
            break
        tried.update((s.key, s.layer.tactic) for s in suspects)
        all_suspects.extend(suspects)
        round_decisions = search.round(result, bans, suspects)
        decisions.extend(round_decisions)
        kept = [d for d in round_decisions if d.kept]
        if not kept:
            break
        bans = bans.extended([d.entry for d in kept])
        result = search.compare(bans, f"verify {len(bans)} ban(s) together")
    return result, decisions, all_suspects, unbannable


def _explain(baseline: CompareResult, suspects: list[Suspect], unbannable: list[Suspect],
             decisions: list[BanDecision], records: list[BuildRecord]) -> list[str]:
    notes = []
    if baseline.layers and not any(layer.tactic for layer in baseline.layers):
        notes.append("the engine reports no tactic for any layer, so there is nothing to ban "
                     "(TensorRT-RTX has no tactic control)")
    if baseline.passed and not baseline.introduced:
        notes.append("the build passes and no layer introduces error: no tactic to ban")
    if unbannable:
        names = ", ".join(s.layer.name for s in unbannable[:3])
        notes.append(f"error is introduced at layer(s) with no other tactic to pick ({names}); "
                     "if that is precision, `trtdebug fallback` finds layers to keep in FP32")
    if suspects and not any(d.kept for d in decisions):
        notes.append("no ban removed the error: it is not the tactics' fault; try `trtdebug fallback`")
    if records and all(not r.passed for r in records):
        notes.append(f"all {len(records)} recorded builds fail, so the build diff cannot single out a tactic")
    elif records and all(r.passed for r in records) and not baseline.passed:
        notes.append("every recorded build passes; only the marked compare build fails")
    if records and len({tuple(sorted(r.tactics.items())) for r in records}) == 1:
        notes.append(f"all {len(records)} recorded builds picked the same tactics")
    return notes
