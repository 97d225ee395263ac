"""Benchmark: a year of nights (the backlog) and dawn with several telescopes.

    python -m bench.backlog --nights 100                 # simulate, then plain, pool 1 and 2 workers, cached
    python -m bench.backlog --nights 12 --only plain,pool2,cached
    python -m bench.backlog --dawn                       # three telescopes' nights at once, 2 workers vs 1

The backlog: ``--nights`` simulated nights (``--frames`` frames of ``--size`` px, 5 bias, 5 flats;
default 30 x 384 px) of ``--fields`` fields seen by one camera (``simulate_night`` with
``field_of``/``pointing``/``detector_seed``), night i observing field i mod fields, each in
``RAW_ROOT/YYYYMMDD`` (the layout ``reprocess`` and the sensor read).  Reduced by

* ``plain``: the plain core (``qlcp.core.pipeline.run``, as ``qlcp run --no-prefect``), night after
  night in one child process, frame workers = all CPUs;
* ``pool1`` / ``pool2``: the ``reprocess`` flow (run here, as the served deployment runs it) fanning
  out to ``process-night/pool`` on a process work pool served by 1 or 2 ``prefect worker start``
  processes (``--limit 1`` each, ``QLCP_WORKERS=1`` when there are 2) against a Prefect server it
  starts (port ``--port``, PREFECT_HOME under ``--workdir``);
* ``cached``: ``reprocess`` again on pool2's outputs and results: nothing changed, so no night gets a
  run (its fingerprint, :mod:`qlcp.core.fingerprint`, equals its last run's: state ``Skipped``);
* ``forced``: the same with ``force=True``: one run per night, every task Cached (the cost before).

Every process uses ``WORKDIR/cache`` for QLCP's IERS cache (``QLCP_CACHE_DIR``), its own.
CPU is the kernel's accounting of the reaped children (workers, their flow-run processes and frame
workers) plus the server's and this process's own CPU over the phase.  Not a test: numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

FIELDS = ("FLDA", "FLDB", "FLDC")
FIRST_NIGHT = dt.date(2025, 1, 1)


# ------------------------------------------------------------------ the nights
def make_backlog(work: Path, n: int, frames: int, size: int, fields: int = 3, camera: int = 7) -> Path:
    """Simulate (once) ``n`` nights under ``work/raw`` (``YYYYMMDD`` each); return that raw root.
    The truth of each night stays in ``work/sim/YYYYMMDD/truth``; ``work/night.yaml`` is the config."""
    from qlcp.core.simulate import simulate_night

    raw_root, sim = work / "raw", work / "sim"
    raw_root.mkdir(parents=True, exist_ok=True)
    t0, made = time.perf_counter(), 0
    for i in range(n):
        date = FIRST_NIGHT + dt.timedelta(days=i)
        name, k = date.strftime("%Y%m%d"), i % fields
        if (raw_root / name / ".complete").is_file():
            continue
        out = sim / name
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(raw_root / name, ignore_errors=True)
        opts = dict(n_frames=frames, size=size, seed=1000 + i, dated=True, night=date.isoformat(),
                    obj=FIELDS[k], n_bias=5, n_flats=5, n_constant=4, detector_seed=camera, wcs=True)
        if i >= fields:         # later nights of a field: its stars, pointed a little elsewhere
            first_date = FIRST_NIGHT + dt.timedelta(days=k)
            first = sim / first_date.strftime("%Y%m%d")
            opts.update(field_of=str(first), pointing=(float((i * 7) % 11 - 5), float((i * 5) % 9 - 4)),
                        **_same_sky(first, first_date, date))
        s = simulate_night(out, **opts)
        s.raw_dir.rename(raw_root / name)
        (raw_root / name / ".complete").touch()
        if not (work / "night.yaml").is_file():
            shutil.copy(s.config_path, work / "night.yaml")
        made += 1
    if made:
        print(f"simulated {made} nights ({frames} frames of {size}^2) in {time.perf_counter() - t0:.0f} s",
              flush=True)
    return raw_root


#: a sidereal day in solar days: a field returns to the same hour angle this much earlier each night
SIDEREAL_DAY = 0.9972695663


def _same_sky(first: Path, first_date: dt.date, date: dt.date) -> dict:
    """Options that put a later night (``date``) of a field on the same sky as its first night (``first``,
    a simulated night's directory, of ``first_date``): its target's RA and Dec, and a start at the same
    sidereal time (so the same airmasses).  Without them each night's default RA is the one rising at
    22:00 local that date, ~1 deg a day further east: the header WCS of the same stars moved by degrees
    from night to night and the field reference placed its comparisons thousands of px away (every
    frame not ok)."""
    import astropy.units as u
    from astropy.time import Time

    truth = json.loads((first / "truth" / "truth.json").read_text())
    days = (date - first_date).days
    start = Time(_first_start(first), scale="utc") + round(days / SIDEREAL_DAY) * SIDEREAL_DAY * u.day
    return dict(target_ra=float(truth["target"]["ra_deg"]), target_dec=float(truth["target"]["dec_deg"]),
                start_utc=start.isot)


def _first_start(night: Path) -> str:
    """DATE-OBS of a simulated night's first science frame (its truth's frames table)."""
    from astropy.table import Table

    return str(Table.read(night / "truth" / "frames.ecsv", format="ascii.ecsv")["date_obs"][0])


def nights_of(raw_root: Path, n: int) -> list[str]:
    return sorted(str(d.resolve()) for d in raw_root.iterdir() if d.is_dir())[:n]


# ------------------------------------------------------------------ accounting
def _proc_cpu(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    """This process and its reaped children (CPU seconds)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _env(work: Path, port: int, **extra) -> dict:
    env = dict(os.environ, PREFECT_HOME=str(work / "prefect"), PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
               DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING",
               PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port),
               PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2", QLCP_CACHE_DIR=str(work / "cache"))
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ------------------------------------------------------------------ plain
def child_plain(nights: list[str], red_root: str, config: str) -> None:
    from bench.bench_pipeline import _run_cpu      # this process, its reaped and live children
    from qlcp.core.pipeline import run
    from qlcp.core.runsetup import make_config

    cfg = make_config([config], scr_log="WARNING")
    per = []
    for n in nights:
        t0, c0 = time.perf_counter(), _run_cpu()
        run(n, str(Path(red_root) / Path(n).name), config=cfg)
        per.append({"night": Path(n).name, "wall": time.perf_counter() - t0, "cpu": _run_cpu() - c0})
    print(json.dumps(per))


