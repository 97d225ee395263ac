"""The fault table: bad inputs injected into a copy of a simulated night, with what must happen.

Shared by ``tests/core/test_faults.py`` (plain driver, CLI exit status) and
``tests/flows/test_faults_prefect.py`` (the Prefect flow, the same table, and
the two paths' ``summary.json`` compared).  Each fault changes a copy of the
simulated raw night (the test's own files, never a real raw directory) and
states its expected outcome: whether a light curve comes out, which file is
rejected with which words in its reason, which calibration the night lost
(``degraded``) and so the CLI's exit status (0, or 3 when degraded).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

NON_ASCII = "SIMV-0016V-ü星.fit"


@dataclass(frozen=True)
class Fault:
    """One row of the fault table."""

    name: str
    inject: object                                   #: callable(raw_dir) -> None
    rejected: tuple = ()                             #: (file, words in the reason) expected in summary.json
    degraded: tuple = ()                             #: words expected in the summary's ``degraded`` entries
    lc_files: object = None                          #: callable(raw names) -> names expected in the light curve
    notes: dict = field(default_factory=dict)

    @property
    def exit_status(self) -> int:
        return 3 if self.degraded else 0


def _frame(raw: Path, k: int) -> Path:
    """Science frame number ``k`` (1-based, time order) of the simulated night."""
    return raw / f"SIMV-{k:04d}V.fit"


def _rewrite(path: Path, data=None, drop=(), **cards) -> None:
    with fits.open(path) as h:
        hdr, old = h[0].header.copy(), h[0].data.astype(np.float32)
    for k in drop:
        hdr.remove(k, ignore_missing=True)
    for k, v in cards.items():
        hdr[k] = v
    arr = old if data is None else data(old)
    for k in ("BZERO", "BSCALE"):
        hdr.remove(k, ignore_missing=True)
    path.unlink()
    fits.PrimaryHDU(np.asarray(arr, np.float32), hdr).writeto(path)


def non_ascii(raw):
    _frame(raw, 5).rename(raw / NON_ASCII)


def odd_bias(raw):
    src = sorted(raw.glob("bias-*.fit"))[0]
    hdr = fits.getheader(src)
    fits.PrimaryHDU(np.full((100, 90), 1000, np.float32), hdr).writeto(raw / "bias-0099.fit")


def odd_flat(raw):
    src = sorted(raw.glob("flat-*V.fit"))[0]
    hdr = fits.getheader(src)
    fits.PrimaryHDU(np.full((100, 90), 20000, np.float32), hdr).writeto(raw / "flat-0099V.fit")


def base_nan(raw):
    _rewrite(_frame(raw, 1), data=lambda d: np.full_like(d, np.nan))


def base_cloud(raw):
    """The first frame under thick cloud: no star left, only sky and noise."""
    rng = np.random.default_rng(5)
    _rewrite(_frame(raw, 1), data=lambda d: np.median(d) + rng.normal(0, 3, d.shape))


def base_shifted(raw):
    """The first frame pointed elsewhere: its field shares no star with the others."""
    _rewrite(_frame(raw, 1), data=lambda d: np.roll(np.roll(d, d.shape[0] // 2, 0), d.shape[1] // 2, 1)[::-1])


def base_off_field(raw):
    """D7: the first frame pointed 40 % of a side off in x and y (taken before the telescope settled):
    it aligns with the others, but they share ~36 % of its field, and the stars the pick could use were
    only those of that corner (the target lost)."""
    def off(d):
        k = int(0.4 * d.shape[0])
        out = np.full_like(d, np.median(d))
        out[k:, k:] = d[:-k, :-k]
        return out
    _rewrite(_frame(raw, 1), data=off)


def no_exptime(raw):
    _rewrite(_frame(raw, 4), drop=("EXPTIME",))


def negative_exptime(raw):
    _rewrite(_frame(raw, 8), EXPTIME=-60.0)


def duplicate(raw):
    shutil.copy2(_frame(raw, 9), raw / "SIMV-0009V-copy.fit")


def dangling(raw):
    os.symlink(raw.parent / "gone" / "SIMV-0099V.fit", raw / "SIMV-0099V.fit")


def same_name_subdir(raw):
    (raw / "sub").mkdir()
    _frame(raw, 6).rename(raw / "sub" / _frame(raw, 3).name)


def fits_gz(raw):
    f = _frame(raw, 7)
    with open(f, "rb") as a, gzip.open(raw / (f.stem + ".fits.gz"), "wb") as b:
        b.write(a.read())
    f.unlink()


def marker(raw):
    (raw / "DONE").write_text("")
    (raw / ".done").write_text("")


def no_radec_first(raw):
    _rewrite(_frame(raw, 1), drop=("RA", "DEC"))


def unparsable_exptime(raw):
    """EXPTIME = NAN: a card astropy cannot parse (R2: it aborted the whole listing, naming no file)."""
    f = _frame(raw, 2)
    b = bytearray(f.read_bytes())
    i = b.find(b"EXPTIME =")
    b[i:i + 80] = b"EXPTIME =                  NAN / exposure time".ljust(80)
    f.write_bytes(bytes(b))


def dated_2099(raw):
    _rewrite(_frame(raw, 10), **{"DATE-OBS": "2099-01-01T03:00:00"})


def zero_exptime(raw):
    _rewrite(_frame(raw, 3), EXPTIME=0.0)


def same_date_obs(raw):
    """Frame 7 carries frame 3's DATE-OBS (a clock that did not advance)."""
    _rewrite(_frame(raw, 7), **{"DATE-OBS": fits.getheader(_frame(raw, 3))["DATE-OBS"]})


