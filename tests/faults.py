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


def no_radec_anywhere(raw):
    for f in sorted(raw.glob("SIMV-*.fit")):
        _rewrite(f, drop=("RA", "DEC", "OBJCTRA", "OBJCTDEC"))


def flats_saturated(raw):
    for f in sorted(raw.glob("flat-*V.fit")):
        _rewrite(f, data=lambda d: np.full_like(d, 64000.0))


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
    Fault("no_sky_coordinate", no_radec_anywhere,
          degraded=("SIMV: no sky coordinate for BJD/HJD/airmass: give targets or alt_coord",)),
]

#: the faults put together into one night (one of each bad file); it loses no calibration
TOGETHER = [f for f in FAULTS if f.name not in ("all_flats_unusable", "shifted_base_frame", "clouded_base_frame",
                                                "no_sky_coordinate")]


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
