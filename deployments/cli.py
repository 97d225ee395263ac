"""The ``qlcp`` command line.

    qlcp run RAW RED [--steps lbfiopkcdg] [--obj NAME]... [--band B]... [--config FILE]... [--set key=value]...
    qlcp simulate OUT [--frames N] [--size PX] [--seed S]     (frames in OUT/raw/YYYYMMDD)
    qlcp demo [--workdir DIR]
    qlcp update-tables FILE...                                (fresh IERS-A / leap-second tables)
    qlcp --version

Bad input (a path, a config key, an empty night) is one line on stderr and
exit status 2, never a traceback (``--debug`` shows it for bug reports).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from qlcp.core._version import __version__

EXIT_BAD_INPUT = 2
#: the night reduced without a calibration it should have had (``degraded`` in summary.json)
EXIT_DEGRADED = 3
#: the night reduced, but a group has no target: none configured and no variable found, a configured
#: target not on the frames or not placeable, ``starxy`` targets off the frame (outcome ``no target``
#: in summary.json; the comparisons' light curves and the chart are written)
EXIT_NO_TARGET = 4


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", default=None, help="steps to run (default: all, lbfiopwkcdgt)")
    p.add_argument("--obj", action="append", metavar="NAME", help="object to process (repeatable)")
    p.add_argument("--band", action="append", metavar="B", help="band to process (repeatable)")
    p.add_argument("--config", action="append", metavar="FILE", help="YAML or INI config (repeatable; later wins)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", dest="sets",
                   help="one setting, e.g. --set aper=[4,6,8] (repeatable; wins over files)")
    p.add_argument("--no-prefect", action="store_true", help="run the plain core, without Prefect")
    p.add_argument("--refresh", action="store_true", help="recompute every step (ignore caches, overwrite)")
    p.add_argument("--refresh-field", action="store_true",
                   help="rebuild the field reference of this night's fields from tonight's choice of stars")
    p.add_argument("--runner", choices=("thread", "dask"), default="thread",
                   help="Prefect task runner for frame-level work (dask: pip install 'qlcp[dask]')")
    p.add_argument("--dask-address", metavar="TCP", help="an existing Dask scheduler (default: a local cluster)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qlcp", description="Quick Light Curve Pipeline: raw CCD night -> light curves")
    ap.add_argument("--version", action="version", version=f"qlcp {__version__}")
    ap.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")

    p = sub.add_parser("run", help="reduce one night")
    p.add_argument("raw", help="raw night directory (only read)")
    p.add_argument("red", help="output directory")
    _add_run_args(p)

    p = sub.add_parser("simulate", help="write a simulated night (raw frames + truth)")
    p.add_argument("out", help="output directory: OUT/raw/YYYYMMDD (the frames), OUT/truth, OUT/night.yaml")
    p.add_argument("--frames", type=int, default=60, help="science frames (default 60)")
    p.add_argument("--size", type=int, default=1024, help="frame size in px (default 1024)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")

    from qlcp.deployments.sensor import add_watch_arguments

    p = sub.add_parser("watch", help="night sensor: trigger the night deployment once per night, at dawn")
    add_watch_arguments(p)

    from qlcp.deployments.serve import add_serve_arguments

    p = sub.add_parser("serve", help="serve the deployments process-night, reprocess, dawn-sweep")
    add_serve_arguments(p)

    p = sub.add_parser("up", help="local service: Prefect server (SQLite) + deployments + night sensor")
    add_watch_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address of the Prefect server (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=4200, help="port of the Prefect server (default 4200)")
    p.add_argument("--results-port", type=int, metavar="PORT",
                   help="port of the read-only HTTP server of RED_ROOT that the UI's images link to, on --host "
                        "(default: --port + 1; 0: none)")
    p.add_argument("--retention-days", type=float, default=365, metavar="DAYS",
                   help="Prefect deletes flow runs (task runs, logs, artifacts) that ended more than DAYS ago, "
                        "never products on disk (default 365; 0: keep all)")

    p = sub.add_parser("deploy", help="register process-night on a Prefect work pool (for workers)")
    p.add_argument("--pool", required=True, metavar="NAME", help="work pool (a process pool is created if missing)")
    p.add_argument("--name", default="pool", help="deployment name: process-night/NAME (default pool)")
    p.add_argument("--config", metavar="FILE", action="append", help="config file(s) the flow runs get")
    p.add_argument("--frame-workers", type=int, metavar="N", help="frame worker processes of each flow run "
                   "(default all CPUs; 1 when a machine runs a worker per core)")

    p = sub.add_parser("campaign", help="build or rebuild campaign products (multi-night light curve, O-C, "
                                        "ephemeris, period search) from reduced nights, without Prefect")
    p.add_argument("red_root", nargs="?", default=None,
                   help="output root holding one directory per night (default: $RED_ROOT)")
    p.add_argument("--target", action="append", metavar="NAME", help="only this target (repeatable; default all)")
    p.add_argument("--config", action="append", metavar="FILE", help="YAML or INI config (the target catalogue)")

    p = sub.add_parser("update-tables", help="install fresh astropy time tables (IERS-A finals2000A.all, "
                                             "Leap_Second.dat) copied in from outside, for every later run")
    p.add_argument("files", nargs="+", metavar="FILE", help="an IERS-A table and/or a leap-second list")

    from qlcp.deployments.calib_cli import add_calib_arguments

    add_calib_arguments(sub.add_parser("calib", help="the calibration library: list, reject, accept, rebuild"))
    from qlcp.deployments.instruments_cli import add_instruments_arguments

    add_instruments_arguments(sub.add_parser("instruments", help="the instrument registry: list, check RAW_DIR"))

    p = sub.add_parser("demo", help="simulate a night and reduce it")
    p.add_argument("--workdir", default="qlcp-demo", help="where to put the night and its reduction")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--no-prefect", action="store_true", help="run the plain core, without Prefect")
    return ap


def _fail(msg: str) -> int:
    print(f"qlcp: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def cmd_campaign(a) -> int:
    """``qlcp campaign RED_ROOT [--target NAME]``: the campaign products, printed by target."""
    from qlcp.core.campaign import build_campaign, campaign_targets
    from qlcp.core.runsetup import make_config

    cfg = make_config(a.config)
    red_root = a.red_root or os.environ.get("RED_ROOT")
    if not red_root:
        return _fail("campaign: no output root: give RED_ROOT (the service's, as given to qlcp up) or set $RED_ROOT")
    if not Path(red_root).expanduser().is_dir():
        return _fail(f"{red_root}: output root not found")
    red_root = str(Path(red_root).expanduser())
    names = a.target or campaign_targets(red_root)
    if not names:
        return _fail(f"{red_root}: no reduced night with a target's light curve")
    for name in names:
        res = build_campaign(red_root, name, cfg=cfg)
        print(f"{name}:")
        for kind, path in sorted((k, v) for k, v in res.items() if k != "notes"):
            print(f"  {kind}: {path}")
        for note in res.get("notes", []):
            print(f"  note: {note}")
    return 0


def cmd_update_tables(a) -> int:
    """``qlcp update-tables FILE...``: each file parsed, then copied into QLCP's cache (one line each)."""
    from qlcp.core.runtime import install_table

    for f in a.files:
        kind, dest, what = install_table(f)
        print(f"{kind} ({what}): {f} -> {dest}")
    return 0


