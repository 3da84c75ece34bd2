"""`trtdebug compare model.onnx | head -1`: a reader that goes away keeps the command's own exit code
(0 PASS, 1 FAIL) and adds no "BrokenPipeError" / "Exception ignored" noise on stderr."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cli import start_cli

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "overflow_convnet.onnx"


def _start(model: Path) -> subprocess.Popen[str]:
    return start_cli("compare", model)


def _assert_quiet(stderr: str) -> None:
    assert "BrokenPipe" not in stderr and "Exception ignored" not in stderr and "Traceback" not in stderr, stderr
    assert "error" not in stderr, stderr


@pytest.mark.parametrize("which, code", [("example", 1), ("clean", 0)])
def test_head_1_keeps_the_exit_code(planted_models, which, code):
    model = EXAMPLE if which == "example" else planted_models["clean"][0]
    process = _start(model)
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    assert first.startswith("FAIL" if code else "PASS"), first
    process.stdout.close()  # what head does after its line
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == code, stderr
    _assert_quiet(stderr)


@pytest.mark.parametrize("which, code", [("example", 1), ("clean", 0)])
def test_a_reader_gone_before_the_first_line_keeps_the_exit_code(planted_models, which, code):
    model = EXAMPLE if which == "example" else planted_models["clean"][0]
    process = _start(model)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # every write the command makes meets a closed pipe
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == code, stderr
    _assert_quiet(stderr)
