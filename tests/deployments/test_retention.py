"""Retention of the service's Prefect database: Prefect's own ``db_vacuum`` service, as ``qlcp up``
configures it (:func:`qlcp.deployments.local_server.retention_env`), against a real server.

Runs are recorded through the API today; the same database is then served with the clock 3 days
ahead (libfaketime) and a retention of 1 day: the run that ended "3 days ago" goes with its task
run, its subflow, its logs and its artifacts; a run still running and a run that ended "today" stay;
the product file an artifact points at stays.  Skipped without libfaketime.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

import pytest

from qlcp.core.errors import ConfigError
from qlcp.deployments.local_server import retention_env
from tests.core.test_runtime import faketime_env
from tests.deployments.test_service import SERVER_START_TIMEOUT, Proc, _free_port, _healthy


def _call(api: str, method: str, path: str, body=None):
    """(status, JSON) of one API call; a 503 (SQLite busy) is retried, as Prefect's client does."""
    for _ in range(20):
        req = urllib.request.Request(api + path, method=method, headers={"Content-Type": "application/json"},
                                     data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            if e.code != 503:
                return e.code, None
        time.sleep(0.5)
    return 503, None


def _server(tmp_path, env: dict, port: int, name: str) -> Proc:
    srv = Proc(name, [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
                      "--no-ui"], env, tmp_path / f"{name}.log").start()
    t_end = time.monotonic() + SERVER_START_TIMEOUT
    while not _healthy(f"http://127.0.0.1:{port}/api"):
        if time.monotonic() > t_end or not srv.alive():
            srv.stop()
            pytest.fail(f"{name} not healthy\n{srv.tail()}")
        time.sleep(0.5)
    return srv


def test_retention_settings():
    env = retention_env(30, environ={})
    assert env == {"PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
                   "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": str(30 * 86400)}
    assert retention_env(0, environ={}) == {} and retention_env(None, environ={}) == {}
    mine = {"PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": "864000"}
    assert retention_env(30, environ=mine) == {"PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs"}
    with pytest.raises(ConfigError, match="more than 1 hour"):
        retention_env(0.01, environ={})


def test_old_runs_go_with_their_records_products_stay(tmp_path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_SERVICES_DB_VACUUM_LOOP_SECONDS="1")
    env.update(retention_env(1.0, environ={}))
    product = tmp_path / "red" / "20240606" / "lc_SIMV_V.png"
    product.parent.mkdir(parents=True)
    product.write_bytes(b"\x89PNG not really")

    srv = _server(tmp_path, env, port, "server-today")
    try:
        _, flow = _call(api, "POST", "/flows/", {"name": "process-night"})
        done = {"type": "COMPLETED"}
        code, old = _call(api, "POST", "/flow_runs/", {"flow_id": flow["id"], "name": "night-20240606", "state": done})
        assert code == 201, old
        _, task = _call(api, "POST", "/task_runs/", {"flow_run_id": old["id"], "task_key": "lightcurve",
                                                     "dynamic_key": "0", "name": "lightcurve-0", "state": done})
        _, sub = _call(api, "POST", "/flow_runs/", {"flow_id": flow["id"], "name": "campaign-SIMV",
                                                    "parent_task_run_id": task["id"], "state": done})
        code, running = _call(api, "POST", "/flow_runs/", {"flow_id": flow["id"], "name": "night-20240607",
                                                           "state": {"type": "PENDING"}})
        assert code == 201 and _call(api, "POST", f"/flow_runs/{running['id']}/set_state",
                                     {"state": {"type": "RUNNING"}})[0] in (200, 201)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        assert _call(api, "POST", "/logs/", [{"name": "qlcp.steps", "level": 20, "message": "light curve",
                                              "timestamp": now, "flow_run_id": old["id"],
                                              "task_run_id": task["id"]}])[0] == 201
        assert _call(api, "POST", "/artifacts/", {"key": "night-20240606-simv-v-lc", "type": "image",
                                                  "data": product.as_uri(), "flow_run_id": old["id"],
                                                  "task_run_id": task["id"]})[0] == 201
        time.sleep(3)                          # a few vacuum loops: nothing is a day old yet
        assert _call(api, "GET", f"/flow_runs/{old['id']}")[0] == 200
    finally:
        srv.stop()

    srv = _server(tmp_path, faketime_env("+3d", env), port, "server-3-days-later")
    try:
        _, recent = _call(api, "POST", "/flow_runs/", {"flow_id": flow["id"], "name": "night-20240609",
                                                       "state": {"type": "COMPLETED"}})
        t_end = time.monotonic() + 90
        while _call(api, "GET", f"/flow_runs/{old['id']}")[0] != 404 and time.monotonic() < t_end:
            time.sleep(1)
        assert _call(api, "GET", f"/flow_runs/{old['id']}")[0] == 404, srv.tail()
        assert _call(api, "GET", f"/task_runs/{task['id']}")[0] == 404
        while _call(api, "GET", f"/flow_runs/{sub['id']}")[0] != 404 and time.monotonic() < t_end:
            time.sleep(1)                      # the subflow, top-level once its parent task run is gone
        assert _call(api, "GET", f"/flow_runs/{sub['id']}")[0] == 404
        for _ in range(30):                    # logs and artifacts follow in batches
            logs = _call(api, "POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [old["id"]]}}})[1]
            arts = _call(api, "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [old["id"]]}}})[1]
            if not logs and not arts:
                break
            time.sleep(1)
        assert logs == [] and arts == []
        assert _call(api, "GET", f"/flow_runs/{running['id']}")[0] == 200       # not ended: kept
        assert _call(api, "GET", f"/flow_runs/{recent['id']}")[0] == 200        # ended today: kept
        assert product.read_bytes() == b"\x89PNG not really"
    finally:
        srv.stop()
