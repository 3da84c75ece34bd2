"""Faults of the machine around trtdebug are not bugs of trtdebug: a full disk, stdout on a full
device or closed, a reader that leaves early, an ASCII-only terminal. Each gives one line and exit 2,
or (a reader that left) the command's own exit code; never exit 3, never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest

from tests.cli import cli_command

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "overflow_convnet.onnx"
COMPARE = cli_command("compare")


def _quiet(stderr: str) -> bool:
    return "Traceback" not in stderr and "Exception ignored" not in stderr and "internal error" not in stderr


def test_stdout_on_a_full_device_is_one_line_and_exit_2(planted_models):
    with open("/dev/full", "w") as full:
        run = subprocess.run([*COMPARE, str(planted_models["clean"][0])], stdout=full, stderr=subprocess.PIPE,
                             text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("trtdebug:")]
    assert errors == ["trtdebug: error: cannot write the results to standard output: No space left on device "
                      "(redirect them to a place with room)"], run.stderr
    assert _quiet(run.stderr)


@pytest.mark.parametrize("which, code", [("example", 1), ("clean", 0)])
def test_a_closed_stdout_keeps_the_verdicts_exit_code(planted_models, which, code):
    model = EXAMPLE if which == "example" else planted_models["clean"][0]
    # `trtdebug compare m.onnx >&-`: the child starts with descriptor 1 closed.
    run = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *COMPARE, str(model)], stderr=subprocess.PIPE,
                         text=True, timeout=120)
    assert run.returncode == code, run.stderr
    assert _quiet(run.stderr), run.stderr


@pytest.mark.parametrize("which, code", [("example", 1), ("clean", 0)])
def test_both_streams_into_head_keep_the_exit_code(planted_models, which, code):
    model = EXAMPLE if which == "example" else planted_models["clean"][0]
    # `trtdebug compare m.onnx 2>&1 | head -1`: progress lines on stderr meet the closed pipe too.
    run = subprocess.run(["bash", "-c", 'set -o pipefail; "$@" 2>&1 | head -1; exit "${PIPESTATUS[0]}"', "bash",
                          *COMPARE, str(model)], capture_output=True, text=True, timeout=120)
    assert run.returncode == code, run.stdout + run.stderr
    assert len(run.stdout.splitlines()) == 1


def test_names_an_ascii_terminal_cannot_show_are_escaped(tmp_path):
    model = onnx.load(EXAMPLE)
    for node in model.graph.node:
        if node.name == "conv_amplify":
            node.name = "conv_amplify\u2192\u00fc"
    path = tmp_path / "unicode_names.onnx"
    onnx.save(model, path)
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "LC_ALL": "C", "LANG": "C"}
    run = subprocess.run([*COMPARE, str(path)], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 1, run.stderr
    assert "Culprit: conv_amplify\\u2192\\xfc (Conv)" in run.stdout
    assert _quiet(run.stderr), run.stderr


@pytest.fixture
def full_folder(tmp_path):
    """A 64 KiB tmpfs filled to the brim (needs root and mount; skipped elsewhere)."""
    folder = tmp_path / "full"
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        filler = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(filler, b"\0" * 4096):
                pass
        except OSError:
            pass  # full
        os.close(filler)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.mark.parametrize("option", ["--json", "--html"])
def test_a_report_onto_a_full_disk_is_one_line_naming_it(full_folder, option):
    target = full_folder / ("report.json" if option == "--json" else "report.html")
    run = subprocess.run([*COMPARE, str(EXAMPLE), option, str(target)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines()[-1] == (f"trtdebug: error: cannot write {target}: No space left on device "
                                           "(free some space or write elsewhere)")
    assert _quiet(run.stderr)
    assert sorted(p.name for p in full_folder.iterdir()) == ["filler"]  # no half-written report, no temporary