def readme_and_checksums(raw):
    (raw / "README.md").write_text("# a night\n")
    (raw / "SHA256SUMS").write_text("0" * 64 + "  SIMV-0001V.fit\n")


def no_radec_anywhere(raw):
    for f in sorted(raw.glob("SIMV-*.fit")):
        _rewrite(f, drop=("RA", "DEC", "OBJCTRA", "OBJCTDEC"))


def flats_saturated(raw):
    for f in sorted(raw.glob("flat-*V.fit")):
        _rewrite(f, data=lambda d: np.full_like(d, 64000.0))


def science_as_bias(raw):
    """R13: a science frame whose IMAGETYP says BIAS (listed as a bias by its header): a copy of frame 9
    (its pixels + 1 ADU: no duplicate), so the night keeps every science frame."""
    with fits.open(_frame(raw, 9)) as h:
        hdr, data = h[0].header.copy(), h[0].data.astype(np.float32) + 1
    hdr["IMAGETYP"] = "BIAS"
    for k in ("BZERO", "BSCALE"):
        hdr.remove(k, ignore_missing=True)
    fits.PrimaryHDU(data, hdr).writeto(raw / "bias-0098.fit")


def _all_but(*gone):
    return lambda names: [n for n in names if n not in gone]


def _frames(names):
    return list(names)


FAULTS = [
    Fault("non_ascii_name", non_ascii),
    Fault("wrong_size_bias", odd_bias, rejected=(("bias-0099.fit", "shape"),)),
    Fault("wrong_size_flat", odd_flat, rejected=(("flat-0099V.fit", "shape"),)),
    Fault("nan_base_frame", base_nan, notes={"base_replaced": True}),
    Fault("clouded_base_frame", base_cloud, notes={"base_replaced": True}),
    Fault("shifted_base_frame", base_shifted, notes={"base_replaced": True}),
    Fault("missing_exptime", no_exptime, rejected=(("SIMV-0004V.fit", "EXPTIME"),),
          lc_files=_all_but("SIMV-0004V.fit")),
    Fault("negative_exptime", negative_exptime, rejected=(("SIMV-0008V.fit", "EXPTIME"),),
          lc_files=_all_but("SIMV-0008V.fit")),
    Fault("duplicate_frame", duplicate, rejected=(("SIMV-0009V-copy.fit", "duplicate of SIMV-0009V.fit"),)),
    Fault("dangling_symlink", dangling, rejected=(("SIMV-0099V.fit", "dangling symlink"),)),
    Fault("same_name_in_subdir", same_name_subdir, rejected=(("sub/SIMV-0003V.fit", "same name"),)),
    Fault("fits_gz_frame", fits_gz),
    Fault("marker_file", marker),
    Fault("no_radec_in_first_frame", no_radec_first, notes={"bjd_everywhere": True}),
    Fault("all_flats_unusable", flats_saturated, degraded=("no flat for V: 3 of 3 flats rejected",)),
    Fault("unparsable_exptime_card", unparsable_exptime,
          rejected=(("SIMV-0002V.fit", "unparsable header card EXPTIME"),), lc_files=_all_but("SIMV-0002V.fit")),
    Fault("frame_dated_2099", dated_2099, rejected=(("SIMV-0010V.fit", "days after the night's median"),),
          lc_files=_all_but("SIMV-0010V.fit")),
    Fault("zero_exptime", zero_exptime, rejected=(("SIMV-0003V.fit", "zero exposure time"),),
          lc_files=_all_but("SIMV-0003V.fit")),
    Fault("duplicate_date_obs", same_date_obs, rejected=(("SIMV-0007V.fit", "same start time as SIMV-0003V.fit"),),
          lc_files=_all_but("SIMV-0007V.fit")),
    Fault("readme_and_checksums", readme_and_checksums),
    Fault("no_sky_coordinate", no_radec_anywhere,
          degraded=("SIMV: no sky coordinate for BJD/HJD/airmass: give targets or alt_coord",)),
    Fault("science_frame_as_bias", science_as_bias, rejected=(("bias-0098.fit", "not a bias"),)),
]

