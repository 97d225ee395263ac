"""Logging as the manual describes: ``{red}/log/{step}.log`` at ``file_log``,
the screen at ``scr_log``.  All pipeline loggers live under ``qlcp``."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path

ROOT = "qlcp"
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_screen(level: int = logging.INFO) -> None:
    """Send ``qlcp`` log records of ``level`` and above to stderr (once)."""
    root = logging.getLogger(ROOT)
    root.setLevel(min(level, root.level or logging.DEBUG) if root.handlers else logging.DEBUG)
    for h in root.handlers:
        if getattr(h, "_qlcp_screen", False):
            h.setLevel(level)
            return
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    h.setLevel(level)
    h._qlcp_screen = True
    root.addHandler(h)


_tag = threading.local()


def current_step() -> str | None:
    """The step this thread is working for (:func:`step_tag`), or None."""
    return getattr(_tag, "step", None)


@contextlib.contextmanager
def step_tag(step: str):
    """Attribute the records this thread logs in the block to ``step``.

    For work that does two steps in one go (the plain driver corrects and
    measures each frame in one job): :func:`step_log` files opened with
    ``tag`` keep the records of their own step.  Worker processes copy the
    tag into each record (``qlcp_step``) before sending it to the parent.
    """
    old = current_step()
    _tag.step = step
    try:
        yield
    finally:
        _tag.step = old


class _StepFilter(logging.Filter):
    def __init__(self, step: str):
        super().__init__()
        self.step = step

    def filter(self, record):
        tag = getattr(record, "qlcp_step", None) or current_step()
        return tag is None or tag == self.step


class _ThreadFilter(logging.Filter):
    def __init__(self):
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record):
        # records from worker processes carry the thread that submitted their job
        return getattr(record, "qlcp_thread", record.thread) == self.thread


class _NoFollowFileHandler(logging.FileHandler):
    """A step's log file, opened without following a symbolic link planted at its path
    (:func:`qlcp.core.io.open_nofollow`: one error line naming the link)."""

    def _open(self):
        from .io import open_nofollow

        return open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors,
                    opener=lambda p, flags: open_nofollow(p, flags, 0o666))


@contextlib.contextmanager
def step_log(red_dir: str | Path, step: str, level: int = logging.DEBUG, thread_only: bool = False,
             tagged: bool = False):
    """Also write ``qlcp`` records to ``{red}/log/{step}.log`` while the block runs.

    ``thread_only`` keeps only the records of the calling thread: steps that
    run concurrently (Prefect's thread pool) each log to their own file.
    ``tagged`` keeps only the records tagged for this step (:func:`step_tag`)
    and the untagged ones: two steps done in one go each keep their own.
    """
    from .io import refuse_linked_dirs

    path = Path(red_dir) / "log" / f"{step}.log"
    refuse_linked_dirs(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger(ROOT)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    h = _NoFollowFileHandler(path, encoding="utf-8")
    h.setFormatter(logging.Formatter(FORMAT))
    h.setLevel(level)
    if thread_only:
        h.addFilter(_ThreadFilter())
    if tagged:
        h.addFilter(_StepFilter(step))
    root.addHandler(h)
    try:
        yield path
    finally:
        root.removeHandler(h)
        h.close()


def progress_factory(enabled: bool | None = None):
    """A tqdm wrapper on an interactive terminal, None (no bars) in CI or when piped."""
    if enabled is None:
        enabled = sys.stderr.isatty() and not os.environ.get("CI")
    if not enabled:
        return None
    from tqdm import tqdm

    def bar(iterable, desc=None, total=None):
        return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr)

    return bar
