"""The layering rule: qlcp.core imports no Prefect; tasks/ holds no science."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _top(module: str) -> str:
    """The layer of a module name: ``qlcp.X`` for the project's own, else the top-level name."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "qlcp" and len(parts) > 1 else parts[0]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {_top(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(_top(node.module))
    return names


def test_core_sources_never_import_prefect_or_upper_layers():
    for f in sorted((REPO / "qlcp_core").rglob("*.py")):
        bad = _imports(f) & {"prefect", "prefect_dask", "qlcp.tasks", "qlcp.flows", "qlcp.deployments", "watchdog"}
        assert not bad, f"{f.relative_to(REPO)} imports {bad}"


def test_importing_every_core_module_loads_no_prefect():
    mods = [f"qlcp.core.{p.stem}" for p in sorted((REPO / "qlcp_core").glob("*.py")) if p.stem != "__init__"]
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('prefect', 'prefect_dask')]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_dependencies_point_one_way():
    order = {"qlcp.core": 0, "qlcp.tasks": 1, "qlcp.flows": 2, "qlcp.deployments": 3}
    folder = {"qlcp.core": "qlcp_core", "qlcp.tasks": "tasks", "qlcp.flows": "flows", "qlcp.deployments": "deployments"}
    for pkg, level in order.items():
        for f in sorted((REPO / folder[pkg]).rglob("*.py")):
            higher = {m for m in _imports(f) if order.get(m, -1) > level}
            assert not higher, f"{f.relative_to(REPO)} imports upper layer(s) {higher}"
