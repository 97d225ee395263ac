"""Clean ends: workers die with their run, a killed run's temporaries go, one run per output directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qlcp.core.io import atomic_path, write_text
from qlcp.core.simulate import simulate_small

LOCK_NAME = ".qlcp.lock"

linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")


def proc_table() -> dict[int, tuple[int, str]]:
    """{pid: (ppid, state)} of every process, from /proc."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            rest = stat[stat.rindex(")") + 2:].split()
            out[int(d.name)] = (int(rest[1]), rest[0])
    return out


def descendants(pid: int) -> set[int]:
    """Living (not zombie) descendants of ``pid``."""
    table = proc_table()
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, (pp, st) in table.items() if pp == p and st != "Z"]
        found.update(kids)
        todo += kids
    return found


def alive(pids) -> set[int]:
    table = proc_table()
    return {p for p in pids if p in table and table[p][1] != "Z"}


def kill_when_workers_run(proc: subprocess.Popen, n: int, timeout: float = 120) -> tuple[set, float]:
    """Wait until ``proc`` has ``n`` descendants, ``kill -9`` it; (its descendants then, s until all gone)."""
    t_end = time.monotonic() + timeout
    while len(kids := descendants(proc.pid)) < n:
        assert proc.poll() is None, f"the run ended before its workers were seen: {proc.stderr.read()}"
        assert time.monotonic() < t_end, "no workers seen"
        time.sleep(0.02)
    time.sleep(0.3)                      # let the last ones finish starting
    kids = descendants(proc.pid)
    assert proc.poll() is None, "the run ended before it could be killed: make the night bigger"
    os.kill(proc.pid, signal.SIGKILL)
    t0 = time.monotonic()
    proc.wait()
    while alive(kids) and time.monotonic() - t0 < 5:
        time.sleep(0.02)
    left = alive(kids)
    for p in left:                       # do not leave them to the next tests
        os.kill(p, signal.SIGKILL)
    assert not left, f"still alive 5 s after kill -9 of their run: {sorted(left)}"
    return kids, time.monotonic() - t0


HOLD_LOCK = """import fcntl, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since 2026-12-02T03:04:05+00:00\\n".encode())
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    return simulate_small(tmp_path_factory.mktemp("night"), n_frames=40, size=384, seed=5)


def _plain_run(sim, red, *extra):
    return subprocess.Popen([sys.executable, "-m", "qlcp.deployments.cli", "run", sim.raw_dir, red,
                             "--config", sim.config_path, "--no-prefect", "--set", "workers=2", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@linux_only
def test_kill_9_of_a_plain_run_kills_its_workers(night, tmp_path):
    proc = _plain_run(night, tmp_path / "red")
    kids, seconds = kill_when_workers_run(proc, 2)
    print(f"{len(kids)} worker processes gone {seconds:.2f} s after kill -9 of the run")


def test_a_second_run_on_the_same_red_exits_2_naming_the_holder(night, tmp_path):
    red = tmp_path / "red"
    red.mkdir()
    # another run holding the lock as a run does (flock, then "pid N on HOST since TIME")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(red / LOCK_NAME)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = subprocess.run([sys.executable, "-m", "qlcp.deployments.cli", "run", night.raw_dir, red,
                            "--config", night.config_path, "--no-prefect"], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert lines[-1].startswith("qlcp: error:") and "Traceback" not in r.stderr
        assert f"pid {holder.pid} on " in lines[-1] and str(red) in lines[-1] and " since 20" in lines[-1]
        assert not (red / "config.yaml").exists()            # it wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead (killed: the kernel released its lock): the next run is not blocked
    from qlcp.core.runguard import run_lock

    with run_lock(red) as path:
        assert path.read_text().startswith(f"pid {os.getpid()} on ")


def test_the_lock_is_exclusive_in_one_process_and_released_after(tmp_path):
    from qlcp.core.errors import RunLockedError
    from qlcp.core.runguard import run_lock

    with run_lock(tmp_path):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on "):
            with run_lock(tmp_path):
                pass
    with run_lock(tmp_path):            # released: a second run of the same process goes
        pass


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    """A child forked during a run (a pool worker) must not hold the lock once the run is over."""
    from qlcp.core.runguard import run_lock

    with run_lock(tmp_path):
        pid = os.fork()
        if pid == 0:                    # the child: outlives the run for a moment
            time.sleep(3)
            os._exit(0)
    try:
        with run_lock(tmp_path):
            pass
    finally:
        os.waitpid(pid, 0)


def test_temporaries_of_a_killed_run_are_removed_by_the_next(night, tmp_path):
    red = tmp_path / "red"
    raw = red / "raw"                                    # a raw directory inside red: never cleaned
    shutil.copytree(night.raw_dir, raw)
    (red / "SIMV_V").mkdir(parents=True)
    left = [red / "SIMV_V" / ".x.bf.fits.ab12cd34.qlcp-tmp.fits", red / ".summary.json.zz99yy88.qlcp-tmp.json",
            red / ".lc_SIMV_V.png.k2j3h4g5.tmp.png"]          # the second form: before the marker existed
    keep = [red / "notes.tmp", red / ".hidden.ecsv", red / "a.qlcp-tmp", raw / ".f.fits.ab12cd34.qlcp-tmp.fits"]
    other = red / "other_night"                          # another run's output under this one: its own
    other.mkdir()
    (other / LOCK_NAME).write_text("pid 1 on elsewhere since 2026-01-01")
    keep.append(other / ".y.fits.ab12cd34.qlcp-tmp.fits")
    for p in left + keep:
        p.write_text("half")
    r = subprocess.run([sys.executable, "-m", "qlcp.deployments.cli", "run", raw, red, "--config",
                        night.config_path, "--no-prefect", "--steps", "l"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert [p for p in left if p.exists()] == []
    assert [p for p in keep if not p.exists()] == []
    assert sorted(p.name for p in red.rglob("*tmp*")) == sorted(p.name for p in keep if "tmp" in p.name)


def test_remove_stale_temps_keeps_out_of_the_raw_directory(tmp_path):
    from qlcp.core.runguard import remove_stale_temps

    (tmp_path / "raw").mkdir()
    stale = [tmp_path / ".a.fits.ab12cd34.qlcp-tmp.fits", tmp_path / "raw" / ".b.fits.ab12cd34.qlcp-tmp.fits"]
    for p in stale:
        p.write_text("x")
    assert remove_stale_temps(tmp_path, keep_out=[tmp_path / "raw"]) == [stale[0]]
    assert stale[1].exists()


def test_temporary_names_carry_the_marker(tmp_path):
    with atomic_path(tmp_path / "a.fits.fz") as tmp:
        assert tmp.name.startswith(".a.fits.fz.") and tmp.name.endswith(".qlcp-tmp.fits.fz")
        tmp.write_bytes(b"x")
    write_text(tmp_path / "b.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.fits.fz", "b.json"]