# ------------------------------------------------------------------ instruments (issue 27)
#: the simulated camera (TELESCOP XL85-SIM) as an instrument file, another telescope's, and one that
#: also claims frames whose INSTRUME starts with AMBI
SIM_INSTRUMENT = {"name": "sim", "match": {"header": {"TELESCOP": "XL85-SIM"}}, "settings": {"aper": [5.0]}}
OTHER_INSTRUMENT = {"name": "other", "match": {"header": {"TELESCOP": "OTHER-SCOPE"}}}
GREEDY_INSTRUMENT = {"name": "greedy", "match": {"header": {"INSTRUME": "AMBI*"}}}


def unknown_camera_frame(raw):
    _rewrite(_frame(raw, 6), TELESCOP="UNKNOWN-SCOPE")


def ambiguous_camera_frame(raw):
    _rewrite(_frame(raw, 6), INSTRUME="AMBI-1")


def other_camera_frames(raw):
    for k in (9, 10):
        _rewrite(_frame(raw, k), TELESCOP="OTHER-SCOPE")


_NOT_REDUCED = "frame(s) not reduced, not of the night's instrument (sim)"
#: faults of a night reduced with an instrument registry (``notes["instruments"]``: its files)
INSTRUMENT_FAULTS = [
    Fault("unknown_instrument_frame", unknown_camera_frame,
          rejected=(("SIMV-0006V.fit", "unknown instrument: TELESCOP='UNKNOWN-SCOPE' INSTRUME='QLCP-SIM-3'"),),
          degraded=(f"1 {_NOT_REDUCED}",), lc_files=_all_but("SIMV-0006V.fit"),
          notes={"instruments": [SIM_INSTRUMENT, OTHER_INSTRUMENT]}),
    Fault("ambiguous_instrument_frame", ambiguous_camera_frame,
          rejected=(("SIMV-0006V.fit", "ambiguous instrument: matches greedy and sim"),),
          degraded=(f"1 {_NOT_REDUCED}",), lc_files=_all_but("SIMV-0006V.fit"),
          notes={"instruments": [SIM_INSTRUMENT, GREEDY_INSTRUMENT]}),
    Fault("mixed_instrument_night", other_camera_frames,
          rejected=tuple((f"SIMV-00{k:02d}V.fit", "another instrument (other) in this night: mixed-instrument "
                                                   "nights are not reduced yet") for k in (9, 10)),
          degraded=(f"2 {_NOT_REDUCED}",), lc_files=_all_but("SIMV-0009V.fit", "SIMV-0010V.fit"),
          notes={"instruments": [SIM_INSTRUMENT, OTHER_INSTRUMENT]}),
]


def write_registry(fault: Fault, tmp: Path) -> str:
    """The instrument files of ``fault`` in ``tmp/instruments``; that directory."""
    import yaml

    d = tmp / "instruments"
    d.mkdir(parents=True, exist_ok=True)
    for inst in fault.notes["instruments"]:
        (d / f"{inst['name']}.yaml").write_text(yaml.safe_dump(inst))
    return str(d)


#: the faults put together into one night (one of each bad file); it loses no calibration
TOGETHER = [f for f in FAULTS if f.name not in ("all_flats_unusable", "shifted_base_frame", "clouded_base_frame",
                                                "no_sky_coordinate", "duplicate_date_obs", "zero_exptime")]


def make_night(src_raw: Path, dest_raw: Path, faults) -> Path:
    """A copy of ``src_raw`` at ``dest_raw`` with ``faults`` injected; returns ``dest_raw``."""
    shutil.copytree(src_raw, dest_raw, symlinks=True)
    for f in faults:
        f.inject(dest_raw)
    return dest_raw


