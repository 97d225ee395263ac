"""Step l: every manual pattern example, header fallback and precedence, junk files."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from qlcp.core.config import Config
from qlcp.core.listing import list_night, match_name
from tests.conftest import write_frame


@pytest.mark.parametrize("name, obj, band", [
    ("UYUMa-0003I.fit", "UYUMa", "I"),
    ("bias-0001.fits", "bias", ""),
    ("flat_R_003.fit", "flat", "R"),
    ("TCrB_V_001.fits", "TCrB", "V"),
    ("flat_R_1_R_001.fit", "flat", "R"),
    ("20240606UYUMa-0003I.fit", "UYUMa", "I"),
    ("UYUMa-0003I.FITS", "UYUMa", "I"),
    ("TCrB_V_001.fts", "TCrB", "V"),
    ("TCrB_V_001.fits.fz", "TCrB", "V"),
])
def test_manual_pattern_examples(name, obj, band):
    g = match_name(name, Config().patterns)
    assert g["obj"] == obj and g["band"] == band


EXAMPLES = {
    # name: (header cards, expected kind, obj, band)
    "UYUMa-0003I.fit": ({}, "science", "UYUMa", "I"),
    "bias-0001.fits": ({}, "bias", "bias", ""),
    "flat_R_003.fit": ({}, "flat", "flat", "R"),
    "TCrB_V_001.fits": ({}, "science", "TCrB", "V"),
    "flat_R_1_R_001.fit": ({}, "flat", "flat", "R"),
    "domeflat_z_001.fits": ({}, "flat", "flat", "z"),
    # other telescopes' naming: the header fills the gaps and its frame type wins
    "Bias_BIN1_20250602_032141.fits": ({"IMAGETYP": "BIAS    "}, "bias", "bias", ""),
    "Dark_BIN1_20250602_032243.fits": ({"IMAGETYP": "DARK"}, "dark", "dark", ""),
    "XO1-b_z_20250602_041008.fits": ({"IMAGETYP": "LIGHT", "OBJECT": "XO1-b", "FILTER": "z       "},
                                     "science", "XO1-b", "z"),
    "HATP-32171220013343.FITS": ({"OBSTYPE": "OBJECT", "OBJECT": "HAT-P-32", "FILTER": "R"},
                                 "science", "HAT-P-32", "R"),
    # header type beats the name: a 'LIGHT' frame of a field called flatfield-test
    "flattest-0001V.fit": ({"IMAGETYP": "LIGHT", "OBJECT": "flattest"}, "science", "flattest", "V"),
    "sky-0002V.fit": ({"IMAGETYP": "SKYFLAT"}, "flat", "flat", "V"),
    "cal-0003.fit": ({"IMAGETYP": "ZERO"}, "bias", "bias", ""),
}


def _night(tmp_path, extra=None):
    raw = tmp_path / "raw"
    for i, (name, (cards, *_rest)) in enumerate(EXAMPLES.items()):     # each its own pixels: not duplicates
        write_frame(raw / name, np.full((32, 32), 1000.0 + i), EXPTIME=10.0, DATE_OBS="2024-06-06T14:00:00", **cards)
    for name, content in (extra or {}).items():
        (raw / name).write_bytes(content)
    return raw


def test_classification_and_outputs(tmp_path):
    raw = _night(tmp_path)
    red = tmp_path / "red"
    night = list_night(raw, red, Config())
    t = night.table
    for name, (_, kind, obj, band) in EXAMPLES.items():
        row = t[t["file"] == name][0]
        assert (row["kind"], row["obj"], row["band"]) == (kind, obj, band), name
    assert (red / "lst" / "bias.lst").read_text().split() == sorted(
        ["bias-0001.fits", "Bias_BIN1_20250602_032141.fits", "cal-0003.fit"])
    assert "XO1-b_z_20250602_041008.fits" in (red / "lst" / "XO1-b_z.lst").read_text()
    assert (red / "lst" / "flat_R.lst").read_text().split() == ["flat_R_003.fit", "flat_R_1_R_001.fit"]
    back = Table.read(red / "lst" / "night.ecsv")
    assert set(back.colnames) >= {"file", "kind", "obj", "band", "exptime", "date", "reason"}
    assert len(back) == len(EXAMPLES)
    assert np.all(back["exptime"] == 10.0)
    assert night.science_groups(obj=["uyuma"]) == [("UYUMa", "I")]
    assert night.science_groups(band=["z"]) == [("XO1-b", "z")]


def test_junk_truncated_and_non_fits_are_rejected_not_fatal(tmp_path):
    good = (tmp_path / "g.fits")
    write_frame(good, shape=(64, 64))
    full = good.read_bytes()
    raw = _night(tmp_path, extra={
        "notes.txt": b"observing log\n",
        "broken-0001V.fit": b"this is not fits at all" * 200,
        "short-0002V.fit": full[: len(full) - 3000],     # truncated data
        "tiny-0003V.fit": b"SIMPLE  =",
        "empty-0004V.fits": b"",
    })
    night = list_night(raw, tmp_path / "red", Config())
    rej = {r["file"]: r["reason"] for r in night.rejected}
    # a file not FITS by its name (notes, README, checksums) is no rejected frame: an INFO line
    assert set(rej) == {"broken-0001V.fit", "short-0002V.fit", "tiny-0003V.fit", "empty-0004V.fits"}
    assert list(night.table["file"][night.table["kind"] == "not FITS"]) == ["notes.txt"]
    assert "truncated" in rej["short-0002V.fit"]
    assert "not a FITS" in rej["broken-0001V.fit"]
    assert len(night.table) == len(EXAMPLES) + 5
    # the good frames are all still classified
    assert sum(~np.isin(night.table["kind"], ["rejected", "not FITS"])) == len(EXAMPLES)


def test_real_night_listing(xo1_dir, tmp_path):
    night = list_night(xo1_dir, tmp_path / "red", Config())
    t = night.table
    counts = {k: int(np.sum(t["kind"] == k)) for k in ("bias", "dark", "flat", "science")}
    assert counts == {"bias": 5, "dark": 5, "flat": 5, "science": 30}      # README: 5/5/5/30
    assert night.science_groups() == [("XO1-b", "z")]
    assert night.flat_bands == ["z"]
    assert len(night.rejected) == 0        # README.md, SHA256SUMS: not FITS by name, not rejected frames
    assert set(t["file"][t["kind"] == "not FITS"]) == {"README.md", "SHA256SUMS"}


def test_header_comments_with_apostrophes_do_not_leak_into_values(tmp_path):
    """Raw camera headers often have apostrophes in their comments: the listing reads the values
    exactly as astropy does (``OBJECT = 'XO-1' / the target's name`` is XO-1)."""
    from astropy.io import fits

    from qlcp.core.listing import _probe

    raw = tmp_path / "raw"
    path = write_frame(raw / "frame0001.fits", EXPTIME=(30.0, "the exposure's length"),
                       DATE_OBS=("2024-06-06T14:00:00", "the exposure's start"),
                       IMAGETYP=("LIGHT", "the frame's type"), OBJECT=("XO-1", "the target's name"),
                       FILTER=("V", "Johnson's V"), OBSERVER=("O'Brien", "the observer's name"))
    hdr, why = _probe(path)
    assert why == ""
    ref = fits.getheader(path)
    for key in ("IMAGETYP", "OBJECT", "FILTER", "OBSERVER", "EXPTIME", "DATE-OBS"):
        assert hdr[key] == ref[key], key
    row = list_night(raw, tmp_path / "red", Config()).table[0]
    assert (row["kind"], row["obj"], row["band"], row["exptime"]) == ("science", "XO-1", "V", 30.0)
