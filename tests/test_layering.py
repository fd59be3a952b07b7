"""The package layering holds (DESIGN.md, "Packages and their jobs"): arrows point down only.

(a) no library module imports the command line; (b) the board runtime imports neither torch
nor the packages above it; (c) no import cycle between tvc's packages. Imports are read from
the source (AST), including those inside functions, so a lazy import counts too.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TVC = REPO / "tvc"

# What tvc/runtime (what a board installs: numpy + onnxruntime) must never import.
RUNTIME_NEVER = {"models", "compress", "train", "eval", "data", "report", "stages", "tasks", "cli"}
TORCH_SIDE = {"torch", "torchvision", "timm", "torch_pruning", "transformers", "safetensors"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes under `if TYPE_CHECKING:`: annotations only, never run."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports_of(path: Path, *, with_type_checking: bool = True) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement of a file, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = set() if with_type_checking else _type_checking_nodes(tree)
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, *([node.module] if node.module else [])])
            # `from tvc import cli` imports tvc.cli: count the names as modules too
            found += [(base, node.lineno)] + [(f"{base}.{a.name}", node.lineno) for a in node.names]
    return found


def library_files() -> list[Path]:
    return sorted(p for p in TVC.rglob("*.py") if "cli" not in p.relative_to(TVC).parts[:1]
                  and p != TVC / "__main__.py")  # fmt: skip


def _package(module: str) -> str | None:
    """tvc.models.load -> models; tvc.artifact -> artifact (the floor's modules count alone)."""
    parts = module.split(".")
    if parts[0] != "tvc" or len(parts) < 2:
        return None
    return parts[1]


def _real_tvc_package(module: str) -> str | None:
    """The tvc package of an imported name that exists (`from tvc.x import Name` names a
    module or a name in one; only modules and packages are kept)."""
    pkg = _package(module)
    if pkg is None:
        return None
    rel = Path(*module.split(".")[1:])
    if (TVC / rel).is_dir() or (TVC / rel).with_suffix(".py").is_file():
        return pkg
    return None


# ------------------------------------------------------------------------------- (a) the CLI


def test_library_never_imports_the_cli():
    found = [
        f"{path.relative_to(REPO).as_posix()}:{line} imports {module}"
        for path in library_files()
        for module, line in imports_of(path)
        if module == "tvc.cli" or module.startswith("tvc.cli.")
    ]
    assert not found, "the library imports the command line:\n" + "\n".join(found)


# ---------------------------------------------------------------------------- (b) the runtime


def test_runtime_imports_nothing_above_it_and_no_torch():
    found = []
    for path in sorted((TVC / "runtime").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for module, line in imports_of(path):
            top = module.split(".")[0]
            if top in TORCH_SIDE or _package(module) in RUNTIME_NEVER:
                found.append(f"{rel}:{line} imports {module}")
    assert not found, "tvc/runtime reaches above the board layer:\n" + "\n".join(found)


CHILD = """
import importlib, json, pkgutil, sys
import tvc.runtime
names = [f"tvc.runtime.{m.name}" for m in pkgutil.iter_modules(tvc.runtime.__path__)]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "loaded": sorted(sys.modules)}))
"""


def test_importing_every_runtime_module_loads_no_torch_and_no_upper_package():
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "tvc.runtime.backends" in out["modules"] and "tvc.runtime.trt" in out["modules"]
    loaded = out["loaded"]
    assert not [m for m in loaded if m.split(".")[0] in TORCH_SIDE]
    assert not [m for m in loaded if _package(m) in RUNTIME_NEVER]


# ----------------------------------------------------------------------------- (c) no cycles


def package_graph() -> dict[str, dict[str, list[str]]]:
    """{package: {package it imports: [where]}} over tvc's packages and floor modules. Imports
    under `if TYPE_CHECKING:` are left out: they are annotations and never run."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(TVC.rglob("*.py")):
        here = _package(_module_name(path)) or "tvc"
        for module, line in imports_of(path, with_type_checking=False):
            there = _real_tvc_package(module)
            if there and there != here:
                graph[here][there].append(f"{path.relative_to(REPO).as_posix()}:{line}")
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected components with more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def _explain(graph, comp: list[str]) -> str:
    edges = [f"  {a} -> {b} ({graph[a][b][0]})" for a in comp for b in graph[a] if b in comp]
    return f"{' <-> '.join(comp)}:\n" + "\n".join(edges)


# Package imports that close a cycle, each with the reason it is allowed. Leaving one out here,
# the cycle test ignores only that edge; once the import is gone,
# test_known_cycle_edges_still_exist fails until the entry is removed.
KNOWN_CYCLE_EDGES: dict[tuple[str, str], str] = {}


def test_no_import_cycle_between_packages():
    graph = package_graph()
    for a, b in KNOWN_CYCLE_EDGES:
        graph[a].pop(b, None)
    found = cycles(graph)
    assert not found, "import cycles between tvc's packages:\n" + "\n".join(
        _explain(graph, c) for c in found
    )


def test_known_cycle_edges_still_exist():
    graph = package_graph()
    gone = [f"{a} -> {b}" for a, b in KNOWN_CYCLE_EDGES if b not in graph.get(a, {})]
    assert not gone, f"no longer imported, remove from KNOWN_CYCLE_EDGES: {', '.join(gone)}"


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b": ["x"]}, "b": {"c": ["y"]}, "c": {"a": ["z"]}, "d": {"a": ["w"]}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b": ["x"]}, "b": {}}) == []
