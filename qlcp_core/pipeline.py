"""The plain (no orchestration) driver: ``run()`` with the manual's signature.

It runs the steps in order, one (object, band) group after another, logging
each step to ``{red}/log/{step}.log``.  The Prefect night flow (``flows``)
composes the very same stage functions as tasks; this driver is what
``qlcp run --no-prefect`` and ``from qlcp_core import run`` use.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import bias as bias_mod
from . import dark as dark_mod
from . import flat as flat_mod
from .config import Config, load_config
from . import offset as off_mod
from . import parallel
from . import steps as _steps
from .errors import InputError, QLCPError
from .io import write_text
from .listing import Night, list_night, read_night
from .logs import progress_factory, setup_screen, step_log
from .runtime import configure_run
from .workmode import workmode

log = logging.getLogger("qlcp.pipeline")


@dataclass
class GroupResult:
    """What happened to one (object, band) group."""

    obj: str
    band: str
    frames: int = 0
    corrected: int = 0
    rejected: list = field(default_factory=list)
    products: dict = field(default_factory=dict)
    noise: list = field(default_factory=list)
    error: str = ""


@dataclass
class RunSummary:
    """Summary of a night's reduction (JSON-ready with :meth:`to_dict`)."""

    raw_dir: str
    red_dir: str
    steps: str
    config_hash: str
    listing: str = ""
    rejected: list = field(default_factory=list)
    masters: dict = field(default_factory=dict)
    groups: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)     #: wall seconds per step

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def failed(self) -> list:
        return [g for g in self.groups if g.error]


def check_dirs(raw_dir: str | Path, red_dir: str | Path) -> tuple[Path, Path]:
    """Validate the directories: raw exists; red is neither raw nor inside it."""
    raw = Path(raw_dir).expanduser()
    red = Path(red_dir).expanduser()
    if not raw.is_dir():
        raise InputError(f"{raw}: raw directory not found")
    r_raw, r_red = raw.resolve(), red.resolve()
    if r_red == r_raw or r_raw in r_red.parents:
        raise InputError(f"{red}: the output directory must not be the raw directory or inside it")
    try:
        red.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{red}: cannot create output directory ({e.strerror})") from None
    return raw, red


def make_config(ini_file=None, **params) -> Config:
    """Config from files (``ini_file``) and call arguments; ``None`` arguments are 'not given'."""
    return load_config(ini_file, {k: v for k, v in params.items() if v is not None})


def write_effective_config(red: Path, cfg: Config) -> Path:
    return write_text(red / "config.yaml", "# effective configuration of the last run (QLCP)\n" + cfg.to_yaml())


@contextlib.contextmanager
def _step(red: Path, cfg: Config, step: str, timings: dict | None):
    """Log the block to ``{red}/log/{step}.log`` and add its wall time to ``timings[step]``."""
    t0 = time.perf_counter()
    with step_log(red, step, cfg.file_log):
        try:
            yield
        finally:
            if timings is not None:
                timings[step] = timings.get(step, 0.0) + time.perf_counter() - t0


def get_night(raw: Path, red: Path, cfg: Config, progress=None, timings: dict | None = None) -> Night:
    """Step l when asked (writes the lists); otherwise classify without rewriting them."""
    if "l" in cfg.steps or not (red / "lst" / "night.ecsv").is_file():
        with _step(red, cfg, "l", timings):
            return list_night(raw, red, cfg, write="l" in cfg.steps, progress=progress)
    return read_night(red, raw)


def run(raw_dir, red_dir, steps: str | None = None, obj=None, band=None, use_bias=None, use_flat=None,
        alt_bias=None, alt_flat=None, alt_coord=None, base_img=None, aper=None, starxy=None, ind_tgt=None,
        ind_ref=None, ind_chk=None, mode: workmode | None = None, ini_file=None, progress=None,
        config: Config | None = None, **kwargs) -> RunSummary:
    """Reduce one night: the manual's ``qlcp.run``.

    Parameters are those of QLCP v2024.6 (see the configuration reference in
    the README); any other keyword is a configuration setting.  ``config``
    passes a ready :class:`Config` instead (then the other settings are ignored).

    Returns
    -------
    RunSummary
    """
    configure_run()                         # this process's settings for a run (no IERS download, ...)
    cfg = config or make_config(
        ini_file, steps=steps, obj=obj, band=band, use_bias=use_bias, use_flat=use_flat, alt_bias=alt_bias,
        alt_flat=alt_flat, alt_coord=alt_coord, base_img=base_img, aper=aper, starxy=starxy, ind_tgt=ind_tgt,
        ind_ref=ind_ref, ind_chk=ind_chk, mode=mode, **kwargs)
    setup_screen(cfg.scr_log)
    raw, red = check_dirs(raw_dir, red_dir)
    if progress is None:
        progress = progress_factory()
    write_effective_config(red, cfg)
    summary = RunSummary(str(raw), str(red), cfg.steps, cfg.hash())
    if any(s in cfg.steps for s in "ip"):
        parallel.warm(cfg.workers)          # worker processes start while l, b, f run

    night = get_night(raw, red, cfg, progress, summary.timings)
    summary.listing = night.summary()
    summary.rejected = [(r["file"], r["reason"]) for r in night.rejected]
    groups = night.science_groups(cfg.obj, cfg.band)
    if not groups and not night.bias and not night.flat_bands:
        raise InputError(f"{raw}: no usable FITS frames in this night ({night.summary()})")
    if not groups:
        log.warning("%s: no science frames%s", raw, " for the requested obj/band" if cfg.obj or cfg.band else "")

    masters = calibrate(night, red, cfg, groups, progress, summary.timings)
    _steps.preload_plotting(cfg)            # overlaps i and p, where this process mostly waits
    summary.masters = {k: (str(v) if v else None) for k, v in masters.items()}

    for o, b in groups:
        g = GroupResult(o, b, frames=len(night.science(o, b)))
        try:
            reduce_group(night, red, cfg, o, b, masters, g, progress, summary.timings)
        except QLCPError as e:
            g.error = str(e)
            log.error("%s %s: %s", o, b, e)
        summary.groups.append(g)
    if groups and len(summary.failed) == len(groups):
        raise QLCPError(f"{raw}: every group failed; first: {summary.failed[0].error}")
    return summary


