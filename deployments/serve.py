"""Serving the QLCP deployments, and the one-command local service (``qlcp up``).

Deployments (served by one process with ``prefect.serve``):

* ``process-night/process-night``: on demand; the sensor and the UI call it with
  ``raw_dir``, ``red_dir``, ``config_files``.
* ``reprocess/reprocess``: on a cron schedule (default daily at local noon) over every
  night of the raw root; the content-addressed cache makes unchanged nights cheap.
* ``dawn-sweep/dawn-sweep``: on a cron schedule (default daily 07:00 local): any recent
  night left pending (the sensor was down) is processed.

Cron times are local to the site: ``--timezone`` (an IANA name) or, by default, the
config's ``site_tz`` hours as ``Etc/GMT±N`` (printed as the offset the operator gave: ``UTC-7``, not
POSIX's inverted ``Etc/GMT+7``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from qlcp.core.config import load_config
from qlcp.core.errors import ConfigError, InputError
from qlcp.core.parallel import WORKERS_ENV
from qlcp.core.runtime import offline_time

log = logging.getLogger("qlcp.serve")


def site_timezone(config_files: list[str] | None, override: str | None = None) -> str:
    """IANA time zone of the site: ``override``, else the config's IANA name (``site_tz: America/New_York``,
    daylight saving followed), else ``Etc/GMT-N`` from ``site_tz`` hours (UTC when fractional)."""
    if override:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(override)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"--timezone {override!r}: not a known IANA time zone") from None
        return override
    cfg = load_config(config_files or [])
    if cfg.site_timezone:
        return cfg.site_timezone
    tz = cfg.site_tz
    if float(tz).is_integer():
        n = int(tz)
        return "UTC" if n == 0 else f"Etc/GMT{'-' if n > 0 else '+'}{abs(n)}"
    log.warning("site_tz %s is not whole hours: schedules use UTC (give --timezone)", tz)
    return "UTC"


def timezone_label(tz: str) -> str:
    """The time zone as the operator gave it: ``Etc/GMT+7`` (POSIX's inverted sign) is ``UTC-7``,
    ``Etc/GMT-8`` is ``UTC+8``; IANA names and ``UTC`` unchanged."""
    import re

    m = re.fullmatch(r"Etc/GMT([+-])(\d{1,2})", tz)
    if not m:
        return tz
    return f"UTC{'-' if m.group(1) == '+' else '+'}{int(m.group(2))}"


def _config_paths(config_files) -> list[str]:
    """Absolute config paths, as the flow runs (possibly elsewhere) get them."""
    return [str(Path(f).resolve()) for f in (config_files or [])]


def build_deployments(raw_root: str, red_root: str, config_files: list[str] | None = None, timezone: str = "UTC",
                      reprocess_cron: str = "0 12 * * *", sweep_cron: str = "0 7 * * *"):
    """The four deployments (process-night, reprocess, dawn-sweep, campaign), ready for ``prefect.serve``."""
    from prefect.schedules import Cron

    from qlcp.flows.campaign import campaign
    from qlcp.flows.night import dawn_sweep, process_night, reprocess

    files = _config_paths(config_files)
    common = {"raw_root": str(Path(raw_root).resolve()), "red_root": str(Path(red_root).resolve()),
              "config_files": files}
    return [
        process_night.to_deployment(name="process-night", tags=["qlcp"], parameters={"config_files": files}),
        reprocess.to_deployment(name="reprocess", tags=["qlcp"], parameters=common,
                                schedule=Cron(reprocess_cron, timezone=timezone)),
        dawn_sweep.to_deployment(name="dawn-sweep", tags=["qlcp"], parameters=common,
                                 schedule=Cron(sweep_cron, timezone=timezone)),
        campaign.to_deployment(name="campaign", tags=["qlcp"],
                               parameters={"red_root": common["red_root"], "config_files": files}),
    ]


def deploy_to_pool(pool: str, config_files: list[str] | None = None, name: str = "pool",
                   pool_type: str = "process", frame_workers: int | None = None) -> str:
    """Register ``process-night/<name>`` on work pool ``pool`` (created if missing); return its id.

    For observatories that run flows on Prefect workers (``prefect worker start --pool
    POOL``, one or more machines seeing the same raw and red roots) instead of ``qlcp
    serve``.  The flow is referenced by module path (``qlcp.flows.night``), so a worker needs
    this package installed (the image), not a copy of the source.  Idempotent: running it
    again updates the deployment.

    ``frame_workers``: the frame worker processes of each flow run (``QLCP_WORKERS`` in its
    environment; default: all the CPUs of the machine it runs on).  Where a machine runs several
    nights at once (one worker per core, ``--limit 1`` each), give 1: every night with a pool of
    all the cores would make the nights fight for them.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments.runner import EntrypointType
    from prefect.exceptions import ObjectAlreadyExists

    from qlcp.flows.night import process_night

    files = _config_paths(config_files)
    if files:
        load_config(files)          # a bad config fails here, in one line, not in every flow run
    with get_client(sync_client=True) as c:
        try:
            c.create_work_pool(WorkPoolCreate(name=pool, type=pool_type))
            log.info("work pool %s (%s) created", pool, pool_type)
        except ObjectAlreadyExists:
            pass
    d = process_night.to_deployment(name=name, work_pool_name=pool, tags=["qlcp"],
                                    entrypoint_type=EntrypointType.MODULE_PATH,
                                    parameters={"config_files": files},
                                    job_variables={"env": {WORKERS_ENV: str(frame_workers)}} if frame_workers else None)
    return str(d.apply())


def add_serve_arguments(p) -> None:
    p.add_argument("raw_root", metavar="RAW_ROOT", help="directory holding one directory per night (read only)")
    p.add_argument("red_root", metavar="RED_ROOT", help="output root: RED_ROOT/<night>")
    p.add_argument("--config", action="append", metavar="FILE", help="QLCP config file(s) for every night")
    p.add_argument("--timezone", help="IANA time zone of the schedules (default: from site_tz)")
    p.add_argument("--reprocess-cron", default="0 12 * * *", help="reprocess schedule, local time (default noon)")
    p.add_argument("--sweep-cron", default="0 7 * * *", help="dawn-sweep schedule, local time (default 07:00)")
    p.add_argument("--limit", type=int, default=1, help="most flow runs at once (default 1: one night at a time)")


def _check_roots(a) -> None:
    for d in (a.raw_root,):
        if not Path(d).is_dir():
            raise InputError(f"{d}: raw root not found")
    for f in a.config or []:
        load_config([f])           # fail now, not at the first night


def run_serve(a) -> int:
    """``qlcp serve``: serve the deployments until SIGTERM (needs PREFECT_API_URL)."""
    offline_time()
    _check_roots(a)
    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigError("PREFECT_API_URL is not set: start a server (prefect server start, or qlcp up) "
                          "and point PREFECT_API_URL at it")
    from prefect import serve

    tz = site_timezone(a.config, a.timezone)
    api = os.environ["PREFECT_API_URL"]
    while True:
        deps = build_deployments(a.raw_root, a.red_root, a.config, tz, a.reprocess_cron, a.sweep_cron)
        label = timezone_label(tz)
        print(f"serving process-night, reprocess ({a.reprocess_cron} {label}), dawn-sweep ({a.sweep_cron} "
              f"{label}) on {api}", flush=True)
        try:
            serve(*deps, limit=a.limit, pause_on_shutdown=False)   # a restart must not leave them paused
            return 0                    # SIGTERM / SIGINT: Prefect's graceful shutdown
        except Exception as e:
            # Prefect's runner gives up after 3 failed polls in a row (15 s to minutes without the API,
            # depending on its client's retries): wait for the API and serve again instead of exiting
            if not _api_outage(e, api):
                raise
            log.warning("Prefect API %s unreachable (%s: %s): serving again once it answers", api,
                        type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else "")
        _wait_for_api(api)


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _api_outage(e: BaseException, api_url: str) -> bool:
    """Whether ``e``, which ended ``prefect.serve``, comes from an unreachable or failing API."""
    import httpx

    todo, seen = [e], set()
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, httpx.TransportError) or (isinstance(x, RuntimeError) and "error threshold" in str(x)):
            return True
        if isinstance(x, BaseExceptionGroup):
            todo.extend(x.exceptions)
        todo.extend((x.__cause__, x.__context__))
    return not _healthy(api_url)