def run_plain(work: Path, nights: list[str], red_root: Path) -> dict:
    shutil.rmtree(red_root, ignore_errors=True)
    red_root.mkdir(parents=True)
    env = dict(os.environ, QLCP_RESULTS=str(red_root / ".results"), QLCP_CACHE_DIR=str(work / "cache"))
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "bench.backlog", "--child-plain", json.dumps(nights),
                          str(red_root), str(work / "night.yaml")], cwd=HERE.parent, env=env,
                         stdout=subprocess.PIPE, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if status:
        raise SystemExit("plain run failed")
    per = json.loads(out.strip().splitlines()[-1])
    return {"nights": len(nights), "wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
            "night_wall": sum(x["wall"] for x in per) / len(per), "night_cpu": sum(x["cpu"] for x in per) / len(per),
            "peak_mib": usage.ru_maxrss / 1024}


# ------------------------------------------------------------------ server and pool
class Service:
    """A Prefect server (SQLite under ``work/prefect``), the pool ``bench`` and deployment
    ``process-night/pool`` on it, and workers started and stopped per phase."""

    def __init__(self, work: Path, port: int, query_s: float):
        self.work, self.port, self.query_s = work, port, query_s
        self.env = _env(work, port)
        self.server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                        "--port", str(port), "--no-ui"], env=self.env, start_new_session=True,
                                       stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "a"))
        from qlcp.deployments.serve import wait_healthy

        wait_healthy(self.env["PREFECT_API_URL"], timeout=180)
        os.environ.update({k: self.env[k] for k in ("PREFECT_API_URL", "PREFECT_HOME", "DO_NOT_TRACK",
                                                     "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_LOGGING_LEVEL")})
        from qlcp.deployments.serve import deploy_to_pool

        deploy_to_pool("bench", [str(work / "night.yaml")], name="pool")
        self.workers: list[subprocess.Popen] = []

    def start_workers(self, n: int, frame_workers: int | None, results: Path) -> None:
        env = dict(self.env, QLCP_RESULTS=str(results), PREFECT_WORKER_QUERY_SECONDS=str(self.query_s),
                   PREFECT_WORKER_PREFETCH_SECONDS="5")
        if frame_workers:
            env["QLCP_WORKERS"] = str(frame_workers)
        for i in range(n):
            self.workers.append(subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", "bench", "--type", "process",
                 "--limit", "1", "--name", f"bench-{i}"], env=env, start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=open(self.work / f"worker{i}.log", "a")))
        time.sleep(3)

    def stop_workers(self) -> float:
        """SIGTERM the workers, reap them; their CPU and their flow runs' (s)."""
        cpu = 0.0
        for p in self.workers:
            p.send_signal(signal.SIGTERM)
        for p in self.workers:
            try:
                _, _, u = os.wait4(p.pid, 0)
                cpu += u.ru_utime + u.ru_stime
            except ChildProcessError:
                pass
        self.workers = []
        return cpu

    def close(self) -> None:
        self.stop_workers()
        self.server.send_signal(signal.SIGTERM)          # SIGINT is ignored by a job started with &
        try:
            self.server.wait(30)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()


