"""Configuration: one typed, validated model of every setting and run parameter.

Sources and precedence are those of QLCP v2024.6: call arguments > config
files (later files override earlier ones) > defaults.  Files are YAML (the
primary format) or the original's INI form (``key = value`` lines, no
section, Python literals such as ``logging.DEBUG`` allowed).

Any unknown key, wrong type or impossible value raises :class:`ConfigError`
naming the key and the file it came from, before any work starts::

    >>> load_config(["site.yaml"], {"aper": [4, 6, 8]})      # doctest: +SKIP
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .workmode import workmode

#: default file-name patterns (applied with ``re.search``), from the manual
DEFAULT_PATTERNS = [
    r"(?P<date>[0-9]{0,8})(?P<obj>[^-_]*)-(?P<sn>[0-9]{3,6})(?P<band>[a-zA-Z]{0,1})\.f(it|its|ts)(\.fz)?$",
    r"(?P<date>[0-9]{0,8})(?P<obj>[^-_]*)_(?P<band>[a-zA-Z]{0,1})(_{0,1})(?P<sn>[0-9]{3,6})\.f(it|its|ts)(\.fz)?$",
    r"(?P<date>[0-9]{0,8})(?P<obj>flat)_(?P<band>[a-zA-Z])_(?P<sn>[0-9]{1,2})_[a-zA-Z]_([0-9]{3,6})\.f(it|its|ts)(\.fz)?$",
]

#: the default ``steps``: every stage's letter, in the manual's order (the order is part of the config's hash)
DEFAULT_STEPS = "lbfiopwkcdgt"
MAX_APERTURES = 19

_LOG_LEVELS = {"CRITICAL": 50, "ERROR": 40, "WARNING": 30, "WARN": 30, "INFO": 20, "DEBUG": 10, "NOTSET": 0}


def _level(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("a logging level name or number")
    if isinstance(v, int):
        return v
    name = str(v).strip().upper()
    if name.startswith("LOGGING."):
        name = name[8:]
    if name in _LOG_LEVELS:
        return _LOG_LEVELS[name]
    raise ValueError(f"unknown logging level {v!r}")


def _as_list(v: Any) -> Any:
    if v is None or isinstance(v, (list, tuple)):
        return v
    return [v]


class Config(BaseModel):
    """Every setting of a reduction.  Field docs are the configuration reference."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
    #: where each value given came from (key -> file, ``instrument NAME (file)``, ``argument``)
    _sources: dict = PrivateAttr(default_factory=dict)
    #: the layers it was made from, lowest first: ``[(source, {key: value})]`` (:func:`load_layers`)
    _layers: list = PrivateAttr(default_factory=list)

    # ----------------------------------------------------------- run parameters
    steps: str = Field(DEFAULT_STEPS, description="steps to run, the manual's letters: l list, b bias and dark, f flat, "
                                              "i correct, p photometry, o offsets, w astrometry, k pick the stars, "
                                              "c catalogue, d differential photometry, g finding chart, t event "
                                              "timing; K reuses the last pick")
    obj: list[str] | None = Field(None, description="objects to process (default: all); a name or a list")
    band: list[str] | None = Field(None, description="bands to process (default: all); 'BVR' means B, V, R")
    use_bias: str | None = Field(None, description="master bias (FITS path) to use instead of tonight's")
    use_flat: dict[str, str] | None = Field(None, description="master flat to use instead of tonight's: per band "
                                                              "{V: path}, or one path for every band")
    use_dark: str | None = Field(None, description="master dark (ADU per second of exposure) to use instead of "
                                                   "tonight's darks")
    alt_bias: str | None = Field(None, description="master bias used when tonight has none and the calibration "
                                                   "library none either")
    alt_flat: dict[str, str] | None = Field(None, description="master flat used when tonight has none and the "
                                                              "calibration library none either: per band {V: path}, "
                                                              "or one path for every band")
    alt_coord: dict[str, tuple[str, str]] | tuple[str, str] | None = Field(
        None, description="sky position for HJD, BJD_TDB and airmass when no configured target is named like the "
                          "group: [ra, dec] (hh:mm:ss, +dd:mm:ss or degrees), one pair for all or per object {obj: "
                          "[ra, dec]}; default: a target on the frame, else the header RA/DEC")
    base_img: int | str | None = Field(0, description="alignment base: index from 0 or a file name/path (same "
                                                      "telescope); the default first frame is replaced, with a "
                                                      "warning, by the group's frame with most stars when it has "
                                                      "too few stars, aligns with under half the frames or shares "
                                                      "under half their field; a base given here is kept")
    aper: list[float] = Field([5.0], description="aperture radii in px, 1 to 19 of them; a negative radius is a "
                                                 "multiple of the frame's FWHM")
    starxy: dict[str, list[tuple[float, float]]] | list[tuple[float, float]] | None = Field(
        None, description="star positions (x, y, 0-based) in the base image; list for all or per object")
    ind_tgt: dict[str, list[int]] | list[int] | None = Field(None,
        description="indexes into starxy of the targets; list for all or per object (default: 0)")
    ind_ref: dict[str, list[int]] | list[int] | None = Field(None,
        description="indexes into starxy of the comparison stars; list for all or per object (default: the stars "
                    "that are neither target nor check)")
    ind_chk: dict[str, list[int]] | list[int] | None = Field(None,
        description="indexes into starxy of the check stars; list for all or per object (default: none)")
    mode: Any = Field(default_factory=workmode, description="work mode: one EXIST_* choice (SKIP, OVER, APPEND, "
                                                            "ERROR) and one MISS_* choice (SKIP, ERROR), as names "
                                                            "or the manual's workmode sum; see Work modes")

    workers: int | None = Field(None, ge=1, description="processes for frame-level work (default: all CPUs)")

    # ----------------------------------------------------------------- logging
    file_log: int = Field(logging.DEBUG, description="level of {red}/log/{step}.log (a name such as DEBUG, or a "
                                                     "number), on both drivers")
    scr_log: int = Field(logging.INFO, description="level of screen logging, on both drivers (a flow run's logs in "
                                                   "the UI keep every INFO record)")

    # ------------------------------------------------------------- instruments
    instruments_dir: str | None = Field(None, description="the instrument registry: a directory of instrument "
                                        "files (one YAML file per camera, docs/instruments.md), or 'builtin' for "
                                        "the examples shipped with QLCP; each night's instrument is chosen from "
                                        "its frames' headers and its settings apply under the night's own (frames "
                                        "of no instrument, two or another one are rejected). None: no registry, "
                                        "the site config is the one camera")
    instrument: str | None = Field(None, description="the night's instrument (a name of the registry): set by "
                                   "the run from the headers; given, it is used for the night instead")
    calibrations: list[Literal["bias", "dark", "flat"]] | None = Field(
        None, description="the calibrations the camera needs (an instrument file's calibrations): a kind not "
                          "listed that the night has no frames of is not taken from the library or alt_*, and its "
                          "absence leaves the night ok; 'none' or []: a camera that delivers calibrated frames. "
                          "None: bias and flat (a dark when the night has darks)")

    # -------------------------------------------------------------------- site
    site_lon: float = Field(117.57722, ge=-180, le=360, description="site longitude, degrees east (default: "
                                                                    "Xinglong)")
    site_lat: float = Field(40.395833, ge=-90, le=90, description="site latitude, degrees north (default: Xinglong)")
    site_ele: float = Field(960.0, ge=-500, le=6000, description="site height above sea level, m")
    site_tz: float = Field(8, ge=-12, le=14, description="site time zone, hours from UTC; an IANA name "
                           "(America/Phoenix) is accepted too: it sets site_timezone and these hours (standard time)")
    site_timezone: str | None = Field(None, description="site time zone as an IANA name (America/Phoenix); "
                                      "schedules use it; default: from site_tz hours")
    tel_diameter: float = Field(0.85, gt=0, le=50, description="telescope aperture diameter, m (the scintillation "
                                                               "term of the noise budget)")
    scint_cy: float = Field(1.5, gt=0, description="Young's scintillation coefficient C_Y (Osborn et al. 2015)")

    # ------------------------------------------------------ file names, headers
    patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_PATTERNS),
                                description="file-name regexes (re.search) with named groups obj, band, sn; the "
                                            "FITS header decides when no pattern matches")
    date_key: str = Field("DATE-OBS", description="header keyword of the observation date(-time)")
    time_key: str | None = Field("TIME-OBS", description="keyword with the time when date_key holds only a date")
    time_ref: Literal["start", "mid"] = Field("start", description="what the date keyword marks: exposure start or mid")
    exptime_key: str = Field("EXPTIME", description="exposure time keyword (s)")
    filter_key: str = Field("FILTER", description="filter keyword")
    object_key: str = Field("OBJECT", description="object name keyword")
    imagetyp_key: str = Field("IMAGETYP", description="frame type keyword (OBSTYPE is also tried)")
    ra_key: str = Field("RA", description="target RA keyword (OBJCTRA is also tried)")
    dec_key: str = Field("DEC", description="target Dec keyword (OBJCTDEC is also tried)")

    # ------------------------------------------------------------- detector
    gain: float | None = Field(None, gt=0, description="e-/ADU; None: header GAIN, else the master flat's "
                                                       "photon-transfer estimate, else the sky of two science "
                                                       "frames, else 1 (the corrected frames' GAINSRC says which)")
    rdnoise: float | None = Field(None, ge=0, description="read noise, e-; None: header RDNOISE, else the bias "
                                                          "pairs' estimate, else 0 (the corrected frames' RDNSRC "
                                                          "says which)")
    saturation: float | None = Field(None, gt=0, description="saturation level of the raw frames, ADU; None: header "
                                                             "SATURATE (or DATAMAX, SATLEVEL), else 65535 for 8- "
                                                             "and 16-bit frames (the automatic pick assumes 60000 "
                                                             "when a catalogue names none)")

    # ----------------------------------------------------------- calibration
    combine_sigma: float = Field(3.0, gt=0, description="sigma of the clipped median combine of bias, dark and flat "
                                                        "frames")
    combine_mem_mb: float = Field(8.0, gt=0, description="memory for one block of the combine, MiB (at least "
                                  "8 rows a block; small blocks stay in the CPU caches)")
    flat_limit_low: float = Field(5000, description="flats with a median below this are rejected (ADU)")
    flat_limit_high: float = Field(50000, description="flats with a median above this are rejected (ADU)")
    border_cut: int = Field(0, ge=0, description="pixels cut from each edge of the corrected frames (step i)")

    # ------------------------------------------------------------ photometry
    draw_phot: bool = Field(False, description="draw a PNG of each frame with its good stars marked (step p)")
    draw_phot_err: float = Field(0.05, gt=0, description="stars with magnitude errors below this are drawn on "
                                                         "draw_phot's PNGs")
    detect_thresh: float = Field(3.0, gt=0, description="source detection threshold, sigma above sky")
    detect_minarea: int = Field(5, ge=1, description="minimum pixels of a detected source")
    phot_back_mesh: int = Field(64, ge=16, description="sep background mesh, px, of frames measured in full "
                                                       "(tracked frames: at least 128 px while 8 meshes fit a side, "
                                                       "5 ms faster per 1024^2 frame; AUTO fluxes degrade on "
                                                       "structured skies)")
    phot_deblend_nthresh: int = Field(32, ge=1, le=64, description="sep deblending levels (16 is faster; may "
                                                                     "differ only for close blends)")
    sky_annulus: tuple[float, float] | None = Field(
        None, description="local sky annulus inner, outer radius (px); None: largest aperture + 4 .. + 28 px")

    # -------------------------------------------------------------- alignment
    offset_max_dis: float = Field(250, gt=0, description="largest offset searched around the base frame's position, "
                                                         "px (a walk out from the base frame follows larger drifts "
                                                         "over a night)")
    match_max_dis: float = Field(10.0, gt=0, description="largest distance at which a star is matched across "
                                                         "frames, px")

    # ------------------------------------------------------------- astrometry
    astrometry_index: list[str] = Field(
        default_factory=lambda: ["/usr/share/astrometry"] if Path("/usr/share/astrometry").is_dir() else [],
        description="directories of astrometry.net index files (index*.fits) for step w; default "
                    "/usr/share/astrometry when it exists")
    pixel_scale: float | None = Field(None, gt=0, description="pixel-scale hint for step w, arcsec/px; None: header "
                                                              "IM_SCALE, PIXSCALE, SECPIX or the header WCS")
    solve_timeout: float = Field(30.0, gt=0, le=3600, description="wall-time budget of step w's plate solves with a "
                                 "position hint (configured targets, header RA/DEC), s")
    solve_blind_timeout: float = Field(10.0, gt=0, le=10, description="wall-time budget of a blind plate solve (no "
                                       "position hint), s; at most 10")

    # ---------------------------------------------------------------- picking
    pick_err_max: float = Field(0.02, gt=0, description="largest AUTO magnitude error of a star the automatic pick "
                                                        "counts as good")
    pick_bad_max: float = Field(0.2, ge=0, le=1, description="largest fraction of frames a star may miss")
    pick_var_std: float = Field(0.05, gt=0, description="smallest night std of a variable candidate, mag")
    pick_var_rad: float = Field(0.5, gt=0, le=1, description="variable candidates must lie within this fraction of "
                                                             "the half-size from the frame's centre")
    pick_ref_n: int = Field(20, ge=1, description="most comparison stars picked")
    pick_ref_std: float = Field(0.05, gt=0, description="largest night std of a comparison star, mag")
    pick_ref_dif: float = Field(0.10, gt=0, description="largest max-min range of a comparison star, mag")
    pick_star_n: int = Field(500, ge=1, description="most stars examined by the automatic pick (and measured "
                             "on every frame with frame_catalogues: stars)")
    frame_catalogues: Literal["stars", "full"] = Field(
        "stars", description="step p: 'stars' measures each group's reference frame (its first) in full and, on "
                             "every other frame, only the reference's pick_star_n brightest unsaturated sources and "
                             "the starxy positions, tracked from it (shift, or similarity after a flip) and "
                             "recentred, so the per-frame cost no longer grows with the field's crowding; a frame "
                             "that does not align, and the reference, keep every source. Targets by sky position "
                             "(targets, target_catalog) are placed on the reference through its header WCS and "
                             "measured on every frame however faint; without a header WCS a target fainter than the "
                             "pick_star_n-th source needs 'full', a larger pick_star_n or its starxy. 'full': every "
                             "source of every frame (the original's catalogues)")
    keep_corrected: bool = Field(True, description="keep every corrected frame (float32, ~2x the raw night on "
                                 "disk); false: once a group's light curve is written, remove its corrected frames "
                                 "but the base frame (a rerun corrects them again and costs about a first run)")
    results_url: str | None = Field(
        default_factory=lambda: os.environ.get("QLCP_RESULTS_URL") or None,
        description="how the Prefect UI shows the light-curve and campaign images: the URL at which a web "
                    "server serves the output root (the parent of a night's output directory), e.g. "
                    "http://obs.example/qlcp/; unset: $QLCP_RESULTS_URL (qlcp up sets it to its own results "
                    "server), else a link artifact with the PNG's file:// path; 'embed': the PNG itself in the "
                    "database (~0.2 MB a night, twice)")
    pick_var_n: int = Field(10, ge=1, description="most targets picked")
    pick_chk_n: int = Field(2, ge=0, description="most check stars picked")
    ref_var_k: float = Field(3.0, gt=1, description="a comparison whose scatter against the others exceeds this "
                                                     "multiple of its predicted noise is rejected as variable")

    # ------------------------------------------------------- targets, fields
    targets: list[dict] | None = Field(
        None, description="targets by sky position: [{name, ra, dec}] (ra hh:mm:ss or degrees, dec +dd:mm:ss or "
                          "degrees; optional aliases, t0, period, duration, depth, kind); every one that falls on "
                          "the base frame (through its WCS) is a target, with comparisons and checks chosen for it. "
                          "A frame's OBJECT matches a name ignoring case, spaces, dashes and underscores (HATP-32 = "
                          "HAT-P-32)")
    target_catalog: str | None = Field(None, description="ECSV or CSV file of targets with the columns of `targets` "
                                                         "(aliases separated by ';'); `targets` wins on a name")
    field_dir: str | None = Field(None, description="where field references live (one ECSV per field, named after "
                                                    "the object, shared by its nights): the first night of a field "
                                                    "writes its target, comparisons, checks and pattern stars; "
                                                    "later nights use them, matched by WCS or by star pattern "
                                                    "(shifts, rotations, meridian flips); a star lost tonight is "
                                                    "dropped and reported, never replaced. None: $QLCP_FIELD_DIR, "
                                                    "else {red}/../fields")
    refresh_field: bool = Field(False, description="rebuild the field reference of this night's fields from "
                                                   "tonight's choice")
    pick_cmp_dmag: float = Field(1.5, gt=0, description="comparisons for a known target: within this many "
                                                        "magnitudes of the target's brightness, nearest in "
                                                        "brightness first (stable, isolated, unsaturated, present "
                                                        "in at least 1 - pick_bad_max of the frames)")

    # ---------------------------------------------------- calibration library
    calib_library: bool = Field(True, description="register every master in the calibration library and use "
                                                  "its nearest good master when a night has none")
    calib_dir: str | None = Field(None, description="the calibration library (masters + calib.sqlite); None: "
                                                    "$QLCP_CALIB_DIR, else {red}/../calib (the service: "
                                                    "RED_ROOT/calib, shared by all nights)")
    calib_max_age_days: dict[str, float] = Field(
        default_factory=lambda: {"bias": 30.0, "dark": 30.0, "flat": 14.0},
        description="how far in time a library master may be from the night, days, per kind")
    calib_prefer_earlier: bool = Field(False, description="use only library masters made before the night")
    calib_qc_bias_level: float = Field(50.0, gt=0, description="QC: largest level change of a new master bias "
                                                               "against the previous good one, ADU (beyond it: a "
                                                               "new epoch of the camera); also each bias frame's "
                                                               "level against the night's others")
    calib_qc_bias_structure: float = Field(3.0, gt=0, description="QC: largest rms of the 32 px block medians of "
                                                                  "(new - previous) master bias, ADU (beyond it: a "
                                                                  "new epoch of the camera)")
    calib_qc_flat_gradient: float = Field(0.02, gt=0, description="QC: largest peak-to-peak plane of new / previous "
                                                                  "master flat over the frame (beyond it, lights on "
                                                                  "or a twilight gradient: the new master is "
                                                                  "rejected)")
    calib_qc_flat_structure: float = Field(0.01, gt=0, description="QC: largest small-scale structure of new / "
                                                                   "previous master flat: 99.5th percentile of the "
                                                                   "4 px-binned ratio less its 32 px map (beyond "
                                                                   "it, dust that moved: a new epoch of the camera)")

    # ------------------------------------------------------ timing, campaigns
    timing_aperture: int | None = Field(None, ge=0, description="aperture index timed; None: the one with the "
                                                                 "least achieved scatter")
    timing_baseline: Literal["time", "airmass", "both", "none"] = Field("time",
        description="baseline fitted with an event: time, airmass, both or none")
    timing_min_points: int = Field(5, ge=2, description="points needed in ingress, in egress and out of the "
                                                        "event for a full (timed) event")
    timing_snr_min: float = Field(7.0, gt=0, description="detection: sqrt(delta chi2) of dip vs baseline, in "
                                                         "reduced-chi2 units")
    timing_clip: float = Field(5.0, gt=0, description="outlier clip, robust sigmas")
    timing_n_boot: int = Field(200, ge=0, description="bootstrap draws of the Kwee-van Woerden error (0: no KvW)")
    timing_seed: int = Field(0, description="seed of the bootstrap")
    timing_prayer_bead: int = Field(100, ge=0, description="residual shifts of the prayer-bead error of eclipse "
                                                           "times (0: off)")
    timing_ld: tuple[float, float] = Field((0.4, 0.25), description="quadratic limb darkening u1, u2 of transits")
    timing_period: float = Field(3.0, gt=0, description="days: period assumed for a transit without a catalogue one")
    timing_duration: float = Field(0.08, gt=0, description="days: first guess of an event's duration")
    timing_window: float = Field(1.5, gt=0, description="with an ephemeris: data within this many durations of "
                                                        "a predicted event")
    campaign_method: Literal["model", "kvw"] = Field("model", description="eclipse times in the O-C: model or kvw "
                                                                          "(transits: the transit fit)")
    campaign_min_period: float = Field(0.2, gt=0, description="days: shortest period searched")
    campaign_max_period: float | None = Field(None, gt=0, description="days: longest period searched (None: half "
                                                                      "the campaign span)")
    campaign_min_nights: int = Field(2, ge=1, description="nights needed for a period search")

    # ------------------------------------------------------------ validators
    @field_validator("file_log", "scr_log", mode="before")
    @classmethod
    def _v_level(cls, v):
        return _level(v)

    @field_validator("calibrations", mode="before")
    @classmethod
    def _v_calibrations(cls, v):
        return [] if isinstance(v, str) and v.strip().lower() == "none" else _as_list(v)

    @field_validator("astrometry_index", mode="before")
    @classmethod
    def _v_index(cls, v):
        return _as_list(v)

    @field_validator("obj", mode="before")
    @classmethod
    def _v_obj(cls, v):
        return _as_list(v)

    @field_validator("band", mode="before")
    @classmethod
    def _v_band(cls, v):
        if isinstance(v, str):
            # the original iterates a string: "BVR" -> B, V, R; commas allow longer names
            return [b.strip() for b in v.split(",")] if "," in v else list(v)
        return v

    @field_validator("aper", mode="before")
    @classmethod
    def _v_aper(cls, v):
        v = _as_list(v)
        if v is None:
            return [5.0]
        return v

    @field_validator("aper")
    @classmethod
    def _v_aper_n(cls, v):
        if not 1 <= len(v) <= MAX_APERTURES:
            raise ValueError(f"1 to {MAX_APERTURES} apertures, got {len(v)}")
        if any(a == 0 for a in v):
            raise ValueError("an aperture radius of 0")
        return v

    @field_validator("ind_tgt", "ind_ref", "ind_chk", mode="before")
    @classmethod
    def _v_ind(cls, v):
        if isinstance(v, dict):
            return {k: _as_list(x) for k, x in v.items()}
        return _as_list(v)

    @field_validator("use_flat", "alt_flat", mode="before")
    @classmethod
    def _v_flat(cls, v):
        if isinstance(v, str):
            return {"*": v}     # one file for every band
        return v

    @field_validator("steps")
    @classmethod
    def _v_steps(cls, v):
        # which letters exist is the stage graph's to say (qlcp.core.stages.config_problem, a check of
        # make_config's load_config; and plan): the graph imports the runners, which import this module
        if not v.isalpha():
            raise ValueError("steps are step letters, e.g. lbfiopwkcdgt (K: reuse pick)")
        return v

    @field_validator("patterns")
    @classmethod
    def _v_patterns(cls, v):
        for p in v:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"bad regular expression {p!r}: {e}") from None
        return v

    @field_validator("mode", mode="before")
    @classmethod
    def _v_mode(cls, v):
        try:
            return workmode(v)
        except ConfigError as e:   # re-raised by load_config with the key and file
            raise ValueError(str(e).removeprefix("mode: ")) from None

    @model_validator(mode="before")
    @classmethod
    def _v_timezone(cls, data):
        """``site_tz: America/Phoenix`` -> ``site_timezone`` and the zone's standard hours in ``site_tz``;
        ``site_timezone`` alone gives ``site_tz``."""
        if not isinstance(data, dict):
            return data
        tz = data.get("site_tz")
        if isinstance(tz, str):
            try:
                float(tz)
            except ValueError:
                data = {**data, "site_timezone": tz, "site_tz": _zone_hours("site_tz", tz)}
        elif data.get("site_timezone") and "site_tz" not in data:
            data = {**data, "site_tz": _zone_hours("site_timezone", data["site_timezone"])}
        return data

    @field_validator("site_timezone")
    @classmethod
    def _v_zone(cls, v):
        if v is not None:
            tz_hours(v)
        return v

    @field_validator("targets")
    @classmethod
    def _v_targets(cls, v):
        from .targets import make_target

        for i, d in enumerate(v or []):
            if not isinstance(d, dict):
                raise ValueError(f"targets[{i}]: a mapping {{name, ra, dec}}, got {d!r}")
            try:
                make_target(d)
            except ConfigError as e:
                raise ValueError(f"targets[{i}] ({d.get('name', '?')}): {e}") from None
        return v

    @field_validator("alt_coord")
    @classmethod
    def _v_alt_coord(cls, v):
        from .timing import target_coord

        pairs = v.items() if isinstance(v, dict) else [("", v)] if v is not None else []
        for obj, pair in pairs:
            try:
                target_coord({}, None, pair)
            except ConfigError as e:
                raise ValueError(f"{obj + ': ' if obj else ''}{e}") from None
        return v

    @model_validator(mode="after")
    def _v_indexes(self):
        """``ind_tgt``, ``ind_ref``, ``ind_chk`` index ``starxy``: each within its list."""
        if self.starxy is None:
            return self
        for name in ("ind_tgt", "ind_ref", "ind_chk"):
            v = getattr(self, name)
            if v is None:
                continue
            objs = list(v) if isinstance(v, dict) else (list(self.starxy) if isinstance(self.starxy, dict) else [None])
            for obj in objs:
                idx = v.get(obj) if isinstance(v, dict) else v
                xy = self.starxy.get(obj) if isinstance(self.starxy, dict) else self.starxy
                if idx is None or xy is None:
                    continue
                bad = [i for i in idx if not -len(xy) <= i < len(xy)]
                if bad:
                    where = f" for {obj}" if obj else ""
                    raise ValueError(f"{name}{where}: index {bad[0]} outside starxy's {len(xy)} star(s) "
                                     f"(0..{len(xy) - 1})")
        return self

    @model_validator(mode="after")
    def _v_limits(self):
        if self.flat_limit_low >= self.flat_limit_high:
            raise ValueError(f"flat_limit_low ({self.flat_limit_low}) must be below flat_limit_high ({self.flat_limit_high})")
        if self.sky_annulus is not None and not 0 < self.sky_annulus[0] < self.sky_annulus[1]:
            raise ValueError(f"sky_annulus {self.sky_annulus}: need 0 < inner < outer")
        return self

    # --------------------------------------------------------------- helpers
    def for_object(self, name: str, obj: str) -> Any:
        """Value of a per-object parameter (``starxy``, ``ind_*``, ``alt_coord``) for ``obj``.

        A dict is looked up by object name (None when absent); anything else
        applies to every object.
        """
        v = getattr(self, name)
        if isinstance(v, dict):
            return v.get(obj)
        return v

    def flat_for(self, which: str, band: str) -> str | None:
        d = getattr(self, which)
        if not d:
            return None
        return d.get(band, d.get("*"))

    def plain(self, only_set: bool = False) -> dict:
        """JSON/YAML-ready dict (work mode by names, levels by name).

        ``only_set`` keeps only the values given explicitly (files, arguments):
        rebuilding a Config from it gives the same values *and* the same notion
        of what was given (``steps`` given with ``k`` forces the pick).
        """
        d = self.model_dump(mode="json", exclude={"mode"})
        d["mode"] = self.mode.names
        d["file_log"] = logging.getLevelName(self.file_log)
        d["scr_log"] = logging.getLevelName(self.scr_log)
        if only_set:
            d = {k: v for k, v in d.items() if k in self.model_fields_set}
        return d

    @property
    def pick_forced(self) -> bool:
        """Step k was asked for explicitly (``steps`` given and containing ``k``)."""
        return "k" in self.steps and "steps" in self.model_fields_set

    def subset(self, keys) -> dict:
        d = self.plain()
        return {k: d[k] for k in sorted(keys)}

    def hash(self, keys=None) -> str:
        """sha256 (hex, 16 chars) of the canonical JSON of ``keys`` (all settings when None)."""
        d = self.plain() if keys is None else self.subset(keys)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.plain(), sort_keys=False, default_flow_style=None)


