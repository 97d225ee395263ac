"""The stage graph: the one place that says what a night's reduction does, in which order.

Each :class:`Stage` declares its step letter, its unit of work, the inputs it
reads (fields of its unit that hold files, known to caches by identity for raw
frames, :data:`RAW_FIELDS`, by content for the rest, and plain values), the
products it writes (kinds of :func:`qlcp.core.products.product_path`) and the
configuration keys it reads, and holds its runner, the function that does it
(:mod:`qlcp.core.steps`).  Both drivers walk :data:`STAGES` through
:func:`plan`: the plain driver (:mod:`qlcp.core.pipeline`) runs each unit in
turn, the Prefect flow (``qlcp.flows.night``) submits each as a task.  Cache
keys (``qlcp.tasks``) and the provenance keys in product headers
(:mod:`qlcp.core.provenance`) are derived from these declarations, and a stage
runs with a :class:`~qlcp.core.configview.ConfigView` that raises on any key it
did not declare, so the declarations cannot silently fall behind the code.  What
lists stages, products or step letters elsewhere is derived from here
(:data:`STEP_LETTERS`, :data:`GROUP_PRODUCTS`).

A new stage is one more entry in :data:`STAGES`, its runner, and the name of
any product it writes in :mod:`qlcp.core.products` (``docs/adding-a-stage.md``).
``python -m qlcp.core.stages`` prints the graph as a Markdown table (``docs/design.md``
shows it; ``python -m qlcp.core.docgen`` writes it there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

from .calibration import POLICY_KEYS
from .configview import FREE_KEYS   # the run-only settings every stage may read (fingerprint.py reads them here)
from .codehash import code_fingerprint
from .errors import ConfigError, QLCPError
from .products import group_kinds
from .steps.astrometry import run_astrometry
from .steps.calibration import run_bias, run_dark, run_flat, run_list
from .steps.correct import run_correct
from .steps.lightcurve import run_catalogue, run_chart, run_differential
from .steps.offsets import run_offsets
from .steps.photometry import run_correct_photometry, run_photometry
from .steps.select import run_select
from .steps.timing import run_timing

__all__ = ["BAND", "CHUNK", "FREE_KEYS", "FUSIONS", "GROUP", "GROUP_PRODUCTS", "NIGHT", "RAW_FIELDS", "STAGES",
           "STEP_LETTERS", "Block", "Fusion", "Stage", "config_problem", "night_code", "plan", "stage"]

#: unit fields holding the night's raw files (the camera's; QLCP never writes them): cache keys know
#: them by identity (name, size, mtime_ns), as the listing's key and the products' provenance keys
#: (:func:`qlcp.core.provenance.file_identity`) do, so both drivers redo the same work after a raw
#: frame is rewritten or touched, and a first run hashes no frame (``coord_file``: the group's raw
#: frame that gives the target's coordinate).  Other input files are known by content.
RAW_FIELDS = frozenset({"files", "bias_files", "dark_files", "flat_files", "coord_file"})

#: units of work: the whole night, one band (flats), a chunk of one group's frames, one (object, band) group
NIGHT, BAND, CHUNK, GROUP = "night", "band", "chunk", "group"

_DETECTOR = ("gain", "rdnoise", "saturation")
_TIMES = ("site_lon", "site_lat", "site_ele", "date_key", "time_key", "time_ref", "exptime_key", "ra_key",
          "dec_key", "alt_coord", "targets", "target_catalog", "object_key")
#: what a calibration stage reads to register its master in the library (with QC)
_LIBRARY = ("calib_library", "calib_dir", "date_key", "calib_qc_bias_level", "calib_qc_bias_structure",
            "calib_qc_flat_gradient", "calib_qc_flat_structure", "instrument", "calibrations")
_TIMING = ("timing_aperture", "timing_baseline", "timing_min_points", "timing_snr_min", "timing_clip",
           "timing_n_boot", "timing_seed", "timing_prayer_bead", "timing_ld", "timing_period", "timing_duration",
           "timing_window")
_PICK = ("pick_err_max", "pick_bad_max", "pick_var_std", "pick_var_rad", "pick_ref_n", "pick_ref_std",
         "pick_ref_dif", "pick_star_n", "pick_var_n", "pick_chk_n")


@dataclass(frozen=True)
class Stage:
    """One step of the reduction, as data.

    Attributes
    ----------
    letter : str
        The step letter of the manual (``steps="lbfiopwkcdgt"``).
    name : str
        Unique name.
    unit : str
        Unit of work: :data:`NIGHT`, :data:`BAND`, :data:`CHUNK` or :data:`GROUP`.
    files : tuple of str
        Fields of the unit holding input files (a path, or a list of paths); a field named
        after a product kind holds that product (``corrected``: the group's corrected frames).
    values : tuple of str
        Fields of the unit holding plain values (object, band, ...).
    writes : tuple of str
        Product kinds it writes.
    keys : tuple of str
        Configuration keys it reads (besides :data:`FREE_KEYS`).
    run : callable
        Its runner, ``run(ctx, unit, prev) -> dict`` (:mod:`qlcp.core.steps`).
    enabled_by : str
        Step letters that make it run (default: its own letter).
    task : str
        Name of the Prefect task of the stage run alone (default: its name).
    label : str
        Run label of its units (default: its name), followed by the band or group.
    doc : str
        One line for the design table.
    """

    letter: str
    name: str
    unit: str
    files: tuple[str, ...]
    values: tuple[str, ...]
    writes: tuple[str, ...]
    keys: tuple[str, ...]
    run: Callable[..., dict] | None = None
    enabled_by: str = ""
    task: str = ""
    label: str = ""
    doc: str = ""

    def enabled(self, steps: str) -> bool:
        """Whether it runs for ``steps`` (``enabled_by="*"``: always, e.g. the listing every stage needs)."""
        return self.enabled_by == "*" or any(s in steps for s in (self.enabled_by or self.letter))

    @property
    def code(self) -> str:
        """Fingerprint of the code this stage runs: its runner's module and every ``qlcp.core``
        module that imports, transitively (:func:`qlcp.core.codehash.code_fingerprint`)."""
        return code_fingerprint(self.run.__module__)


@dataclass(frozen=True)
class Block:
    """Stages run together as one unit of work (one Prefect task per unit).

    ``run``: the fused runner that does the stages in one pass; None: they run
    one after another, each seeing the results of those before it.
    """

    name: str
    stages: tuple[Stage, ...]
    run: Callable[..., dict] | None = None
    task_name: str = ""
    label: str = ""

    @property
    def unit(self) -> str:
        return self.stages[0].unit

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(sorted({k for s in self.stages for k in s.keys}))

    @property
    def files(self) -> tuple[str, ...]:
        """Input files of the block: every stage's, less what an earlier stage of the block writes."""
        out, made = [], set()
        for s in self.stages:
            out += [f for f in s.files if f not in made and f not in out]
            made |= set(s.writes)
        return tuple(out)

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v for s in self.stages for v in s.values))

    @property
    def writes(self) -> tuple[str, ...]:
        return tuple(w for s in self.stages for w in s.writes)

    @property
    def modules(self) -> tuple[str, ...]:
        """The modules of its stages' runners and of its fused runner."""
        return runner_modules(self.stages, (self.run,) if self.run else ())

    @property
    def code(self) -> str:
        """Fingerprint of the code the block runs (:attr:`modules` and what they import)."""
        return code_fingerprint(self.modules)


