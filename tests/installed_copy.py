"""A temporary installed copy of QLCP: the ``qlcp`` package laid out as a wheel installs it.

:func:`installed_copy` copies the repository's layers into ``dest/site/qlcp/...``
following ``[tool.setuptools.package-dir]`` of ``pyproject.toml`` (``qlcp_core/``
becomes ``qlcp/core/``, ...) and returns the environment of a subprocess in
which ``import qlcp`` resolves to the copy (``PYTHONPATH`` first, the
dependencies from this interpreter's site-packages; ``PYTHONSAFEPATH`` keeps
the working directory off ``sys.path``, so the checkout's own ``qlcp/`` folder
cannot shadow the copy).  No pip: tests edit the copy's sources and run them again.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def package_dirs(repo: Path = REPO) -> dict[str, str]:
    """Import name -> folder of the repository (``pyproject.toml``'s package-dir)."""
    conf = tomllib.loads((repo / "pyproject.toml").read_text())
    return dict(conf["tool"]["setuptools"]["package-dir"])


def installed_copy(dest: Path, repo: Path = REPO) -> dict:
    """Copy the ``qlcp`` packages of ``repo`` into ``dest/site`` (installed layout); the env of a
    subprocess that imports them."""
    site = Path(dest) / "site"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name, folder in sorted(package_dirs(repo).items()):     # "qlcp" before "qlcp.core"
        target = site.joinpath(*name.split("."))
        shutil.copytree(repo / folder, target, ignore=ignore, dirs_exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONSAFEPATH"] = "1"         # no working directory on sys.path: a checkout's qlcp/ cannot shadow it
    return env


def source_defining(folder: Path, function: str) -> Path:
    """The source file under ``folder`` that defines ``function`` (e.g. where a module moved into a package)."""
    return next(p for p in sorted(Path(folder).rglob("*.py")) if f"\ndef {function}(" in p.read_text())
