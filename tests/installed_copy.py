"""An installed-looking copy of the source tree, for tests that edit the code and run it in a subprocess."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: import name under ``qlcp`` -> folder of the repository (``package-dir`` in pyproject.toml)
FOLDERS = {"core": "qlcp_core", "tasks": "tasks", "flows": "flows", "deployments": "deployments"}


def installed_copy(dest) -> dict:
    """Copy ``qlcp/`` and the layer folders to ``dest/src`` and lay them out as the wheel does under
    ``dest/site/qlcp`` (symlinks); returns the environment (``PYTHONPATH``) that imports ``qlcp`` from it."""
    dest = Path(dest)
    src, site = dest / "src", dest / "site" / "qlcp"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("qlcp", *FOLDERS.values()):
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    site.mkdir(parents=True)
    shutil.copy2(src / "qlcp" / "__init__.py", site / "__init__.py")
    for name, folder in FOLDERS.items():
        (site / name).symlink_to(src / folder, target_is_directory=True)
    return {**os.environ, "PYTHONPATH": str(site.parent), "PYTHONDONTWRITEBYTECODE": "1"}