#: the stages, in the order they run (p before o: alignment reads the catalogues' star lists)
STAGES: tuple[Stage, ...] = (
    Stage("l", "list", NIGHT, (), ("raw_dir", "raw_files"), ("night_list",),
          ("patterns", "date_key", "time_key", "exptime_key", "filter_key", "object_key", "imagetyp_key", "obj",
           "band", "site_tz", "time_ref", "instruments_dir", "instrument"), run=run_list, enabled_by="*", task="list-night", label="l",
          doc="classify the raw files (bias, dark, flat per band, science per object and band)"),
    Stage("b", "bias", NIGHT, ("bias_files",), (), ("bias",),
          ("combine_sigma", "use_bias", "alt_bias", "exptime_key", *_LIBRARY), run=run_bias, label="b",
          doc="master bias (clipped median) of the frames that pass their own checks"),
    Stage("b", "dark", NIGHT, ("dark_files", "bias"), (), ("dark",),
          ("combine_sigma", "use_dark", "exptime_key", *_LIBRARY), run=run_dark,
          doc="master dark per second, when the night has darks"),
    Stage("f", "flat", BAND, ("flat_files", "bias", "dark"), ("band",), ("flat",),
          ("combine_sigma", "flat_limit_low", "flat_limit_high", "use_flat", "alt_flat", "use_dark",
           "exptime_key", *_LIBRARY), run=run_flat, label="f",
          doc="master flat of each band in use, normalised to 1"),
    Stage("i", "correct", CHUNK, ("files", "bias", "flat", "dark", "coord_file"), ("obj", "band"), ("corrected",),
          (*_TIMES, *_DETECTOR, "border_cut", "use_dark"), run=run_correct, label="i",
          doc="bias, dark, flat; JD/HJD/BJD_TDB and airmass in the header"),
    Stage("p", "photometry", CHUNK, ("corrected", "coord_file"), ("obj", "band"), ("frame_catalogue",),
          ("aper", *_DETECTOR, "detect_thresh", "detect_minarea", "sky_annulus", "draw_phot", "draw_phot_err",
           "phot_back_mesh", "phot_deblend_nthresh", "filter_key", "object_key", "frame_catalogues", "pick_star_n",
           "offset_max_dis", "starxy", "targets", "target_catalog", "pixel_scale"), run=run_photometry, label="p",
          doc="measure the group's reference frame in full; on the others its brightest stars, starxy and "
              "the targets on a header WCS, tracked from it (frame_catalogues: full, every source of every frame)"),
    Stage("o", "offsets", GROUP, ("corrected", "frame_catalogue"), ("obj", "band"), ("offsets", "offsets_txt"),
          ("offset_max_dis", "base_img", "saturation", "detect_minarea", "gain"), run=run_offsets, label="o",
          doc="offset of each frame against the base frame"),
    Stage("w", "astrometry", GROUP, ("offsets", "frame_catalogue", "target_catalog"), ("obj", "band"),
          ("wcs", "numbered_chart", "numbered_chart_txt"),
          ("astrometry_index", "pixel_scale", "solve_timeout", "solve_blind_timeout", "ra_key", "dec_key",
           "targets", "target_catalog", "field_dir", "starxy"), run=run_astrometry, label="w",
          doc="sky coordinates (WCS) of the base frame: its header's, checked, else solved offline "
              "(astrometry.net), else none"),
    Stage("k", "select", GROUP, ("frame_catalogue", "offsets", "wcs", "field_reference", "target_catalog", "pick"),
          ("obj", "band"), ("pick", "selection"),
          (*_PICK, "match_max_dis", "base_img", "saturation", "starxy", "ind_tgt", "ind_ref", "ind_chk", "steps",
           "targets", "target_catalog", "field_dir", "refresh_field", "pick_cmp_dmag"),
          run=run_select, enabled_by="kKc", task="select-stars", label="k",
          doc="target, comparison and check stars: last pick (K), given, the field's reference, known targets "
              "by sky position, or the automatic pick (k); writes the field reference on a field's first night"),
    Stage("c", "catalogue", GROUP, ("frame_catalogue", "offsets", "selection", "wcs"), ("obj", "band"),
          ("night_catalogue",),
          ("match_max_dis", "starxy", "base_img", "aper"), run=run_catalogue,
          doc="the chosen stars matched across the night's frames (with RA, Dec when step w found a WCS)"),
    Stage("d", "differential", GROUP, ("night_catalogue", "masters", "corrected"), ("obj", "band", "night"),
          ("lightcurve", "stars", "lc_png", "lc_pdf"),
          ("ind_tgt", "ind_ref", "ind_chk", "tel_diameter", "scint_cy", "site_ele", "gain", "rdnoise", "aper",
           "pick_bad_max", "sky_annulus", "ref_var_k"), run=run_differential,
          doc="differential light curves, noise budget, tables and plots"),
    Stage("t", "timing", GROUP, ("lightcurve", "selection", "target_catalog"), ("obj", "band"),
          ("timing", "timing_png"), (*_TIMING, "targets", "target_catalog"), run=run_timing,
          doc="times of minima and transits (symmetric model, Kwee-van Woerden, Mandel-Agol), BJD_TDB with "
              "errors; full, partial or none"),
    Stage("g", "chart", GROUP, ("stars", "offsets", "selection", "wcs"), ("obj", "band"), ("chart",), (),
          run=run_chart,
          doc="finding chart of the base frame with the chosen stars"),
)



