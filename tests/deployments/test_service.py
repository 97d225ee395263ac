"""The observatory service end to end: a real Prefect server, ``qlcp serve`` and the night sensor.

What the integration test runs (nothing is mocked):

* ``python -m prefect server start`` on a free local port, SQLite in a
  temporary ``PREFECT_HOME``, no telemetry;
* ``python -m qlcp.deployments.cli serve RAW_ROOT RED_ROOT --config night.yaml``
  (``qlcp serve``): the deployments ``process-night``, ``reprocess`` and
  ``dawn-sweep`` served by one process, which runs each flow run as a
  subprocess (runner poll every second);
* the night sensor in this process with its *default* trigger
  (``run_deployment`` against the server) and an injected clock, stepped
  through the simulated nights of 2024-06-06/07/08 at Xinglong, where the Sun
  is below -12 deg from about 12:50 to 19:25 UTC.

The scenario (one integration test: each step needs the state left by the previous one):

1. night 1 is copied in piece by piece in the dark, with rewritten, touched
   and renamed-into-place files (duplicate events); nothing is triggered
   before dawn; after dawn exactly one ``process-night`` flow run exists for
   it, it completes and its light curve is in RED_ROOT/<night>;
2. a new sensor on the same state database triggers nothing new;
3. night 2 gets its own single run;
4. with the server stopped, night 3 becomes ready: the sensor keeps it pending
   (attempts and the error recorded) and, once the server is back on the same
   port and database, it runs exactly once.  The outage lasts at least
   ``OUTAGE`` s; the same ``qlcp serve`` process must serve through it.

Every process started here is stopped (SIGTERM to its process group, then
SIGKILL to the group and any stray descendant), even on failure.

Two fast tests (no server) check that ``qlcp serve`` serves again after
Prefect's runner gives up during an API outage (it exits after 3 failed polls
in a row, from ~15 s to minutes into an outage), and still raises its own errors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from astropy.table import Table

from qlcp.deployments.sensor import Sensor, read_state
from qlcp.core.simulate import simulate_small

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = "process-night/process-night"
SERVER_START_TIMEOUT = 120.0     # s: a fresh SQLite database (migrations) takes ~12 s on this 2-core box
RUN_TIMEOUT = 150.0              # s: trigger -> Completed of one small night (~15-25 s measured)
OUTAGE = 30.0                    # s: how long the server stays down (at least)
BACKOFF = (30.0, 120.0)          # sensor retry delays after a failed trigger (s of the injected clock)


def utc(*a) -> datetime:
    return datetime(*a, tzinfo=UTC)


class Clock:
    """The sensor's injected clock; the test moves it."""

    def __init__(self, t: datetime):
        self.t = t

    def __call__(self) -> datetime:
        return self.t

    def set(self, t: datetime) -> datetime:
        assert t >= self.t, "the test clock only moves forward"
        self.t = t
        return t

    def advance(self, **kw) -> datetime:
        self.t += timedelta(**kw)
        return self.t


