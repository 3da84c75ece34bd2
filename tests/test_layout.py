"""The folder layout shows the design: dependencies point down, only the CLI talks to the terminal,
engines declare what they can do, and docs/architecture.md maps every module."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from trtdebug.engines.base import Capabilities

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "trtdebug"
MODULES = sorted(PACKAGE.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _layer(path: Path) -> str:
    if path.name == "__main__.py":
        return "cli"  # the entry point runs the CLI
    if path.relative_to(PACKAGE) in (Path("api.py"), Path("__init__.py")):
        return "api"  # the Python API, and the package that exports it lazily
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else "top"


def _mapped_modules(doc: str) -> set[str]:
    """Module paths of the tree in docs/architecture.md's first code block (two spaces a level)."""
    block = doc.split("```")[1]
    stack: list[str] = []
    paths = set()
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        stack[depth:] = [name]
        if name.endswith(".py"):
            paths.add("".join(stack))
    return paths


def test_architecture_doc_lists_every_module():
    mapped = _mapped_modules((ROOT / "docs" / "architecture.md").read_text())
    actual = {str(p.relative_to(ROOT)) for p in MODULES}
    assert not actual - mapped, f"add these modules to docs/architecture.md: {sorted(actual - mapped)}"
    assert not mapped - actual, f"docs/architecture.md lists modules that do not exist: {sorted(mapped - actual)}"


def test_only_the_cli_imports_click_or_rich():
    offenders = [str(p.relative_to(ROOT)) for p in MODULES if _layer(p) != "cli"
                 and any(name.split(".")[0] in ("click", "rich") for name in _imports(p))]
    assert not offenders


def test_no_library_module_prints():
    offenders = []
    for path in MODULES:
        if _layer(path) == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders


ALLOWED = {  # layer -> the trtdebug layers it may import
    "top": {"top"},
    "core": {"top", "core"},
    "engines": {"top", "core", "engines"},
    "artifacts": {"top", "core", "engines", "artifacts"},
    "workflows": {"top", "core", "engines", "artifacts", "workflows"},
    "cli": {"top", "core", "engines", "artifacts", "workflows", "api", "cli"},
    "api": {"top", "core", "engines", "artifacts", "workflows", "api"},
}


def test_dependencies_point_downwards():
    wrong = []
    for path in MODULES:
        layer = _layer(path)
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != "trtdebug" or name in ("trtdebug", "trtdebug.errors"):
                continue
            target = parts[1] if len(parts) > 1 and parts[1] in ALLOWED else "top"
            if target not in ALLOWED.get(layer, {"top"}):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong


