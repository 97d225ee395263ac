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


def server_file() -> Path:
    """The record of the running ``qlcp up`` server: ``$QLCP_HOME/server.json``."""
    return qlcp_home() / "server.json"


def client_host(host: str) -> str:
    """The address a local client uses for a server listening on ``host`` (a wildcard: loopback)."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host


def record_server(host: str, port: int, server_pid: int) -> Path:
    """Write ``server.json`` for a server listening on ``host:port``; return its path."""
    h = client_host(host)
    h = f"[{h}]" if ":" in h else h
    rec = {"api_url": f"http://{h}:{port}/api", "ui_url": f"http://{h}:{port}", "pid": os.getpid(),
           "server_pid": int(server_pid), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
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
