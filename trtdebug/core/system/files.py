"""Files trtdebug reads and writes, written once: versioned JSON documents (plans, ban lists,
reports, journal headers), .npz tensor files, and atomic writes.

Every output is written to a temporary file in its destination folder and renamed over the
destination, so an interrupted or concurrent run never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from trtdebug.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `path`; renamed onto `path` when the block finishes without error."""
    target = Path(path)
    try:
        folder_for(target)
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or target.suffix + ".tmp",
                                         dir=target.parent if str(target.parent) else ".")
    except OSError as exc:
        raise _naming(exc, target) from exc
    os.close(fd)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(temporary, target)
    except OSError as exc:  # a full disk while writing: say which output could not be written
        raise _naming(exc, target) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def folder_for(path: str | Path) -> Path:
    """The folder `path` is written into, created (with its parents) now, when something is written:
    a run refused before writing leaves no empty folder behind."""
    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _naming(exc: OSError, target: Path) -> OSError:
    """The same error, naming the output the user asked for rather than a temporary file (or none)."""
    return OSError(exc.errno, exc.strerror, str(target)) if exc.errno is not None else exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Write through `write(temporary_path)`, then rename onto `path`."""
    with atomic_path(path) as temporary:
        write(temporary)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda p: p.write_bytes(data))


def write_json(path: str | Path, data: Any) -> Path:
    return write_atomic(path, lambda p: p.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n"))


def versioned(kind: str, version: int, body: Mapping[str, Any]) -> dict[str, Any]:
    """A document that says what it is: {"format": kind, "version": version, ...body}."""
    return {"format": kind, "version": version, **body}


def require_format(data: Any, kind: str, version: int, source: str, what: str) -> dict[str, Any]:
    """`data` if it is a `kind` document of `version`; otherwise one line saying what it is not."""
    if not isinstance(data, dict) or data.get("format") != kind:
        raise UserError(f"{source} is not a trtdebug {what} (no \"format\": \"{kind}\")")
    if data.get("version") != version:
        raise UserError(f"{source} is {what} version {data.get('version')}; this trtdebug reads version {version}")
    return data


def read_json(path: str | Path, what: str, hint: str = "") -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise UserError(f"{path} is not valid JSON ({reason}){'; ' + hint if hint else ''}") from None


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Arrays of an .npz file, pickle disabled."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {str(name): np.asarray(data[name]) for name in data.files}
    except ValueError as exc:
        raise UserError(f"{path} holds pickled objects ({exc}); save plain arrays with np.savez") from None
    except Exception as exc:
        raise UserError(f"{path} is not a readable .npz file ({type(exc).__name__})") from None


def save_npz(path: str | Path, tensors: Mapping[str, np.ndarray]) -> Path:
    arrays = {name: np.asarray(value) for name, value in tensors.items()}

    def write(staged: Path) -> None:
        with open(staged, "wb") as handle:  # a file object: np.savez would append .npz to a path
            np.savez(handle, **arrays)  # type: ignore[arg-type]

    return write_atomic(path, write)


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def prepare_outputs(outputs: Mapping[str, str | Path | None], inputs: Mapping[str, str | Path | None]) -> None:
    """Before any work: no output may be one of the inputs, nor a folder; an output whose folder could
    not be created or written is refused. Missing folders are created only when a file is written
    (folder_for), so a refused run leaves none behind. Keys name the files to the user."""
    given = {label: Path(p) for label, p in inputs.items() if p is not None}
    wanted = {label: Path(p) for label, p in outputs.items() if p is not None}
    for label, path in wanted.items():
        clash = next((name for name, source in given.items() if _same_file(path, source)), None)
        if clash is not None:
            raise UserError(f"{label} {path} would overwrite the {clash}; write it elsewhere")
        if path.is_dir():
            raise UserError(f"{label} {path} is a folder; give a file name")
        folder = path.parent if str(path.parent) else Path(".")
        existing = folder
        while not existing.exists() and existing != existing.parent:  # the nearest folder that exists
            existing = existing.parent
        if not existing.is_dir():
            raise UserError(f"cannot create the folder of {label} {path}: a file stands in its path")
        if not os.access(existing, os.W_OK | os.X_OK):
            what = "is not writable" if existing == folder else "cannot be created (its parent is not writable)"
            raise UserError(f"cannot write {label} {path}: folder {folder} {what}")
    seen: dict[Path, str] = {}
    for label, path in wanted.items():
        key = path.resolve()
        if key in seen:
            raise UserError(f"{label} and {seen[key]} are the same file {path}; give them different names")
        seen[key] = label
