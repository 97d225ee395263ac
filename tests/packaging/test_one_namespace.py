"""The installed distribution adds one import name, ``qlcp``, and nothing generic.

A wheel is built from this checkout and installed (without dependencies) into a
fresh virtual environment that borrows the test environment's site-packages for
the dependencies.  In a working directory holding a decoy ``tasks.py`` and a decoy
``flows/`` package (what Invoke, Celery and Prefect projects usually have), the
installed flow must still run a night: the decoys must not shadow our layers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    src = tmp_path_factory.mktemp("src") / "qlcp"           # a copy: the build leaves nothing in the checkout
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info",
                                                             "__pycache__", "bench", "tests"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                        "--wheel-dir", str(out), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = out.glob("qlcp-*.whl")
    return whl


def test_wheel_has_one_top_level_import_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"qlcp"}, tops
    for layer in ("core", "tasks", "flows", "deployments"):
        assert f"qlcp/{layer}/__init__.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "qlcp = qlcp.deployments.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


@pytest.mark.slow
def test_installed_flow_runs_beside_decoys(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the dependencies come from this environment (offline); the project itself only from the wheel
    # every site directory of this interpreter (a venv whose site-packages only points elsewhere included)
    deps = list(dict.fromkeys([p for p in sys.path if p.endswith(("site-packages", "dist-packages"))] +
                              [sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]))
    Path(site, "_deps.pth").write_text("\n".join(deps) + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                        str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]

    work = tmp_path / "work"
    (work / "flows").mkdir(parents=True)
    (work / "tasks.py").write_text("raise ImportError('decoy tasks.py was imported')\n")
    (work / "flows" / "__init__.py").write_text("raise ImportError('decoy flows/ was imported')\n")
    (work / "deployments.py").write_text("raise ImportError('decoy deployments.py was imported')\n")
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, "")                      # the working directory first, as `python -c` has it
        import qlcp, qlcp.core
        from qlcp.core.simulate import simulate_night
        from qlcp.flows.night import process_night
        assert "{REPO}" not in qlcp.core.__file__, qlcp.core.__file__
        sim = simulate_night("sim", n_frames=6, size=256, seed=3)
        s = process_night(str(sim.raw_dir), "red/20240101", config={{"steps": "lbfiopcd", "workers": 1}})
        print(json.dumps({{"file": qlcp.core.__file__, "lc": [g["outputs"].get("lightcurve") for g in s["groups"]]}}))
    """)
    # a clean Prefect environment (earlier tests may have set PREFECT_* variables): an ephemeral server
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("PREFECT_", "QLCP_"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), QLCP_RESULTS=str(tmp_path / "results"),
               QLCP_HOME=str(tmp_path / "qlcp"), PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="true", MPLBACKEND="Agg")
    r = subprocess.run([str(py), "-c", script], cwd=work, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    out = r.stdout.strip().splitlines()[-1]
    import json

    res = json.loads(out)
    assert res["file"].startswith(site), res["file"]
    assert res["lc"] and all(res["lc"]) and all(Path(work, p).is_file() or Path(p).is_file() for p in res["lc"])


def test_the_layers_import_from_the_repository_root():
    """From the checkout's root its own ``qlcp/`` folder comes first on ``sys.path`` (``python -m pytest``,
    ``python -c``) and holds none of the layers; ``qlcp.core`` still imports, from the installation, and is
    this checkout's file (a strict editable install: through its link tree)."""
    r = subprocess.run([sys.executable, "-c", "import os, qlcp.core.stages as s; print(os.path.realpath(s.__file__))"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert Path(r.stdout.strip()) == (REPO / "qlcp_core" / "stages.py").resolve()


def test_wheel_holds_every_module_of_the_mapped_folders(wheel):
    """Every ``.py`` file under the folders mapped in ``pyproject.toml`` is in the wheel: a new
    sub-package (``qlcp_core/x/``) must be listed in ``[tool.setuptools] packages`` too, or the wheel, the
    image and a strict editable install lack it (a lenient editable install found it by path)."""
    import tomllib

    mapping = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f"{folder}/{p.relative_to(REPO / folder).as_posix()}"
               for name, folder in mapping.items() for p in sorted((REPO / folder).rglob("*.py"))
               if "__pycache__" not in p.parts
               and f"{name.replace('.', '/')}/{p.relative_to(REPO / folder).as_posix()}" not in names]
    assert not missing, f"not in the wheel (add the sub-package to [tool.setuptools] packages): {missing}"


def test_wheel_holds_the_builtin_instrument_files(wheel):
    """The built-in instrument files (``instruments_dir: builtin``) are package data: in the wheel."""
    names = set(zipfile.ZipFile(wheel).namelist())
    files = sorted((REPO / "qlcp_core" / "instrument_files").glob("*.yaml"))
    assert files and all(f"qlcp/core/instrument_files/{p.name}" in names for p in files), sorted(names)[:5]
