"""What every QLCP task shares: result storage, cache keys, retry policy, logging.

No science here: the tasks call ``qlcp.core`` stage functions.

Caching
-------
A task's cache key is the sha256 of: the task name, the fingerprint of the
code its block runs (``Block.code``: the sources of the
``qlcp.core`` modules its runners import; ``__version__`` is not in it), the
output root, the config keys its block declares
(:mod:`qlcp.core.stages`) and a fingerprint of every file it declares as input.
The night's raw files are fingerprinted by their identity (name, size, mtime_ns:
:data:`qlcp.core.stages.RAW_FIELDS`), as the listing's key and the products'
provenance keys are; a raw frame rewritten or touched is new input, on both
drivers.  Every other input (masters, corrected frames, catalogues) by its
content: sha256, or for a product QLCP wrote, its provenance key (``drv:``),
memoised on (path, size, mtime_ns) in a small SQLite database beside the
results.  Upstream results (master paths with
their fingerprints) are parameters of the downstream tasks, so a changed flat
invalidates exactly the flat and what depends on it.

Results are persisted as JSON result records under :func:`results_dir`
(``$QLCP_RESULTS``; ``qlcp`` sets ``~/.qlcp/results``; otherwise
``$PREFECT_HOME/qlcp-results``), resolved at each flow run (the flows pass
``result_storage``): they survive new processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path

from prefect.context import TaskRunContext

from qlcp.core.config import Config, load_config
from qlcp.core.errors import QLCPError
from qlcp.core.io import file_fingerprint
from qlcp.core.logs import step_log
from qlcp.core.provenance import file_identity

log = logging.getLogger("qlcp.tasks")

#: how long a cached result stays valid
CACHE_EXPIRATION = timedelta(days=60)
#: retries of I/O-bound tasks, and their delays (s): a busy disk or NFS hiccup
IO_RETRIES = 2
IO_RETRY_DELAYS = [2, 10]


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()


def results_dir() -> Path:
    """Where task results and the fingerprint memo live (``$QLCP_RESULTS``)."""
    p = Path(os.environ.get("QLCP_RESULTS", prefect_home() / "qlcp-results")).expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p


# ---------------------------------------------------------------- fingerprints
class _FingerprintMemo:
    """sha256 of files memoised on (path, size, mtime_ns): in SQLite beside the results (across
    runs and processes) and in this process's memory (within a run: a task's cache key then
    needs no query, which from a thread of a busy flow waited ~0.15 s on the GIL for 400 rows).
    Thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._db = None
        self._path = None
        self._mem: dict[str, tuple] = {}          # realpath -> (size, mtime_ns, sha)

    def _conn(self):
        path = results_dir() / "fingerprints.sqlite"
        if self._db is None or self._path != path:
            self._db = sqlite3.connect(path, check_same_thread=False, timeout=30)
            # a memo, not a record: losing the last entries in a power cut only costs a re-hash
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=OFF")
            self._db.execute("CREATE TABLE IF NOT EXISTS fp (path TEXT PRIMARY KEY, size INT, mtime INT, sha TEXT)")
            self._path = path
            self._mem = {}                        # another results directory: another memo
        return self._db

    def sha(self, path: str | Path) -> str:
        return self.sha_many([path])[0]

    def sha_many(self, paths: list) -> list[str]:
        """sha256 of each path ("missing" when absent): memoised ones from memory or one query,
        the others hashed by a few threads (hashlib releases the GIL) and memoised."""
        real = [os.path.realpath(p) for p in paths]
        stats = {}
        for r in real:
            try:
                st = os.stat(r)
                stats[r] = (st.st_size, st.st_mtime_ns)
            except OSError:
                pass
        with self._lock:
            db = self._conn()
            known = {r: self._mem[r] for r in stats if r in self._mem}
            keys = [r for r in stats if r not in known]
            for i in range(0, len(keys), 500):      # SQLite's bound on query parameters
                part = keys[i:i + 500]
                q = f"SELECT path, size, mtime, sha FROM fp WHERE path IN ({','.join('?' * len(part))})"
                known.update({r[0]: r[1:] for r in db.execute(q, part)})
        fresh = {r: known[r][2] for r, st in stats.items() if r in known and tuple(known[r][:2]) == st}
        todo = [r for r in stats if r not in fresh]
        if todo:
            if len(todo) < 4:
                shas = [file_fingerprint(r) for r in todo]
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(4) as ex:
                    shas = list(ex.map(file_fingerprint, todo))
            fresh.update(zip(todo, shas))
            self.register({r: [*stats[r], sha] for r, sha in zip(todo, shas)})
        with self._lock:
            self._mem.update((r, (*stats[r], fresh[r])) for r in stats)
        return [fresh.get(r, "missing") for r in real]

    def register(self, records: dict) -> None:
        """Record fingerprints computed elsewhere (the workers that wrote the files), in one transaction:
        ``{path: [size, mtime_ns, sha256]}``."""
        rows = [(os.path.realpath(p), size, mtime, sha) for p, (size, mtime, sha) in records.items()]
        with self._lock:
            db = self._conn()
            db.executemany("INSERT OR REPLACE INTO fp VALUES (?, ?, ?, ?)", rows)
            db.commit()
            self._mem.update((r[0], r[1:]) for r in rows)