def _offline_time() -> None:
    """Astropy offline with the tables it has, whatever the date, before any sub-command
    (``qlcp.core.runtime.offline_time``); its one warning shown on stderr as one line."""
    from qlcp.core.runtime import offline_time

    lg = logging.getLogger("qlcp.time")
    if logging.getLogger().handlers or logging.getLogger("qlcp").handlers or lg.handlers:
        offline_time()
        return
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("qlcp: warning: %(message)s"))
    h.setLevel(logging.WARNING)
    lg.addHandler(h)
    try:
        offline_time()
    finally:
        lg.removeHandler(h)


def _cmd_instruments(a) -> int:
    from qlcp.deployments.instruments_cli import cmd_instruments

    return cmd_instruments(a)


def _cmd_calib(a) -> int:
    from qlcp.deployments.calib_cli import cmd_calib

    return cmd_calib(a)


def _environment_error(e: BaseException) -> bool:
    """Print one line for an OS error of the environment (read-only, full disk, no permission)
    in ``e`` or what it was raised from; ``False`` when ``e`` is something else."""
    from qlcp.core.errors import output_error

    err = output_error(e)
    if err is not None:
        _fail(str(err))
    return err is not None


def cmd_run(a) -> int:
    from qlcp.core.config import parse_set
    from qlcp.core.runsetup import make_config

    overrides = parse_set(a.sets)
    overrides.update({k: v for k, v in (("steps", a.steps), ("obj", a.obj), ("band", a.band)) if v})
    if a.band and "band" in overrides:
        overrides["band"] = [b for item in a.band for b in (item.split(",") if "," in item else [item])]
    if a.refresh:
        overrides["mode"] = ["EXIST_OVER", "MISS_SKIP"]
    if getattr(a, "refresh_field", False):
        overrides["refresh_field"] = True
    cfg = make_config(a.config, **overrides)
    return _reduce(a.raw, a.red, cfg, no_prefect=a.no_prefect, refresh=a.refresh, runner=a.runner,
                   dask_address=a.dask_address)