def child_reprocess(nights: list[str], red_root: str, config: str, force: bool = False) -> None:
    """The reprocess flow, as the served deployment runs it (in its own process)."""
    from qlcp.flows.night import reprocess

    t0 = time.perf_counter()
    res = reprocess(nights=nights, red_root=red_root, config_files=[config], deployment="process-night/pool",
                    force=force)
    print(json.dumps({"wall": time.perf_counter() - t0, "states": res}))


def flow_run_timeline(since: dt.datetime) -> dict:
    """Mean seconds of the process-night flow runs created after ``since``: created -> running (the
    worker's poll, a new Python importing the flow), running -> end (the engine: tasks, artifacts,
    heartbeat join).  Read a page at a time."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterStartTime

    rows, page = [], 200
    with get_client(sync_client=True) as c:
        while True:
            got = c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["process-night"])),
                                   flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),
                                   limit=page, offset=len(rows))
            rows += got
            if len(got) < page:
                break
    rows = [r for r in rows if r.start_time and r.end_time]
    if not rows:
        return {}
    n = len(rows)
    return {"to_running_s": round(sum((r.start_time - r.created).total_seconds() for r in rows) / n, 2),
            "running_s": round(sum((r.end_time - r.start_time).total_seconds() for r in rows) / n, 2)}


def run_pool(svc: Service, nights: list[str], red_root: Path, workers: int, fresh: bool = True,
             force: bool = False) -> dict:
    """``reprocess`` over ``nights`` on ``workers`` pool workers; times, CPU, the nights' task states."""
    if fresh:
        shutil.rmtree(red_root, ignore_errors=True)
    red_root.mkdir(parents=True, exist_ok=True)
    svc.start_workers(workers, 1 if workers > 1 else None, red_root / ".results")
    s0, o0, t0 = _proc_cpu(svc.server.pid), _own_cpu(), time.perf_counter()
    since = dt.datetime.now(dt.timezone.utc)
    p = subprocess.run([sys.executable, "-m", "bench.backlog", "--child-reprocess", json.dumps(nights),
                        str(red_root), str(svc.work / "night.yaml")] + (["--force"] if force else []), cwd=HERE.parent, env=svc.env,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        svc.stop_workers()
        raise SystemExit(f"reprocess failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    own = _own_cpu() - o0               # this process and the reprocess flow's (before the workers are reaped)
    cpu = svc.stop_workers() + own + (_proc_cpu(svc.server.pid) - s0)
    states: dict[str, int] = {}
    tasks: dict[str, int] = {}
    secs = []
    for n in nights:
        st = res["states"].get(n, "missing")
        states[st] = states.get(st, 0) + 1
        sj = Path(red_root) / Path(n).name / "summary.json"
        if sj.is_file() and st != "Skipped":            # a skipped night's summary is an earlier run's
            run = json.loads(sj.read_text()).get("run", {})
            secs.append(run.get("seconds", 0.0))
            for by in (run.get("task_states") or {}).values():
                for k, v in by.items():
                    tasks[k] = tasks.get(k, 0) + v
    return {"nights": len(nights), "workers": workers, "wall": wall, "reprocess_wall": res["wall"], "cpu": cpu,
            "timeline": flow_run_timeline(since),
            "server_cpu": _proc_cpu(svc.server.pid) - s0, "states": states, "tasks": tasks,
            "flow_body_s": sum(secs) / max(1, len(secs))}


# ------------------------------------------------------------------ dawn
DAWN = ({"obj": "TELA", "n_frames": 30, "size": 384, "detector_seed": 11, "telescope": "TEL-A"},
        {"obj": "TELB", "n_frames": 40, "size": 320, "detector_seed": 12, "telescope": "TEL-B"},
        {"obj": "TELC", "n_frames": 24, "size": 448, "detector_seed": 13, "telescope": "TEL-C"})


def make_dawn(work: Path) -> list[str]:
    """Three telescopes' nights of one date, each under its own raw root ``work/dawn/<tel>/raw``."""
    from qlcp.core.simulate import simulate_night

    out = []
    for k, o in enumerate(DAWN):
        root = work / "dawn" / o["obj"]
        night = root / "raw" / "20250301"
        if not (night / ".complete").is_file():
            shutil.rmtree(root, ignore_errors=True)
            simulate_night(root, seed=500 + k, dated=True, night="2025-03-01", n_bias=5, n_flats=5, n_constant=4,
                           wcs=True, **o)
            (night / ".complete").touch()
        out.append(str(night.resolve()))
    return out


def run_dawn(svc: Service, nights: list[str], red_root: Path, workers: int) -> dict:
    """The three nights submitted at once (as three sensors would at dawn); each night's wait and end."""
    from prefect import get_client
    from prefect.deployments import run_deployment

    shutil.rmtree(red_root, ignore_errors=True)
    red_root.mkdir(parents=True)
    svc.start_workers(workers, 1 if workers > 1 else None, red_root / ".results")
    t0 = time.perf_counter()
    runs = [run_deployment("process-night/pool", timeout=0, tags=["dawn"],
                           parameters={"raw_dir": n, "red_dir": str(red_root / Path(n).parents[1].name)})
            for n in nights]
    ends = {}
    with get_client(sync_client=True) as c:
        while len(ends) < len(runs):
            for r in runs:
                if r.id not in ends:
                    fr = c.read_flow_run(r.id)
                    if fr.state.is_final():
                        ends[r.id] = (fr.state.name, (fr.start_time - fr.created).total_seconds(),
                                      time.perf_counter() - t0)
            time.sleep(0.5)
    wall = time.perf_counter() - t0
    svc.stop_workers()
    return {"workers": workers, "wall": wall,
            "nights": [{"night": Path(n).parents[1].name, "state": ends[r.id][0], "waited_s": ends[r.id][1],
                        "done_at_s": ends[r.id][2]} for n, r in zip(nights, runs)]}


# ------------------------------------------------------------------ main
def _fmt(label: str, r: dict, plain: dict | None = None) -> str:
    n = r["nights"] if isinstance(r["nights"], int) else len(r["nights"])
    s = (f"{label:8s} {n:4d} nights  wall {r['wall']:7.1f} s  {3600 * n / r['wall']:7.0f} nights/h  "
         f"{r['wall'] / n:6.2f} s/night  CPU {r['cpu'] / n:6.2f} s/night")
    if plain:
        s += f"  (x{r['cpu'] / plain['cpu']:.2f} CPU, x{r['wall'] / plain['wall']:.2f} wall of plain)"
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/qlcp-backlog", type=Path)
    ap.add_argument("--nights", type=int, default=12)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--fields", type=int, default=3)
    ap.add_argument("--port", type=int, default=4310)
    ap.add_argument("--query-seconds", type=float, default=1.0, help="PREFECT_WORKER_QUERY_SECONDS of the workers")
    ap.add_argument("--only", default="plain,pool1,pool2,cached", help="phases, comma-separated (also: forced, "
                    "cached with force=True: a run per night, every task Cached)")
    ap.add_argument("--dawn", action="store_true", help="the dawn scenario instead of the backlog")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--child-plain", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--child-reprocess", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--force", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child_plain:
        child_plain(json.loads(a.child_plain[0]), a.child_plain[1], a.child_plain[2])
        return 0
    if a.child_reprocess:
        child_reprocess(json.loads(a.child_reprocess[0]), a.child_reprocess[1], a.child_reprocess[2], a.force)
        return 0
    work = a.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"args": {k: str(v) for k, v in vars(a).items() if not k.startswith("child")}}
    if a.dawn:
        nights = make_dawn(work)
        if not (work / "night.yaml").is_file():
            shutil.copy(work / "dawn" / DAWN[0]["obj"] / "night.yaml", work / "night.yaml")
        shutil.rmtree(work / "prefect", ignore_errors=True)
        svc = Service(work, a.port, a.query_seconds)
        try:
            seq = run_dawn(svc, nights, work / "red-dawn1", 1)
            par = run_dawn(svc, nights, work / "red-dawn2", 2)
        finally:
            svc.close()
        out.update(sequential=seq, concurrent=par)
        for r in (seq, par):
            print(f"dawn, {r['workers']} worker(s): wall {r['wall']:.1f} s; " + "; ".join(
                f"{x['night']} {x['state']} waited {x['waited_s']:.1f} s, done at {x['done_at_s']:.1f} s"
                for x in r["nights"]), flush=True)
        print(f"dawn: 2 workers / sequential = {par['wall'] / seq['wall']:.2f}")
    else:
        raw_root = make_backlog(work, a.nights, a.frames, a.size, a.fields)
        nights = nights_of(raw_root, a.nights)
        phases = a.only.split(",")
        plain = None
        if "plain" in phases:
            plain = out["plain"] = run_plain(work, nights, work / "red-plain")
            print(_fmt("plain", plain), flush=True)
        if any(p.startswith("pool") or p in ("cached", "forced") for p in phases):
            shutil.rmtree(work / "prefect", ignore_errors=True)
            svc = Service(work, a.port, a.query_seconds)
            try:
                for p in phases:
                    if p in ("pool1", "pool2"):
                        r = out[p] = run_pool(svc, nights, work / f"red-{p}", int(p[-1]))
                    elif p in ("cached", "forced"):
                        r = out[p] = run_pool(svc, nights, work / "red-pool2", 2, fresh=False, force=p == "forced")
                    else:
                        continue
                    print(_fmt(p, r, plain) + f"  states {r['states']} tasks {r['tasks']}  "
                          f"flow body {r['flow_body_s']:.2f} s/night  server CPU {r['server_cpu']:.1f} s  "
                          f"runs {r['timeline']}", flush=True)
            finally:
                svc.close()
        if "pool1" in out and "pool2" in out:
            print(f"speed-up 1 -> 2 workers: x{out['pool1']['wall'] / out['pool2']['wall']:.2f}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
