"""Many nights at once, for ``reprocess`` and ``dawn-sweep`` (:mod:`qlcp.flows.night`): which night
directories a raw root holds, where each one's reduction goes, and a batch of flow runs of the night
deployment, submitted and followed by tag."""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path

from prefect import get_client
from prefect.context import FlowRunContext


def find_nights(raw_root: str, pattern: str = r".*", start: str | None = None, end: str | None = None) -> list[str]:
    """Night directories directly under ``raw_root`` whose name matches ``pattern`` and whose
    date (YYYYMMDD in the name, when there is one) lies in [``start``, ``end``]."""
    out = []
    for d in sorted(Path(raw_root).iterdir()):
        if d.is_dir() and not d.name.startswith(".") and re.search(pattern, d.name) and in_range(d.name, start, end):
            out.append(str(d.resolve()))
    return out


def red_for(night: str, red_root: str | None) -> str:
    return str(Path(red_root) / Path(night).name) if red_root else str(Path(night).parent.parent / "red" /
                                                                       Path(night).name)


def submit_runs(deployment: str, todo: list[str], red_root: str | None, params: dict,
                 plog) -> tuple[str, dict] | None:
    """One flow run of ``deployment`` per night (the deployment read once, one API call a night), all
    tagged with the batch's tag (:func:`wait_runs` follows them by it); the tag and ``{run id: night}``,
    or None when the deployment does not exist."""
    import uuid

    from prefect.exceptions import ObjectNotFound

    ctx = FlowRunContext.get()
    batch = f"reprocess:{ctx.flow_run.id if ctx and ctx.flow_run else uuid.uuid4()}"
    runs: dict = {}
    with get_client(sync_client=True) as c:
        try:
            dep = c.read_deployment_by_name(deployment)
        except ObjectNotFound:
            plog.warning("deployment %s not found: reprocessing here, one night after another", deployment)
            return None
        for n in todo:
            fr = c.create_flow_run_from_deployment(dep.id, parameters={"raw_dir": n, "red_dir": red_for(n, red_root),
                                                                       **params},
                                                   tags=["reprocess", batch, Path(n).name])
            runs[fr.id] = n
            plog.info("night %s: flow run %s submitted", n, fr.name)
    return batch, runs


#: a run that ended this long before a poll is still looked for (the server's clock, commit lag)
_END_MARGIN_S = 120.0


def wait_runs(batch: str, runs: dict, timeout_s: float, every: float = 5.0, page: int = 200) -> dict:
    """Wait until the flow runs ``runs`` (``{id: night}``, tagged ``batch``) are final (or the timeout);
    ``{night: state name}``.

    Each poll asks for the batch's runs that *ended* since the previous poll (less a margin), a page
    of ``page`` at a time: its cost follows the runs that just ended, not the size of the batch (a
    backlog of 1,000 nights polled run by run would cost 1,000 calls every poll)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterEndTime, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    runs = dict(runs)
    t_end = time.monotonic() + timeout_s
    out: dict[str, str] = {}
    since = None
    with get_client(sync_client=True) as c:
        while runs and time.monotonic() < t_end:
            now = dt.datetime.now(dt.timezone.utc)
            flt = FlowRunFilter(tags=FlowRunFilterTags(all_=[batch]),
                                end_time=FlowRunFilterEndTime(is_null_=False, **({"after_": since} if since else {})))
            offset = 0
            while True:
                got = c.read_flow_runs(flow_run_filter=flt, sort=FlowRunSort.END_TIME_DESC, limit=page, offset=offset)
                for fr in got:
                    if fr.id in runs and fr.state is not None and fr.state.is_final():
                        out[runs.pop(fr.id)] = fr.state.name
                if len(got) < page:
                    break
                offset += page
            since = now - dt.timedelta(seconds=_END_MARGIN_S)
            if runs:
                time.sleep(every)
    out.update({n: "Timeout" for n in runs.values()})
    return out


def in_range(name: str, start: str | None, end: str | None) -> bool:
    m = re.search(r"(\d{8})", name)
    if not m:
        return start is None and end is None
    d = m.group(1)
    return (start is None or d >= start.replace("-", "")) and (end is None or d <= end.replace("-", ""))