def prefect_env() -> None:
    """Defaults for running Prefect from the command line (each overridable by the environment).

    * ``PREFECT_HOME``: ``~/.qlcp/prefect`` (the embedded server's SQLite database, logs, profiles)
    * ``QLCP_RESULTS``: ``~/.qlcp/results`` (cached task results: JSON records, never pickles)
    * no telemetry; a patient start-up timeout for the embedded server on small machines
    """
    from qlcp.core.io import qlcp_home

    home = qlcp_home()
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("QLCP_RESULTS", str(home / "results"))
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    for var in ("PREFECT_HOME", "QLCP_RESULTS"):        # Prefect does not create its SQLite's directory
        Path(os.environ[var]).expanduser().mkdir(parents=True, exist_ok=True)


def _preflight(raw, red) -> None:
    """Before starting Prefect: the directories, the output directory writable and not
    locked by another run (:func:`~qlcp.core.runguard.guarded_run`, taken and released),
    so that these stop the command in a second, in one line."""
    from qlcp.core.runguard import guarded_run

    with guarded_run(raw, red):
        pass


class _NoTracebackForQLCPErrors(logging.Filter):
    """Prefect logs a failed flow or task run with its traceback; a QLCP error is one line."""

    def filter(self, record):
        from qlcp.core.errors import QLCPError

        if record.exc_info and isinstance(record.exc_info[1], QLCPError):
            record.exc_info, record.exc_text = None, None
        return True


def _one_line_errors_from_prefect() -> None:
    """Without ``--debug``, Prefect's run loggers show a QLCP error (bad input, an unwritable
    output) as its message, without the traceback; the error line follows."""
    if logging.getLogger("qlcp").isEnabledFor(logging.DEBUG):
        return
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _NoTracebackForQLCPErrors) for f in lg.filters):
            lg.addFilter(_NoTracebackForQLCPErrors())


def _reduce(raw, red, cfg, no_prefect: bool, refresh: bool = False, runner: str = "thread",
            dask_address: str | None = None) -> int:
    t0 = time.perf_counter()
    if no_prefect:
        from qlcp.core.pipeline import run

        summary = run(raw, red, config=cfg).to_dict()
    else:
        prefect_env()
        _preflight(raw, red)
        api = _api_target()
        from qlcp.flows.night import interactive_settings, night_flow, start_workers

        _one_line_errors_from_prefect()
        if runner == "thread":
            start_workers(red, cfg)     # forked now, before Prefect's threads start
        if api is not None:
            _served_results(red, cfg)
        if api is None and not _configured_api():
            from qlcp.deployments.local_server import start_embedded_server

            api = start_embedded_server()   # Prefect's temporary server, ended with this run even on kill -9
        # the flow makes its config from the same files and arguments, so it knows where each value came
        # from (config.yaml, summary.json's settings) and layers an instrument between them, as the plain
        # driver does
        given = dict(config_files=[w for w, _ in cfg._layers if w not in ("argument", "config")],
                     config={k: v for w, d in cfg._layers if w in ("argument", "config") for k, v in d.items()})
        with interactive_settings(), _api_settings(api):
            summary = night_flow(runner, dask_address)(raw_dir=str(Path(raw).resolve()),
                                                       red_dir=str(Path(red).resolve()), refresh=refresh, **given)
    _print_summary(summary, time.perf_counter() - t0)
    return exit_status(summary)