_memo = _FingerprintMemo()


def register_fingerprints(records: dict) -> None:
    """``{path: [size, mtime_ns, sha256]}`` from the core, so later cache keys need not re-read the files."""
    if records:
        _memo.register(records)


def fingerprint(path: str | Path | None) -> str | None:
    """Content fingerprint (sha256 hex) of a file; memoised, so cheap on reruns."""
    return None if path is None else _memo.sha(path)


def fingerprint_files(paths: list[str]) -> None:
    """Hash (and memoise) the files the next tasks' cache keys need (:func:`content_files`), now,
    while nothing else competes for the GIL: e.g. corrected frames before the tasks that read them."""
    _memo.sha_many(paths)


def _fingerprints(paths: list[str]) -> list[list]:
    """[name, sha256] of each path (memoised; new files hashed by a few threads)."""
    return [[os.path.basename(p), s] for p, s in zip(paths, _memo.sha_many(paths))]


def _identities(paths: list[str]) -> list[list]:
    """[name, size, mtime_ns] of each raw file (:func:`qlcp.core.provenance.file_identity`)."""
    return [file_identity(p) for p in paths]


# ------------------------------------------------------------------ cache keys
def content_files(block, unit: dict) -> dict[str, list[str]]:
    """The unit's declared input files that cache keys know by content, by field: every file
    field of ``block`` but the raw frames (:data:`qlcp.core.stages.RAW_FIELDS`, known by identity)."""
    from qlcp.core.stages import RAW_FIELDS

    return {n: _flatten_paths(unit.get(n)) for n in block.files if n not in RAW_FIELDS}


def _flatten_paths(v) -> list[str]:
    if v is None:
        return []
    if isinstance(v, (str, Path)):
        return [str(v)]
    if isinstance(v, dict):
        return [p for x in v.values() for p in _flatten_paths(x)]
    if isinstance(v, (list, tuple)):
        return [p for x in v for p in _flatten_paths(x)]
    return []