#: run() parameters (not settings): they may appear in a config file too
RUN_KEYS = ("steps", "obj", "band", "use_bias", "use_flat", "use_dark", "alt_bias", "alt_flat", "alt_coord",
            "base_img", "aper", "starxy", "ind_tgt", "ind_ref", "ind_chk", "mode")


# ------------------------------------------------------------------- loading
def tz_hours(name: str) -> float:
    """Standard-time offset from UTC, hours, of an IANA time zone (``America/Phoenix`` -> -7).

    The smaller of the offsets on 1 January and 1 July (summer time only ever adds), so the
    value does not depend on today's date."""
    import datetime as dt
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        zone = ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as 'America/Phoenix', or hours "
                         "from UTC such as -7)") from None
    offs = [dt.datetime(2021, m, 1, tzinfo=zone).utcoffset().total_seconds() / 3600 for m in (1, 7)]
    return min(offs)


def _zone_hours(key: str, name) -> float:
    try:
        return tz_hours(name)
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from None


class Sexagesimal(str):
    """A plain scalar that YAML 1.1 reads as a base-60 number (``16:02:11.84``): kept as its text,
    so that :func:`load_config` can refuse it with "quote it" naming the key and the file."""


def _keep_base60(kind):
    def construct(loader, node):
        if ":" in str(node.value):
            return Sexagesimal(node.value)
        return kind(loader, node)
    return construct


