"""Frame-level parallelism of the plain driver: one shared pool of worker processes.

Corrections and photometry are per-frame and CPU-bound (sep and much of the
numpy work hold the GIL), so threads give little; processes give the cores.
The pool is created on first use (or by :func:`warm` at the start of a run)
and reused.  Its start method depends on the process that creates it:

* ``fork`` when that process runs no other thread (the plain driver, ``qlcp
  run --no-prefect``): the workers are forked at once, with every module the
  parent imported, and load astropy's Earth-orientation tables while the
  parent lists and calibrates the night;
* ``forkserver`` otherwise (a Prefect flow runs threads, and forking a
  threaded process can deadlock the child): workers fork from a small clean
  server process that preloads the science modules once.

``workers=1`` (or running inside a daemonic process such as a Dask worker,
which may not have children) runs everything in the calling process.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib
import itertools
import logging
import logging.handlers
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait

from .errors import ConfigError
from .logs import current_step
from .runtime import configure_run

log = logging.getLogger("qlcp.parallel")

_lock = threading.RLock()     # warm() holds it while creating the pool and its first workers
_pool: ProcessPoolExecutor | None = None
_pool_size = 0
_listener: logging.handlers.QueueListener | None = None
_alive_w = None                 # write end of the fork server workers' lifeline (see _die_with_parent)
PRELOAD = ["qlcp.core._preload"]


#: environment variable: frame worker processes of a run whose config does not set ``workers``.  A
#: host running several nights at once (e.g. two Prefect workers on two cores) sets it to 1, so that
#: the nights share the cores instead of each starting a pool of them all
WORKERS_ENV = "QLCP_WORKERS"


def default_workers() -> int:
    """``$QLCP_WORKERS`` (:data:`WORKERS_ENV`) when set, else the CPUs this process may use."""
    given = os.environ.get(WORKERS_ENV, "").strip()
    if given:
        try:
            return max(1, int(given))
        except ValueError:
            raise ConfigError(f"{WORKERS_ENV}={given!r}: expected a whole number of processes") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class _Dispatch(logging.Handler):
    """In the parent: hand a worker's record to the parent's logger of the same name, when
    that logger takes its level (``Logger.handle`` does not ask: without the check every
    DEBUG record of the workers reached the handlers, e.g. Prefect's console and API)."""

    def emit(self, record):
        lg = logging.getLogger(record.name)
        if lg.isEnabledFor(record.levelno):
            lg.handle(record)


_caller_thread = 0


class _TagCaller(logging.Filter):
    """In a worker: mark records with the thread that submitted the job, so the
    parent's per-thread step logs (``logs.step_log(thread_only=True)``) keep them,
    and with the step the job is working for (``logs.step_tag``), if any."""

    def filter(self, record):
        record.qlcp_thread = _caller_thread
        record.qlcp_step = current_step()
        return True


PR_SET_PDEATHSIG = 1             # linux/prctl.h


def _die_with_parent(creator: int, alive=None) -> None:
    """Make this worker end when the run's process does, even on ``kill -9`` of it.

    * A forked worker (``creator``: its parent, the run's process): on Linux the
      kernel sends it SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``); a
      parent already gone is seen at once; elsewhere a thread watches the parent pid.
    * A worker of the fork server (``alive``: the read end of a pipe whose only write
      end the run's process holds): a thread exits the worker when the pipe reaches
      end of file, i.e. when the run's process is gone.  The fork server waits for
      its clients (the run and the workers) to close its own "alive" pipe, and then
      exits too; PR_SET_PDEATHSIG covers the worker if the fork server dies first.

    Parameters
    ----------
    creator : int
        Pid of the process that forked this worker (fork start method), else 0.
    alive : multiprocessing.connection.Connection, optional
        The read end of the run's pipe (fork server workers).
    """
    parent = creator or os.getppid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
    if alive is not None:
        threading.Thread(target=_watch_pipe, args=(alive,), name="qlcp-run-watch", daemon=True).start()
    elif not sys.platform.startswith("linux"):
        threading.Thread(target=_watch_parent, args=(parent,), name="qlcp-parent-watch", daemon=True).start()


def _watch_pipe(alive) -> None:
    """Exit this worker when nobody holds the write end of ``alive`` any more (the run died)."""
    with contextlib.suppress(EOFError, OSError):
        while True:
            alive.recv_bytes()
    os._exit(1)


def _watch_parent(parent: int, every: float = 1.0) -> None:
    """Exit this worker when its parent pid changes (the parent died)."""
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def _init_worker(level: int, queue, preload: list, creator: int = 0, alive=None) -> None:
    _die_with_parent(creator, alive)
    configure_run()              # a worker is part of a run (a forked one has it already: no-op)
    lg = logging.getLogger("qlcp")
    h = logging.handlers.QueueHandler(queue)
    h.addFilter(_TagCaller())
    lg.handlers[:] = [h]
    lg.setLevel(level)
    lg.propagate = False
    for m in preload:            # a forked worker loads them here (a fork server already has)
        importlib.import_module(m)


def _call(fn, x, caller: int):
    global _caller_thread
    _caller_thread = caller
    return fn(x)


def start_method() -> str:
    """``fork`` if this process runs no other thread (and the OS has fork), else ``forkserver``."""
    methods = mp.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _get_pool(workers: int) -> ProcessPoolExecutor | None:
    """This process's one pool, created on first use with ``workers`` processes.

    The pool is never resized or rebuilt under a caller: several threads (a
    Prefect flow runs tasks two at a time, each calling :func:`pmap`) share it,
    each call limiting itself to its own ``workers``.  Only a broken pool (a
    worker died, so every job in it has already failed) is replaced.
    """
    global _pool, _pool_size, _listener
    if mp.current_process().daemon:
        return None
    with _lock:
        if _pool is not None and not getattr(_pool, "_broken", False):
            return _pool
        if _pool is not None:           # broken: its futures have all failed already
            log.warning("worker pool broken (%s): starting a new one", _pool._broken)
            _pool.shutdown(wait=False)
        if _listener is not None:
            _listener.stop()
            _listener = None
        method = start_method()
        ctx = mp.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(PRELOAD)
        queue = ctx.Queue()
        _pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                    initargs=(logging.DEBUG, queue, PRELOAD, *_lifeline(method)))
        _pool_size = workers
        if method == "fork":         # fork every worker now, before this process starts a thread
            _pool.submit(_noop)
        _listener = logging.handlers.QueueListener(queue, _Dispatch())
        _listener.start()
        log.debug("worker pool: %d processes (%s)", workers, method)
        return _pool


