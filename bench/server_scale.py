"""Benchmark: the Prefect database per night, and the UI's API latency after a thousand nights.

    python -m bench.server_scale --work /tmp/scale                        # SQLite, 3 nights, 1,000 runs
    python -m bench.server_scale --work /tmp/scale --pg postgresql://postgres@127.0.0.1:5432
    python -m bench.server_scale --work /tmp/scale --nights 3 --runs 1000 --port 4410

What it does, against a real ``prefect server start`` of its own (``--port``, ``PREFECT_HOME`` under
``--work``; with ``--pg`` a fresh PostgreSQL database on that server, dropped at the end):

1. **Footprint.**  ``--nights`` simulated nights (``qlcp simulate``, seeds 1..N, ``--frames`` frames of
   ``--size`` px) are reduced one after another by ``qlcp run`` through the flow, as the service does
   (RED_ROOT/<night>).  After each, rows and bytes of Prefect's tables (table + its indexes: SQLite
   ``dbstat`` pages, PostgreSQL ``pg_total_relation_size``) are read; the footprint of a night is the
   mean difference over nights 2..N (the first night also creates the flows and one-off rows).  Also
   per night: log rows by level, artifact bytes by type.
2. **Latency.**  The database of those N nights is copied (a second server on ``--port``+1: the
   near-empty one); the first then receives ``--runs`` night runs in all.  The API calls the UI
   makes (read from the UI's bundle, ``prefect/server/ui-v2``) for the flow-runs list, one night's
   run page (run, graph, logs, task runs, artifacts, events) and the artifacts list are timed on both
   servers alternately, ``--repeat`` times each (median wall ms, the server process's CPU per call,
   and the full/empty ratios).  The extra runs are **replays of the last real night's records** (its
   flow runs, task runs, states, logs, artifacts; events only for the newest 7 days, Prefect's event
   retention), copied row by row with new ids, the night name changed and times moved one day back
   per copy: the rows, sizes and indexes of real nights, in seconds instead of hours, without
   reducing frames.

Not a test: numbers, no pass/fail.  Results go to ``--work``/server_scale-<db>.json and stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

TABLES = ("flow_run", "flow_run_state", "task_run", "task_run_state", "log", "artifact", "artifact_collection",
          "events", "event_resources")
EVENT_DAYS = 7           # Prefect's default events retention (server.events.retention_period)
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# ------------------------------------------------------------------ the server and its database
class Server:
    """``prefect server start`` on 127.0.0.1:``port`` with its own PREFECT_HOME (and database)."""

    def __init__(self, work: Path, port: int, db_url: str | None = None):
        self.work, self.port, self.db_url = work, port, db_url
        self.api = f"http://127.0.0.1:{port}/api"
        self.env = dict(os.environ, PREFECT_HOME=str(work / "home"), DO_NOT_TRACK="1",
                        PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_API_URL=self.api,
                        PREFECT_API_URL=self.api, QLCP_RESULTS=str(work / "results"))
        if db_url:
            self.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = db_url
        self.proc = None

    def __enter__(self):
        log = open(self.work / f"server-{self.port}.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                      "--port", str(self.port)], env=self.env, stdout=log, stderr=log,
                                     start_new_session=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 180:
            if self.proc.poll() is not None:
                raise SystemExit(f"server_scale: prefect server exited ({self.work}/server-{self.port}.log)")
            try:
                urllib.request.urlopen(self.api + "/health", timeout=2).read()
                return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise SystemExit("server_scale: prefect server not healthy after 180 s")

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def cpu(self) -> float:
        """CPU seconds of the server process so far (user + system)."""
        f = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            raw = r.read()
        return json.loads(raw) if raw else None, len(raw)


class Database:
    """Row counts, bytes and plain queries on the server's database (SQLite file or PostgreSQL)."""

    def __init__(self, sqlite_path: Path | None = None, pg_dsn: str | None = None):
        self.sqlite_path, self.pg_dsn = sqlite_path, pg_dsn

    def query(self, sql: str) -> list[tuple]:
        if self.sqlite_path:
            c = sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=30)
            try:
                return c.execute(sql).fetchall()
            finally:
                c.close()
        import asyncpg

        async def run():
            c = await asyncpg.connect(self.pg_dsn)
            try:
                return [tuple(r) for r in await c.fetch(sql)]
            finally:
                await c.close()
        return asyncio.run(run())

    def stats(self) -> dict:
        """{table: [rows, bytes]} (bytes: the table and its indexes)."""
        out = {t: [self.query(f'SELECT count(*) FROM "{t}"')[0][0], 0] for t in TABLES}
        if self.sqlite_path:
            for tbl, size in self.query("SELECT m.tbl_name, sum(d.pgsize) FROM dbstat d JOIN sqlite_master m "
                                        "ON d.name = m.name GROUP BY m.tbl_name"):
                if tbl in out:
                    out[tbl][1] = size
        else:
            for t in TABLES:
                out[t][1] = self.query(f"SELECT pg_total_relation_size('public.\"{t}\"')")[0][0]
        return out

    def total_bytes(self) -> int:
        if self.sqlite_path:
            return sum(Path(str(self.sqlite_path) + s).stat().st_size for s in ("", "-wal")
                       if Path(str(self.sqlite_path) + s).exists())
        return self.query("SELECT pg_database_size(current_database())")[0][0]


