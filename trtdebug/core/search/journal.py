"""The fallback search's journal: one JSON line per evaluation, beside the plan it leads to.

Every line is written with a single write() on an O_APPEND descriptor and fsync'ed before the
search goes on, so Ctrl-C or a crash leaves at worst a torn last line, which reading ignores
(and cuts off, so the next append starts on a clean line). The first line records what the
evaluations depend on (model, precision, pass criterion, engine, inputs, bans, base plan); a
resume with other settings is refused, because its answers would not mean the same thing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trtdebug.core.search.strategies import Evaluation
from trtdebug.core.system import files
from trtdebug.errors import UserError

JOURNAL_FORMAT = "trtdebug.fallback-journal"
JOURNAL_VERSION = 1

# Header keys, in the order a mismatch is reported, with how to name them to the user.
SETTING_NAMES = {
    "model_sha256": "model", "precision": "--precision", "keep_precision": "fallback precision",
    "criterion": "pass criterion (--atol/--rtol/--output-tol/--check)", "engine": "--engine",
    "inputs_sha256": "input feeds (--inputs/--seed/--input-shape/--input-range)",
    "bans_sha256": "--bans", "base_plan": "--plan",
}


def journal_path(plan_path: str | Path) -> Path:
    """plan.json -> plan.journal.jsonl"""
    path = Path(plan_path)
    return path.with_name(f"{path.stem}.journal.jsonl")


def lock_path(journal: str | Path) -> Path:
    """plan.journal.jsonl -> plan.journal.jsonl.lock"""
    path = Path(journal)
    return path.with_name(f"{path.name}.lock")


_HELD: dict[Path, int] = {}  # lock files this process holds, and how many holders share each


class JournalLock:
    """An exclusive lock on a journal (fcntl.flock on a lock file beside it), held while a run writes
    the journal and the files named after it. The OS releases it when its process dies, so a lock
    file a crashed run left behind is simply taken over; the pid inside only names the holder."""

    def __init__(self, journal: str | Path):
        self.path = lock_path(journal)
        self._fd = -1
        self._nested = False

    def acquire(self) -> JournalLock:
        """Re-entrant within a process: the CLI takes the lock before the FP32 reference runs (a second
        run is refused at once), and run_fallback takes it again for library callers."""
        key = self.path.resolve()
        if key in _HELD:
            _HELD[key] += 1
            self._nested = True
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
        _HELD[key] = 1
        return self

    def release(self) -> None:
        key = self.path.resolve()
        if self._nested:
            _HELD[key] -= 1
            self._nested = False
            return
        if self._fd < 0:
            return
        _HELD.pop(key, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # while still locked, so no other run can hold this file
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> JournalLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


class Journal:
    """Append-only record of evaluations; `evaluations` and `ranking` hold what a resume replays."""

    def __init__(self, path: str | Path, settings: Mapping[str, Any], resume: bool):
        self.path = Path(path)
        self.settings = dict(settings)
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
                                         {"type": "header", "settings": self.settings}))
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
        header = files.require_format(records[0], JOURNAL_FORMAT, JOURNAL_VERSION, str(self.path), "fallback journal")
        self._check_settings(header.get("settings") or {})
        for record in records[1:]:
            if record.get("type") == "evaluation":
                self.evaluations.append(_evaluation_from_json(record))
            elif record.get("type") == "ranking":
                self.ranking = record
        return True

    def _check_settings(self, recorded: Mapping[str, Any]) -> None:
        for key, name in SETTING_NAMES.items():
            if recorded.get(key) != self.settings.get(key):
                raise UserError(f"--resume refused: the {name} differs from the run that wrote {self.path} "
                                f"({_short(recorded.get(key))}, now {_short(self.settings.get(key))}); "
                                "rerun with the same options, or without --resume to start over")

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


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"
    return text if len(text) <= 60 else text[:57] + "..."
