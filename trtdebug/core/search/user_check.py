"""`--check CMD`: a user's own pass criterion, run as a shell command on each candidate's outputs.

The engine's final outputs are saved as an .npz file whose path replaces `{outputs}` in the
command (and the FP32 reference outputs replace `{reference}`, when the command names it); exit
status 0 means the candidate passes.
"""

from __future__ import annotations

import shlex
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from trtdebug.core.analysis.metrics import Verdict
from trtdebug.core.model.feeds import feeds_sha256
from trtdebug.core.system import files
from trtdebug.errors import UserError

OUTPUTS_FIELD = "{outputs}"
REFERENCE_FIELD = "{reference}"
# The shell's own exit codes for a command it cannot execute (126) or cannot find (127).
CANNOT_RUN = (126, 127)


class CheckCommand:
    def __init__(self, template: str):
        if OUTPUTS_FIELD not in template:
            raise UserError(f"--check needs {OUTPUTS_FIELD} in the command, where trtdebug puts the .npz of "
                            "engine outputs, e.g. --check \"python my_metric.py {outputs}\"")
        self.template = template
        self._passing_references: set[str] = set()

    def verdict(self, outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> Verdict:
        with tempfile.TemporaryDirectory(prefix="trtdebug-check-") as folder:
            outputs_path = Path(folder) / "outputs.npz"
            files.save_npz(outputs_path, outputs)
            command = self.template.replace(OUTPUTS_FIELD, shlex.quote(str(outputs_path)))
            if REFERENCE_FIELD in command:
                reference_path = Path(folder) / "reference.npz"
                files.save_npz(reference_path, reference)
                command = command.replace(REFERENCE_FIELD, shlex.quote(str(reference_path)))
            done = subprocess.run(command, shell=True, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return Verdict(True, {})
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        if done.returncode in CANNOT_RUN:  # the shell found no such command: no verdict on the outputs at all
            raise UserError(f"--check could not run ({said[-1] if said else f'exit {done.returncode}'}); "
                            "fix the command so that it runs in this shell")
        return Verdict(False, {}, f"--check exited {done.returncode}" + (f": {said[-1]}" if said else ""))

    def require_reference_passes(self, reference: Mapping[str, np.ndarray]) -> None:
        """A criterion the FP32 reference itself fails can never be met: say so before searching.
        Asked again for the same reference, it does not run the command again."""
        key = feeds_sha256(reference)
        if key in self._passing_references:
            return
        verdict = self.verdict(reference, reference)
        if not verdict.passed:
            raise UserError(f"--check fails on the FP32 reference outputs themselves ({verdict.reason}); "
                            "fix the command or its threshold")
        self._passing_references.add(key)
