"""The night flow's start and stop: the output directory's lock, runs left Running by a killed process.

:func:`guarded_night` wraps ``process_night``: before the night is walked it
takes the lock of the output directory (:func:`qlcp.core.runguard.guarded_run`,
as the plain driver does), so two runs never write one night, and then marks
Crashed the earlier flow runs of the same night that the server still lists as
Running: holding the lock proves their process is gone (the kernel releases a
dead process's lock).  :func:`stop_on_environment` ends the flow at a task that
could not write its output (read-only, full disk): the other units would fail alike.
"""

from __future__ import annotations

import functools
import inspect
import logging
from pathlib import Path

from qlcp.core.errors import OutputError
from qlcp.core.runguard import guarded_run

log = logging.getLogger("qlcp.flows")


def _same_dir(a, b: Path) -> bool:
    try:
        return a is not None and Path(a).expanduser().resolve() == b.resolve()
    except (OSError, TypeError, ValueError):
        return False


def mark_crashed_runs(red: Path) -> list:
    """Set Crashed the other flow runs of this flow on ``red`` that are still Running.

    Call it while holding ``red``'s lock (no live run of that night can then exist).

    Parameters
    ----------
    red : Path
        The night's output directory (the ``red_dir`` parameter of the runs).

    Returns
    -------
    list of UUID
        The flow runs marked Crashed (empty outside a flow run, or when the API fails:
        this is housekeeping, never a reason to stop a night).
    """
    from prefect import get_client
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterId, FlowRunFilter, FlowRunFilterId,
                                                FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.context import FlowRunContext
    from prefect.states import Crashed

    ctx = FlowRunContext.get()
    me = ctx.flow_run if ctx else None
    if me is None:
        return []
    marked = []
    try:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(id=FlowFilterId(any_=[me.flow_id])),
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(not_any_=[me.id]),
                                              state=FlowRunFilterState(type=FlowRunFilterStateType(
                                                  any_=[StateType.RUNNING]))))
            for fr in runs:
                if not _same_dir((fr.parameters or {}).get("red_dir"), red):
                    continue
                msg = (f"its process is gone: flow run {me.name} found the lock of {red} free "
                       f"and took it over")
                client.set_flow_run_state(fr.id, Crashed(message=msg), force=True)
                log.warning("flow run %s (%s) was left Running by a killed process: marked Crashed", fr.name, fr.id)
                marked.append(fr.id)
    except Exception as e:  # the API down or refusing: the night goes on
        log.warning("could not check for crashed runs of %s: %s", red, e)
    return marked


def guarded_night(fn):
    """Decorate a night flow function (parameters ``raw_dir``, ``red_dir``): run it holding the
    lock of ``red_dir``, after removing a killed run's temporaries and marking its flow run Crashed."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        with guarded_run(bound.arguments["raw_dir"], bound.arguments["red_dir"]) as (_raw, red):
            mark_crashed_runs(red)
            return fn(*args, **kwargs)

    return wrapper


def stop_on_environment(state) -> None:
    """Raise the task's :class:`OutputError` (read-only, full, forbidden output), if that is why it failed."""
    try:
        state.result()
    except OutputError:
        raise
    except Exception:  # the task's own failure: recorded for its group by the caller
        return