class _Loader(yaml.SafeLoader):
    """:class:`yaml.SafeLoader` that keeps base-60 scalars as text (:class:`Sexagesimal`)."""


_Loader.add_constructor("tag:yaml.org,2002:int", _keep_base60(yaml.SafeLoader.construct_yaml_int))
_Loader.add_constructor("tag:yaml.org,2002:float", _keep_base60(yaml.SafeLoader.construct_yaml_float))


def yaml_load(text: str):
    """``yaml.safe_load`` but base-60 numbers stay text (:class:`Sexagesimal`)."""
    return yaml.load(text, Loader=_Loader)    # noqa: S506 - a SafeLoader subclass


def _sexagesimal_key(v, path: str) -> tuple[str, str] | None:
    """``(key path, text)`` of the first :class:`Sexagesimal` in ``v`` (key ``path``), else None."""
    if isinstance(v, Sexagesimal):
        return path, str(v)
    if isinstance(v, dict):
        items = ((f"{path}.{k}" if path else str(k), x) for k, x in v.items())
    elif isinstance(v, (list, tuple)):
        items = ((f"{path}[{i}]", x) for i, x in enumerate(v))
    else:
        return None
    return next((hit for p, x in items if (hit := _sexagesimal_key(x, p))), None)


def _refuse_base60(data: dict, where: str) -> None:
    """ConfigError naming the key and ``where`` for a base-60 number YAML made of a sexagesimal text."""
    for k, v in data.items():
        hit = _sexagesimal_key(v, str(k))
        if hit is not None:
            raise ConfigError(f"{where}: key {hit[0]!r}: {hit[1]} unquoted is a base-60 number in YAML: "
                              f"quote it ('{hit[1]}')")


