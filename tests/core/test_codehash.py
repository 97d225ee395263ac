"""The code fingerprint of a stage (qlcp.core.codehash): closure, stability, what a change touches."""

from __future__ import annotations

import ast
import textwrap
import types
from pathlib import Path

import pytest

from qlcp.core import codehash as C
from qlcp.core.stages import BY_NAME

SOURCES = {
    "__init__.py": "def run():\n    from .heavy import H\n    return H\n",
    "leaf.py": "X = 1\n",
    "leaf2.py": '"""A docstring line that reads like code:\nimport the frames\n"""\nY = 2\n',
    "mid.py": "import os\n\nfrom .leaf import X\n\n\ndef f():\n    from . import other\n    return other\n",
    "other.py": "import numpy as np\nimport synthpkg.leaf2 as l2\n",
    "top_a.py": "from . import mid\n",
    "top_b.py": "from .leaf2 import (\n    Y,\n)\n",
    "heavy.py": "from . import leaf, leaf2, mid, other\nH = 3\n",
    "sub/__init__.py": "",
    "sub/deep.py": "from ..leaf import X  # a comment (\n",
}


@pytest.fixture
def pkg(tmp_path, monkeypatch):
    for name, text in SOURCES.items():
        f = tmp_path / "synthpkg" / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    C.clear()
    yield tmp_path / "synthpkg"
    C.clear()


def _fp(name: str) -> str:
    return C.code_fingerprint(f"synthpkg.{name}", "synthpkg")


def test_closure_follows_module_and_function_level_imports_inside_the_package_only(pkg):
    assert C.closure("synthpkg.top_a", "synthpkg") == tuple(
        f"synthpkg.{m}" for m in ("leaf", "leaf2", "mid", "other", "top_a"))
    assert C.closure("synthpkg.top_b", "synthpkg") == ("synthpkg.leaf2", "synthpkg.top_b")
    assert C.closure("synthpkg.sub.deep", "synthpkg") == ("synthpkg.leaf", "synthpkg.sub.deep")
    # the package's __init__ only when a name is imported from it
    assert "synthpkg" not in C.closure("synthpkg.heavy", "synthpkg")


def test_fingerprint_is_stable_and_independent_of_order(pkg):
    a = C.code_fingerprint(("synthpkg.top_a", "synthpkg.top_b"), "synthpkg")
    C.clear()
    assert C.code_fingerprint(("synthpkg.top_b", "synthpkg.top_a"), "synthpkg") == a
    assert len(a) == 16 and a != _fp("top_a") != _fp("top_b")


def test_a_change_in_a_leaf_changes_exactly_its_dependents(pkg):
    names = ["leaf", "leaf2", "mid", "other", "top_a", "top_b", "heavy", "sub.deep"]
    before = {n: _fp(n) for n in names}
    with open(pkg / "leaf.py", "a") as f:
        f.write("\n\ndef unused():\n    return None\n")
    assert _fp("leaf") == before["leaf"]                    # memoised: once per process
    C.clear()
    after = {n: _fp(n) for n in names}
    changed = {n for n in names if after[n] != before[n]}
    assert changed == {"leaf", "mid", "top_a", "heavy", "sub.deep"}


def test_a_module_is_known_by_its_name_as_well_as_its_source(pkg):
    before = _fp("top_b")
    (pkg / "leaf3.py").write_text((pkg / "leaf2.py").read_text())
    (pkg / "top_b.py").write_text("from .leaf3 import (\n    Y,\n)\n")
    C.clear()
    assert _fp("top_b") != before


def _full_ast_imports(module: str, path: Path, is_pkg: bool) -> set[str]:
    """What a parse of the whole module finds (the reference for the per-statement scan)."""
    base = module if is_pkg else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("qlcp.core")}
        elif isinstance(node, ast.ImportFrom):
            target = C.importlib.util.resolve_name("." * node.level + (node.module or ""), base) \
                if node.level else node.module
            if target and (target == "qlcp.core" or target.startswith("qlcp.core.")):
                subs = {f"{target}.{a.name}" for a in node.names
                        if C._source_file(f"{target}.{a.name}", "qlcp.core") is not None}
                out |= subs | ({target} if len(subs) < len(node.names) else set())
    return out


