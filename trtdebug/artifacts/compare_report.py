"""The JSON report of a comparison (schema: docs/report-schema.md; CompareResult.to_json writes it)."""

from __future__ import annotations

from pathlib import Path

from trtdebug.core.analysis.metrics import CompareResult
from trtdebug.core.system import files


def write_compare_report(result: CompareResult, path: str | Path) -> Path:
    return files.write_json(path, result.to_json())