# ------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux /proc), including ones in other sessions."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class Proc:
    """A child process in its own session (process group), its output in a log file."""

    def __init__(self, name: str, cmd: list[str], env: dict, log_path: Path):
        self.name, self.cmd, self.env, self.log_path = name, cmd, env, log_path
        self.popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} start: {' '.join(self.cmd)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(self.cmd, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Signal the process group, wait, then SIGKILL the group and any stray descendant."""
        p = self.popen
        if p is None:
            return None
        stray = _descendants(p.pid) if p.poll() is None else []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, sig)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)    # the group outlives its leader when children remain
        for pid in stray:                        # e.g. flow-run subprocesses in their own sessions
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)
        return p.returncode

    def tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(lines[-n:])


def _healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(api + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class Service:
    """Server + serve process + directories of one test."""

    def __init__(self, base: Path):
        self.base = base
        self.home = base / "prefect-home"
        self.raw = base / "raw"
        self.red = base / "red"
        self.results = base / "results"
        self.sims = base / "sims"
        for d in (self.home, self.raw, self.results, self.sims):
            d.mkdir(parents=True)
        self.port = _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "QLCP_RESULTS"}
        env.update(PREFECT_HOME=str(self.home), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p]))
        self.server_env = dict(env, PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2")
        self.serve_env = dict(env, PREFECT_API_URL=self.api, PREFECT_RUNNER_POLL_FREQUENCY="1",
                              QLCP_RESULTS=str(self.results), PREFECT_LOGGING_LEVEL="INFO",
                              PREFECT_SERVER_EPHEMERAL_ENABLED="false")
        self.server = Proc("server", [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                      "--port", str(self.port)], self.server_env, base / "server.log")
        self.serve: Proc | None = None
        self.timings: dict[str, float] = {}

    def start_server(self, timeout: float = SERVER_START_TIMEOUT) -> float:
        """Start the server and wait for /api/health; seconds taken."""
        t0 = time.monotonic()
        self.server.start()
        while time.monotonic() - t0 < timeout:
            if _healthy(self.api):
                return time.monotonic() - t0
            if not self.server.alive():
                raise RuntimeError(f"prefect server exited with status {self.server.popen.returncode}\n"
                                   + self.server.tail(30))
            time.sleep(0.25)
        raise RuntimeError(f"prefect server not healthy after {timeout:.0f} s\n" + self.server.tail(30))

    def stop_server(self) -> None:
        self.server.stop(signal.SIGTERM, timeout=30)
        t_end = time.monotonic() + 10
        while _healthy(self.api) and time.monotonic() < t_end:
            time.sleep(0.2)

    def start_serve(self, config: Path) -> None:
        if self.serve is not None:       # a restart: nothing of the old one may remain
            self.serve.stop()
        # the schedules must not fire during the test: half a day away from now (UTC)
        away = datetime.now(UTC) + timedelta(hours=12)
        cron = f"{away.minute} {away.hour} * * *"
        cmd = [sys.executable, "-m", "qlcp.deployments.cli", "serve", str(self.raw), str(self.red), "--config",
               str(config), "--timezone", "UTC", "--reprocess-cron", cron, "--sweep-cron", cron]
        self.serve = Proc("serve", cmd, self.serve_env, self.base / "serve.log").start()

    def tails(self) -> str:
        return "\n".join(p.tail() for p in (self.server, self.serve) if p is not None)

    def close(self) -> None:
        if self.serve is not None:       # the runner before the server
            self.serve.stop(signal.SIGTERM, timeout=20)
        self.server.stop(signal.SIGTERM, timeout=30)


@pytest.fixture
def service(tmp_path):
    svc = Service(tmp_path)
    try:
        try:
            svc.timings["server start (fresh database)"] = svc.start_server()
        except RuntimeError as e:
            pytest.skip(f"a local Prefect server cannot start here: {e}")
        yield svc
    finally:
        svc.close()


@pytest.fixture
def prefect_client_settings(service):
    """Point this process's Prefect client (the sensor's default trigger, the checks) at the test server."""
    import prefect.settings as ps

    with ps.temporary_settings(updates={ps.PREFECT_API_URL: service.api, ps.PREFECT_HOME: str(service.home),
                                        ps.PREFECT_SERVER_EPHEMERAL_ENABLED: False}):
        yield


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def sensor_log():
    """The sensor's log messages (on its own logger: Prefect's logging set-up replaces the root handlers,
    so pytest's caplog sees nothing once the client is used)."""
    logger = logging.getLogger("qlcp.sensor")
    handler, level = _ListHandler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# ----------------------------------------------------------- server checks
def _client():
    from prefect import get_client

    return get_client(sync_client=True)


def _deployment_id(name: str = DEPLOYMENT):
    with _client() as c:
        return c.read_deployment_by_name(name).id


def wait_deployments(svc: Service, timeout: float = 120.0) -> float:
    """Wait until ``qlcp serve`` has registered its deployments; seconds taken."""
    from prefect.exceptions import ObjectNotFound

    t0 = time.monotonic()
    names = [DEPLOYMENT, "reprocess/reprocess", "dawn-sweep/dawn-sweep", "campaign/campaign"]
    while time.monotonic() - t0 < timeout:
        assert svc.serve.alive(), "qlcp serve exited\n" + svc.tails()
        try:
            for n in names:
                _deployment_id(n)
            return time.monotonic() - t0
        except ObjectNotFound:
            time.sleep(0.5)
    pytest.fail(f"deployments not registered after {timeout:.0f} s\n" + svc.tails())


def wait_log(proc: Proc, text: str, since: float, timeout: float, required: bool = False) -> float | None:
    """Wait until ``text`` appears in the process's log: seconds since ``since`` (monotonic), or None
    after ``timeout`` s (a failure when ``required``) or when the process exits."""
    t_end = time.monotonic() + timeout
    while True:
        if text in proc.log_path.read_text(errors="replace"):
            return time.monotonic() - since
        if not proc.alive() or time.monotonic() >= t_end:
            break
        time.sleep(0.5)
    if required:
        pytest.fail(f"{proc.name}: {text!r} not logged after {timeout:.0f} s (alive: {proc.alive()})\n"
                    + proc.tail())
    return None


def night_runs() -> dict[str, list]:
    """Every flow run of ``process-night``, by the night directory name of its ``raw_dir``."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    dep = _deployment_id()
    with _client() as c:
        runs = c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep])))
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(Path(r.parameters["raw_dir"]).name, []).append(r)
    return out


def wait_final(svc: Service, run_id, timeout: float = RUN_TIMEOUT):
    """Poll the flow run until its state is final; (state, seconds)."""
    t0 = time.monotonic()
    state = None
    while time.monotonic() - t0 < timeout:
        with _client() as c:
            state = c.read_flow_run(run_id).state
        if state is not None and state.is_final():
            return state, time.monotonic() - t0
        time.sleep(1.0)
    pytest.fail(f"flow run {run_id} not final after {timeout:.0f} s (state {state and state.name})\n"
                + svc.tails())


def runs_tagged(tag: str) -> list:
    """Every flow run (of any flow or deployment) carrying ``tag``."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with _client() as c:
        return c.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))