class Fusion(NamedTuple):
    """Stages run as one unit of work (block ``name``, Prefect task ``task``) when more than one of them
    runs; with a fused runner ``run``, only when all of them run."""

    name: str
    stages: tuple[str, ...]
    run: Callable[..., dict] | None
    task: str


FUSIONS: tuple[Fusion, ...] = (
    Fusion("ip", ("correct", "photometry"), run_correct_photometry, "correct-photometry"),
    Fusion("lc", ("catalogue", "differential", "chart"), None, "lightcurve"),
)

BY_NAME = {s.name: s for s in STAGES}

#: every step letter, in the order the stages run (``steps`` holds some of them, and ``K``)
STEP_LETTERS = "".join(dict.fromkeys(s.letter for s in STAGES))

#: products of a group (one file each) that a failed group unit must not leave half made
GROUP_PRODUCTS = frozenset(k for s in STAGES if s.unit == GROUP for k in s.writes if k in group_kinds())


def stage(name: str) -> Stage:
    try:
        return BY_NAME[name]
    except KeyError:
        raise QLCPError(f"no stage named {name!r}") from None


def runner_modules(stages, fused=()) -> tuple[str, ...]:
    """The modules of the runners of ``stages`` and of the ``fused`` runners, sorted."""
    return tuple(sorted({s.run.__module__ for s in stages} | {f.__module__ for f in fused}))


