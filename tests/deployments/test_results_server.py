"""The read-only HTTP server of the output root (``qlcp up``'s results port) and how ``qlcp up``
gives its flow runs ``results_url`` pointing at it."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from qlcp.core.config import load_config
from qlcp.core.errors import InputError
from qlcp.deployments import serve
from qlcp.deployments.results_server import RESULTS_URL_ENV, ResultsServer, results_env
from tests.deployments.test_service import REPO, Proc, _descendants, _free_port, _healthy

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


@pytest.fixture
def tree(tmp_path):
    """RED_ROOT with a night's products, a secret beside it and a symlink from inside to it."""
    red = tmp_path / "red"
    (red / "20240606").mkdir(parents=True)
    (red / "20240606" / "lc SIMV V.png").write_bytes(PNG)
    (red / "20240606" / "lc_SIMV_V.ecsv").write_text("# %ECSV 1.0\nbjd mag\n1.0 12.0\n")
    (red / "20240606" / "summary.pdf").write_bytes(b"%PDF-1.4\n")
    (red / "site.html").write_text("<html></html>")
    (tmp_path / "secret.txt").write_text("not for the web")
    (red / "20240606" / "escape.txt").symlink_to(tmp_path / "secret.txt")
    (red / "outside").symlink_to(tmp_path, target_is_directory=True)
    (red / "inside.png").symlink_to(red / "20240606" / "lc SIMV V.png")     # within the root: served
    return red


@pytest.fixture
def server(tree):
    srv = ResultsServer(tree, "127.0.0.1", 0).start()
    yield srv
    srv.stop()


def _request(srv, method: str, path: str, body: bytes | None = None):
    host, port = srv.server_address[:2]
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.putrequest(method, path, skip_accept_encoding=True)      # the path as given: no client normalisation
    c.putheader("Content-Length", str(len(body or b"")))
    c.endheaders(body)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, r.getheader("Content-Type"), data


def test_serves_products_with_their_types(server, tree):
    status, ctype, data = _request(server, "GET", "/20240606/lc%20SIMV%20V.png")
    assert (status, ctype, data) == (200, "image/png", PNG)
    assert _request(server, "GET", "/inside.png")[:2] == (200, "image/png")
    for path, want in (("/20240606/lc_SIMV_V.ecsv", "text/plain; charset=utf-8"),
                       ("/20240606/summary.pdf", "application/pdf"), ("/site.html", "text/html; charset=utf-8")):
        assert _request(server, "GET", path)[:2] == (200, want), path
    status, ctype, data = _request(server, "HEAD", "/20240606/lc%20SIMV%20V.png")
    assert status == 200 and data == b""
    status, ctype, data = _request(server, "GET", "/20240606/")
    assert status == 200 and ctype.startswith("text/html") and b"lc_SIMV_V.ecsv" in data
    assert _request(server, "GET", "/20240606/none.png")[0] == 404
    assert server.url == f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.mark.parametrize("path", ["/../secret.txt", "/20240606/../../secret.txt", "/%2e%2e/secret.txt",
                                  "/20240606/escape.txt", "/outside/secret.txt", "/outside/"])
def test_nothing_outside_the_root(server, path):
    status, _, data = _request(server, "GET", path)
    assert status in (403, 404), (path, status)
    assert b"not for the web" not in data


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_no_writes(server, tree, method):
    before = sorted(p.name for p in (tree / "20240606").iterdir())
    status, _, _ = _request(server, method, "/20240606/new.png", body=PNG)
    assert status == 405
    status, _, _ = _request(server, method, "/20240606/lc%20SIMV%20V.png", body=b"x")
    assert status == 405
    assert sorted(p.name for p in (tree / "20240606").iterdir()) == before
    assert (tree / "20240606" / "lc SIMV V.png").read_bytes() == PNG


def test_port_in_use_is_one_clear_error(server, tree):
    with pytest.raises(InputError, match=f"results server on 127.0.0.1:{server.server_address[1]}"):
        ResultsServer(tree, "127.0.0.1", server.server_address[1])