def raw_names(raw: Path) -> list[str]:
    """The science frames a complete light curve has (file names, not paths)."""
    return sorted(p.name for p in raw.rglob("SIMV-*") if p.is_file() and not p.is_symlink()
                  and "copy" not in p.name and "sub" not in p.parts)


def comparable(summary: dict, red) -> dict:
    """A summary without how it ran (``run``), paths and the config hash (field_dir differs)."""
    d = {k: v for k, v in summary.items() if k not in ("run", "red_dir", "raw_dir", "config_hash")}
    return json.loads(json.dumps(d).replace(str(red), "RED"))


def check_outcome(fault: Fault, summary: dict, red: Path, raw: Path) -> None:
    """Assert ``fault``'s expected outcome on a reduced night (``summary`` as in summary.json)."""
    from astropy.table import Table

    g = summary["groups"][0]
    assert not g["error"], (fault.name, g["error"])
    lc = Table.read(red / "lc_SIMV_V.ecsv", format="ascii.ecsv")
    rejected = summary["rejected"] + g["rejected"]
    for name, words in fault.rejected:
        hits = [why for f, why in rejected if f == name]
        assert hits and any(words in why for why in hits), (fault.name, name, rejected)
    if not fault.rejected:
        assert summary["rejected"] == [], (fault.name, summary["rejected"])
    assert all(any(w in d for d in summary["degraded"]) for w in fault.degraded), (fault.name, summary["degraded"])
    assert bool(summary["degraded"]) == bool(fault.degraded), (fault.name, summary["degraded"])
    names = raw_names(raw)
    want = (fault.lc_files or _frames)(names)
    got = sorted(fits_name(x) for x in lc["file"])
    assert got == sorted(want), (fault.name, got, want)
    if fault.notes.get("bjd_everywhere"):
        assert np.all(np.isfinite(np.asarray(lc["bjd_tdb"], float))), fault.name
    if fault.notes.get("base_replaced"):
        off = Table.read(red / "offset_SIMV_V.ecsv", format="ascii.ecsv")
        assert off.meta["base"] != "SIMV-0001V.fit" and int(np.sum(off["ok"])) >= len(off) - 1, fault.name


def fits_name(rawfile: str) -> str:
    """A light curve's ``file`` (the corrected header's RAWFILE, percent-escaped) as the raw name."""
    from urllib.parse import unquote

    return unquote(str(rawfile))


def together_fault() -> Fault:
    """One night with one of each bad file of :data:`TOGETHER`: every rejection, no calibration lost."""
    def inject(raw):
        for f in TOGETHER:
            f.inject(raw)

    def lc_files(names):
        for f in TOGETHER:
            names = (f.lc_files or _frames)(names)
        return names

    return Fault("together", inject, rejected=tuple(r for f in TOGETHER for r in f.rejected), lc_files=lc_files,
                 notes={"base_replaced": True, "bjd_everywhere": True})


# ------------------------------------------------------------------ links planted in RED (R17)
@dataclass(frozen=True)
class PlantedLink:
    """A symbolic link planted in a writable output directory, pointing outside it: the run must
    never write through it.  ``refused``: the run stops with one line naming the link (exit 2);
    else the product replaces the link (an atomic rename never follows it) and the night is reduced."""

    name: str
    link: str                   #: path of the link, relative to RED
    to_dir: bool = False        #: the link points at a directory outside (else at a file)
    refused: bool = True


PLANTED_LINKS = [
    PlantedLink("lock_file", ".qlcp.lock"),
    PlantedLink("log_file", "log/l.log"),
    PlantedLink("log_directory", "log", to_dir=True),
    PlantedLink("group_directory", "SIMV_V", to_dir=True),
    PlantedLink("product", "summary.json", refused=False),
    PlantedLink("light_curve", "lc_SIMV_V.ecsv", refused=False),
]


def plant_link(case: PlantedLink, red: Path, outside: Path) -> Path:
    """Plant ``case``'s link in ``red`` to a file or directory in ``outside``; returns its target."""
    target = outside / case.name
    if case.to_dir:
        (target / "keep").mkdir(parents=True)
    else:
        outside.mkdir(parents=True, exist_ok=True)
        target.write_text("precious\n")
    link = red / case.link
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=case.to_dir)
    return target


