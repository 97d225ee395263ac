"""The code a stage runs, as a fingerprint: what cache and provenance keys know of the code.

A stage's code is the module of its runner (``Stage.run.__module__``) and every
``qlcp.core`` module that module imports, transitively (:func:`closure`):
imports found statically in the source, at module level or inside functions
(``import x``, ``from . import x``, ``from .x import y``).  The stage graph
asks for it (``Stage.code``, ``Block.code``, :func:`qlcp.core.stages.night_code`);
this module knows no stage.  A package's
``__init__`` counts where a module imports a name from it, not merely because it
holds an imported module (``qlcp_core/__init__.py``, i.e. ``qlcp.core``, imports the plain driver, hence
every stage, inside a function: as the parent of every module it would make
every stage's code the same).
Its fingerprint (:func:`code_fingerprint`) is the sha256 of each of those
modules' name and source bytes, in sorted order: a change in photometry
changes the fingerprint of the stages whose runner imports photometry and of
no other.  Sources are read where the import system finds them
(under ``importlib.util.find_spec("qlcp.core")``'s folder), so an editable
and a normal install fingerprint the code they run.

What counts: every byte of those sources (comments, docstrings and blank
lines included).  What does not: modules imported dynamically
(``importlib.import_module``), data files, the Python interpreter and the
third-party libraries (numpy, astropy, sep...), and ``qlcp.tasks``,
``qlcp.flows``, ``qlcp.deployments`` (orchestration, not science).

Computed once per process (memoised; :func:`clear` forgets it, for tests that
edit sources).  The imports are located by a scan for lines that open an
import statement, each statement then parsed by :mod:`ast`: far cheaper than
parsing whole modules (~0.3-0.9 s for the package), which every worker
process of a run would pay.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import re
import textwrap
from pathlib import Path

#: the package whose modules count as a stage's code
PACKAGE = __package__ or "qlcp.core"

#: a line that opens an import statement (module level or indented)
_IMPORT_LINE = re.compile(rb"^[ \t]*(?:import[ \t]|from[ \t]+[\w.]+[ \t]+import\b)", re.M)
#: lines an import statement may span (a parenthesised list of names)
_MAX_LINES = 60


def _import_nodes(source: bytes) -> list:
    """The ``Import``/``ImportFrom`` nodes of ``source``: from each line that opens one, the fewest
    lines that parse (its continuation lines); a line that never parses (a line of a string that
    looks like an import) is skipped."""
    lines = source.splitlines()
    nodes = []
    for i in sorted({source.count(b"\n", 0, m.start()) for m in _IMPORT_LINE.finditer(source)}):
        for n in range(1, min(_MAX_LINES, len(lines) - i) + 1):
            try:
                tree = ast.parse(textwrap.dedent(b"\n".join(lines[i:i + n]).decode("utf-8", "replace")))
            except SyntaxError:
                continue
            nodes += [x for x in tree.body if isinstance(x, (ast.Import, ast.ImportFrom))]
            break
    return nodes


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def imports_of(module: str, source: bytes, is_package: bool, package: str = PACKAGE) -> set[str]:
    """The modules of ``package`` that ``module`` (with this ``source``) imports, by name."""
    base = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in _import_nodes(source):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if _inside(a.name, package)}
            continue
        target = importlib.util.resolve_name("." * node.level + (node.module or ""), base) if node.level \
            else node.module
        if not target or not _inside(target, package):
            continue
        subs = {f"{target}.{a.name}" for a in node.names      # ``from . import x``: x may be a module
                if a.name != "*" and _source_file(f"{target}.{a.name}", package) is not None}
        out |= subs
        if len(subs) < len(node.names):                        # a name defined in ``target`` itself
            out.add(target)
    return out


@functools.lru_cache(maxsize=None)
def _root(package: str) -> Path | None:
    """The folder the import system finds ``package`` in (imports nothing but ``package`` itself)."""
    spec = importlib.util.find_spec(package)
    locs = list(spec.submodule_search_locations or []) if spec else []
    return Path(locs[0]) if locs else None


def _source_file(name: str, package: str) -> tuple[Path, bool] | None:
    """(source file, is a package) of module ``name`` of ``package``, found under its folder."""
    root = _root(package)
    if root is None:
        return None
    base = root.joinpath(*name[len(package) + 1:].split(".")) if name != package else root
    if (base / "__init__.py").is_file():
        return base / "__init__.py", True
    f = base.with_name(base.name + ".py")
    return (f, False) if name != package and f.is_file() else None


@functools.lru_cache(maxsize=None)
def _module(name: str, package: str) -> tuple[str, frozenset]:
    """(sha256 of the source, the modules of ``package`` it imports) of module ``name``."""
    found = _source_file(name, package)
    if found is None:
        return "missing", frozenset()
    src = found[0].read_bytes()
    deps = imports_of(name, src, found[1], package)
    return hashlib.sha256(src).hexdigest(), frozenset(deps - {name})


@functools.lru_cache(maxsize=None)
def closure(modules: tuple[str, ...] | str, package: str = PACKAGE) -> tuple[str, ...]:
    """``modules`` and every module of ``package`` they import, transitively; sorted."""
    todo = [modules] if isinstance(modules, str) else list(modules)
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += _module(m, package)[1] - seen
    return tuple(sorted(seen))


@functools.lru_cache(maxsize=None)
def code_fingerprint(modules: tuple[str, ...] | str, package: str = PACKAGE) -> str:
    """sha256 (16 hex digits) of the names and sources of :func:`closure` of ``modules``."""
    h = hashlib.sha256()
    for m in closure(tuple(sorted({modules} if isinstance(modules, str) else set(modules))), package):
        h.update(f"{m}\0{_module(m, package)[0]}\n".encode())
    return h.hexdigest()[:16]


def clear() -> None:
    """Forget every memoised source (a test that edits them)."""
    for f in (_root, _module, closure, code_fingerprint):
        f.cache_clear()