def _read_ini(path: Path) -> dict:
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        s = line.split("#", 1)[0].strip()
        if not s or s.startswith(";") or (s.startswith("[") and s.endswith("]")):
            continue
        if "=" not in s:
            raise ConfigError(f"{path}:{n}: expected 'key = value', got {line.strip()!r}")
        k, v = (x.strip() for x in s.split("=", 1))
        if v.lower().startswith("logging."):
            out[k] = v[8:]
            continue
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            low = v.lower()
            out[k] = {"true": True, "false": False, "none": None}.get(low, v)
    return out


def read_config_file(path: str | Path) -> dict:
    """Parse one YAML or INI file into a dict (no validation beyond syntax)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        if path.suffix.lower() in (".ini", ".cfg", ".conf"):
            data = _read_ini(path)
        else:
            data = yaml_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of key: value, got {type(data).__name__}")
    return data


def parse_set(items: list[str] | None) -> dict:
    """``["aper=[4,6]", "site_lat=32.7"]`` -> dict, values parsed as YAML scalars."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ConfigError(f"--set {it!r}: expected key=value")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = yaml_load(v)
        except yaml.YAMLError:
            out[k.strip()] = v
    return out


def load_config(files=None, overrides: dict | None = None, checks=()) -> Config:
    """Build the effective :class:`Config`.

    Parameters
    ----------
    files : str, Path or list of them, optional
        YAML or INI files; later ones override earlier ones.
    overrides : dict, optional
        Call arguments; they override every file.  ``None`` values are ignored
        (an argument not given), as in the original.
    checks : iterable of callables, optional
        Checks a layer above the model makes (``check(cfg) -> (key, message)`` or None; e.g. the
        step letters against the stage graph, :func:`qlcp.core.stages.config_problem`): a problem
        is a :class:`ConfigError` naming the file (or argument) that set the key.
    """
    if files is None:
        files = []
    elif isinstance(files, (str, Path)):
        files = [files]
    layers = [(str(f), read_config_file(f)) for f in files]
    return load_layers(layers + [("argument", {k: v for k, v in (overrides or {}).items() if v is not None})],
                       checks)


