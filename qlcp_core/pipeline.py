"""The plain (no orchestration) driver: ``run()`` with the manual's signature.

It walks the stage graph (:mod:`qlcp.core.stages`, through :class:`~qlcp.core.walk.NightWalk`)
one unit of work after another, logging each step to ``{red}/log/{step}.log``.
The Prefect night flow (``qlcp.flows.night``) walks the same graph with every
unit a task; this driver is what ``qlcp run --no-prefect`` and
``from qlcp.core import run`` use.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from . import fingerprint as night_fp
from . import parallel
from . import steps as _steps
from .config import Config
from .errors import OutputError, QLCPError
from .listing import raw_identities
from .logs import progress_factory, setup_screen, step_log
from .runguard import guarded_run
from .runsetup import check_site, for_night, make_config, write_effective_config
from .stages import CHUNK, plan
from .summary import NightSummary
from .walk import NightWalk
from .runtime import configure_run
from .workmode import workmode

log = logging.getLogger("qlcp.pipeline")


#: the summary of a run (kept under its old name for callers)
RunSummary = NightSummary




@contextlib.contextmanager
def _logs(red: Path, cfg: Config, letters: str):
    """Log the block to ``{red}/log/{step}.log`` of each step letter (each file its own records)."""
    with contextlib.ExitStack() as stack:
        for s in letters:
            stack.enter_context(step_log(red, s, cfg.file_log, tagged=len(letters) > 1))
        yield


def run(raw_dir, red_dir, steps: str | None = None, obj=None, band=None, use_bias=None, use_flat=None,
        alt_bias=None, alt_flat=None, alt_coord=None, base_img=None, aper=None, starxy=None, ind_tgt=None,
        ind_ref=None, ind_chk=None, mode: workmode | None = None, ini_file=None, progress=None,
        config: Config | None = None, **kwargs) -> NightSummary:
    """Reduce one night: the manual's ``qlcp.run``.

    Parameters are those of QLCP v2024.6 (see the configuration reference,
    ``docs/configuration.md``); any other keyword is a configuration setting.  ``config``
    passes a ready :class:`Config` instead (then the other settings are ignored).

    It walks the stage graph (:mod:`qlcp.core.stages`), one unit of work after
    another, and writes ``{red}/summary.json``.

    Returns
    -------
    NightSummary
    """
    configure_run()                         # this process's settings for a run (no IERS download, ...)
    t0 = time.perf_counter()
    cfg = config or make_config(
        ini_file, steps=steps, obj=obj, band=band, use_bias=use_bias, use_flat=use_flat, alt_bias=alt_bias,
        alt_flat=alt_flat, alt_coord=alt_coord, base_img=base_img, aper=aper, starxy=starxy, ind_tgt=ind_tgt,
        ind_ref=ind_ref, ind_chk=ind_chk, mode=mode, **kwargs)
    setup_screen(cfg.scr_log)
    if not cfg.instruments_dir:
        check_site(cfg)
    with guarded_run(raw_dir, red_dir) as (raw, red):      # one run per red: its lock, a clean start
        cfg = for_night(cfg, raw)           # the night's instrument and its settings (a registry configured)
        night_fp.forget(red)                # until this run ends well, reprocess runs the night again
        walk = _walk(raw, red, cfg, progress)
        summary = walk.finish()
        summary.run["seconds"] = round(time.perf_counter() - t0, 2)
        summary.write()
        walk.check()                        # every group failed: an error, after the summary is written
        night_fp.record(red, walk.raw_files, cfg, summary.to_dict())    # what reprocess compares to skip it
    return summary


def _walk(raw: Path, red: Path, cfg: Config, progress) -> NightWalk:
    """Walk the stage graph one unit after another.

    A unit's :class:`QLCPError` is that unit's failure, recorded for its group; an
    :class:`OutputError` (read-only, full or forbidden output) stops the run.
    """
    write_effective_config(red, cfg)
    if any(b.unit == CHUNK for b in plan(cfg.steps)):
        parallel.warm(cfg.workers)          # worker processes for the frame stages start while l, b, f run
    walk = NightWalk(raw, red, cfg, raw_identities(raw), driver="plain")
    ctx = _steps.RunContext(str(red), cfg, progress or progress_factory(), log=lambda s: _logs(red, cfg, s))
    for block in walk.blocks:
        if block is next((b for b in walk.blocks if b.unit == CHUNK), None):
            _steps.preload_plotting(cfg)    # overlaps i and p, where this process mostly waits
        for label, unit in walk.units(block):
            try:
                walk.record(block, label, unit, _steps.run_block(block, cfg, ctx, unit))
            except OutputError:
                raise
            except QLCPError as e:
                walk.fail(block, label, unit, str(e))
        walk.finish_block(block)
    return walk