def night_code() -> str:
    """Fingerprint of the code of every stage and fused runner: what a night's products depend on."""
    return code_fingerprint(runner_modules(STAGES, tuple(f.run for f in FUSIONS if f.run)))


def steps_problem(steps: str) -> str | None:
    """Why ``steps`` cannot run (a letter that is no stage's, nor ``K``), or None."""
    bad = "".join(sorted(set(steps) - set(STEP_LETTERS + "K")))
    return f"unknown step(s) {bad!r}; steps are {STEP_LETTERS} (K: reuse pick)" if bad else None


def config_problem(cfg) -> tuple[str, str] | None:
    """``("steps", why)`` when the config's steps name a letter no stage has: a check of
    :func:`qlcp.core.config.load_config` (which names the file that set it)."""
    why = steps_problem(cfg.steps)
    return ("steps", why) if why else None


def plan(steps: str) -> list[Block]:
    """The blocks to run for ``steps``, in order: enabled stages, fused where :data:`FUSIONS` says."""
    if why := steps_problem(steps):
        raise ConfigError(f"key 'steps': {why} (got {steps!r})")
    on = [s for s in STAGES if s.enabled(steps)]
    names = {s.name for s in on}
    blocks, used = [], set()
    for s in on:
        if s.name in used:
            continue
        fusion = next((f for f in FUSIONS if s.name in f.stages), None)
        members = tuple(stage(n) for n in fusion.stages if n in names) if fusion else ()
        if fusion and len(members) > 1 and (fusion.run is None or len(members) == len(fusion.stages)):
            blocks.append(Block(fusion.name, members, fusion.run, fusion.task, fusion.name))
            used |= {m.name for m in members}
        else:
            blocks.append(Block(s.name, (s,), None, s.task or s.name, s.label or s.name))
            used.add(s.name)
    return blocks


#: what the drivers themselves read to walk the graph (groups to run, which masters apply)
WALK_KEYS = ("obj", "band", "field_dir", "target_catalog", "date_key", "ra_key", "dec_key", "keep_corrected",
             *POLICY_KEYS)


# ------------------------------------------------------------ documentation
def _where(run) -> str:
    """``run``'s file in the repository and name, e.g. ``qlcp_core/steps/photometry.py`` ``run_photometry``."""
    return f"`{run.__name__}` in `qlcp_core/{run.__module__.removeprefix('qlcp.core.').replace('.', '/')}.py`"


def markdown_table() -> str:
    """The graph as a Markdown table (``docs/design.md``, written by :mod:`qlcp.core.docgen`)."""
    rows = ["| # | step | stage | runner | unit of work | reads | writes | config keys |",
            "|---|---|---|---|---|---|---|---|"]
    for i, s in enumerate(STAGES, 1):
        rows.append(f"| {i} | `{s.letter}` | **{s.name}**: {s.doc} | {_where(s.run)} | {s.unit} | "
                    f"{', '.join(s.files + s.values)} | {', '.join(s.writes)} | "
                    f"{', '.join(f'`{k}`' for k in s.keys) or '-'} |")
    fused = "; ".join(f"{', '.join(f.stages)} run as one `{f.task}` unit"
                      + (f" ({_where(f.run)})" if f.run else "") for f in FUSIONS)
    return "\n".join(rows) + f"\n\nFused when more than one of them runs: {fused} (i and p only together).\n"


def code_table() -> str:
    """Each stage's code fingerprint and runner, one line each, then the night's
    (``python -m qlcp.core.stages --code``: run it before and after an upgrade)."""
    return "\n".join(f"{s.letter} {s.name:<13} {s.code}  {s.run.__module__}.{s.run.__name__}" for s in STAGES) \
        + f"\nnight           {night_code()}"


if __name__ == "__main__":
    import sys

    print(code_table() if "--code" in sys.argv[1:] else markdown_table())
