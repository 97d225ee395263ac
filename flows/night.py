"""The night flow and the reprocessing flow.

``process_night`` runs every requested step of one night as Prefect tasks
(:mod:`qlcp.tasks.steps`): calibration per band, then the frame-level work in
chunks of frames, stage by stage with every (object, band) group of the night
in parallel.  A failing group is recorded and the others go on.  At the end it
publishes artifacts (:mod:`qlcp.flows.artifacts`: per-frame quality table, markdown summary, light-curve
image, and a progress bar that advanced during the night) under keys stable per
night/object/band, so reruns add versions rather than clutter.  ``reprocess`` and ``dawn_sweep`` run it
for many nights (finding them and following a batch of runs: :mod:`qlcp.flows.batch`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from prefect import get_run_logger
from prefect.context import FlowRunContext
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from qlcp.core import fingerprint as night_fp
from qlcp.core import parallel
from qlcp.core import steps as core
from qlcp.core.errors import QLCPError
from qlcp.core.nightname import night_name
from qlcp.core.listing import raw_identities
from qlcp.core.products import product_path
from qlcp.core.runsetup import for_night, make_config, write_effective_config
from qlcp.core.runtime import configure_run
from qlcp.core.walk import NightWalk
from qlcp.flows.artifacts import NightProgress, publish_artifacts
from qlcp.flows.batch import find_nights, red_for, submit_runs, wait_runs
from qlcp.flows.campaign import campaign
from qlcp.flows.guard import guarded_night, in_run_thread, open_night, stop_on_environment
from qlcp.flows.params import json_params_flow
from qlcp.tasks import steps as T
from qlcp.tasks.common import (bridge_logging, content_files, fingerprint_files, results_dir, set_progress_hook,
                               unit_frames, unit_key)

log = logging.getLogger("qlcp.flows")

#: frames per correction / photometry task when tasks run in other processes or on other
#: machines (a Dask task runner): large enough that Prefect's per-task cost (~10-30 ms)
#: is small against the science (~0.03-0.1 s per frame).  With the default thread runner
#: a group is one task: its frames already spread over this machine's worker processes,
#: and one task measures the group's reference frame once and follows every frame from
#: the one before (:mod:`qlcp.core.photometry.forced`)
DEFAULT_CHUNK = 100


class _Runner:
    """Submits tasks, keeps their states, reruns a Cached task whose outputs are gone."""

    def __init__(self, refresh: bool, quoted: bool = False):
        self.refresh = refresh
        self.quoted = quoted            # the thread task runner: big parameters in quote (_quoted)
        self.states: dict[str, dict[str, int]] = {}
        self.by_label: dict[str, str] = {}

    def submit(self, task, label: str, **kw):
        # result storage resolved per run (QLCP_RESULTS may be set after import)
        t = task.with_options(refresh_cache=self.refresh, result_storage=results_dir())
        fut = t.submit(**self._params(kw))
        return (task, label, kw, fut)

    def result(self, item):
        task, label, kw, fut = item
        fut.wait()
        state = fut.state
        if state.is_failed():
            self._count(task.name, label, "Failed")
            return None, state
        res = fut.result()
        if state.name == "Cached" and not all(Path(p).exists() for p in res.get("outputs", []) if p):
            log.info("%s: cached result but outputs are missing: recomputing", label)
            state = task.with_options(refresh_cache=True, result_storage=results_dir())(**self._params(kw),
                                                                                        return_state=True)
            if state.is_failed():
                self._count(task.name, label, "Failed")
                return None, state
            res = state.result()
        self._count(task.name, label, state.name)
        return res, state

    def _params(self, kw: dict) -> dict:
        return _quoted(kw) if self.quoted else kw

    def _count(self, name, label, state_name):
        self.states.setdefault(name, {}).setdefault(state_name, 0)
        self.states[name][state_name] += 1
        self.by_label[label] = state_name


def _quoted(kw: dict) -> dict:
    """Task parameters with the large ones (a unit's file lists, the config) in Prefect's ``quote``:
    passed as they are, not walked item by item looking for futures, twice per task run (~5-10 ms
    of the flow's CPU for a unit of 200 frames).  QLCP passes results between tasks itself, never
    as futures.  For the thread task runner only: under prefect-dask a quoted value reached the
    task and its cache key as a tuple."""
    return {k: quote(v) if isinstance(v, (dict, list)) else v for k, v in kw.items()}


def _error(state) -> str:
    try:
        state.result()
    except Exception as e:  # the task's exception
        return f"{type(e).__name__}: {e}" if not isinstance(e, QLCPError) else str(e)
    return state.message or "failed"


def run_labels(raw_dir: str, cfg, objs=None, bands=None) -> tuple[str, list[str]]:
    """Flow-run name and tags of a night: ``night-20240606[-obj...][-band...]`` and
    ``night:20240606``, ``obj:...``, ``band:...``.

    Parameters
    ----------
    raw_dir : str
        The night's raw directory (its name, or its evening date when generic:
        :func:`qlcp.core.nightname.night_name`).
    cfg : Config
        Its config; ``cfg.obj`` / ``cfg.band`` (a restricted run) go into the name.
    objs, bands : list of str, optional
        Objects and bands for the tags (default: ``cfg.obj``, ``cfg.band``).
    """
    night = night_name(raw_dir, cfg)
    name = "-".join(["night", night, *(cfg.obj or []), *(cfg.band or [])])
    tags = [f"night:{night}", *(f"obj:{o}" for o in (objs if objs is not None else cfg.obj or [])),
            *(f"band:{b}" for b in (bands if bands is not None else cfg.band or []))]
    return name, tags


def _flow_run_name() -> str:
    """Name of a ``process-night`` flow run, from its parameters (any caller: CLI, deployment, UI)."""
    from prefect.runtime import flow_run

    p = dict(flow_run.parameters or {})
    try:
        given = {k: p.get(k) for k in ("steps", "obj", "band") if p.get(k) is not None}
        cfg = make_config(p.get("config_files"), **{**(p.get("config") or {}), **given})
        return run_labels(str(p["raw_dir"]), cfg)[0]
    except Exception as e:  # a bad config fails the run itself, with its message; the name must not
        log.debug("flow-run name from the directory only: %s", e)
        return "night-" + Path(str(p.get("raw_dir", "unknown"))).name


def _tag_run(walk: NightWalk) -> None:
    """Add ``night:``, ``obj:``, ``band:`` tags (the night's groups) to this flow run."""
    from prefect import get_client
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    groups = list(walk.groups)
    _, tags = run_labels(str(walk.raw), walk.cfg, sorted({o for o, _ in groups}), sorted({b for _, b in groups}))
    try:
        with get_client(sync_client=True) as c:
            old = list(c.read_flow_run(ctx.flow_run.id).tags or [])
            c.update_flow_run(ctx.flow_run.id, tags=old + [t for t in tags if t not in old])
    except Exception as e:  # tags are for the UI's filters: never fail a night for them
        log.warning("could not tag the flow run: %s", e)


@json_params_flow(name="process-night", flow_run_name=_flow_run_name,
                  task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
@guarded_night                          # holds what open_night takes (red_dir's lock) for the run
def process_night(raw_dir: str, red_dir: str, config: dict | None = None, config_files: list[str] | None = None,
                  steps: str | None = None, obj: list[str] | None = None, band: list[str] | None = None,
                  refresh: bool = False, chunk: int | None = None, campaigns: bool = True) -> dict:
    """Reduce one night with every unit of the stage graph as a cached, retried Prefect task.

    It walks the same graph as the plain driver (:mod:`qlcp.core.stages`, through
    :class:`~qlcp.core.walk.NightWalk`): every unit of a block (a chunk of frames,
    a group, a band) becomes a task, all units of a block run at once, and the
    blocks follow one another.  A failing group is recorded and the others go on.

    Parameters
    ----------
    raw_dir, red_dir : str
        The night's raw directory (only read) and its output directory.
    config : dict, optional
        Settings and run parameters (as in a YAML config); they win over ``config_files``.
    config_files : list of str, optional
        YAML/INI config files, later ones winning.
    steps, obj, band : optional
        As ``qlcp run``.
    refresh : bool
        Recompute every task (ignore the cache).
    chunk : int, optional
        Frames per correction/photometry task; default: one task per group with the thread
        task runner, :data:`DEFAULT_CHUNK` frames with another (Dask).
    campaigns : bool
        With step ``t``, rebuild the campaign of every target of the night at its end.  ``reprocess``
        gives False and rebuilds each campaign once after all its nights (per night, a backlog of N
        nights of a target would read its 1, 2, ... N nights: O(N^2)).

    Returns
    -------
    dict
        The night summary (:class:`~qlcp.core.summary.NightSummary`), also in ``{red}/summary.json``.
    """
    t_start = time.perf_counter()
    plog = get_run_logger()
    bridge_logging()
    configure_run()                     # this process's settings for a run (no IERS download, ...)
    given = {k: v for k, v in (("steps", steps), ("obj", obj), ("band", band)) if v is not None}
    cfg = make_config(config_files, **{**(config or {}), **given})
    bridge_logging(cfg.scr_log)         # the console as the config says (the run's logs in the UI keep INFO)
    raw, red = open_night(raw_dir, red_dir)    # checked, locked for the run, a killed run cleared
    cfg = for_night(cfg, raw)           # the night's instrument and its settings (a registry configured)
    night_fp.forget(red)                # until this run ends well, reprocess runs the night again
    write_effective_config(red, cfg)
    frame_work = any(s in cfg.steps for s in "ip")
    start_workers(red, cfg)             # a new night: frame workers start while it is listed and calibrated
    raw_ids = raw_identities(raw)
    walk = NightWalk(raw, red, cfg, raw_ids, driver="prefect")
    threads = isinstance(FlowRunContext.get().task_runner, ThreadPoolTaskRunner)
    runner = _Runner(refresh, quoted=threads)
    progress = NightProgress(walk.summary.night)
    if chunk is None and not threads:
        chunk = DEFAULT_CHUNK           # tasks spread over processes or machines: several per group
    set_progress_hook(str(red), progress.partial)
    tagging = None
    first_frames = next((b for b in walk.blocks if b.unit == "chunk"), None)
    try:
        for block in walk.blocks:
            # matplotlib's import, in a thread, overlaps the frame steps, where this process mostly waits
            then = (lambda: core.preload_plotting(cfg)) if block is first_frames else None
            _run_block(walk, runner, block, cfg.plain(only_set=True), str(red), chunk, progress, then)
            if block.name == "list":
                plog.info("night %s: %s", walk.summary.night, walk.summary.listing)
                # API calls, in a thread with this one's context (the flow run, the settings): they
                # overlap the night, and are joined before the run ends
                tagging = in_run_thread("qlcp-tag-run", _tag_run, walk)
                progress.start(walk)
                if frame_work and runner.by_label.get(block.label) != "Cached":
                    parallel.warm(cfg.workers)  # the night changed: frame workers start while it is calibrated
    finally:
        set_progress_hook(str(red), None)
        if tagging is not None:
            tagging.join(30)
    progress.done()
    summary = walk.finish()
    summary.run.update(seconds=round(time.perf_counter() - t_start, 2), task_states=runner.states,
                       task_state_by_label=runner.by_label)
    summary.write()
    publish_artifacts(summary.to_dict(), red, cfg)
    if "t" in cfg.steps and campaigns:
        update_campaigns(summary, red, config, config_files)
    walk.check()                        # raises when every group failed (after the summary is written)
    night_fp.record(red, raw_ids, cfg, summary.to_dict())    # what reprocess compares to skip the night
    return summary.to_dict()


def update_campaigns(summary, red: Path, config: dict | None, config_files: list[str] | None) -> None:
    """Rebuild the campaign of every target of this night (its subflow, cached on the nights' files);
    a campaign that fails is logged and costs the night nothing."""
    names = {}
    for g in summary.groups:
        if not g.error and g.outputs.get("lightcurve") and g.outcome != "no target":   # nothing to follow
            for n in (g.stars or {}).get("targets") or [g.obj]:
                names.setdefault(n, None)
    for name in names:
        st = campaign(red_root=str(Path(red).resolve().parent), target=name, config=config,
                      config_files=config_files, return_state=True)
        if st.is_failed():
            get_run_logger().warning("campaign %s: %s", name, st.message)


def start_workers(red_dir, cfg) -> None:
    """Start the frame workers of a new night (no night list in ``red_dir`` yet) now.

    Called by the flow at its start, and by ``qlcp run`` before it: in a process that
    runs no thread yet the workers are forked from it, warm and at no cost; inside the
    flow (Prefect's threads running) a fork server has to start them (~0.7 s of CPU
    taken from the night's calibration on a 2-core machine)."""
    if any(s in cfg.steps for s in "ip") and not product_path(Path(red_dir), "night_list").is_file():
        parallel.warm(cfg.workers)


def _run_block(walk: NightWalk, runner: "_Runner", block, cfgd: dict, red: str, chunk: int, progress,
               then=None) -> None:
    """Every unit of ``block`` as a task, all submitted at once; results and failures to the walk.

    What a frame block's cache keys hash by content (e.g. the corrected frames it reads; raw frames
    are known by identity) is hashed first, here, before ``then()`` (e.g. matplotlib's import in a
    thread, which would hold the GIL against it)."""
    task = T.task_for(block)
    units = walk.units(block, chunk)
    if block.unit == "chunk":
        fingerprint_files([f for _, unit in units for paths in content_files(block, unit).values() for f in paths])
    if then is not None:
        then()
    items = [(label, unit, runner.submit(task, label, red_dir=red, cfg=cfgd, block=block.name, unit=unit))
             for label, unit in units]
    wait([it[2][3] for it in items])
    for label, unit, it in items:
        res, st = runner.result(it)
        if res is None:
            stop_on_environment(st)     # an unwritable output stops the night, not one group
            walk.fail(block, label, unit, _error(st))
        else:
            walk.record(block, label, unit, res)
            if block.unit == "chunk":
                progress.advance(len(unit_frames(unit)) * len(block.stages), unit_key(block.name, unit))
    walk.finish_block(block)


def interactive_settings():
    """Prefect settings for a flow run from the command line: no flow heartbeat.

    The heartbeat (every 180 s by default) lets a server notice a crashed run;
    for ``qlcp run`` in a terminal it only adds a ~1 s join at the end of every
    run (see the Prefect notes).  Served deployments keep it.
    """
    import prefect.settings as ps
    from prefect.settings import temporary_settings

    return temporary_settings(updates={ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def night_flow(runner: str = "thread", dask_address: str | None = None, workers: int = 2):
    """``process_night`` with a chosen task runner.

    * ``thread`` (default): Prefect's thread pool on this machine; frame-level work
      inside each task uses the process pool of ``qlcp.core.parallel``.
    * ``dask``: ``prefect-dask``'s DaskTaskRunner, each chunk of frames a Dask task:
      a local cluster of ``workers`` single-threaded worker processes, or an existing
      cluster at ``dask_address`` (``tcp://host:8786``) spanning several machines that
      see the same raw and red directories.  Results are identical either way.
    """
    if runner == "thread":
        return process_night
    if runner != "dask":
        raise QLCPError(f"runner {runner!r}: use 'thread' or 'dask'")
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise QLCPError("runner 'dask' needs prefect-dask: pip install 'qlcp[dask]'") from None
    if dask_address:
        tr = DaskTaskRunner(address=dask_address)
    else:
        tr = DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                            "dashboard_address": None})
    return process_night.with_options(task_runner=tr)


@json_params_flow(name="reprocess", log_prints=True)
def reprocess(nights: list[str] | None = None, raw_root: str | None = None, red_root: str | None = None,
              start: str | None = None, end: str | None = None, config: dict | None = None,
              config_files: list[str] | None = None, pattern: str = r".*",
              deployment: str | None = "process-night/process-night", timeout_s: float = 6 * 3600,
              force: bool = False) -> dict:
    """Run the night flow for many nights.

    The nights are ``nights`` plus every night under ``raw_root`` that matches
    ``pattern`` and the date range.  With ``deployment`` (the default), each night
    becomes its own flow run of that deployment, so the workers of its work pool
    share the campaign; when the deployment does not exist (a plain Python call)
    the nights run here, one after another.  Since every task is keyed on the
    content of its inputs, its settings and its code (:mod:`qlcp.core.codehash`), an unchanged night
    costs one cache lookup per task.  Before that, a night whose fingerprint
    (:mod:`qlcp.core.fingerprint`: its raw files, settings, stages' code, library, fields, targets)
    equals the one its last successful run recorded gets no run at all: its result is
    ``"Skipped"``.  ``force`` runs every night.
    """
    plog = get_run_logger()
    todo = list(nights or []) + (find_nights(raw_root, pattern, start, end) if raw_root else [])
    params = {"config": config, "config_files": config_files, "campaigns": False}
    results: dict[str, str] = {}
    cfg = make_config(config_files, **(config or {}))
    run = todo if force else _changed(todo, red_root, cfg, results, plog)
    batch = submit_runs(deployment, run, red_root, params, plog) if deployment and run else None
    if batch is not None:
        results.update(wait_runs(*batch, timeout_s))
    else:
        for n in run:
            state = process_night(raw_dir=n, red_dir=red_for(n, red_root), **params, return_state=True)
            results[n] = state.name
    for n, s in results.items():
        plog.info("night %s: %s", n, s)
    if todo and "t" in cfg.steps:
        _rebuild_campaigns(sorted({str(Path(red_for(n, red_root)).parent) for n in todo}), config, config_files)
    return results


def _changed(todo: list[str], red_root: str | None, cfg, results: dict, plog) -> list[str]:
    """The nights of ``todo`` whose fingerprint changed since their last successful run; the others
    are logged and marked ``"Skipped"`` in ``results``.  With an instrument registry each night's
    fingerprint is that of its instrument's settings (its headers read to choose it)."""
    run = []
    for n in todo:
        since = night_fp.unchanged(n, red_for(n, red_root), for_night(cfg, Path(n)))   # its instrument's settings
        if since is None:
            run.append(n)
        else:
            results[n] = "Skipped"
            plog.info("night %s unchanged since %s: skipped", n, since)
    return run


def _rebuild_campaigns(red_roots: list[str], config: dict | None, config_files: list[str] | None) -> None:
    """Every campaign under each red root, once after a batch of nights (its subflow; a target whose
    nights did not change costs a cache lookup); a failure is logged and costs the nights nothing."""
    for root in red_roots:
        st = campaign(red_root=root, config=config, config_files=config_files, return_state=True)
        if st.is_failed():
            get_run_logger().warning("campaigns under %s: %s", root, st.message)


@json_params_flow(name="dawn-sweep", log_prints=True)
def dawn_sweep(raw_root: str, red_root: str, config: dict | None = None, config_files: list[str] | None = None,
               pattern: str = r".*", max_age_days: float = 30.0) -> dict:
    """The safety net: process every recent night that has FITS files and no up-to-date summary.

    A night is pending when ``{red}/summary.json`` is missing or older than its
    newest raw file (e.g. the sensor was down at dawn).  Nights older than
    ``max_age_days`` (by their newest file) are left to ``reprocess``.
    """
    plog = get_run_logger()
    results = {}
    now = time.time()
    for n in find_nights(raw_root, pattern):
        files = [p for p in Path(n).rglob("*") if p.is_file() and not p.name.startswith(".")]
        if not files:
            continue
        newest = max(p.stat().st_mtime for p in files)
        if now - newest > max_age_days * 86400:
            continue
        done = product_path(red_for(n, red_root), "summary")
        if done.is_file() and done.stat().st_mtime >= newest:
            continue
        plog.info("night %s is pending: processing it", n)
        state = process_night(raw_dir=n, red_dir=red_for(n, red_root), config=config, config_files=config_files,
                              return_state=True)
        results[n] = state.name
    if not results:
        plog.info("no pending night under %s", raw_root)
    return results