def cache_key(context: TaskRunContext, parameters: dict) -> str:
    """The cache key of a QLCP task, derived from its block's declarations (:mod:`qlcp.core.stages`).

    It hashes the task name, the fingerprint of the block's code, the output root, the block's
    stages, the config keys they declare, the unit's declared input files (raw
    frames by identity, ``RAW_FIELDS``; everything else by *content*) and the
    unit's declared values.  Nothing else: a setting no
    stage declares cannot change a result (stages run with a config view that
    refuses undeclared keys).
    """
    from qlcp.core.stages import RAW_FIELDS, plan

    cfg = Config(**parameters["cfg"])
    block = next(b for b in plan(cfg.steps) if b.name == parameters["block"])
    unit = parameters["unit"]
    payload = {
        "task": context.task.name,
        "code": block.code,
        "red_dir": str(Path(parameters.get("red_dir", "")).resolve()),
        "stages": [s.name for s in block.stages],
        "cfg": cfg.subset(block.keys),
        "files": {**{n: _identities(_flatten_paths(unit.get(n))) for n in block.files if n in RAW_FIELDS},
                  **{n: _fingerprints(paths) for n, paths in content_files(block, unit).items()}},
        "values": {n: unit.get(n) for n in block.values},
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return f"qlcp-{block.name}-{digest[:40]}"


# ---------------------------------------------------------------------- progress
_progress_hooks: dict = {}


def set_progress_hook(red_dir: str, hook) -> None:
    """``hook(unit_key, units)`` receives the progress of the frame tasks of ``red_dir`` that
    run in this process (the flow's progress artifact); None removes it."""
    key = str(Path(red_dir).resolve())
    if hook is None:
        _progress_hooks.pop(key, None)
    else:
        _progress_hooks[key] = hook


def unit_frames(unit: dict) -> list:
    """The frames of a frame task's unit (raw ``files``, or ``corrected`` ones)."""
    return unit.get("files") or unit.get("corrected") or []


def unit_key(block: str, unit: dict) -> str:
    """A frame task's name for the progress hook: its block and its first frame."""
    return f"{block}:{(unit_frames(unit) or [''])[0]}"


def task_progress(red_dir: str, block, unit: dict):
    """A progress wrapper (``wrap(iterable, desc, total)``) that reports a frame task's worker
    jobs to the flow's hook, as a share of the task's frames x stages; None without a hook
    (e.g. a task on a Dask worker) or outside frame blocks."""
    hook = _progress_hooks.get(str(Path(red_dir).resolve()))
    if hook is None or block.unit != "chunk":
        return None
    units = len(unit_frames(unit)) * len(block.stages)
    key = unit_key(block.name, unit)

    def wrap(iterable, desc=None, total=None):
        share = units / total if total else 0.0
        for x in iterable:
            yield x
            if share:
                hook(key, share)

    return wrap


# ---------------------------------------------------------------------- retries
def retry_transient(task, task_run, state) -> bool:
    """Retry only what may pass: OS-level I/O errors and QLCP errors marked retriable.

    Bad input (a corrupt frame, a bad config) fails at once with its message.
    """
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as e:  # the result itself may be the failure
        exc = e
    if isinstance(exc, QLCPError):
        return exc.retriable
    return isinstance(exc, (OSError, TimeoutError))


def task_options(name: str, retries: int = IO_RETRIES) -> dict:
    """Keyword arguments of ``@task`` for the cached, retried QLCP task ``name``."""
    return dict(
        retries=retries,
        retry_delay_seconds=IO_RETRY_DELAYS,
        retry_condition_fn=retry_transient,
        cache_key_fn=cache_key,
        cache_expiration=CACHE_EXPIRATION,
        persist_result=True,
        result_serializer="json",
    )


def config_of(cfg: dict) -> Config:
    """The task parameter ``cfg`` (plain dict, JSON-friendly for Prefect) -> Config."""
    return load_config(overrides=cfg)


#: thread id -> (flow run id, task run id) of the task running in it; records that
#: worker processes send back (``qlcp.core.parallel``) carry their caller's thread
_RUN_OF_THREAD: dict[int, tuple] = {}


@contextlib.contextmanager
def task_log(red_dir: str, steps: str, cfg: Config):
    """Inside a task: the log file of each of its steps (this thread's records only;
    with several steps, each file keeps its own step's records) and the run ids that
    let records from worker processes reach this task's logs in the UI."""
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    tid = threading.get_ident()
    if ctx is not None:
        _RUN_OF_THREAD[tid] = (ctx.task_run.flow_run_id, ctx.task_run.id)
    try:
        with contextlib.ExitStack() as logs:
            for step in steps:
                logs.enter_context(step_log(red_dir, step, cfg.file_log, thread_only=True, tagged=len(steps) > 1))
            yield
    finally:
        _RUN_OF_THREAD.pop(tid, None)


class _Forward(logging.Handler):
    """Forward ``qlcp`` records at INFO and above to Prefect's handlers (UI and console).

    The ``qlcp`` logger itself stays at the file level (DEBUG by default) for
    ``{red}/log/{step}.log``; without this gate every DEBUG line would reach
    the console and the UI.  Records outside any run (the plain driver in the
    same process) go to the console only.
    """

    def __init__(self, targets, level=logging.INFO):
        super().__init__(level)
        self.targets = list(targets)
        self.console_level = logging.NOTSET     # the run's ``scr_log``, for every target but the API's

    def emit(self, record):
        from prefect.context import FlowRunContext, TaskRunContext
        from prefect.logging.handlers import APILogHandler

        ids = _RUN_OF_THREAD.get(getattr(record, "qlcp_thread", None))
        if ids and not getattr(record, "flow_run_id", None):
            record.flow_run_id, record.task_run_id = ids
        in_run = bool(getattr(record, "flow_run_id", None)) or FlowRunContext.get() or TaskRunContext.get()
        for h in self.targets:
            api = isinstance(h, APILogHandler)
            if record.levelno >= h.level and (in_run or not api) and (api or record.levelno >= self.console_level):
                h.handle(record)


def bridge_logging(scr_log: int | None = None) -> None:
    """Show ``qlcp`` library log records (INFO and above) in Prefect's run logs and, from
    ``scr_log`` up (the run's screen level; default: as Prefect's console), on its console.

    Call inside a flow run (Prefect configures its logging lazily, and
    PREFECT_LOGGING_EXTRA_LOGGERS is read once at import): idempotent; a later call
    sets the screen level.
    """
    from prefect.logging.handlers import APILogHandler

    lg = logging.getLogger("qlcp")
    fwd = next((h for h in lg.handlers if isinstance(h, _Forward)), None)
    if fwd is None:
        targets = [APILogHandler()] + [h for h in logging.getLogger().handlers if not isinstance(h, APILogHandler)]
        fwd = _Forward(targets)
        lg.addHandler(fwd)
        lg.propagate = False
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
    if scr_log is not None:
        fwd.console_level = scr_log