def _lifeline(method: str) -> tuple:
    """``(creator, alive)`` for :func:`_die_with_parent`: this pid for forked workers; for the
    others the read end of a pipe whose write end only this process keeps (for the pool's life)."""
    global _alive_w
    if method == "fork":
        return os.getpid(), None
    if _alive_w is not None:        # a replaced pool: its workers go
        _alive_w.close()
    r, _alive_w = mp.Pipe(duplex=False)
    return 0, r


@atexit.register
def _shutdown() -> None:
    if _pool is not None:
        _pool.shutdown(wait=True, cancel_futures=True)
    if _listener is not None:
        _listener.stop()


@contextlib.contextmanager
def _main_hidden():
    """Start workers without making them re-import the caller's ``__main__``.

    With forkserver (as with spawn) a new worker imports the main script again,
    so a script that calls ``qlcp.core.run`` at top level without an
    ``if __name__ == "__main__":`` guard would run again in every worker.  The
    jobs only need ``qlcp.core``, so the main module's location is hidden while
    workers start.
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            if "__spec__" in saved:
                main.__spec__ = None
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


def _noop(_=None) -> None:
    return None


def warm(workers: int | None = None) -> None:
    """Start the worker pool now, without waiting for it (returns at once).

    The workers load the science modules and astropy's tables (~1-2 s); started
    at the beginning of a run, this overlaps the listing and the calibration
    instead of delaying the first frame job.  In a process without other threads
    the workers are forked here; otherwise a thread starts the fork server.  A
    :func:`pmap` meanwhile waits for the pool.
    """
    workers = workers or default_workers()
    if workers > 1 and not mp.current_process().daemon:
        if start_method() == "fork":
            _warm_now(workers)
        else:
            threading.Thread(target=_warm_now, args=(workers,), name="qlcp-pool-warm", daemon=True).start()


def _warm_now(workers: int) -> None:
    try:
        with _lock:
            pool = _get_pool(workers)
            if pool is not None:
                with _main_hidden():
                    for _ in range(workers):
                        pool.submit(_noop)
    except Exception as e:  # a warm-up only: pmap starts the pool itself (and reports)
        logging.getLogger("qlcp").debug("worker pool warm-up failed: %s", e)


def pmap(fn: Callable, items: Sequence, workers: int | None = None, progress=None, desc: str = "") -> list:
    """``[fn(x) for x in items]`` over the worker processes, results in order.

    ``fn`` must be a module-level function and ``items`` picklable (paths,
    Config).  ``progress(iterable, desc=, total=)`` wraps the jobs as they end.
    Log records of the workers go to the parent's loggers (at their levels); results
    carry what the caller needs to log.

    Safe to call from several threads at once: the calls share the process's
    one pool (sized by the first ``workers`` that started it) and each keeps at
    most ``workers`` of its own jobs in it.  A failing job raises here; the
    call's jobs not yet started are then cancelled (never another call's).
    """
    items = list(items)
    workers = workers or default_workers()
    pool = _get_pool(workers) if min(workers, len(items)) > 1 else None
    if pool is None:
        it = progress(items, desc=desc, total=len(items)) if progress else items
        return [fn(x) for x in it]
    limit = min(workers, len(items))
    caller = threading.get_ident()
    futs: dict = {}
    todo = iter(enumerate(items))

    def submit(n: int) -> None:
        for i, x in itertools.islice(todo, n):
            with _lock, _main_hidden():          # _main_hidden edits __main__: one thread at a time
                futs[pool.submit(_call, fn, x, caller)] = i

    def windowed():
        pending = set(futs)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield f
            n = len(futs)
            submit(len(done))                   # keep ``limit`` of this call's jobs in the pool
            pending |= set(itertools.islice(futs, n, None))

    out = [None] * len(items)
    if limit >= _pool_size:                     # the whole pool: every job at once, as before
        submit(len(items))
        done = as_completed(futs)
    else:                                       # fewer workers than the pool has: a window
        submit(limit)
        done = windowed()
    if progress:
        done = progress(done, desc=desc, total=len(items))
    try:
        for f in done:
            out[futs[f]] = f.result()
    finally:
        for f in futs:                          # after an error: this call's queued jobs only
            f.cancel()
    return out