def load_layers(layers: list[tuple[str, dict]], checks=()) -> Config:
    """:func:`load_config` of ``[(source, {key: value})]``, later layers winning (``checks`` as
    there); the result knows the source of every value given (``_sources``) and its layers
    (``_layers``)."""
    merged: dict = {}
    source: dict[str, str] = {}
    fields = set(Config.model_fields)
    for where, data in layers:
        _refuse_base60(data, where)
        for k, v in data.items():
            if k not in fields:
                raise ConfigError(f"{where}: unknown key {k!r}{_suggest(k, fields)}")
            merged[k] = v
            source[k] = where
    try:
        cfg = Config(**merged)
    except ValidationError as e:
        err = e.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else None
        msg = err["msg"].removeprefix("Value error, ")
        if key:
            return _raise(f"{source.get(key, 'default')}: key {key!r}: {msg} (got {err.get('input')!r})")
        # a cross-field check: name the file of the first key the message mentions
        named = [k for k in re.findall(r"[a-z_]+", msg) if k in fields]
        where = source.get(named[0], "default") if named else (", ".join(sorted(set(source.values()))) or "config")
        return _raise(f"{where}: {msg}")
    for check in checks:
        problem = check(cfg)
        if problem:
            key, msg = problem
            return _raise(f"{source.get(key, 'default')}: key {key!r}: {msg} (got {getattr(cfg, key)!r})")
    if cfg.target_catalog:                      # readable, every row a usable target: before any work
        from .targets import read_catalog

        read_catalog(cfg.target_catalog)
    cfg._sources, cfg._layers = source, [(w, dict(d)) for w, d in layers if d]
    return cfg


def _raise(msg: str):
    raise ConfigError(msg)


def _suggest(key: str, fields: set) -> str:
    import difflib
    close = difflib.get_close_matches(key, sorted(fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