def check_one_completed_run(svc: Service, sim, night: str, row: dict, config: Path) -> float:
    """Exactly one process-night run for ``night``, the sensor's; it completes; its light curve exists.

    ``row`` is the night's row in the sensor state; ``config`` the sensor's
    config file (one site: the first night's), which the flow receives.
    """
    runs = night_runs()
    assert [str(r.id) for r in runs.get(night, [])] == [row["flow_run_id"]], runs
    assert [str(r.id) for r in runs_tagged(night)] == [row["flow_run_id"]]
    run = runs[night][0]
    assert run.idempotency_key == row["idempotency_key"]
    assert run.parameters["raw_dir"] == str(svc.raw / night)
    assert run.parameters["red_dir"] == str(svc.red / night)
    assert run.parameters["config_files"] == [str(config.resolve())]
    assert {"sensor", night} <= set(run.tags)
    state, seconds = wait_final(svc, run.id)
    assert state.is_completed(), f"{night}: {state.name}: {state.message}\n" + svc.tails()
    red = svc.red / night
    lc = red / f"lc_{sim.info['object']}_{sim.info['band']}.ecsv"
    assert lc.is_file(), f"no light curve {lc}; outputs: {sorted(p.name for p in red.iterdir())}"
    table = Table.read(lc, format="ascii.ecsv")
    assert 0 < len(table) <= len(sim.science_files)
    assert set(table["file"]) <= {p.name for p in sim.science_files}
    summary = json.loads((red / "summary.json").read_text())
    assert summary["night"] == night and summary["raw_dir"] == str(svc.raw / night)
    assert [g["error"] for g in summary["groups"]] == [""]
    return seconds


# ------------------------------------------------------------- the nights
def simulate(svc: Service, date: str, seed: int):
    return simulate_small(svc.sims / date, n_frames=6, size=128, seed=seed, night=date, n_bias=3, n_flats=3)


