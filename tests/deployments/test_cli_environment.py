"""An output directory that cannot be written: one line naming the path and the cause, exit 2.

Read-only and full file systems are real ones: small tmpfs mounts (root only; skipped otherwise).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from qlcp.core.simulate import simulate_small
from tests.deployments.test_cli import _one_error_line, qlcp


def _mount(path, *opts):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=2m", *opts)), "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


@pytest.fixture
def mounts():
    """Mount small tmpfs file systems (as root); all unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    done = []

    def mount(path, *opts, then=None):
        _mount(path, *opts)
        done.append(path)
        if then:
            then(path)
            if "ro" not in opts:
                subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        return path

    yield mount
    for p in reversed(done):
        subprocess.run(["umount", str(p)], check=False)


def _read_only(base, mounts):
    return mounts(base / "ro", then=lambda p: (p / "red").mkdir())


def _full(base, mounts, free=300_000):
    """A 2 MB file system with ``free`` bytes left."""
    disk = mounts(base / "full")
    st = os.statvfs(disk)
    (disk / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - free))
    return disk


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    return simulate_small(tmp_path_factory.mktemp("n"), n_frames=6, size=160, seed=41, n_bias=3, n_flats=3,
                          thick_cloud=False)


def test_read_only_output_directory(night, tmp_path, mounts):
    red = _read_only(tmp_path, mounts) / "red"
    _one_error_line(qlcp("run", night.raw_dir, red, "--config", night.config_path, "--no-prefect"),
                    str(red), "read-only file system")


def test_unwritable_parent(night, tmp_path, mounts):
    parent = _read_only(tmp_path, mounts)
    _one_error_line(qlcp("run", night.raw_dir, parent / "night1", "--config", night.config_path, "--no-prefect"),
                    str(parent / "night1"), "Read-only file system")


def test_full_disk(night, tmp_path, mounts):
    red = _full(tmp_path, mounts) / "red"
    r = qlcp("run", night.raw_dir, red, "--config", night.config_path, "--no-prefect")
    _one_error_line(r, str(red), "no space left on device")
    assert not [p for p in red.rglob("*") if "qlcp-tmp" in p.name]       # no temporaries left behind


def _prefect_env(home):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {**env, "QLCP_HOME": str(home), "PREFECT_HOME": str(home / "prefect"),
            "QLCP_RESULTS": str(home / "results")}


def test_prefect_path_read_only_and_full_disk(night, tmp_path, mounts):
    """Through ``qlcp run`` with Prefect's embedded server: read-only stops before the server starts;
    a full disk stops the flow at the first task that cannot write, with the same one line."""
    env = _prefect_env(tmp_path / "home")
    cmd = [sys.executable, "-m", "qlcp.deployments.cli", "run", str(night.raw_dir)]
    red = _read_only(tmp_path, mounts) / "red"
    r = subprocess.run([*cmd, str(red), "--config", str(night.config_path)], capture_output=True, text=True,
                       env=env, timeout=300)
    _one_error_line(r, str(red), "read-only file system")
    red = _full(tmp_path, mounts) / "red"
    r = subprocess.run([*cmd, str(red), "--config", str(night.config_path)], capture_output=True, text=True,
                       env=env, timeout=300)
    _one_error_line(r, str(red), "no space left on device")
