"""The fallback search's journal: one JSON line per evaluation, beside the plan it leads to.

Every line is written with a single write() on an O_APPEND descriptor and fsync'ed before the
search goes on, so Ctrl-C or a crash leaves at worst a torn last line, which reading ignores
(and cuts off, so the next append starts on a clean line). The first line holds the
JournalSettings, everything that decides a verdict; a resume with any other setting is refused
in one line naming it, because the journal's answers would not mean the same thing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from trtdebug.core.search.strategies import Evaluation
from trtdebug.core.system import files
from trtdebug.errors import UserError

JOURNAL_FORMAT = "trtdebug.fallback-journal"
# 2: the header's settings are JournalSettings, compared field by field on --resume;
# 3: every plan is judged on several input sets: `input_sets`, and the feeds digest covers them all
JOURNAL_VERSION = 3

NONE_SHOWN = "(none)"


def _option(label: str) -> Any:
    """A settings field and the option the user sets it with, as a refusal names it."""
    return field(metadata={"option": label})


@dataclass(frozen=True)
class JournalSettings:
    """Everything that decides a verdict, so a resumed search replays only answers that still hold.

    Fields are JSON scalars (digests for files and plans), in the order a difference is reported:
    the option a user typed before the digest it changes. The strategy is absent: it orders the
    questions, not their answers, so a search may be resumed with another one."""

    model_sha256: str = _option("model digest")
    precision: str = _option("--precision")
    keep_precision: str = _option("fallback precision")
    engine: str = _option("--engine")
    obey: bool = _option("--obey")
    calib_method: str | None = _option("--calib-method")  # None: the build calibrates nothing
    calib_inputs_sha256: str | None = _option("--calib-inputs digest")  # None: calibrated on the feeds
    check: str | None = _option("--check")  # the command judges instead of the tolerances
    atol: float | None = _option("--atol")
    rtol: float | None = _option("--rtol")
    output_tolerances: str | None = _option("--output-tol")  # NAME:ATOL,RTOL ..., sorted
    input_shapes: str | None = _option("--input-shape")  # NAME:MIN,OPT,MAX ..., sorted
    input_ranges: str | None = _option("--input-range")
    seed: int | None = _option("--seed")  # None: the feeds come from --inputs
    input_sets: str | None = _option("input sets (--inputs / --input-seeds)")  # every set judged on, in order
    feeds_sha256: str = _option("input feeds digest (every set)")
    base_plan_sha256: str = _option("--plan digest")
    bans_sha256: str | None = _option("--bans digest")
    # Last: it changes with the options above (calibration), which name the difference better.
    quantized_sha256: str | None = _option("Q/DQ model and calibration digest")  # None: not a quantized model

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def refusal(self, recorded: Mapping[str, Any]) -> str | None:
        """One line naming the first setting `recorded` (a journal's) differs in, or None."""
        for setting in fields(self):
            now = getattr(self, setting.name)
            if setting.name not in recorded or recorded[setting.name] != now:
                label = setting.metadata["option"]
                return (f"--resume: this journal was written with {label} {_shown(recorded.get(setting.name))}, "
                        f"not {_shown(now)}; run without --resume or with the same option")
        return None


def _shown(value: Any) -> str:
    if value is None:
        return NONE_SHOWN
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text[:12] + "…"
    return text if len(text) <= 80 else text[:77] + "..."


def journal_path(plan_path: str | Path) -> Path:
    """plan.json -> plan.journal.jsonl"""
    path = Path(plan_path)
    return path.with_name(f"{path.stem}.journal.jsonl")


def lock_path(journal: str | Path) -> Path:
    """plan.journal.jsonl -> plan.journal.jsonl.lock"""
    path = Path(journal)
    return path.with_name(f"{path.name}.lock")


class JournalLock:
    """An exclusive lock on a journal (fcntl.flock on a lock file beside it), held for a whole fallback
    run: the FP32 reference, the search and the files named after the journal. Used as a context
    manager, so every exit (an error, Ctrl-C) releases it; the OS releases it when its process dies,
    so a lock file a crashed run left behind is simply taken over; the pid inside only names the holder."""

    def __init__(self, journal: str | Path):
        self.path = lock_path(journal)
        self._fd = -1
        self._created: list[Path] = []

    def __enter__(self) -> JournalLock:
        self._created = _missing_folders(self.path.parent)  # removed again if the run writes nothing
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the folder of {self.path}: {exc.strerror or exc}") from None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                who = f"process {holder}" if holder else "another process"
                raise UserError(f"{self.path.with_suffix('')} is in use by {who} (a trtdebug fallback on the "
                                "same --out); wait for it to finish, stop it, or pass another --out") from None
            # The holder before us may have removed the file after we opened it: lock the current one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        _HELD.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _HELD.discard(self)
        if self._fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # while still locked, so no other run can hold this file
        os.close(self._fd)
        self._fd = -1
        for folder in self._created:  # deepest first; a folder the run wrote into stays
            try:
                folder.rmdir()
            except OSError:
                break


_HELD: set[JournalLock] = set()


def release_held_locks() -> None:
    """Release every lock this process holds, its file removed: for an exit that skips unwinding
    (Ctrl-C's os._exit), which would leave the lock file behind."""
    for lock in list(_HELD):
        lock.__exit__()


def _missing_folders(folder: Path) -> list[Path]:
    """The folders of `folder`'s path that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


class Journal:
    """Append-only record of evaluations; `evaluations` and `ranking` hold what a resume replays."""

    def __init__(self, path: str | Path, settings: JournalSettings, resume: bool):
        self.path = Path(path)
        self.settings = settings
        self.evaluations: list[Evaluation] = []
        self.ranking: dict[str, Any] | None = None
        self.resumed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.is_file() and self._read():
            self.resumed = True
        else:
            self.path.write_bytes(b"")
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            self._append(files.versioned(JOURNAL_FORMAT, JOURNAL_VERSION,
                                         {"type": "header", "settings": self.settings.to_json()}))
            return
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    # -- reading ---------------------------------------------------------------------------------

    def _read(self) -> bool:
        """Load a journal; False when it holds no complete header (nothing to resume)."""
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        complete = lines[:-1]  # the part after the last newline is a torn write, or empty
        records: list[dict[str, Any]] = []
        valid_bytes = 0
        for number, line in enumerate(complete, start=1):
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                if number == len(complete):
                    break  # the last line is garbled: the write it came from never completed
                raise UserError(f"{self.path} line {number} is not JSON; delete the journal to start "
                                "over, or remove that line") from None
            records.append(record)
            valid_bytes += len(line) + 1
        if valid_bytes != len(data):
            with open(self.path, "r+b") as handle:  # drop the torn tail so appends start clean
                handle.truncate(valid_bytes)
        if not records:
            return False
        if records[0].get("type") != "header":
            raise UserError(f"{self.path} is not a trtdebug fallback journal; pass another --out or delete it")
        if records[0].get("format") == JOURNAL_FORMAT and records[0].get("version") != JOURNAL_VERSION:
            raise UserError(f"--resume: {self.path} is fallback journal version {records[0].get('version')}, "
                            f"which this trtdebug does not replay (it writes version {JOURNAL_VERSION}); "
                            "run without --resume to start over")
        header = files.require_format(records[0], JOURNAL_FORMAT, JOURNAL_VERSION, str(self.path), "fallback journal")
        refusal = self.settings.refusal(header.get("settings") or {})
        if refusal is not None:
            raise UserError(refusal)
        for record in records[1:]:
            if record.get("type") == "evaluation":
                self.evaluations.append(_evaluation_from_json(record))
            elif record.get("type") == "ranking":
                self.ranking = record
        return True

    # -- writing ---------------------------------------------------------------------------------

    def _append(self, record: Mapping[str, Any]) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        os.write(self._fd, line)
        os.fsync(self._fd)

    def record_evaluation(self, evaluation: Evaluation, index: int) -> None:
        self._append({"type": "evaluation", "index": index, "kept": sorted(evaluation.kept),
                      "passed": evaluation.passed, "reason": evaluation.reason,
                      "build_failed": evaluation.build_failed, "phase": evaluation.phase,
                      "seconds": round(evaluation.seconds, 4)})

    def record_ranking(self, order: list[str], builds: int, empty_set_evaluated: bool,
                       reasons: Mapping[str, Any]) -> None:
        self.ranking = {"type": "ranking", "order": order, "builds": builds,
                        "empty_set_evaluated": empty_set_evaluated, "reasons": dict(reasons)}
        self._append(self.ranking)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _evaluation_from_json(record: Mapping[str, Any]) -> Evaluation:
    try:
        return Evaluation(frozenset(record["kept"]), bool(record["passed"]), str(record.get("reason", "")),
                          bool(record.get("build_failed", False)), str(record.get("phase", "")),
                          float(record.get("seconds", 0.0)), replayed=True)
    except (KeyError, TypeError) as exc:
        raise UserError(f"a journal evaluation record lacks {exc}; delete the journal to start over") from None