def test_results_url_unless_the_operator_set_one(tmp_path, monkeypatch):
    mine = tmp_path / "mine.yaml"
    mine.write_text("results_url: http://obs.example/qlcp/\n")
    other = tmp_path / "other.yaml"
    other.write_text("keep_corrected: false\n")
    url = "http://127.0.0.1:4201/"
    assert results_env(url, [str(other)], environ={}) == {RESULTS_URL_ENV: url}
    assert results_env(url, [str(other), str(mine)], environ={}) == {}
    assert results_env(url, [], environ={RESULTS_URL_ENV: "http://proxy/red/"}) == {}
    # what the flow runs see: the variable is the setting's default; a config file wins over it
    monkeypatch.setenv(RESULTS_URL_ENV, url)
    assert load_config([str(other)]).results_url == url
    assert load_config([str(mine)]).results_url == "http://obs.example/qlcp/"
    monkeypatch.delenv(RESULTS_URL_ENV)
    assert load_config([str(other)]).results_url is None


def test_qlcp_run_on_the_up_server_links_to_its_results(tmp_path, monkeypatch):
    """``qlcp run`` using the recorded ``qlcp up`` server: a night under the served RED_ROOT gets its
    results_url; one elsewhere, or with the operator's results_url, does not."""
    from qlcp.deployments.cli import _served_results
    from qlcp.deployments.local_server import record_server

    monkeypatch.setenv("QLCP_HOME", str(tmp_path / "qlcp"))
    monkeypatch.setenv(RESULTS_URL_ENV, "")      # recorded, so the value the code sets is undone after the test
    monkeypatch.delenv(RESULTS_URL_ENV)
    url = "http://127.0.0.1:4201/"
    record_server("127.0.0.1", 4200, os.getpid(), url, str(tmp_path / "red"))
    _served_results(tmp_path / "elsewhere" / "20240606", load_config([]))
    assert RESULTS_URL_ENV not in os.environ
    mine = tmp_path / "mine.yaml"
    mine.write_text("results_url: http://obs.example/qlcp/\n")
    _served_results(tmp_path / "red" / "20240606", load_config([str(mine)]))
    assert RESULTS_URL_ENV not in os.environ
    _served_results(tmp_path / "red" / "20240606", load_config([]))
    assert os.environ[RESULTS_URL_ENV] == url and load_config([]).results_url == url


def _up_args(tmp_path, **kw) -> argparse.Namespace:
    (tmp_path / "raw").mkdir(exist_ok=True)
    a = dict(raw_root=str(tmp_path / "raw"), red_root=str(tmp_path / "red"), config=None, host="127.0.0.1",
             port=4450, results_port=None, retention_days=0)
    return argparse.Namespace(**{**a, **kw})


def _fake_up(monkeypatch, seen: dict):
    """``run_up`` with its Prefect processes and sensor replaced: records the flow runs' environment and
    what the results URL serves while the service runs."""
    import qlcp.deployments.sensor as sensor

    class Popen:
        def __init__(self, cmd, env=None, **_):
            seen.setdefault("cmds", []).append(cmd)
            seen["env"] = env
            self.pid = os.getpid()

        def poll(self):
            return 0

    def run_watch(a):
        url = seen["env"].get(RESULTS_URL_ENV)
        if url:
            with urllib.request.urlopen(url + "20240606/lc.png", timeout=10) as r:
                seen["served"] = r.read()
        return 0

    monkeypatch.setattr(serve.subprocess, "Popen", Popen)
    monkeypatch.setattr(serve, "wait_healthy", lambda api: None)
    monkeypatch.setattr(serve, "_record", lambda *a: None)
    monkeypatch.setattr(serve, "_forget", lambda: None)
    monkeypatch.setattr(sensor, "run_watch", run_watch)
    monkeypatch.setenv(RESULTS_URL_ENV, "")      # recorded, so the value the code sets is undone after the test
    monkeypatch.delenv(RESULTS_URL_ENV)