def pg_create(admin_dsn: str, name: str, drop: bool = False, template: str | None = None, jit: bool = False) -> None:
    """(Re)create database ``name`` on a PostgreSQL server (a copy of ``template``), or drop it."""
    import asyncpg

    async def run():
        c = await asyncpg.connect(admin_dsn)
        try:
            await c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            if not drop:
                await c.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
                if not jit:     # PostgreSQL's JIT compiles the run graph's query for ~2.4 s (1 ms without)
                    await c.execute(f'ALTER DATABASE "{name}" SET jit = off')
        finally:
            await c.close()
    asyncio.run(run())


# ------------------------------------------------------------------ 1. footprint of real nights
def qlcp(*args, env=None) -> None:
    r = subprocess.run([sys.executable, "-m", "qlcp.deployments.cli", *args], env=env, capture_output=True, text=True)
    if r.returncode not in (0, 3, 4):
        raise SystemExit(f"server_scale: qlcp {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-400:]}")


def night_detail(db: Database, night: str) -> dict:
    """Log rows by level and artifact bytes by type of the night's flow runs (the night and its subflows)."""
    runs = [r[0] for r in db.query(f"SELECT id FROM flow_run WHERE name = 'night-{night}'")]
    ids = set(runs)
    ids |= {r[0] for r in db.query("SELECT id FROM flow_run WHERE parent_task_run_id IN (SELECT id FROM task_run "
                                   "WHERE flow_run_id IN (" + ",".join(f"'{i}'" for i in runs) + "))")} if runs else set()
    inn = ",".join(f"'{i}'" for i in ids) or "''"
    levels = {str(lv): n for lv, n in db.query(f"SELECT level, count(*) FROM log WHERE flow_run_id IN ({inn}) "
                                               "GROUP BY level")}
    arts = {t: [n, b] for t, n, b in db.query(f"SELECT type, count(*), sum(length(coalesce(CAST(data AS TEXT), ''))) "
                                              f"FROM artifact WHERE flow_run_id IN ({inn}) GROUP BY type")}
    return {"flow_runs": len(ids), "log_levels": levels, "artifacts": arts}