def copy_in_pieces(svc: Service, sensor: Sensor, clock: Clock, sim, night: str) -> None:
    """Copy the simulated raw frames into RAW_ROOT/<night> bit by bit, as a transfer from the dome would.

    Between the pieces the sensor polls (one poll per step, the clock moving
    on): a rewritten file, a touched file, a file written under a hidden name
    and renamed into place, and a stray non-FITS file all make extra events.
    """
    dest = svc.raw / night
    dest.mkdir()
    files = sorted(sim.raw_dir.iterdir())
    calib = [p for p in files if not p.name.startswith("SIM")]
    science = [p for p in files if p.name.startswith("SIM")]

    def poll(minutes: float = 1.0) -> None:
        assert sensor.poll_once() == [], f"{night}: triggered before dawn at {clock.t}"
        clock.advance(minutes=minutes)

    poll()                                            # empty night: never ready
    for p in calib:
        shutil.copy2(p, dest / p.name)
    poll()
    shutil.copyfile(calib[0], dest / calib[0].name)   # rewritten: same bytes, new mtime
    os.utime(dest / calib[-1].name)                   # touched
    (dest / "transfer.log").write_text("copying\n")   # not FITS: ignored
    poll()
    half = len(science) // 2
    for p in science[:half]:
        with open(p, "rb") as f, open(dest / p.name, "wb") as g:   # plain writes, two pieces
            data = f.read()
            g.write(data[: len(data) // 2])
            g.flush()
            poll(0.05)                                # seen half-written: not stable
            g.write(data[len(data) // 2:])
    poll()
    for p in science[half:]:                          # rsync style: hidden temporary name, then rename
        tmp = dest / f".{p.name}.XyZ123"
        shutil.copy2(p, tmp)
        os.rename(tmp, dest / p.name)
    poll()
    shutil.copy2(science[-1], dest / science[-1].name)   # the last frame once more
    for _ in range(4):                                # settle: every file unchanged at two polls
        poll(5)


def dawn_trigger(sensor: Sensor, clock: Clock, night: str, before: datetime, after: datetime) -> list[str]:
    """Poll just before dawn (nothing), then after dawn; the names triggered by the first poll after dawn."""
    due = datetime.fromtimestamp(sensor.dawn_due(night), UTC)
    assert before < due < after, f"{night}: dawn {due} not between {before} and {after}"
    clock.set(before)
    assert sensor.poll_once() == []
    clock.set(after)
    return sensor.poll_once()


def night_row(state: Path, name: str) -> dict:
    """The night's row in the sensor's state database file."""
    return {r["name"]: r for r in read_state(state)}[name]


def make_sensor(svc: Service, sim, clock: Clock, state: Path) -> Sensor:
    # the DEFAULT trigger: run_deployment against the test server
    return Sensor(svc.raw, svc.red, sim.config_path, clock=clock, state_path=state, backoff=BACKOFF).start()


# -------------------------------------------------- qlcp serve and outages
@pytest.fixture
def serve_args(tmp_path, monkeypatch):
    import argparse

    from qlcp.deployments.serve import add_serve_arguments

    (tmp_path / "raw").mkdir()
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    ap = argparse.ArgumentParser()
    add_serve_arguments(ap)
    old = signal.getsignal(signal.SIGTERM)
    yield ap.parse_args([str(tmp_path / "raw"), str(tmp_path / "red"), "--timezone", "UTC"])
    signal.signal(signal.SIGTERM, old)


class _FakeServe:
    """Stands for ``prefect.serve``: raises the given errors one per call, then returns (a SIGTERM)."""

    def __init__(self, *errors):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, *deployments, limit=None, pause_on_shutdown=True):
        self.calls += 1
        assert sorted(d.name for d in deployments) == ["campaign", "dawn-sweep", "process-night", "reprocess"]
        assert pause_on_shutdown is False           # a restarted serve must not leave them paused
        if self.errors:
            raise self.errors.pop(0)


def _outage_errors():
    import httpx

    try:
        try:
            raise httpx.ConnectError("All connection attempts failed")
        except httpx.ConnectError as e:
            raise RuntimeError("Service exceeded error threshold.") from e
    except RuntimeError as e:
        threshold = e
    return [threshold, httpx.ConnectError("All connection attempts failed"),
            ExceptionGroup("loops", [httpx.ReadTimeout("timed out")])]


def test_serve_outlives_api_outages(serve_args, monkeypatch):
    """``qlcp serve`` waits for the API and serves again when Prefect's runner gives up (no server needed)."""
    import prefect

    from qlcp.deployments import serve as serve_mod

    fake = _FakeServe(*_outage_errors())
    health = iter([False, False, True] * 3)
    monkeypatch.setattr(prefect, "serve", fake)
    monkeypatch.setattr(serve_mod, "_healthy", lambda api: next(health))
    monkeypatch.setattr(serve_mod, "time", type("T", (), {"monotonic": time.monotonic, "sleep": lambda s: None}))
    assert serve_mod.run_serve(serve_args) == 0
    assert fake.calls == 4


def test_serve_raises_its_own_errors(serve_args, monkeypatch):
    """A failure with the API up is a bug: raised, not retried; with the API down it is an outage."""
    import prefect

    from qlcp.deployments import serve as serve_mod

    fake = _FakeServe(ValueError("a bug"))
    monkeypatch.setattr(prefect, "serve", fake)
    monkeypatch.setattr(serve_mod, "_healthy", lambda api: True)
    with pytest.raises(ValueError, match="a bug"):
        serve_mod.run_serve(serve_args)
    assert fake.calls == 1
    fake = _FakeServe(ValueError("while the API was down"))
    health = iter([False, True])
    monkeypatch.setattr(prefect, "serve", fake)
    monkeypatch.setattr(serve_mod, "_healthy", lambda api: next(health))
    monkeypatch.setattr(serve_mod, "time", type("T", (), {"monotonic": time.monotonic, "sleep": lambda s: None}))
    assert serve_mod.run_serve(serve_args) == 0
    assert fake.calls == 2


# ------------------------------------------------------ the integration test
@pytest.mark.integration
def test_sensor_and_served_deployments_run_each_night_exactly_once(service, prefect_client_settings, sensor_log):
    svc = service
    t_test = time.monotonic()
    timings = svc.timings
    sims = {"20240606": simulate(svc, "2024-06-06", 11), "20240607": simulate(svc, "2024-06-07", 12),
            "20240608": simulate(svc, "2024-06-08", 13)}
    sim1 = sims["20240606"]
    svc.start_serve(sim1.config_path)
    timings["serve: deployments registered"] = wait_deployments(svc)
    assert night_runs() == {}

    state = svc.base / "sensor-state.sqlite"
    clock = Clock(utc(2024, 6, 6, 14, 0))           # 22:00 at Xinglong: dark
    sensor = make_sensor(svc, sim1, clock, state)
    try:
        # ---- 1. night 1: piece by piece in the dark, one run after dawn
        copy_in_pieces(svc, sensor, clock, sim1, "20240606")
        assert night_runs() == {}, "a flow run before dawn"
        t0 = time.monotonic()
        got = dawn_trigger(sensor, clock, "20240606", utc(2024, 6, 6, 18, 30), utc(2024, 6, 6, 20, 0))
        assert got == ["20240606"]
        for _ in range(5):                           # later polls, more events: nothing more
            clock.advance(minutes=10)
            sensor.notify(str(svc.raw / "20240606" / sim1.science_files[0].name))
            assert sensor.poll_once() == []
        row = night_row(state, "20240606")
        assert row["status"] == "triggered" and row["attempts"] == 1 and row["reason"] == "dawn"
        check_one_completed_run(svc, sim1, "20240606", row, sim1.config_path)
        timings["night 1: dawn poll -> Completed"] = time.monotonic() - t0
    finally:
        sensor.stop()

    # ---- 2. a new sensor on the same state database: nothing new
    clock.advance(hours=1)
    sensor = make_sensor(svc, sim1, clock, state)
    try:
        for _ in range(3):
            assert sensor.poll_once() == []
            clock.advance(minutes=5)
        assert {n: len(r) for n, r in night_runs().items()} == {"20240606": 1}

        # ---- 3. night 2: its own single run
        clock.set(utc(2024, 6, 7, 14, 0))
        copy_in_pieces(svc, sensor, clock, sims["20240607"], "20240607")
        t0 = time.monotonic()
        got = dawn_trigger(sensor, clock, "20240607", utc(2024, 6, 7, 18, 30), utc(2024, 6, 7, 20, 0))
        assert got == ["20240607"]
        assert sensor.poll_once() == []
        row = night_row(state, "20240607")
        assert row["status"] == "triggered" and row["attempts"] == 1 and row["reason"] == "dawn"
        check_one_completed_run(svc, sims["20240607"], "20240607", row, sim1.config_path)
        timings["night 2: dawn poll -> Completed"] = time.monotonic() - t0
        assert {n: len(r) for n, r in night_runs().items()} == {"20240606": 1, "20240607": 1}

        # ---- 4. the API goes down; night 3 becomes ready; it waits, then runs once
        t_down = time.monotonic()
        svc.stop_server()
        assert not _healthy(svc.api)
        clock.set(utc(2024, 6, 8, 14, 0))
        copy_in_pieces(svc, sensor, clock, sims["20240608"], "20240608")
        t0 = time.monotonic()
        got = dawn_trigger(sensor, clock, "20240608", utc(2024, 6, 8, 18, 30), utc(2024, 6, 8, 20, 0))
        timings["failed trigger (API down)"] = time.monotonic() - t0
        assert got == []
        row = night_row(state, "20240608")
        assert row["status"] == "pending" and row["attempts"] == 1 and row["flow_run_id"] is None
        assert row["reason"] == "dawn" and "Connect" in row["last_error"], row
        assert any("20240608: trigger of" in m and "failed" in m for m in sensor_log.messages)
        # backing off: no attempt before the delay, one after it
        clock.advance(seconds=BACKOFF[0] - 1)
        assert sensor.poll_once() == []
        assert night_row(state, "20240608")["attempts"] == 1
        clock.advance(seconds=2)
        assert sensor.poll_once() == []
        row = night_row(state, "20240608")
        assert row["status"] == "pending" and row["attempts"] == 2, row

        # an outage of OUTAGE s at least: Prefect's runner may give up meanwhile (after 3 failed polls:
        # 15 s to minutes, depending on its client's retries); qlcp serve must outlive that and serve again
        gave_up = wait_log(svc.serve, "unreachable", t_down, timeout=OUTAGE - (time.monotonic() - t_down))
        assert svc.serve.alive(), "qlcp serve exited during the outage\n" + svc.tails()
        # the server comes back on the same port and database
        timings["outage"] = time.monotonic() - t_down
        timings["server restart (same database)"] = svc.start_server()
        if gave_up is not None:
            wait_log(svc.serve, "is back", t_down, timeout=60, required=True)
            print(f"qlcp serve: the runner gave up {gave_up:.0f} s into the outage, served again after it")
        assert svc.serve.alive(), "qlcp serve exited\n" + svc.tails()
        clock.advance(seconds=2 * BACKOFF[0] + 1)   # past the second delay
        t0 = time.monotonic()
        assert sensor.poll_once() == ["20240608"]
        for _ in range(3):
            clock.advance(minutes=10)
            assert sensor.poll_once() == []
        row = night_row(state, "20240608")
        assert row["status"] == "triggered" and row["attempts"] == 3 and row["reason"] == "dawn"
        check_one_completed_run(svc, sims["20240608"], "20240608", row, sim1.config_path)
        timings["night 3: trigger -> Completed"] = time.monotonic() - t0
        assert {n: len(r) for n, r in night_runs().items()} == {"20240606": 1, "20240607": 1, "20240608": 1}
        # and nothing else ran: the only other runs are the schedules' future ones, still Scheduled
        with _client() as c:
            # (a night's campaign subflow runs are the night's own, not other runs)
            others = [r for r in c.read_flow_runs() if r.deployment_id != _deployment_id()
                      and r.parent_task_run_id is None]
        assert all(r.state.is_scheduled() and r.expected_start_time > datetime.now(UTC) for r in others), \
            [(r.name, r.state.name, r.expected_start_time) for r in others]
        assert svc.serve.alive(), "qlcp serve died\n" + svc.tails()
    finally:
        sensor.stop()
    timings["test body"] = time.monotonic() - t_test
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


def test_deploy_registers_process_night_on_a_work_pool(service, prefect_client_settings, tmp_path, capsys):
    """`qlcp deploy --pool`: the work pool is created, process-night/pool points at it with the
    config, by module path (workers import the installed package); a second call updates it."""
    from prefect.client.orchestration import get_client

    from qlcp.deployments.cli import main

    cfg = tmp_path / "site.yaml"
    cfg.write_text("site_lon: 117.57\nsite_lat: 40.39\nsite_ele: 960\n")
    assert main(["deploy", "--pool", "qlcp-test-pool", "--config", str(cfg)]) == 0
    first = capsys.readouterr().out
    assert "process-night/pool on work pool qlcp-test-pool" in first
    assert main(["deploy", "--pool", "qlcp-test-pool", "--config", str(cfg)]) == 0
    second = capsys.readouterr().out
    with get_client(sync_client=True) as c:
        pool = c.read_work_pool("qlcp-test-pool")
        dep = c.read_deployment_by_name("process-night/pool")
    assert pool.type == "process"
    assert dep.work_pool_name == "qlcp-test-pool" and dep.entrypoint == "qlcp.flows.night.process_night"
    assert dep.parameters["config_files"] == [str(cfg.resolve())]
    assert str(dep.id) in first and str(dep.id) in second          # updated, not duplicated
    # a bad config fails at once, in one line naming the key, and registers nothing new
    bad = tmp_path / "bad.yaml"
    bad.write_text("site_lat: 123\n")
    assert main(["deploy", "--pool", "qlcp-test-pool", "--name", "other", "--config", str(bad)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("qlcp: error:")]
    assert len(err) == 1 and "site_lat" in err[0]
    with get_client(sync_client=True) as c:
        assert [d.name for d in c.read_deployments() if d.name == "other"] == []