def test_up_serves_red_root_and_points_the_runs_at_it(tmp_path, monkeypatch, capsys):
    seen: dict = {}
    _fake_up(monkeypatch, seen)
    (tmp_path / "red" / "20240606").mkdir(parents=True)
    (tmp_path / "red" / "20240606" / "lc.png").write_bytes(PNG)
    with socket.socket() as s:                 # a free port for the results server
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert serve.run_up(_up_args(tmp_path, results_port=port)) == 0
    url = f"http://127.0.0.1:{port}/"
    assert seen["env"][RESULTS_URL_ENV] == url           # the `qlcp serve` process, whose flow runs inherit it
    assert seen["served"] == PNG                         # served while the service runs
    assert f"results: {url}" in capsys.readouterr().out
    with pytest.raises(OSError):                          # and stopped with it
        urllib.request.urlopen(url, timeout=2)


def test_up_default_port_and_disabled(tmp_path, monkeypatch):
    a = _up_args(tmp_path)
    srv, env = serve.start_results(a, environ={})
    try:
        assert srv.server_address[1] == a.port + 1 and env == {RESULTS_URL_ENV: f"http://127.0.0.1:{a.port + 1}/"}
    finally:
        srv.stop()
    seen: dict = {}
    _fake_up(monkeypatch, seen)
    assert serve.run_up(_up_args(tmp_path, results_port=0)) == 0
    assert RESULTS_URL_ENV not in seen["env"] and "served" not in seen


def test_qlcp_up_serves_results_and_stops_with_them(tmp_path):
    """A real ``qlcp up`` (Prefect server, ``qlcp serve``, sensor): RED_ROOT answers on the results
    port, the ``qlcp serve`` process (whose flow runs inherit its environment) has the URL, and
    SIGTERM stops everything, the results port included."""
    (tmp_path / "raw").mkdir()
    (tmp_path / "red" / "20240606").mkdir(parents=True)
    (tmp_path / "red" / "20240606" / "lc.png").write_bytes(PNG)
    port, rport = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "QLCP_"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), QLCP_HOME=str(tmp_path / "qlcp-home"), DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(REPO))
    up = Proc("up", [sys.executable, "-m", "qlcp.deployments.cli", "up", str(tmp_path / "raw"), str(tmp_path / "red"),
                     "--port", str(port), "--results-port", str(rport), "--retention-days", "0"],
              env, tmp_path / "up.log").start()
    url = f"http://127.0.0.1:{rport}/"
    try:
        t_end = time.monotonic() + 120
        serve_pid = None
        while serve_pid is None:
            assert up.alive() and time.monotonic() < t_end, up.tail()
            if _healthy(f"http://127.0.0.1:{port}/api"):
                serve_pid = next((p for p in _descendants(up.popen.pid)
                                  if b"serve" in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")), None)
            time.sleep(0.5)
        served_env = dict(x.split(b"=", 1) for x in Path(f"/proc/{serve_pid}/environ").read_bytes().split(b"\0") if x)
        assert served_env[RESULTS_URL_ENV.encode()] == url.encode()
        with urllib.request.urlopen(url + "20240606/lc.png", timeout=10) as r:
            assert r.read() == PNG and r.headers["Content-Type"] == "image/png"
        assert f"results: {url}" in up.log_path.read_text()
        rec = json.loads((tmp_path / "qlcp-home" / "server.json").read_text())      # for qlcp run
        assert (rec["results_url"], rec["results_root"]) == (url, str((tmp_path / "red").resolve()))
        children = _descendants(up.popen.pid)
        os.kill(up.popen.pid, signal.SIGTERM)
        assert up.popen.wait(timeout=60) == 0, up.tail()
        assert not [p for p in children if Path(f"/proc/{p}").exists()
                    and Path(f"/proc/{p}/stat").read_text().split(")")[1].split()[0] != "Z"], up.tail()
        with pytest.raises(OSError):
            urllib.request.urlopen(url, timeout=2)
    finally:
        up.stop()
