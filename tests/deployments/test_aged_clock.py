"""The service and the plain driver on a machine whose clock is 1000 days past the bundled time tables.

Every process runs under libfaketime (``LD_PRELOAD``, ``FAKETIME=+1000d``: the
time calls and file times of the process and all it starts), with astropy's
own defaults: before ``qlcp.core.runtime.offline_time`` the sensor logged
``poll failed: ValueError: interpolating from IERS_Auto using predictive values
that are more than 30 days old`` every poll and never triggered, and ``qlcp up``
with a night waiting exited with ``internal error: ValueError`` (issue 24, R3).
Skipped without libfaketime (Debian: ``apt-get install faketime libfaketime``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qlcp.core.simulate import simulate_small
from tests.core.test_runtime import faketime_env
from tests.deployments.test_service import REPO, SERVER_START_TIMEOUT, Proc, _free_port, _healthy


def _ahead(days: int = 1000, utc_hour: float = 12.0) -> str:
    """libfaketime's offset (s) to a clock at least ``days`` ahead, at ``utc_hour`` UTC now: far from the
    served schedules that could start runs during the test (the simulated site's reprocess at local noon,
    04:00 UTC, and dawn sweep, 23:00 UTC), whatever the hour the test runs at."""
    now = time.time()
    target = now + days * 86400.0
    target += (utc_hour * 3600.0 - target % 86400.0) % 86400.0
    return f"+{int(target - now)}"


AHEAD = _ahead()
NIGHT = "20240606"
#: lines of a process's output that are about time tables, from QLCP, astropy or ERFA
TIME_NEWS = re.compile(r"time tables|IERS|leap.second|dubious year|polar motion", re.I)


def _night(base: Path):
    return simulate_small(base / "sims", n_frames=6, size=128, seed=11, night="2024-06-06", n_bias=3, n_flats=3)


def _env(base: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "QLCP_RESULTS"}
    env.update(QLCP_HOME=str(base / "qlcp-home"), PREFECT_HOME=str(base / "prefect-home"),
               QLCP_RESULTS=str(base / "results"), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p]))
    return faketime_env(AHEAD, env)


def test_plain_driver_night_under_an_aged_clock(tmp_path):
    """``qlcp run --no-prefect`` 1000 days past the tables: the night is reduced (exit 0, a light
    curve), and stderr says once that the time tables are out of date, nothing else about them."""
    sim = _night(tmp_path)
    red = tmp_path / "red"
    r = subprocess.run([sys.executable, "-m", "qlcp.deployments.cli", "run", str(sim.raw_dir), str(red),
                        "--config", str(sim.config_path), "--no-prefect"], capture_output=True, text=True,
                       timeout=600, cwd=tmp_path, env=_env(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    news = [ln for ln in r.stderr.splitlines() if TIME_NEWS.search(ln)]
    assert len(news) == 1 and news[0].startswith("qlcp: warning: time tables out of date"), news
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    summary = json.loads((red / "summary.json").read_text())
    assert [g["error"] for g in summary["groups"]] == [""]
    assert (red / f"lc_{sim.info['object']}_{sim.info['band']}.ecsv").is_file()


def _flow_runs(api: str, deployment: str = "process-night/process-night") -> list | None:
    """The deployment's flow runs on the server at ``api`` (None while it is not registered)."""
    import prefect.settings as ps
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.exceptions import ObjectNotFound

    with ps.temporary_settings(updates={ps.PREFECT_API_URL: api, ps.PREFECT_SERVER_EPHEMERAL_ENABLED: False}):
        with get_client(sync_client=True) as c:
            try:
                dep = c.read_deployment_by_name(deployment).id
            except ObjectNotFound:
                return None
            return c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep])))


@pytest.mark.integration
@pytest.mark.slow
def test_service_under_a_clock_1000_days_ahead_reduces_a_night_exactly_once(tmp_path):
    """``qlcp up`` (Prefect server, ``qlcp serve``, the sensor with ``--quiet``), every process 1000
    days past the tables: a night copied in is triggered once, its one flow run completes with a
    light curve, later polls add nothing, and the log warns once that the tables are out of date
    (the flow run's process says it at INFO; no poll failure, no internal error)."""
    sim = _night(tmp_path)
    raw, red = tmp_path / "raw", tmp_path / "red"
    raw.mkdir()
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    up = Proc("up", [sys.executable, "-m", "qlcp.deployments.cli", "up", str(raw), str(red), "--config",
                     str(sim.config_path), "--quiet", "5", "--port", str(port), "--results-port", str(_free_port())],
              _env(tmp_path),
              tmp_path / "up.log")
    try:
        up.start()
        t_end = time.monotonic() + SERVER_START_TIMEOUT
        while not _healthy(api):
            if not up.alive() or time.monotonic() > t_end:
                pytest.skip(f"qlcp up: no Prefect server here (alive: {up.alive()})\n" + up.tail(40))
            time.sleep(0.5)
        t_end = time.monotonic() + 120
        while _flow_runs(api) is None:
            assert up.alive() and time.monotonic() < t_end, "deployments not registered\n" + up.tail(60)
            time.sleep(0.5)
        staging = tmp_path / "staging" / NIGHT                 # the night appears at once, by a rename
        shutil.copytree(sim.raw_dir, staging)
        os.rename(staging, raw / NIGHT)
        summary_path = red / NIGHT / "summary.json"
        t_end = time.monotonic() + 300
        runs = []
        while not (runs and runs[0].state is not None and runs[0].state.is_final()):
            assert up.alive(), "qlcp up exited\n" + up.tail(80)
            assert time.monotonic() < t_end, f"no completed run (runs {runs})\n" + up.tail(80)
            time.sleep(1.0)
            runs = _flow_runs(api) or []
        time.sleep(12)                                         # more sensor polls: nothing more
        runs = _flow_runs(api)
        assert len(runs) == 1, [(r.name, r.state.name) for r in runs]
        assert runs[0].state.is_completed(), f"{runs[0].state.name}: {runs[0].state.message}\n" + up.tail(80)
        assert Path(runs[0].parameters["raw_dir"]).name == NIGHT
        summary = json.loads(summary_path.read_text())
        assert summary["night"] == NIGHT and [g["error"] for g in summary["groups"]] == [""]
        assert (red / NIGHT / f"lc_{sim.info['object']}_{sim.info['band']}.ecsv").is_file()
        assert up.alive()
    finally:
        up.stop()
    log = up.log_path.read_text(errors="replace")
    assert "triggered" in log and NIGHT in log
    for bad in ("poll failed", "internal error", "IERS_Auto", "more than 30 days old"):
        assert bad not in log, f"{bad!r} in the log\n" + up.tail(80)
    news = [ln for ln in log.splitlines() if "time tables out of date" in ln]
    warned = [ln for ln in news if "warning" in ln.lower().split("time tables")[0]]
    assert len(warned) == 1 and warned[0].startswith("qlcp: warning:"), news
    assert all("INFO" in ln for ln in news if ln not in warned), news    # the flow run's process: INFO