def footprint(a, srv: Server, db: Database) -> dict:
    raw_root, red_root = a.work / "raw", srv.work / "red"      # raw shared, outputs per database
    raw_root.mkdir(exist_ok=True)
    red_root.mkdir(exist_ok=True)
    series, details, cpu = [db.stats()], {}, []
    base = dt.date(2024, 6, 6)
    for i in range(a.nights):
        night = (base + dt.timedelta(days=i)).strftime("%Y%m%d")
        sim = a.work / f"sim{i + 1}"
        if not (sim / "night.yaml").is_file():
            qlcp("simulate", str(sim), "--frames", str(a.frames), "--size", str(a.size), "--seed", str(i + 1))
        if not (raw_root / night).is_dir():
            shutil.move(str(next((sim / "raw").iterdir())), raw_root / night)
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        qlcp("run", str(raw_root / night), str(red_root / night), "--config", str(sim / "night.yaml"), env=srv.env)
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(round(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime, 2))
        time.sleep(4)           # logs are shipped every 2 s, events persisted by the server's services
        series.append(db.stats())
        details[night] = night_detail(db, night)
        print(f"night {night}: {details[night]}", flush=True)
    per = {}
    n = max(1, len(series) - 2)
    for t in TABLES:
        last = series[-1][t]
        first = series[1][t] if len(series) > 2 else series[0][t]
        per[t] = {"rows": round((last[0] - first[0]) / n, 1), "bytes": round((last[1] - first[1]) / n)}
    per["total"] = {"rows": round(sum(v["rows"] for v in per.values()), 1),
                    "bytes": sum(v["bytes"] for v in per.values())}
    return {"nights": a.nights, "frames": a.frames, "size": a.size, "per_night": per, "detail": details,
            "series": series, "run_cpu_s": cpu, "database_bytes": db.total_bytes()}


# ------------------------------------------------------------------ 2. the UI's API calls
def ui_calls(srv: Server, run_id: str) -> dict:
    """name -> (method, path, body): what the UI asks for on its three main pages."""
    now = dt.datetime.now(dt.timezone.utc)
    week = (now - dt.timedelta(days=7)).isoformat()
    fr, _ = srv.call("GET", f"/flow_runs/{run_id}")
    page, _ = srv.call("POST", "/flow_runs/paginate", {"page": 1, "limit": 10, "sort": "START_TIME_DESC"})
    ids = [r["id"] for r in page["results"]]
    since = fr.get("start_time") or fr["expected_start_time"]
    until = fr.get("end_time") or now.isoformat()
    one = {"id": {"any_": [run_id]}}
    return {
        "runs: flow_runs/paginate": ("POST", "/flow_runs/paginate", {"page": 1, "limit": 10, "sort": "START_TIME_DESC"}),
        "runs: flow_runs/count": ("POST", "/flow_runs/count", {}),
        "runs: ui/flow_runs/history (7 d)": ("POST", "/ui/flow_runs/history",
                                             {"sort": "EXPECTED_START_TIME_DESC", "limit": 1000, "offset": 0,
                                              "flow_runs": {"expected_start_time": {"after_": week}}}),
        "runs: ui/flow_runs/count-task-runs": ("POST", "/ui/flow_runs/count-task-runs", {"flow_run_ids": ids}),
        "runs: task_runs/paginate": ("POST", "/task_runs/paginate",
                                     {"page": 1, "limit": 10, "sort": "EXPECTED_START_TIME_DESC"}),
        "run: flow_runs/{id}": ("GET", f"/flow_runs/{run_id}", None),
        "run: flow_runs/{id}/graph-v2": ("GET", f"/flow_runs/{run_id}/graph-v2", None),
        "run: logs/filter": ("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}},
                                                       "sort": "TIMESTAMP_ASC", "offset": 0, "limit": 200}),
        "run: task_runs/paginate": ("POST", "/task_runs/paginate", {"page": 1, "limit": 50, "flow_runs": one,
                                                                    "sort": "EXPECTED_START_TIME_DESC"}),
        "run: artifacts/filter": ("POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}},
                                                                "sort": "ID_DESC"}),
        "run: events/filter": ("POST", "/events/filter", {"filter": {"any_resource": {"id": [f"prefect.flow-run.{run_id}"]},
                                                                     "occurred": {"since": since, "until": until}},
                                                          "limit": 50}),
        "artifacts: artifacts/latest/filter": ("POST", "/artifacts/latest/filter", {"offset": 0, "sort": "ID_DESC",
                                                                                    "limit": 50}),
        "artifacts: artifacts/latest/count": ("POST", "/artifacts/latest/count", {}),
    }