def _served_results(red, cfg) -> None:
    """A run on the ``qlcp up`` server whose output directory is a night of the RED_ROOT it serves
    links its images there too (``$QLCP_RESULTS_URL``), unless a ``results_url`` is set."""
    from qlcp.deployments.local_server import read_record
    from qlcp.deployments.results_server import RESULTS_URL_ENV

    rec = read_record() or {}
    url, root = rec.get("results_url"), rec.get("results_root")
    if cfg.results_url is None and url and root and Path(red).resolve().parent == Path(root):
        os.environ[RESULTS_URL_ENV] = url


def exit_status(summary: dict) -> int:
    """0: every group reduced; 1: a group failed; 4 (:data:`EXIT_NO_TARGET`): reduced, but a group
    has no target (outcome ``no target``); 3 (:data:`EXIT_DEGRADED`): reduced, but without a
    calibration it should have had (the summary's ``degraded``: a bias, dark or flat failed or
    had no usable frames); 1 wins over 4, 4 over 3."""
    if any(g.get("error") for g in summary["groups"]):
        return 1
    if any(g.get("outcome") == "no target" for g in summary["groups"]):
        return EXIT_NO_TARGET
    return EXIT_DEGRADED if summary.get("degraded") else 0


def _api_target() -> str | None:
    """The Prefect API ``qlcp run`` talks to: PREFECT_API_URL (environment or profile) wins; else
    the server ``qlcp up`` recorded in ``$QLCP_HOME/server.json`` when it answers (returned, to be
    set for the run); else None: the run starts Prefect's temporary server
    (:func:`~qlcp.deployments.local_server.start_embedded_server`)."""
    from qlcp.deployments.local_server import running_server

    if _configured_api():
        return None
    api = running_server()
    if api:
        print(f"using the running qlcp server {api}", file=sys.stderr, flush=True)
    else:
        print("starting Prefect's embedded server (qlcp up, or PREFECT_API_URL, to use a running one) ...",
              file=sys.stderr, flush=True)
    return api


def _configured_api() -> bool:
    """Whether PREFECT_API_URL is set (environment or profile)."""
    from prefect.settings import PREFECT_API_URL

    return bool(os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value())


def _api_settings(api: str | None):
    """Prefect settings pointing this process (and the processes it starts, e.g. Dask workers)
    at ``api`` (nothing when None)."""
    import contextlib

    if not api:
        return contextlib.nullcontext()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    os.environ["PREFECT_API_URL"] = api
    return temporary_settings(updates={PREFECT_API_URL: api})