def _wait_for_api(api_url: str, every: float = 2.0, report: float = 300.0) -> None:
    """Wait (without limit: this is a service) until the API answers; SIGTERM exits cleanly meanwhile."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))   # Prefect's runner handler assumes a live runner
    t0 = last = time.monotonic()
    while not _healthy(api_url):
        if time.monotonic() - last >= report:
            last = time.monotonic()
            log.warning("Prefect API %s still unreachable after %.0f s", api_url, last - t0)
        time.sleep(every)
    print(f"Prefect API {api_url} is back after {time.monotonic() - t0:.0f} s", flush=True)


# ------------------------------------------------------------------- qlcp up
def wait_healthy(api_url: str, timeout: float = 120.0) -> None:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if _healthy(api_url):
            return
        time.sleep(0.5)
    raise InputError(f"Prefect server at {api_url} not healthy after {timeout:.0f} s")


def run_up(a) -> int:
    """``qlcp up``: a local Prefect server (SQLite), the served deployments and the sensor, until SIGTERM."""
    offline_time()          # before the sensor; its processes inherit that the warning was given
    _check_roots(a)
    api = f"http://{a.host}:{a.port}/api"
    env = dict(os.environ, PREFECT_API_URL=api, PREFECT_SERVER_API_HOST=a.host, PREFECT_SERVER_API_PORT=str(a.port),
               PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2", PREFECT_RUNNER_POLL_FREQUENCY="5")
    from qlcp.deployments.local_server import RETENTION_DAYS, retention_env

    env.update(retention_env(getattr(a, "retention_days", RETENTION_DAYS)))   # Prefect's; never products
    procs = []
    results, results_url = start_results(a)      # first: a port in use stops qlcp up before Prefect starts
    env.update(results_url)
    try:
        if results is not None:
            print(f"results: {results.url}  (read-only: {results.root}; the runs' images link "
                  f"{'here' if results_url else 'to the results_url the operator set'})", flush=True)
        procs.append(subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", a.host,
                                       "--port", str(a.port)], env=env, start_new_session=True))
        wait_healthy(api)
        _record(a.host, a.port, procs[0].pid, results_url.get("QLCP_RESULTS_URL"), a.red_root)
        print(f"Prefect UI: http://{a.host}:{a.port}  (PREFECT_API_URL={api})", flush=True)
        serve_cmd = [sys.executable, "-m", "qlcp.deployments.cli", "serve", a.raw_root, a.red_root]
        for f in a.config or []:
            serve_cmd += ["--config", f]
        procs.append(subprocess.Popen(serve_cmd, env=env, start_new_session=True))
        os.environ["PREFECT_API_URL"] = api
        from qlcp.deployments.sensor import run_watch

        return run_watch(a)
    finally:
        _forget()
        for p in reversed(procs):          # workers before the server
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        if results is not None:
            results.stop()


def start_results(a, environ=None):
    """``qlcp up``'s read-only HTTP server of ``RED_ROOT`` (:mod:`qlcp.deployments.results_server`) on
    ``a.host``, port ``--results-port`` (default the Prefect port + 1; 0: none), started, and the
    environment that gives its flow runs ``results_url`` pointing at it (empty when the operator set
    ``$QLCP_RESULTS_URL`` or ``results_url`` in a config file).  ``(None, {})`` when disabled."""
    from qlcp.deployments.results_server import ResultsServer, results_env

    port = getattr(a, "results_port", None)
    port = a.port + 1 if port is None else port
    if port == 0:
        return None, {}
    Path(a.red_root).mkdir(parents=True, exist_ok=True)
    srv = ResultsServer(a.red_root, a.host, port).start()
    try:
        return srv, results_env(srv.url, a.config, environ)
    except BaseException:
        srv.stop()
        raise


def _record(host: str, port: int, server_pid: int, results_url: str | None = None, red_root: str | None = None) -> None:
    """Tell later ``qlcp run`` commands where this server listens, and its results server
    (``$QLCP_HOME/server.json``)."""
    from qlcp.deployments.local_server import record_server

    try:
        path = record_server(host, port, server_pid, results_url, red_root)
        print(f"server recorded in {path} (qlcp run uses it)", flush=True)
    except OSError as e:             # an unwritable QLCP_HOME only costs qlcp run its embedded server
        log.warning("cannot record the server for qlcp run: %s", e)


def _forget() -> None:
    from qlcp.deployments.local_server import forget_server

    try:
        forget_server()
    except OSError as e:
        log.warning("cannot remove the server record: %s", e)
