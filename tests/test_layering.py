"""The import graph of the four layers: layered, acyclic, and no core module too long to read.

The folders and their import names are read from ``pyproject.toml``
(``[tool.setuptools.package-dir]``), so this test follows the mapping the
install uses.  Every import is counted, at module level and inside functions
(a function-level import is a dependency that merely loads late), except those
under ``if TYPE_CHECKING:``.  The rules:

* **layered**: ``qlcp.core`` imports nothing of ``qlcp.tasks``, ``qlcp.flows``,
  ``qlcp.deployments`` and never Prefect; tasks import no flows or deployments;
  flows no deployments;
* **acyclic**: no circle of imports between modules (a package's
  ``__init__`` importing its own submodules, which import each other without
  going through it, is not a circle);
* **short**: no module of ``qlcp_core`` over :data:`MAX_CORE_LINES` lines.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: the layers, lowest first: a module may import from its own layer and those before it
LAYERS = ("qlcp.core", "qlcp.tasks", "qlcp.flows", "qlcp.deployments")
#: third-party names the core never imports (it is plain functions, run without Prefect)
CORE_FORBIDDEN = ("prefect", "prefect_dask", "watchdog")
MAX_CORE_LINES = 800


@cache
def package_dirs() -> dict[str, Path]:
    """Import name -> folder, as ``pyproject.toml`` maps them for the install."""
    with open(REPO / "pyproject.toml", "rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {name: REPO / folder for name, folder in mapping.items()}


@cache
def modules() -> dict[str, Path]:
    """Every module of the four layers: dotted import name -> source file."""
    out = {}
    for layer in LAYERS:
        root = package_dirs()[layer]
        for f in sorted(root.rglob("*.py")):
            parts = f.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((layer,) + parts)] = f
    return out


def _is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom of ``tree`` (any depth), but none under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


@cache
def imports(name: str) -> frozenset[str]:
    """The absolute names module ``name`` imports: each imported module, and for
    ``from X import a`` the module ``X.a`` when it is one of ours, else ``X``."""
    base = name if _is_package(name) else name.rpartition(".")[0]
    out = set()
    for node in _import_nodes(ast.parse(modules()[name].read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
            continue
        if node.level:
            pkg = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
            target = f"{pkg}.{node.module}" if node.module else pkg
        else:
            target = node.module
        subs = {f"{target}.{a.name}" for a in node.names} & modules().keys()
        out |= subs
        if len(subs) < len(node.names):
            out.add(target)
    return frozenset(out)


def _in(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> str | None:
    return next((lay for lay in LAYERS if _in(module, lay)), None)


def graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (the edges of the cycle check)."""
    own = modules().keys()
    return {m: {t for t in imports(m) if t in own and t != m} for m in own}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, on, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(g)))
    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(out)


def _describe(comps) -> str:
    return "; ".join(" <-> ".join(c) for c in comps)


# ------------------------------------------------------------------ the tests
def test_the_mapping_is_read_from_pyproject():
    dirs = package_dirs()
    assert set(LAYERS) <= dirs.keys()
    for layer in LAYERS:
        assert (dirs[layer] / "__init__.py").is_file(), layer
    assert {"qlcp.core.config", "qlcp.tasks", "qlcp.flows.night", "qlcp.deployments.cli"} <= modules().keys()


def test_every_package_folder_is_installed():
    """A sub-package (a folder with ``__init__.py``) the wheel's explicit package list misses would be
    left out of a non-editable install."""
    with open(REPO / "pyproject.toml", "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    packages = {m for m in modules() if _is_package(m)}
    assert packages <= listed, f"not in [tool.setuptools] packages: {sorted(packages - listed)}"


def test_the_graph_sees_function_level_and_relative_imports_but_not_type_checking(tmp_path):
    """The parser on its own: a circle closed only inside a function is still a circle."""
    src = ("from typing import TYPE_CHECKING\nfrom . import config\n"
           "if TYPE_CHECKING:\n    from .walk import Unit\n"
           "def f():\n    from .photometry import measure\n    from ..tasks import common\n")
    tree = ast.parse(src)
    got = [(n.level, n.module) for n in _import_nodes(tree) if isinstance(n, ast.ImportFrom)]
    assert sorted(got, key=str) == sorted([(0, "typing"), (1, None), (1, "photometry"), (2, "tasks")], key=str)
    forced = imports("qlcp.core.photometry.forced")
    assert "qlcp.core.targets" in forced                        # ``from .. import targets`` in a function
    assert "qlcp.core.offset.matching" in forced                # ``from ..offset.matching import ...``
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_core_never_imports_prefect_or_upper_layers():
    for mod in sorted(modules()):
        if layer_of(mod) != "qlcp.core":
            continue
        bad = {t for t in imports(mod) if any(_in(t, p) for p in CORE_FORBIDDEN + LAYERS[1:])}
        assert not bad, f"{modules()[mod].relative_to(REPO)} imports {sorted(bad)}"


def test_dependencies_point_one_way():
    order = {lay: i for i, lay in enumerate(LAYERS)}
    for mod in sorted(modules()):
        level = order[layer_of(mod)]
        higher = {t for t in imports(mod) if order.get(layer_of(t), -1) > level}
        assert not higher, f"{modules()[mod].relative_to(REPO)} imports upper layer(s) {sorted(higher)}"


def test_importing_every_core_module_loads_no_prefect():
    mods = sorted(m for m in modules() if layer_of(m) == "qlcp.core")
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('prefect', 'prefect_dask')]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_no_import_circle_in_the_core_and_tasks():
    found = [c for c in cycles(graph()) if not any(layer_of(m) in ("qlcp.flows", "qlcp.deployments") for m in c)]
    assert not found, f"import circle(s): {_describe(found)}"


def test_no_import_circle_through_flows_or_deployments():
    found = [c for c in cycles(graph()) if any(layer_of(m) in ("qlcp.flows", "qlcp.deployments") for m in c)]
    assert not found, f"import circle(s): {_describe(found)}"


def _long_core_modules() -> dict[str, int]:
    return {str(f.relative_to(REPO)): n for m, f in modules().items()
            if layer_of(m) == "qlcp.core" and (n := len(f.read_text().splitlines())) > MAX_CORE_LINES}


def test_no_core_module_over_800_lines():
    long = _long_core_modules()
    assert not long, f"over {MAX_CORE_LINES} lines: {long}"