def test_the_statement_scan_finds_what_a_full_parse_finds_in_every_core_module():
    C.clear()
    root = C._root("qlcp.core")
    files = sorted(root.rglob("*.py"))
    assert len(files) > 20
    for f in files:
        rel = f.relative_to(root).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        name = ".".join(["qlcp.core", *parts])
        is_pkg = f.name == "__init__.py"
        assert C.imports_of(name, f.read_bytes(), is_pkg) == _full_ast_imports(name, f, is_pkg), name


def test_a_stage_knows_its_code():
    """``Stage.code`` is the fingerprint of its runner's module and what that imports; a fused block's
    is its runners' (``Block.modules``); correction's code does not include photometry."""
    from qlcp.core.stages import BY_NAME, plan

    runner = BY_NAME["photometry"].run.__module__
    assert runner.startswith("qlcp.core.steps")
    assert BY_NAME["photometry"].code == C.code_fingerprint(runner)
    ip = next(b for b in plan("ip") if b.run)
    assert set(ip.modules) >= {s.run.__module__ for s in ip.stages} | {ip.run.__module__}
    assert "qlcp.core.photometry" in C.closure(ip.modules)
    assert "qlcp.core.photometry" not in C.closure(BY_NAME["correct"].run.__module__)
    assert "qlcp.core.photometry" not in C.closure("qlcp.core.correct")


def test_provenance_keys_carry_the_code_of_their_stage(monkeypatch):
    """``QLCPKEY`` (qlcp.core.provenance.step_key) changes with the code of its stage and not with
    that of another stage's modules."""
    from qlcp.core.config import Config
    from qlcp.core.configview import view
    from qlcp.core.provenance import step_key
    from qlcp.core.stages import BY_NAME

    def key(s):                                 # the stage's view carries its keys and code, as drivers build it
        return step_key(view(Config(), BY_NAME[s]), s)

    C.clear()
    before = {s: key(s) for s in ("bias", "correct", "photometry")}
    real = C._module.__wrapped__
    monkeypatch.setattr(C, "_module", C.functools.lru_cache(maxsize=None)(
        lambda name, package: ("edited", real(name, package)[1]) if name == "qlcp.core.photometry"
        else real(name, package)))
    for f in (C.closure, C.code_fingerprint):
        f.cache_clear()
    try:
        for s, k in before.items():
            uses = "qlcp.core.photometry" in C.closure(BY_NAME[s].run.__module__)
            assert (key(s) != k) == uses, s
        assert key("photometry") != before["photometry"]
    finally:
        monkeypatch.undo()
        C.clear()


def test_an_installed_copy_is_fingerprinted_from_its_own_sources(tmp_path):
    """The sources read are those the import system finds (here a copy laid out as installed), so an
    edit in the copy changes the copy's fingerprints and not the checkout's."""
    import json
    import subprocess
    import sys

    from ..installed_copy import installed_copy, source_defining

    env = installed_copy(tmp_path)
    code = ("import json; from qlcp.core import codehash as C; from qlcp.core.stages import BY_NAME\n"
            "print(json.dumps([str(C._root('qlcp.core')), BY_NAME['photometry'].code]))")

    def probe():
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    C.clear()
    ours = BY_NAME["photometry"].code
    root, before = probe()
    assert Path(root) == tmp_path / "site" / "qlcp" / "core" and before == ours
    src = source_defining(tmp_path / "site" / "qlcp" / "core", "photometry_file")
    src.write_text(src.read_text() + "\n\ndef _unused():\n    return None\n")
    assert probe()[1] != before
    C.clear()
    assert BY_NAME["photometry"].code == ours