def latency(full: Server, empty: Server, run_id: str, repeat: int) -> dict:
    """Each UI call on the full and the near-empty server, alternately (same moment, same load):
    median wall ms, server CPU ms per call, response bytes, and the full/empty ratios."""
    calls = ui_calls(full, run_id)
    out = {}
    for name, (m, p, b) in calls.items():
        res = {}
        for srv in (full, empty):
            srv.call(m, p, b)                               # warm
            res[srv] = {"wall": [], "cpu": 0.0, "bytes": 0}
        for i in range(repeat):
            for srv in ((full, empty) if i % 2 == 0 else (empty, full)):      # neither always first
                c0, t0 = srv.cpu(), time.perf_counter()
                _, res[srv]["bytes"] = srv.call(m, p, b)
                res[srv]["wall"].append(time.perf_counter() - t0)
                res[srv]["cpu"] += srv.cpu() - c0
        row = {}
        for tag, srv in (("full", full), ("empty", empty)):
            row[tag] = {"ms": round(1e3 * statistics.median(res[srv]["wall"]), 1),
                        "server_cpu_ms": round(1e3 * res[srv]["cpu"] / repeat, 1), "bytes": res[srv]["bytes"]}
        row["ratio_ms"] = round(row["full"]["ms"] / max(row["empty"]["ms"], 1e-3), 2)
        row["ratio_cpu"] = round(row["full"]["server_cpu_ms"] / max(row["empty"]["server_cpu_ms"], 1e-3), 2)
        out[name] = row
    return out


