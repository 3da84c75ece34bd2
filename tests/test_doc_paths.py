"""Every path of this project that the README, docs/ or a comment names exists: a reader who
follows one after a move lands on the file, not on nothing."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "trtdebug").rglob("*.py")),
           *sorted((ROOT / "benchmarks").glob("*.py")), *sorted((ROOT / "fixtures").glob("*.py"))]
# A project path: trtdebug/..., a package-relative one (core/..., engines/...), or a top-level folder's file;
# not part of a longer path (NVIDIA's tools/.../examples/README.md is theirs, not ours).
PATH = re.compile(r"(?<![\w/.-])((?:trtdebug/)?(?:core|cli|workflows|engines|artifacts)/[\w/]+\.py"
                  r"|(?:docs|tests|fixtures|benchmarks|examples)/[\w./-]+\.(?:md|py|onnx))\b")
# The steering notes beside the project (shared/): named so, they are not the project's docs.
ELSEWHERE = {"docs/trt-api.md"}


def _named_paths() -> dict[str, list[str]]:
    named: dict[str, list[str]] = {}
    for source in SOURCES:
        for lineno, line in enumerate(source.read_text().splitlines(), 1):
            for match in PATH.finditer(line):
                named.setdefault(match[1], []).append(f"{source.relative_to(ROOT)}:{lineno}")
    return named


def _exists(path: str) -> bool:
    if path.split("/")[0] in ("docs", "tests", "fixtures", "benchmarks", "examples", "trtdebug"):
        return (ROOT / path).exists()
    return (ROOT / "trtdebug" / path).exists()


def test_every_named_project_path_exists():
    missing = {p: where for p, where in _named_paths().items() if p not in ELSEWHERE and not _exists(p)}
    assert not missing, "paths that do not exist: " + "; ".join(f"{p} ({', '.join(w)})" for p, w in missing.items())


def test_the_path_finder_sees_moved_modules():
    assert PATH.search("see core/analysis/metrics.py")[1] == "core/analysis/metrics.py"
    assert not _exists("core/metrics.py")  # the old flat module is gone: a doc naming it fails the test
    assert PATH.search("tools/tensorflow-quantization/examples/README.md") is None


# A dotted module reference in prose or comments: core.analysis.metrics, trtdebug.engines.base.Engine.
DOTTED = re.compile(r"(?<![\w.])((?:trtdebug\.)?(?:core|engines|workflows|artifacts)(?:\.[a-z_][a-z_0-9]*)+)")


def _resolves(reference: str) -> bool:
    """The dotted name walks through real packages to a real module (what follows a module is an
    attribute, not checked here)."""
    parts = reference.removeprefix("trtdebug.").split(".")
    folder = ROOT / "trtdebug"
    for part in parts:
        if (folder / f"{part}.py").is_file():
            return True
        if not (folder / part / "__init__.py").is_file():
            init = (folder / "__init__.py").read_text()
            return re.search(rf"\b{part}\b", init) is not None  # a name the package itself defines
        folder = folder / part
    return True


def test_every_dotted_module_reference_resolves():
    wrong = []
    for source in SOURCES:
        for lineno, line in enumerate(source.read_text().splitlines(), 1):
            wrong += [f"{m[1]} ({source.relative_to(ROOT)}:{lineno})" for m in DOTTED.finditer(line)
                      if not _resolves(m[1])]
    assert not wrong, "module references that name no module: " + "; ".join(wrong)


def test_the_dotted_finder_refuses_an_old_flat_module():
    assert not _resolves("core.attribution")
    assert _resolves("core.analysis.culprits") and _resolves("trtdebug.core.analysis.metrics.CompareResult")


def _readme_commands() -> list[str]:
    blocks = (ROOT / "README.md").read_text().split("## Set-up")[1].split("```")[1::2]
    return [block.strip() for block in blocks[:2]]


def test_ci_runs_exactly_the_readme_test_command():
    install_and_run, test = _readme_commands()
    assert install_and_run.startswith("python3 -m venv .venv && ") and "trtdebug compare examples/" in install_and_run
    assert test.startswith("python3 -m venv .venv && ") and test.endswith("python -m pytest")
    assert test in (ROOT / ".ci" / "run").read_text().splitlines()


def test_every_defect_kind_is_documented_in_the_report_schema():
    import ast

    from trtdebug.core.analysis.defects import KINDS

    schema = (ROOT / "docs" / "report-schema.md").read_text()
    documented = set(re.findall(r"`([a-z_]+)`", schema.split("`kind` is one of", 1)[1].split("|", 1)[0]))
    assert set(KINDS) <= documented, set(KINDS) - documented
    made = set()  # every Defect("kind", ...) the code makes
    for path in (ROOT / "trtdebug").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Defect" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                made.add(node.args[0].value)
    assert made <= set(KINDS), made - set(KINDS)