def _print_summary(summary: dict, seconds: float) -> None:
    """The night's summary (:class:`~qlcp.core.summary.NightSummary` as a dict) on the terminal."""
    from qlcp.core.summary import notices

    print(f"night {summary['raw_dir']}: {summary['listing']}")
    for f, why in summary["rejected"]:
        print(f"  rejected {f}: {why}")
    for line in notices(summary):
        print(f"  {line}")
    for kind, m in sorted(summary.get("masters", {}).items()):
        if m.get("source") not in ("tonight", None) and not (kind == "dark" and m.get("source") == "none"):
            why = f": {m['why']}" if m.get("why") else ""
            print(f"  {kind}: {m['path'] or 'none'} ({m['source']}{why})")
    for g in summary["groups"]:
        state = f"FAILED: {g['error']}" if g.get("error") else \
            f"NO TARGET: {g.get('note', '')}" if g.get("outcome") == "no target" else "ok"
        if (g.get("stars") or {}).get("targets"):
            state += f" (target {', '.join(g['stars']['targets'])})"
        print(f"  {g['obj']} {g['band']}: {g['frames']} frames, {g.get('corrected', 0)} corrected - {state}")
        for n in g.get("noise") or []:
            if n.get("aperture") == 0:
                star = n.get("label") or f"{n['role']} {n['k']}"
                print(f"    {star} ({n['role']}): scatter {1e3 * n['achieved']:.2f} mmag "
                      f"(predicted {1e3 * n['predicted']:.2f}){'  NOISY' if n.get('noisy') else ''}")
        for kind in ("lightcurve", "lc_png", "chart"):
            if g["outputs"].get(kind):
                print(f"    {kind}: {g['outputs'][kind]}")
    states: dict = {}
    for c in summary["run"].get("task_states", {}).values():
        for s, n in c.items():
            states[s] = states.get(s, 0) + n
    if states:
        print("  tasks: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
    print(f"outputs in {summary['red_dir']} ({seconds:.1f} s)")


def cmd_simulate(a) -> int:
    from qlcp.core.simulate import simulate_night

    t0 = time.perf_counter()
    sim = simulate_night(a.out, n_frames=a.frames, size=a.size, seed=a.seed, dated=True)
    print(f"raw night: {sim.raw_dir}\ntruth: {sim.truth_dir}\nconfig: {sim.config_path}"
          f"\n({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_demo(a) -> int:
    from qlcp.core.runsetup import make_config
    from qlcp.core.simulate import simulate_night

    work = Path(a.workdir)
    print(f"simulating a {a.frames}-frame night in {work / 'raw'} ...", flush=True)
    print("  (on purpose, its first flat is saturated and its last too faint: the two 'rejected' flat "
          "warnings below are expected)", flush=True)
    sim = simulate_night(work, n_frames=a.frames, size=a.size, seed=1, overwrite=True, dated=True)
    cfg = make_config([sim.config_path], mode=["EXIST_OVER", "MISS_SKIP"])
    rc = _reduce(sim.raw_dir, work / "red", cfg, no_prefect=a.no_prefect)
    red = work / "red"
    lcs = sorted(red.glob("lc_*.png"))
    charts = sorted(red.glob("chart_*.png"))
    for p in lcs:
        print(f"light curve: {p}")
    for p in charts:
        print(f"finding chart: {p}")
    print(f"truth for comparison: {sim.truth_dir}")
    return rc


def cmd_watch(a) -> int:
    prefect_env()
    from qlcp.deployments.sensor import run_watch

    return run_watch(a)


def cmd_serve(a) -> int:
    prefect_env()
    from qlcp.deployments.serve import run_serve

    return run_serve(a)


def cmd_deploy(a) -> int:
    prefect_env()
    from prefect.settings import PREFECT_API_URL

    from qlcp.deployments.serve import deploy_to_pool
    from qlcp.core.errors import ConfigError

    if not PREFECT_API_URL.value():
        raise ConfigError("qlcp deploy: set PREFECT_API_URL to the server the workers poll "
                          "(without it the deployment would go to a temporary server and vanish)")
    dep_id = deploy_to_pool(a.pool, a.config, a.name, frame_workers=a.frame_workers)
    print(f"deployment process-night/{a.name} on work pool {a.pool}: {dep_id}")
    print(f"start workers with: PREFECT_WORKER_QUERY_SECONDS=2 prefect worker start --pool {a.pool} --limit 1"
          + (" (one per core)" if a.frame_workers == 1 else ""))
    return 0


def cmd_up(a) -> int:
    prefect_env()
    from qlcp.deployments.serve import run_up

    return run_up(a)


def main(argv=None) -> int:
    from qlcp.core.errors import QLCPError

    ap = build_parser()
    a = ap.parse_args(argv)
    if not a.cmd:
        ap.print_help()
        return EXIT_BAD_INPUT
    if a.debug:
        logging.getLogger("qlcp").setLevel(logging.DEBUG)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    try:
        _offline_time()
        return {"run": cmd_run, "simulate": cmd_simulate, "demo": cmd_demo, "watch": cmd_watch,
                "serve": cmd_serve, "up": cmd_up, "deploy": cmd_deploy, "calib": _cmd_calib,
                "instruments": _cmd_instruments,
                "campaign": cmd_campaign, "update-tables": cmd_update_tables}[a.cmd](a)
    except QLCPError as e:
        if a.debug:
            raise
        return _fail(str(e))
    except KeyboardInterrupt:
        print("qlcp: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: one line, and where to look
        if a.debug:
            raise
        if _environment_error(e):
            return EXIT_BAD_INPUT
        _fail(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)")
        return 70


if __name__ == "__main__":
    sys.exit(main())