def calibrate(night: Night, red: Path, cfg: Config, groups, progress=None, timings: dict | None = None) -> dict:
    """Steps b (bias, and darks when present) and f (flats of the bands in use)."""
    masters: dict = {}
    if "b" in cfg.steps:
        with _step(red, cfg, "b", timings):
            _steps.bias_step(red, cfg, night.bias, progress)
            _steps.dark_step(red, cfg, night.dark, bias_mod.select_bias(red, cfg), progress)
    needs_cal = any(s in cfg.steps for s in "fi")
    masters["bias"] = _s(bias_mod.select_bias(red, cfg)) if needs_cal else None
    masters["dark"] = _s(dark_mod.select_dark(red, cfg)) if needs_cal else None
    bands = sorted({b for _, b in groups})
    if "f" in cfg.steps:
        with _step(red, cfg, "f", timings):
            for b in bands:
                masters[f"flat_{b}"] = _steps.flat_step(red, cfg, b, night.flat(b), masters["bias"],
                                                       masters["dark"], progress)
    elif "i" in cfg.steps:
        for b in bands:
            masters[f"flat_{b}"] = _s(flat_mod.select_flat(red, cfg, b))
    return masters


def _s(p):
    return None if p is None else str(p)


def reduce_group(night: Night, red: Path, cfg: Config, obj: str, band: str, masters: dict, g: GroupResult,
                 progress=None, timings: dict | None = None) -> None:
    """Steps i o p k c d g for one (object, band) group, in order."""
    files = night.science(obj, band)
    cal = (masters.get("bias"), masters.get(f"flat_{band}"), masters.get("dark"))
    stats = None
    if "i" in cfg.steps and "p" in cfg.steps:      # both: one pass, each frame measured while fresh
        t0 = time.perf_counter()
        with step_log(red, "i", cfg.file_log, tagged=True), step_log(red, "p", cfg.file_log, tagged=True):
            res, stats, busy = _steps.correct_photometry_step(red, cfg, obj, band, files, *cal, progress)
        if timings is not None:     # the wall time, shared as the workers' time was
            wall, total = time.perf_counter() - t0, sum(busy.values()) or 1.0
            for s in "ip":
                timings[s] = timings.get(s, 0.0) + wall * busy[s] / total
        g.rejected.extend(res["rejected"])
    elif "i" in cfg.steps:
        with _step(red, cfg, "i", timings):
            res = _steps.correct_step(red, cfg, obj, band, files, *cal, progress)
        g.rejected.extend(res["rejected"])
    bf = _steps.corrected_files(red, obj, band, files)
    g.corrected = len(bf)
    # p before o: photometry needs no offsets, and alignment then reads the
    # catalogues' star lists instead of searching every image again
    if "p" in cfg.steps and stats is None:
        with _step(red, cfg, "p", timings):
            stats = _steps.photometry_step(red, cfg, bf, progress)
    if stats:
        g.rejected.extend([Path(s["bf"]).name, s["error"]] for s in stats if s.get("error"))
    if "o" in cfg.steps:
        with _step(red, cfg, "o", timings):
            g.products["offsets"] = _steps.offset_step(red, cfg, obj, band, bf)
    if not any(s in cfg.steps for s in "kKcdg"):
        return
    cats = _steps.catalogue_files(bf)
    offsets = str(off_mod.offset_paths(red, obj, band)[0])
    if any(s in cfg.steps for s in "kKc"):
        with _step(red, cfg, "k", timings):
            sel = _steps.selection_for(red, cfg, obj, band, cats, offsets)
        if "c" in cfg.steps:
            with _step(red, cfg, "c", timings):
                g.products["catalogue"] = _steps.catalogue_step(red, cfg, obj, band, cats, offsets, sel)
    if "d" in cfg.steps:
        with _step(red, cfg, "d", timings):
            res = _steps.differential_step(red, cfg, obj, band, str(_steps.catalogue_path(red, obj, band)),
                                          night=night_name(night))
        g.products.update(lightcurve=res["lc"], plot=res["png"])
        g.noise = res["noise"]
    if "g" in cfg.steps:
        with _step(red, cfg, "g", timings):
            g.products["chart"] = _steps.graph_step(red, cfg, obj, band)


def night_name(night: Night) -> str:
    return Path(night.raw_dir).resolve().name
