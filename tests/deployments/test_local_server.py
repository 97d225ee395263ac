"""``qlcp run`` reuses the server ``qlcp up`` recorded in ``$QLCP_HOME/server.json``.

Fast tests use a fake server (a thread answering ``/api/health``); the slow one
runs the real thing: ``qlcp up`` (Prefect server, ``qlcp serve``, sensor) on a
free port, then ``qlcp run`` of a small night, whose flow run must be in that
server's database, named and tagged after the night.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from qlcp.deployments import local_server as ls


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        ok = self.path == "/api/health"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"true" if ok else b"")

    def log_message(self, *a):
        pass


@pytest.fixture
def fake_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("QLCP_HOME", str(tmp_path / "qlcp"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return tmp_path / "qlcp"


def test_recorded_server_is_used_while_it_answers(home, fake_server):
    assert ls.running_server() is None                       # nothing recorded
    path = ls.record_server("0.0.0.0", fake_server, server_pid=os.getpid())
    rec = json.loads(path.read_text())
    assert path == home / "server.json"
    assert rec["api_url"] == f"http://127.0.0.1:{fake_server}/api" and rec["pid"] == os.getpid()
    assert ls.running_server() == rec["api_url"]


def test_cli_target_prefers_prefect_api_url_then_the_record(home, fake_server, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from qlcp.deployments.cli import _api_target

    ls.record_server("127.0.0.1", fake_server, server_pid=os.getpid())
    with temporary_settings(restore_defaults={PREFECT_API_URL}):     # no API configured (not even a harness)
        assert _api_target() == f"http://127.0.0.1:{fake_server}/api"
        monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")   # the operator's choice wins
        assert _api_target() is None
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):   # e.g. from a profile
        monkeypatch.delenv("PREFECT_API_URL")
        assert _api_target() is None


def test_silent_or_stale_record_means_embedded_server(home):
    port = _free_port()                                      # nobody listens there
    ls.record_server("127.0.0.1", port, server_pid=1)
    t0 = time.monotonic()
    assert ls.running_server() is None
    assert time.monotonic() - t0 < 3 * ls.HEALTH_TIMEOUT
    assert ls.server_file().is_file()                        # its qlcp up (this process) still lives
    rec = json.loads(ls.server_file().read_text())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    ls.server_file().write_text(json.dumps({**rec, "pid": int(dead)}))
    assert ls.running_server() is None and not ls.server_file().exists()   # its process is gone: removed


def test_forget_removes_only_its_own_record(home, fake_server):
    ls.record_server("127.0.0.1", fake_server, server_pid=1)
    rec = json.loads(ls.server_file().read_text())
    ls.server_file().write_text(json.dumps({**rec, "pid": rec["pid"] + 1}))   # another qlcp up's
    ls.forget_server()
    assert ls.server_file().exists()
    ls.server_file().write_text(json.dumps(rec))
    ls.forget_server()
    assert not ls.server_file().exists()


def _flow_runs(api: str) -> list[dict]:
    req = urllib.request.Request(api + "/flow_runs/filter", data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.slow
@pytest.mark.integration
def test_qlcp_run_uses_the_server_of_qlcp_up(tmp_path):
    from qlcp.core.simulate import simulate_small

    sim = simulate_small(tmp_path / "sim", n_frames=6, size=160, seed=41, n_bias=3, n_flats=3, thick_cloud=False)
    (tmp_path / "root" / "raw").mkdir(parents=True)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "QLCP_RESULTS"}
    env.update(QLCP_HOME=str(tmp_path / "qlcp"), DO_NOT_TRACK="1", MPLBACKEND="Agg",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    record = tmp_path / "qlcp" / "server.json"
    up = subprocess.Popen([sys.executable, "-m", "qlcp.deployments.cli", "up", str(tmp_path / "root" / "raw"),
                           str(tmp_path / "root" / "red"), "--port", str(port), "--max-age", "1",
                           "--results-port", str(_free_port())],       # not port+1: another process may hold it
                          env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "up.log", "w"),
                          start_new_session=True)
    try:
        t_end = time.monotonic() + 150
        while not record.is_file() and up.poll() is None and time.monotonic() < t_end:
            time.sleep(0.5)
        assert record.is_file(), (tmp_path / "up.log").read_text()[-2000:]
        api = json.loads(record.read_text())["api_url"]
        assert api == f"http://127.0.0.1:{port}/api"
        r = subprocess.run([sys.executable, "-m", "qlcp.deployments.cli", "run", str(sim.raw_dir),
                            str(tmp_path / "red"), "--config", str(sim.config_path), "--steps", "lbfi"],
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"using the running qlcp server {api}" in r.stderr
        assert "embedded" not in r.stderr
        runs = [fr for fr in _flow_runs(api) if fr["name"] == "night-20240606"]
        assert len(runs) == 1 and runs[0]["state"]["type"] == "COMPLETED"
        assert {"night:20240606", "obj:SIMV", "band:V"} <= set(runs[0]["tags"])
        assert runs[0]["parameters"]["raw_dir"] == str(Path(sim.raw_dir).resolve())
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGTERM)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait()
    assert not record.exists()                 # qlcp up removed its record on exit


_HOLDER = """import subprocess, sys, time
from qlcp.deployments.local_server import end_with_this_process
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", sys.argv[1]])
end_with_this_process(child.pid, sys.argv[2])
print(child.pid, flush=True)
time.sleep(120)
"""


def _gone(pid: int, within: float) -> bool:
    t_end = time.monotonic() + within
    while time.monotonic() < t_end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("marker, ends", [("qlcp-test-child", True), ("another-program", False)])
def test_a_tied_process_ends_with_its_holder_even_on_kill_9(marker, ends):
    """``end_with_this_process``: the holder killed with SIGKILL, its tied process goes within
    seconds, unless the pid no longer shows the marker (a reused pid is never signalled)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, "qlcp-test-child", marker], stdout=subprocess.PIPE,
                              text=True)
    child = int(holder.stdout.readline())
    try:
        assert not _gone(child, 0.5)
        holder.kill()
        holder.wait()
        assert _gone(child, 8) == ends
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc (Linux)")
def test_kill_9_of_qlcp_run_ends_its_embedded_prefect_server(tmp_path):
    """Prefect stops its temporary server only at a normal exit; ``qlcp run`` ties it to the run."""
    from qlcp.core.simulate import simulate_small
    from tests.core.test_runguard import descendants

    sim = simulate_small(tmp_path / "sim", n_frames=40, size=384, seed=43, thick_cloud=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "QLCP_RESULTS"}
    env.update(QLCP_HOME=str(tmp_path / "qlcp"), DO_NOT_TRACK="1", MPLBACKEND="Agg",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    run = subprocess.Popen([sys.executable, "-m", "qlcp.deployments.cli", "run", str(sim.raw_dir),
                            str(tmp_path / "red"), "--config", str(sim.config_path)],
                           env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "run.log", "w"))

    def cmdline(pid):
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""

    server = None
    try:
        t_end = time.monotonic() + 120
        while time.monotonic() < t_end and run.poll() is None:
            kids = {p: cmdline(p) for p in descendants(run.pid)}
            if any("qlcp-reaper" in c for c in kids.values()):
                server = next(p for p, c in kids.items() if "prefect.server.api.server" in c)
                break
            time.sleep(0.05)
        assert server is not None, "no embedded server tied to the run: " + (tmp_path / "run.log").read_text()[-2000:]
        run.kill()
        run.wait()
        assert _gone(server, 10), "the embedded Prefect server outlived kill -9 of its run"
    finally:
        if run.poll() is None:
            run.kill()
        if server is not None and not _gone(server, 0):
            os.kill(server, signal.SIGKILL)
