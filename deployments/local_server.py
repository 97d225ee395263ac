"""Where ``qlcp up`` serves its Prefect server, so that ``qlcp run`` can use it.

``qlcp up`` writes ``$QLCP_HOME/server.json`` (``{"api_url", "ui_url", "pid",
"server_pid", "started"}``) once its server answers, and removes it when it
stops.  ``qlcp run`` (Prefect mode, no ``PREFECT_API_URL`` set) reads it and
uses that server when its ``/api/health`` answers within a short timeout;
otherwise it starts Prefect's embedded (temporary) server as before.  A
record left by a killed ``qlcp up`` is ignored (the health check fails) and
removed when its process is gone.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
from pathlib import Path

from qlcp.core.io import qlcp_home, write_json

log = logging.getLogger("qlcp.server")

#: seconds ``qlcp run`` waits for a recorded server's /api/health
HEALTH_TIMEOUT = 1.0


#: days ``qlcp up`` keeps a flow run in Prefect's database after it ended (``--retention-days``)
RETENTION_DAYS = 365


def retention_env(days: float | None, environ=None) -> dict:
    """Settings of Prefect's own retention for a server: its ``db_vacuum`` service deletes the
    terminal flow runs that ended more than ``days`` ago, with their task runs, states, logs and
    artifacts (hourly, in batches); events are kept 7 days whatever ``days``.  Products on disk are
    unknown to Prefect and never touched.  ``days`` 0 or None: keep every run.  A setting already in
    ``environ`` (the operator's) is left as it is.  Prefect needs more than one hour."""
    from qlcp.core.errors import ConfigError

    environ = os.environ if environ is None else environ
    if not days:
        return {}
    if days * 86400 <= 3600:
        raise ConfigError(f"retention of {days} days: Prefect keeps a flow run more than 1 hour (0: keep all)")
    out = {"PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
           "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": str(int(days * 86400))}
    return {k: v for k, v in out.items() if k not in environ}


def server_file() -> Path:
    """The record of the running ``qlcp up`` server: ``$QLCP_HOME/server.json``."""
    return qlcp_home() / "server.json"


def client_host(host: str) -> str:
    """The address a local client uses for a server listening on ``host`` (a wildcard: loopback)."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host


def record_server(host: str, port: int, server_pid: int, results_url: str | None = None,
                  results_root: str | None = None) -> Path:
    """Write ``server.json`` for a server listening on ``host:port`` (and the ``results_url`` its runs
    get for products under ``results_root``, when ``qlcp up`` serves them); return its path."""
    h = client_host(host)
    h = f"[{h}]" if ":" in h else h
    rec = {"api_url": f"http://{h}:{port}/api", "ui_url": f"http://{h}:{port}", "pid": os.getpid(),
           "server_pid": int(server_pid), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if results_url and results_root:
        rec.update(results_url=results_url, results_root=str(Path(results_root).resolve()))
    path = server_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, rec)


def forget_server() -> None:
    """Remove ``server.json`` if this process wrote it (another ``qlcp up`` may have replaced it)."""
    rec = read_record()
    if rec is not None and rec.get("pid") == os.getpid():
        server_file().unlink(missing_ok=True)


def read_record() -> dict | None:
    """The content of ``server.json``, or None when absent or unreadable."""
    try:
        rec = json.loads(server_file().read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("api_url"), str) else None


def healthy(api_url: str, timeout: float = HEALTH_TIMEOUT) -> bool:
    """Whether ``{api_url}/health`` answers 200 within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except (OSError, ValueError):
        return False


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError, OverflowError):
        return True
    return True


def running_server(timeout: float = HEALTH_TIMEOUT) -> str | None:
    """The API URL of the recorded ``qlcp up`` server when it answers, else None.

    A record whose ``qlcp up`` process is gone is removed.
    """
    rec = read_record()
    if rec is None:
        return None
    if healthy(rec["api_url"], timeout):
        return rec["api_url"]
    if not _alive(rec.get("pid")):
        log.info("removing stale %s (process %s is gone)", server_file(), rec.get("pid"))
        server_file().unlink(missing_ok=True)
    return None


# ------------------------------------------------------------ the embedded server
#: the watcher of :func:`end_with_this_process`: waits for EOF on stdin (the process that started it
#: ended, however), then ends ``pid`` if it is still the process named by ``marker`` (not a reused pid)
_REAPER = """import os, signal, sys, time
pid, marker = int(sys.argv[1]), sys.argv[2].encode()
sys.stdin.buffer.read()
def ours():
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker in f.read()
    except OSError:
        return False
for sig in (signal.SIGTERM, signal.SIGKILL):
    if not ours():
        break
    os.kill(pid, sig)
    for _ in range(50):
        time.sleep(0.1)
        if not ours():
            break
"""

#: the watchers' pipes: the write ends stay open for this process's life (never written)
_LIFELINES: list[int] = []


def end_with_this_process(pid: int, marker: str) -> None:
    """End process ``pid`` (SIGTERM, then SIGKILL after 5 s) when this process ends, even on ``kill -9``.

    A small watcher process reads a pipe whose write end only this process holds; the kernel closes
    it when this process ends, however it ends.  ``marker`` (a string of ``pid``'s command line)
    guards against a pid reused meanwhile.  Linux (``/proc``); elsewhere nothing is done.
    """
    import subprocess
    import sys

    if not os.path.exists(f"/proc/{pid}/cmdline"):
        return
    r, w = os.pipe()
    try:
        subprocess.Popen([sys.executable, "-c", _REAPER, str(pid), marker, "qlcp-reaper"], stdin=r,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    finally:
        os.close(r)
    _LIFELINES.append(w)


def start_embedded_server() -> str:
    """Start Prefect's temporary server now, as Prefect would at a flow's first API call, tied to this
    process; return its API URL.

    Prefect stops it at a normal exit only: each ``qlcp run`` killed with ``kill -9`` (or by the OOM
    killer) left a server of ~250 MB running, found by this stop's check.  Here a watcher ends it
    with the run (:func:`end_with_this_process`).
    """
    from prefect.server.api.server import SubprocessASGIServer

    srv = SubprocessASGIServer()
    srv.start()
    if srv.server_process is not None:
        end_with_this_process(srv.server_process.pid, "prefect.server.api.server")
    return srv.api_url
