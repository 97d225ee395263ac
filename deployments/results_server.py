"""The output root over HTTP, read-only: what the Prefect UI's image artifacts point at.

``qlcp up`` serves ``RED_ROOT`` on its own port (default: the Prefect port + 1) next to the Prefect
server and gives its flow runs ``results_url`` (``$QLCP_RESULTS_URL``) pointing here, so that a
night's light curve shows in the UI without its PNG in Prefect's database
(:func:`qlcp.flows.artifacts.publish_image`).  Standard library only (``http.server``): GET and HEAD,
directory listings, nothing outside the root (paths resolved, symlinks too), no writes.  Run alone:
``python -m qlcp.deployments.results_server RED_ROOT --host H --port P``.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from qlcp.core.errors import InputError

log = logging.getLogger("qlcp.results")

#: the environment variable the flows read ``results_url`` from when no config file sets it
RESULTS_URL_ENV = "QLCP_RESULTS_URL"

_TEXT = "text/plain; charset=utf-8"


class ResultsHandler(SimpleHTTPRequestHandler):
    """GET/HEAD of files and directory listings under ``directory``; every other method 405;
    a path that resolves outside the root (``..``, a symlink) 403."""

    server_version = "qlcp-results"
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".png": "image/png", ".pdf": "application/pdf",
                      ".ecsv": _TEXT, ".txt": _TEXT, ".log": _TEXT, ".yaml": _TEXT, ".csv": "text/csv; charset=utf-8",
                      ".html": "text/html; charset=utf-8", ".json": "application/json"}

    def send_head(self):
        path = self.translate_path(self.path)      # drops '..' words of the URL; symlinks are checked here
        root = os.path.realpath(self.directory)
        real = os.path.realpath(path)
        if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
            self.send_error(HTTPStatus.FORBIDDEN, "outside the results root")
            return None
        return super().send_head()

    def end_headers(self):
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def _refuse(self):
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def log_message(self, format, *args):     # noqa: A002 (the base class's name)
        log.debug("%s %s", self.address_string(), format % args)


class ResultsServer(ThreadingHTTPServer):
    """A :class:`ResultsHandler` rooted at ``root`` on ``(host, port)``; ``port`` 0 picks a free one."""

    daemon_threads = True

    def __init__(self, root, host: str = "127.0.0.1", port: int = 0):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise InputError(f"{root}: results root not found")
        if ":" in host:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((host, port), self._handler)
        except OSError as e:
            raise InputError(f"results server on {host}:{port}: {e.strerror or e}") from None
        self._thread: threading.Thread | None = None

    def _handler(self, *args, **kwargs):
        return ResultsHandler(*args, directory=str(self.root), **kwargs)

    @property
    def url(self) -> str:
        """``http://host:port/`` as a browser reaches it (a wildcard address: this machine's name)."""
        host, port = self.server_address[:2]
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def start(self) -> "ResultsServer":
        self._thread = threading.Thread(target=self.serve_forever, name="qlcp-results", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
        self.server_close()


def results_env(url: str, config_files=None, environ=None) -> dict:
    """``{QLCP_RESULTS_URL: url}`` for the flow runs of ``qlcp up``, unless the operator gave one
    (the environment variable, or ``results_url`` in a config file): then nothing."""
    from qlcp.core.config import load_config

    environ = os.environ if environ is None else environ
    if environ.get(RESULTS_URL_ENV) or any("results_url" in load_config([f]).model_fields_set
                                           for f in config_files or []):
        return {}
    return {RESULTS_URL_ENV: url}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m qlcp.deployments.results_server", description=__doc__.split("\n")[0])
    p.add_argument("root", metavar="RED_ROOT", help="output root to serve, read-only")
    p.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=4201, help="port (default 4201)")
    a = p.parse_args(argv)
    try:
        srv = ResultsServer(a.root, a.host, a.port)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"results: {srv.url}", flush=True)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=srv.shutdown, daemon=True).start())
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