def test_help_imports_neither_onnxruntime_nor_tensorrt():
    code = ("import sys\nfrom trtdebug.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('onnxruntime', 'tensorrt', 'tensorrt_rtx', 'tensorrt_bindings', 'cuda', 'polygraphy'))\n"
            "print('HEAVY', heavy)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "Usage:" in run.stdout and "HEAVY []" in run.stdout, run.stdout + run.stderr


def test_import_trtdebug_loads_neither_onnxruntime_nor_tensorrt_nor_numpy():
    code = ("import sys\nimport trtdebug\nassert trtdebug.UserError and trtdebug.EngineError\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('onnxruntime', 'tensorrt', 'tensorrt_rtx', 'tensorrt_bindings', 'cuda', 'polygraphy', 'numpy', "
            "'onnx'))\nprint('HEAVY', heavy)\nprint('API', callable(trtdebug.compare))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "HEAVY []" in run.stdout and "API True" in run.stdout, run.stdout + run.stderr


def _engines():
    from trtdebug.engines.emulator.engine import EmulatorEngine
    from trtdebug.engines.results import ResultsEngine

    yield EmulatorEngine, "EmulatorBuilt"
    yield ResultsEngine, "ResultsBuilt"
    from trtdebug.engines.tensorrt.engine import TensorRTEngine

    yield TensorRTEngine, "TensorRTBuilt"


def _declared(engine_class) -> Capabilities:
    if isinstance(getattr(engine_class, "capabilities", None), Capabilities):
        return engine_class.capabilities
    source = inspect.getsource(engine_class)  # set per instance (TensorRT decides by flavor)
    assert "Capabilities(" in source
    return Capabilities(**{flag: True for flag in ("serializes", "records_tactics_on_request", "local_error",
                                                   "reseeds_tactics", "replans") if f"{flag}=True" in source})


@pytest.mark.parametrize(("engine_class", "built_name"), list(_engines()))
def test_every_engine_declares_exactly_the_capabilities_it_implements(engine_class, built_name):
    module = sys.modules[engine_class.__module__]
    built_class = getattr(module, built_name, None)
    if built_class is None:  # the built class may live in a sibling module
        import importlib
        import pkgutil

        package = importlib.import_module(engine_class.__module__.rpartition(".")[0])
        for info in pkgutil.iter_modules(package.__path__):
            candidate = importlib.import_module(f"{package.__name__}.{info.name}")
            built_class = getattr(candidate, built_name, None) or built_class
    assert built_class is not None
    declared = _declared(engine_class)
    assert declared.local_error == hasattr(built_class, "run_local")
    assert declared.serializes == hasattr(built_class, "serialize")
    assert declared.records_tactics_on_request == hasattr(engine_class, "recording_tactics")
    assert declared.reseeds_tactics == hasattr(engine_class, "with_tactic_seed")
    assert declared.replans == hasattr(engine_class, "replanned")


CORE_ORDER = ("system", "model", "plans", "reference", "analysis", "search", "quantized")  # bottom first


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _dependencies(path: Path, known: set[str]) -> set[str]:
    """trtdebug modules this file imports, at module level or inside functions: `from a import b`
    counts as a.b where b is a module, else a (a parent package's __init__ runs either way, so
    naming a package to reach its submodule is no dependency on the package)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return {name for name in found if name in known and name.startswith("trtdebug")}


def _import_graph() -> dict[str, set[str]]:
    known = {_module_name(p) for p in MODULES}
    graph = {_module_name(p): _dependencies(p, known) - {_module_name(p)} for p in MODULES}
    # The package loads its API on first attribute access (module __getattr__), never while importing,
    # so modules that read trtdebug.__version__ form no circle with it.
    graph["trtdebug"].discard("trtdebug.api")
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles_anywhere():
    circles = _circles(_import_graph())
    assert not circles, "import circles (module level or inside functions): " + "; ".join(
        " <-> ".join(c) for c in circles)


def test_the_circle_finder_finds_a_circle_inside_a_package():
    graph = {"trtdebug.engines.x.a": {"trtdebug.engines.x.b"}, "trtdebug.engines.x.b": {"trtdebug.engines.x.c"},
             "trtdebug.engines.x.c": {"trtdebug.engines.x.a"}, "trtdebug.core.d": set()}
    assert _circles(graph) == [["trtdebug.engines.x.a", "trtdebug.engines.x.b", "trtdebug.engines.x.c"]]


def test_core_packages_read_bottom_up():
    """core/ packages import only packages below them (CORE_ORDER), so each reads on its own."""
    rank = {name: i for i, name in enumerate(CORE_ORDER)}
    wrong = []
    for module, deps in _import_graph().items():
        parts = module.split(".")
        if parts[1:2] != ["core"] or len(parts) < 4:
            continue
        assert parts[2] in rank, f"core/{parts[2]} is missing from CORE_ORDER"
        for dep in deps:
            dep_parts = dep.split(".")
            if dep_parts[1:2] == ["core"] and len(dep_parts) >= 3 and rank.get(dep_parts[2], -1) > rank[parts[2]]:
                wrong.append(f"{module} imports {dep}")
    assert not wrong
