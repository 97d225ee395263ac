"""The night flow's start and stop: the output directory's lock, runs left Running by a killed process.

:func:`guarded_night` wraps ``process_night`` and :func:`open_night` opens the
night (once its settings are checked): it takes the lock of the output directory
for the rest of the run (:func:`qlcp.core.runguard.guarded_run`, as the plain
driver does), so two runs never write one night (a run that finds it locked ends Cancelled,
naming the holder, not Failed), and then marks
Crashed the earlier flow runs of the same night that the server still lists as
Running: holding the lock proves their process is gone (the kernel releases a
dead process's lock).  :func:`stop_on_environment` ends the flow at a task that
could not write its output (read-only, full disk): the other units would fail alike.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import threading
from pathlib import Path

from qlcp.core.errors import OutputError, RunLockedError
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


#: the open guarded_night calls of each thread (their exit stacks)
_scope = threading.local()


def guarded_night(fn):
    """Decorate a night flow function: what :func:`open_night` takes (the output directory's
    lock) is held until the function returns or raises."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # only importable names here: the Dask runner pickles the flow's function by value
        one_line_console()
        try:
            with _night_scope():
                return fn(*args, **kwargs)
        except RunLockedError as e:
            return _not_run(e)

    return wrapper


class _OneLineForQLCPErrors(logging.Filter):
    """On the console only: a flow run that failed on a QLCP error (bad input, a data problem) is
    one line; Prefect logged it twice with its traceback ("Encountered exception during execution",
    "Engine execution exited with unexpected exception").  The run's own log in the UI (Prefect's
    API handler, which sees each record first) keeps the traceback."""

    def filter(self, record):
        from qlcp.core.errors import QLCPError

        if record.exc_info and isinstance(record.exc_info[1], QLCPError):
            if record.getMessage().startswith("Engine execution exited"):
                return False
            record.exc_info, record.exc_text = None, None
        return True


def one_line_console() -> None:
    """Add :class:`_OneLineForQLCPErrors` to this process's console handlers (the root logger's,
    where Prefect's run loggers propagate; not its API handler); idempotent."""
    for h in logging.getLogger().handlers:
        if "APILogHandler" in type(h).__name__:
            continue
        if not any(isinstance(f, _OneLineForQLCPErrors) for f in h.filters):
            h.addFilter(_OneLineForQLCPErrors())


def _not_run(e: RunLockedError):
    """A flow run that found its night locked by another run (e.g. a second trigger of the same
    night) did nothing wrong: it ends Cancelled, its message naming the holder, instead of Failed;
    a caller asking for the result still gets the :class:`RunLockedError` (one line, exit 2)."""
    from prefect.context import FlowRunContext
    from prefect.states import Cancelled

    if FlowRunContext.get() is None:
        raise e
    log.warning("not run: %s", e)
    return Cancelled(message=f"not run: {e}", data=e)


@contextlib.contextmanager
def _night_scope():
    stacks = _scope.__dict__.setdefault("stacks", [])
    with contextlib.ExitStack() as stack:
        stacks.append(stack)
        try:
            yield
        finally:
            stacks.pop()


def open_night(raw_dir, red_dir) -> tuple[Path, Path]:
    """In a :func:`guarded_night` function, after its settings are checked: check the directories,
    lock ``red_dir`` for the rest of the run, remove a killed run's temporaries and mark its
    flow run Crashed.

    Returns
    -------
    (Path, Path)
        The raw and output directories.
    """
    stacks = getattr(_scope, "stacks", None)
    if not stacks:
        raise RuntimeError("open_night() outside a @guarded_night function")
    stack = stacks[-1]
    raw, red = stack.enter_context(guarded_run(raw_dir, red_dir))
    # an API query (10-20 ms), off the flow's path; joined before the lock is let go
    stack.callback(in_run_thread("qlcp-mark-crashed", mark_crashed_runs, red).join, 30)
    return raw, red


def in_run_thread(name: str, fn, *args) -> threading.Thread:
    """Start ``fn(*args)`` in a daemon thread with this thread's context (the flow run, Prefect's
    settings), e.g. API calls that need not hold up the flow; the caller joins it."""
    t = threading.Thread(target=contextvars.copy_context().run, args=(fn, *args), name=name, daemon=True)
    t.start()
    return t


def stop_on_environment(state) -> None:
    """Raise the task's :class:`OutputError` (read-only, full, forbidden output), if that is why it failed."""
    try:
        state.result()
    except OutputError:
        raise
    except Exception:  # the task's own failure: recorded for its group by the caller
        return