def check_link_untouched(case: PlantedLink, red: Path, target: Path) -> None:
    """The target outside RED is as planted; the link is still there when refused, else replaced."""
    if case.to_dir:
        assert [p.name for p in target.iterdir()] == ["keep"] and not any((target / "keep").iterdir()), case.name
    else:
        assert target.read_text() == "precious\n", case.name
    link = red / case.link
    assert link.is_symlink() == case.refused, case.name
    if not case.refused:
        assert link.is_file() and link.stat().st_size > 0, case.name


# ------------------------------------------------------------------ targets and field references
@dataclass(frozen=True)
class TargetFault:
    """A night whose target is missing, or whose field reference is refused: config and output-root
    faults on the unchanged simulated night (no WCS in its headers, no solver index for it).

    ``outcome``: ``no target`` (exit 4: the comparisons' light curves and the chart written, no field
    reference from it) or ``bad input`` (exit 2: the group fails in one line naming ``words``; the
    reference file as it was)."""

    name: str
    sets: dict                                       #: config settings
    outcome: str
    words: tuple                                     #: in the group's note (no target) or error (bad input)
    red_setup: object = None                         #: callable(red) -> None, before the run

    @property
    def exit_status(self) -> int:
        return {"no target": 4, "bad input": 2}[self.outcome]


#: the simulated night's target (truth.json of tests' simulate_small): RA 19:31:05.65, Dec +30:23:45.0
SIM_TARGET = {"name": "SIMV", "ra": "19:31:05.65", "dec": "+30:23:45.0"}
DAMAGED_REFERENCE = "# %ECSV 1.0\n# ---\n# datatype: [this is not a table\nrole x y\n"


def _damaged_reference(red: Path) -> None:
    (red / "fields").mkdir(parents=True, exist_ok=True)
    (red / "fields" / "SIMV.ecsv").write_text(DAMAGED_REFERENCE)


def _other_field_reference(red: Path) -> None:
    """A reference written by another night for an automatic pick (no sky positions)."""
    from astropy.table import Table

    t = Table(rows=[("target", 40.0, 70.0, 13.7), ("comparison", 60.0, 54.0, 13.8),
                    ("comparison", 31.0, 49.0, 13.4)], names=("role", "x", "y", "mag"))
    t["ra"], t["dec"] = np.full(3, np.nan), np.full(3, np.nan)
    t.meta.update(object="SIMV", band="V", night="20240101", source="picked")
    (red / "fields").mkdir(parents=True, exist_ok=True)
    t.write(red / "fields" / "SIMV.ecsv", format="ascii.ecsv")


TARGET_FAULTS = [
    TargetFault("no_variable_found", {"pick_var_std": 5.0}, "no target",
                ("no target configured", "automatic pick found no variable")),
    TargetFault("target_cannot_be_placed", {"targets": [SIM_TARGET]}, "no target",
                ("target SIMV at 19:31:05.65 +30:23:45", "cannot be placed", "no celestial WCS")),
    TargetFault("starxy_target_off_the_frame", {"starxy": [[500.0, 500.0], [59.9, 53.8], [30.7, 48.9],
                                                           [35.6, 101.2]]}, "no target",
                ("target starxy[0] (500, 500) off the frame (128 x 128 px)",)),
    TargetFault("damaged_field_reference", {}, "bad input",
                ("fields/SIMV.ecsv: unreadable field reference", "--refresh-field"), _damaged_reference),
    TargetFault("field_reference_disagrees_with_targets", {"targets": [SIM_TARGET]}, "bad input",
                ("fields/SIMV.ecsv (night 20240101) disagrees with the configured target SIMV at 19:31:05.65",
                 "--refresh-field"), _other_field_reference),
]