# ------------------------------------------------------------------ replaying a night's records
async def replay(db_url: str, night: str, copies: int, start: int = 1, batch: int = 50) -> float:
    """Copy the records of night ``night`` (its flow run and subflows) ``copies`` times with new ids,
    the night name of day -k and all times moved k days back (k = start .. start+copies-1)."""
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    from prefect.server.database import orm_models

    T = orm_models.Base.metadata.tables
    eng = create_async_engine(db_url)
    t0 = time.monotonic()
    async with eng.begin() as c:
        async def rows(t, cond):
            return [dict(r._mapping) for r in (await c.execute(sa.select(T[t]).where(cond))).all()]
        fr = await rows("flow_run", T["flow_run"].c.name == f"night-{night}")
        frs = list(fr)
        trs = await rows("task_run", T["task_run"].c.flow_run_id.in_([r["id"] for r in fr]))
        frs += await rows("flow_run", T["flow_run"].c.parent_task_run_id.in_([r["id"] for r in trs]))
        fr_ids = [r["id"] for r in frs]
        trs = await rows("task_run", T["task_run"].c.flow_run_id.in_(fr_ids))
        tpl = {"flow_run": frs, "task_run": trs,
               "flow_run_state": await rows("flow_run_state", T["flow_run_state"].c.flow_run_id.in_(fr_ids)),
               "task_run_state": await rows("task_run_state",
                                            T["task_run_state"].c.task_run_id.in_([r["id"] for r in trs])),
               "log": await rows("log", T["log"].c.flow_run_id.in_(fr_ids)),
               "artifact": await rows("artifact", T["artifact"].c.flow_run_id.in_(fr_ids))}
        keys = [r["key"] for r in tpl["artifact"] if r["key"] and night in r["key"]]
        tpl["artifact_collection"] = await rows("artifact_collection", T["artifact_collection"].c.key.in_(keys))
        res = [f"prefect.flow-run.{i}" for i in fr_ids] + [f"prefect.task-run.{r['id']}" for r in trs]
        ev_ids = [r[0] for r in (await c.execute(sa.select(T["event_resources"].c.event_id).where(
            T["event_resources"].c.resource_id.in_(res)))).all()]
        tpl["events"] = await rows("events", T["events"].c.id.in_(ev_ids))
        tpl["event_resources"] = await rows("event_resources", T["event_resources"].c.event_id.in_(ev_ids))
    owned = {r["id"] for rs in tpl.values() for r in rs}
    day0 = dt.datetime.strptime(night, "%Y%m%d")
    order = ("flow_run", "task_run", "flow_run_state", "task_run_state", "log", "artifact", "artifact_collection",
             "events", "event_resources")

    def copy(k: int) -> dict:
        idmap = {i: uuid.uuid4() for i in owned}
        smap = {str(i): str(j) for i, j in idmap.items()}
        shift = dt.timedelta(days=k)
        name = (day0 - shift).strftime("%Y%m%d")

        def fix(v):
            if isinstance(v, uuid.UUID):
                return idmap.get(v, v)
            if isinstance(v, dt.datetime):
                return v - shift
            if isinstance(v, str):
                return UUID_RE.sub(lambda m: smap.get(m.group(), m.group()), v).replace(night, name)
            if isinstance(v, dict):
                return {fix(x): fix(y) for x, y in v.items()}
            if isinstance(v, list):
                return [fix(x) for x in v]
            if hasattr(v, "model_dump"):                  # pydantic values of JSON columns (task inputs)
                return type(v).model_validate(fix(v.model_dump()))
            return v
        out = {}
        for t in order:
            if t in ("events", "event_resources") and k >= EVENT_DAYS:
                continue
            out[t] = [{c: fix(v) for c, v in r.items()} for r in tpl[t]]
        links = [(r["id"], r.get("state_id"), r.get("parent_task_run_id"), r["updated"]) for r in out["flow_run"]]
        tlinks = [(r["id"], r["state_id"], r["updated"]) for r in out["task_run"]]
        for r in out["flow_run"]:
            r["state_id"] = r["parent_task_run_id"] = None
        for r in out["task_run"]:
            r["state_id"] = None
        out["_links"] = (links, tlinks)
        return out

    for b0 in range(start, start + copies, batch):
        ks = range(b0, min(b0 + batch, start + copies))
        cps = [copy(k) for k in ks]
        async with eng.begin() as c:
            for t in order:
                rs = [r for cp in cps for r in cp.get(t, [])]
                if rs:
                    await c.execute(T[t].insert(), rs)
            fru = T["flow_run"].update().where(T["flow_run"].c.id == sa.bindparam("b_id")).values(
                state_id=sa.bindparam("b_state"), parent_task_run_id=sa.bindparam("b_parent"),
                updated=sa.bindparam("b_upd"))
            await c.execute(fru, [{"b_id": i, "b_state": s, "b_parent": p, "b_upd": u}
                                  for cp in cps for i, s, p, u in cp["_links"][0]])
            tru = T["task_run"].update().where(T["task_run"].c.id == sa.bindparam("b_id")).values(
                state_id=sa.bindparam("b_state"), updated=sa.bindparam("b_upd"))
            await c.execute(tru, [{"b_id": i, "b_state": s, "b_upd": u} for cp in cps for i, s, u in cp["_links"][1]])
    await eng.dispose()
    return time.monotonic() - t0


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.server_scale", description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="work directory (nights, server home, results)")
    ap.add_argument("--pg", metavar="DSN", help="PostgreSQL server, e.g. postgresql://postgres@127.0.0.1:5432 "
                                                "(a database qlcp_scale_<port> is created there and dropped)")
    ap.add_argument("--port", type=int, default=4410, help="port of the Prefect server started here (and port+1: "
                                                           "its near-empty twin)")
    ap.add_argument("--nights", type=int, default=3, help="real simulated nights reduced through the flow")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=1000, help="night runs in the database for the second latency")
    ap.add_argument("--repeat", type=int, default=15, help="timed calls per API call")
    ap.add_argument("--pg-jit", action="store_true", help="leave PostgreSQL's JIT on for Prefect's database (by "
                                                           "default it is turned off, as the service should)")
    ap.add_argument("--keep", action="store_true", help="keep the database (PostgreSQL) after the run")
    a = ap.parse_args(argv)
    a.work = a.work.resolve()
    kind = "postgresql" if a.pg else "sqlite"
    srv_work = a.work / kind
    shutil.rmtree(srv_work, ignore_errors=True)
    srv_work.mkdir(parents=True)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.pg:
        name = f"qlcp_scale_{a.port}"
        pg_create(a.pg.rstrip("/") + "/postgres", name, jit=a.pg_jit)
        dsn = a.pg.rstrip("/") + "/" + name
        db_url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
        db = Database(pg_dsn=dsn)
    else:
        db_url = None
        db = Database(sqlite_path=srv_work / "home" / "prefect.db")
    result = {"db": kind}
    empty_work = a.work / f"{kind}-empty"
    shutil.rmtree(empty_work, ignore_errors=True)
    try:
        with Server(srv_work, a.port, db_url) as srv:
            result["footprint"] = footprint(a, srv, db)
        # the near-empty twin: the same N real nights, served next to the full one
        if a.pg:
            pg_create(a.pg.rstrip("/") + "/postgres", name + "_empty", template=name, jit=a.pg_jit)
            empty_url = db_url + "_empty"
            empty_work.mkdir(parents=True)
        else:
            shutil.copytree(srv_work / "home", empty_work / "home")
            empty_url = None
        last = (dt.date(2024, 6, 6) + dt.timedelta(days=a.nights - 1)).strftime("%Y%m%d")
        run_id = str(db.query(f"SELECT id FROM flow_run WHERE name = 'night-{last}'")[0][0])
        with Server(srv_work, a.port, db_url) as full, Server(empty_work, a.port + 1, empty_url) as empty:
            result["runs_empty"] = db.query("SELECT count(*) FROM flow_run WHERE name LIKE 'night-%'")[0][0]
            extra = a.runs - result["runs_empty"]
            if extra > 0:
                url = db_url or f"sqlite+aiosqlite:///{db.sqlite_path}"
                result["replay_seconds"] = round(asyncio.run(replay(url, last, extra, start=a.nights)), 1)
            if a.pg:        # autovacuum analyzes a table that grows night by night; a bulk copy needs it now
                db.query("ANALYZE")
            result["runs_full"] = db.query("SELECT count(*) FROM flow_run WHERE name LIKE 'night-%'")[0][0]
            result["stats_full"] = db.stats()
            result["database_bytes_full"] = db.total_bytes()
            result["latency"] = latency(full, empty, run_id, a.repeat)
    finally:
        if a.pg and not a.keep:
            for n in (name, name + "_empty"):
                pg_create(a.pg.rstrip("/") + "/postgres", n, drop=True)
    out = a.work / f"server_scale-{kind}.json"
    out.write_text(json.dumps(result, indent=1, default=str))
    report(result)
    print(f"written: {out}")
    return 0


def report(r: dict) -> None:
    fp = r["footprint"]
    print(f"\n{r['db']}: per night ({fp['nights']} nights of {fp['frames']} frames {fp['size']} px, "
          "mean of nights 2..N)")
    print(f"{'table':22s} {'rows':>8s} {'KB':>9s}")
    for t, v in fp["per_night"].items():
        print(f"{t:22s} {v['rows']:8.1f} {v['bytes'] / 1024:9.1f}")
    print(f"\nAPI latency: median ms (server CPU ms per call), {r['runs_empty']} -> {r['runs_full']} night runs, "
          "calls alternating between the two servers")
    for name, x in r["latency"].items():
        e, f = x["empty"], x["full"]
        print(f"{name:40s} {e['ms']:7.1f} ({e['server_cpu_ms']:6.1f}) -> {f['ms']:7.1f} ({f['server_cpu_ms']:6.1f})"
              f"  x{x['ratio_ms']:4.2f} (cpu x{x['ratio_cpu']:4.2f})  {f['bytes']} B")

if __name__ == "__main__":
    sys.exit(main())