def check_target_outcome(fault: TargetFault, summary: dict, red: Path, reference_before: bytes | None) -> None:
    """Assert ``fault``'s outcome on a reduced night (``summary`` as in summary.json)."""
    from astropy.table import Table

    g = summary["groups"][0]
    ref = red / "fields" / "SIMV.ecsv"
    if fault.outcome == "bad input":
        assert all(w in g["error"] for w in fault.words), (fault.name, g["error"])
        assert "\n" not in g["error"] and g["outcome"] == "failed" and summary["outcome"] == "failed"
        assert ref.read_bytes() == reference_before, fault.name        # refused, kept as it was
        return
    assert not g["error"], (fault.name, g["error"])
    assert g["outcome"] == "no target" and summary["outcome"] == "no target", (fault.name, g["outcome"])
    assert all(w in g["note"] for w in fault.words), (fault.name, g["note"])
    assert g["stars"]["ind_tgt"] == [] and g["stars"]["no_target"] == g["note"]
    lc = Table.read(g["outputs"]["lightcurve"], format="ascii.ecsv")
    assert not [c for c in lc.colnames if c.startswith("mag_t")], fault.name
    comps = [c for c in lc.colnames if c.startswith("mag_r") and c.endswith("_a0")]
    assert len(comps) >= 2 and lc.meta["no_target"] == g["note"], (fault.name, lc.colnames)
    for c in comps:                       # the simulated comparison stars are constant: a few mmag
        m = np.asarray(lc[c], float)[np.asarray(lc["ok"], bool)]
        assert np.nanstd(m) < 0.03, (fault.name, c, np.nanstd(m))
    for kind in ("lc_png", "chart", "stars"):
        assert Path(g["outputs"][kind]).is_file(), (fault.name, kind)
    assert not ref.exists(), fault.name                        # no field reference from a night without target


# --------------------------------------------------------------- bad input: exit 2, before the work
@dataclass(frozen=True)
class BadInput:
    """A mistake in the configuration or the command (issue #24 item 5, R16): one line naming the key
    or what exists, exit status 2 on both drivers, no master made (``config`` YAML text is added as a
    config file after the night's; ``raw`` makes the raw directory from the simulated one)."""

    name: str
    config: str
    words: tuple
    raw: object = None                               #: callable(sim_raw, tmp) -> raw directory


def _directory_of_nights(src: Path, tmp: Path) -> Path:
    root = tmp / "nights"
    shutil.copytree(src, root / "20240606")
    shutil.copytree(src, root / "20240607")
    return root


def _dated_with_slashes(src: Path, tmp: Path) -> Path:
    raw = tmp / "raw"
    shutil.copytree(src, raw)
    for f in sorted(raw.glob("SIMV-*.fit")):
        _rewrite(f, **{"DATE-OBS": "2024/06/06"})
    return raw


BAD_INPUTS = [
    BadInput("sexagesimal_unquoted", "targets: [{name: SIMV, ra: 19:31:05.65, dec: '+30:23:45'}]\n",
             ("key 'targets[0].ra'", "19:31:05.65 unquoted is a base-60 number in YAML: quote it")),
    BadInput("target_ra_impossible", "targets: [{name: SIMV, ra: '25:31:05', dec: '+30:23:45'}]\n",
             ("key 'targets'", "targets[0] (SIMV)", "25:31:05")),
    BadInput("target_catalog_missing", "target_catalog: /nonexistent/targets.ecsv\n",
             ("target_catalog", "/nonexistent/targets.ecsv: file not found")),
    BadInput("ind_tgt_out_of_range", "starxy: [[40.0, 70.0], [60.0, 54.0]]\nind_tgt: [5]\n",
             ("ind_tgt: index 5 outside starxy's 2 star(s)",)),
    BadInput("unknown_time_zone", "site_tz: Mars/Olympus_Mons\n", ("site_tz", "unknown time zone 'Mars/Olympus_Mons'")),
    BadInput("obj_matches_nothing", "obj: [NOPE]\n", ("--obj NOPE matches no science group", "SIMV V")),
    BadInput("band_matches_nothing", "band: [Q]\n", ("--band Q matches no science group", "SIMV V")),
    BadInput("directory_of_nights", "", ("a directory of nights, not one night", "20240606, 20240607"),
             _directory_of_nights),
    BadInput("every_frame_dated_with_slashes", "", ("every science frame was rejected",
                                                    "DATE-OBS = '2024/06/06': not a date/time"), _dated_with_slashes),
    BadInput("unknown_camera", "instruments_dir: builtin\n",
             ("every science frame was rejected", "unknown instrument: TELESCOP='XL85-SIM' INSTRUME='QLCP-SIM-3'")),
]


def bad_input_setup(case: BadInput, sim, tmp: Path) -> tuple[Path, list[str]]:
    """The raw directory and config files of ``case``."""
    raw = case.raw(sim.raw_dir, tmp) if case.raw else sim.raw_dir
    files = [str(sim.config_path)]
    if case.config:
        (tmp / "bad.yaml").write_text(case.config)
        files.append(str(tmp / "bad.yaml"))
    return raw, files
