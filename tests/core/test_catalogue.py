"""Step c (catalogue) on a synthetic night of per-frame catalogues (``synthetic_night``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from qlcp.core import catalogue as C
from qlcp.core.catalogue import (
    FLAG_MISSING,
    build_catalogue,
    match_stars,
    read_catalogue,
    write_catalogue,
)
from qlcp.core.errors import InputError

try:
    from .synthetic_night import (APER, NO_CAT_FRAME, ROUGH_OFFSET_FRAMES, cfg_for_tests, make_night)
except ImportError:          # rootdir-less import mode
    from synthetic_night import (APER, NO_CAT_FRAME, ROUGH_OFFSET_FRAMES, cfg_for_tests, make_night)


# ------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def night(tmp_path_factory):
    return make_night(tmp_path_factory.mktemp("night"))


@pytest.fixture(scope="module")
def cata(night):
    return build_catalogue(night["cat_files"], night["offsets"], night["starxy"], cfg_for_tests(),
                           base_file="M1-0000V.fit")


def test_one_row_per_frame_in_time_order(night, cata):
    assert len(cata) == night["nf"]
    assert np.all(np.diff(cata["jd"]) > 0)
    assert list(cata["file"][:2]) == ["M1-0000V.fit", "M1-0001V.fit"]
    for c in ("file", "jd", "mjd", "hjd", "bjd_tdb", "airmass", "exptime", "fwhm", "sky", "ok",
              "x", "y", "mag", "err", "flux", "ferr", "mag_auto", "err_auto", "flags", "peak"):
        assert c in cata.colnames
    ns = night["ns"]
    assert cata["x"].shape == (night["nf"], ns)
    assert cata["mag"].shape == (night["nf"], ns, 2)
    has_cat = np.arange(night["nf"]) != NO_CAT_FRAME
    np.testing.assert_allclose((cata["bjd_tdb"] - cata["jd"])[has_cat], 0.0030, atol=1e-9)
    np.testing.assert_allclose(cata["airmass"][has_cat], night["airmass"][has_cat])
    assert np.isnan(cata["bjd_tdb"][NO_CAT_FRAME])


def test_every_star_found_at_its_index_through_drift_and_jump(night, cata):
    ok = np.asarray(cata["ok"])
    truth = night["true_xy"]
    for f in np.flatnonzero(ok):
        found = np.isfinite(truth[f, :, 0])
        np.testing.assert_allclose(cata["x"][f][found], truth[f, found, 0], atol=1e-6)
        np.testing.assert_allclose(cata["y"][f][found], truth[f, found, 1], atol=1e-6)
        assert np.all((cata["flags"][f][found] & FLAG_MISSING) == 0)
    # magnitudes come with their star (through the shuffled catalogue rows)
    resid = cata["mag"][ok] - night["m_true"][ok]
    resid -= np.nanmedian(resid, axis=1, keepdims=True)
    assert np.nanmax(np.abs(resid[:, 1:4])) < 0.1          # constant stars: only noise
    # the frames whose offset was 3 px wrong too
    assert np.all(cata["n_found"][list(ROUGH_OFFSET_FRAMES)] == night["ns"])
    # found in frames both before and after the jump
    assert ok[: night["nf"] // 2].sum() > 40 and ok[night["nf"] // 2:].sum() > 40


def test_offset_refined_to_subpixel(night, cata):
    ok = np.asarray(cata["ok"])
    err = np.hypot(cata["dx"][ok] - night["off_true"][ok, 0], cata["dy"][ok] - night["off_true"][ok, 1])
    raw = night["offsets"]
    err_in = np.hypot(raw["dx"][ok] - night["off_true"][ok, 0], raw["dy"][ok] - night["off_true"][ok, 1])
    assert np.median(err) < 0.05 < np.median(err_in)


def test_missing_star_masked_not_replaced_by_neighbour(night, cata):
    f = 30
    assert cata["ok"][f]
    assert np.isnan(cata["x"][f][5]) and np.isnan(cata["mag"][f][5]).all()
    assert cata["flags"][f][5] & FLAG_MISSING
    # the neighbour 6 px away is still itself
    np.testing.assert_allclose(cata["x"][f][6], night["true_xy"][f, 6, 0], atol=1e-6)


def test_missing_star_not_replaced_by_unlisted_neighbour(night):
    """The neighbour is a field star absent from starxy: still not taken for the missing star."""
    keep = [i for i in range(night["ns"]) if i != 6]
    xy = [night["starxy"][i] for i in keep]
    t = build_catalogue(night["cat_files"], night["offsets"], xy, cfg_for_tests())
    i5 = keep.index(5)
    assert np.isnan(t["x"][30][i5]) and t["flags"][30][i5] & FLAG_MISSING
    ok = np.asarray(t["ok"])
    ok[30] = False
    np.testing.assert_allclose(t["x"][ok, i5], night["true_xy"][ok, 5, 0], atol=1e-6)


def test_bad_offset_and_missing_catalogue_give_unusable_frames(night, cata):
    assert not cata["ok"][10]       # offset not determined
    assert not cata["ok"][20]       # no catalogue file
    assert np.isnan(cata["mag"][10]).all() and np.isnan(cata["x"][20]).all()
    assert np.all(cata["flags"][10] & FLAG_MISSING)
    assert np.isfinite(cata["jd"][20])      # time kept from the offsets table
    assert cata["ok"].sum() == night["nf"] - 2


def test_match_stars_unambiguous():
    pred = np.array([[100.0, 100.0], [106.0, 100.0]])
    # only the second star's source exists: the first is not given its neighbour
    idx, _ = match_stars(pred, np.array([[106.2, 100.1]]), 10.0)
    assert list(idx) == [-1, 0]
    # both present, slightly shifted: both matched, each to its own source
    idx, shift = match_stars(pred + 0.7, np.array([[106.1, 100.0], [100.1, 100.0]]), 10.0)
    assert list(idx) == [1, 0]
    np.testing.assert_allclose(shift, [-0.6, -0.7], atol=1e-9)


def test_write_read_roundtrip(tmp_path, cata):
    p = write_catalogue(cata, tmp_path / "cata_M1_V.fits")
    t = read_catalogue(p)
    assert t.meta["base_file"] == "M1-0000V.fit"
    assert t.meta["apertures"] == APER
    np.testing.assert_allclose(t.meta["starxy"], cata.meta["starxy"])
    np.testing.assert_array_equal(t["mag"], cata["mag"])
    np.testing.assert_array_equal(t["ok"], cata["ok"])
    assert list(t["file"]) == list(cata["file"])
    assert not list(tmp_path.glob(".*tmp*"))


# ------------------------------------------- build_catalogue against an independent recomputation
def test_catalogue_rows_are_the_frame_catalogues_sources(night, cata):
    """Each frame's row, recomputed from its catalogue file with astropy and brute force: the
    header values, and for each star the values of the source nearest to its predicted position
    (base + refined offset) when that source is unambiguous, else NaN and FLAG_MISSING."""
    offs = night["offsets"]
    starxy = np.asarray(night["starxy"])
    jd_order = np.argsort(offs["jd"], kind="stable")
    assert list(cata["file"]) == list(offs["file"][jd_order])
    pairs = {"mag": "Mag", "err": "Err", "flux": "Flux", "ferr": "FErr", "mag_auto": "MagAUTO",
             "err_auto": "ErrAUTO", "peak": "Peak", "sky_local": "Sky", "flags": "Flags", "x": "X", "y": "Y"}
    for row, f in zip(cata, jd_order):
        p = Path(night["cat_files"][f])
        if not p.exists():
            assert not row["ok"] and np.isnan(row["airmass"]) and row["jd"] == offs["jd"][f]
            continue
        t = Table.read(p)
        assert row["airmass"] == t.meta["AIRMASS"] and row["hjd"] == t.meta["HJD"] and row["fwhm"] == t.meta["FWHM"]
        np.testing.assert_array_equal(row["aper_r"], [t.meta["APER0"], t.meta["APER1"]])
        if not offs["ok"][f]:
            assert not row["ok"] and np.all(row["flags"] == FLAG_MISSING) and np.isnan(row["mag"]).all()
            continue
        assert row["ok"]
        src = np.column_stack([t["X"], t["Y"]])
        pred = starxy + (row["dx"], row["dy"])
        d = np.hypot(*(pred[:, None, :] - src[None, :, :]).transpose(2, 0, 1))   # (star, source)
        near = d.argmin(axis=1)
        # unambiguous: within 2 px, and no other star predicted nearer to that source
        unique = (d.min(axis=1) < 2.0) & (d[:, near].argmin(axis=0) == np.arange(len(pred)))
        found = np.isfinite(row["x"])
        np.testing.assert_array_equal(found, unique)
        assert row["n_found"] == found.sum()
        for k in np.flatnonzero(found):
            for mine, theirs in pairs.items():
                np.testing.assert_array_equal(row[mine][k], t[theirs][near[k]])
        assert np.all(row["flags"][~found] == FLAG_MISSING) and np.isnan(row["flux"][~found]).all()


# ------------------------------------------------------------- the steps of build_catalogue
def _frame_cat(path, x, y, n_aper=2, **meta):
    n = len(x)
    t = Table()
    t["X"], t["Y"] = np.asarray(x, float), np.asarray(y, float)
    t["Flux"] = np.arange(n * n_aper, dtype=float).reshape(n, n_aper) + 1
    t["Mag"] = 25 - 2.5 * np.log10(t["Flux"])
    t["Flags"] = np.arange(n, dtype=np.int16)
    t.meta.update(meta)
    t.write(path, overwrite=True)
    return Path(path)


def test_night_frames_offsets_first_then_other_catalogues():
    offs = {"A-0002V": {}, "A-0001V": {}}
    stems, by_stem = C._night_frames(["x/A-0003V.cat.fits", "x/A-0001V.cat.fits", "y/A-0003V.cat.fits"], offs)
    assert stems == ["A-0002V", "A-0001V", "A-0003V"]
    assert by_stem == {"A-0003V": Path("y/A-0003V.cat.fits"), "A-0001V": Path("x/A-0001V.cat.fits")}


def test_aperture_count_from_the_first_readable_catalogue(tmp_path):
    bad = tmp_path / "A-0001V.cat.fits"
    bad.write_text("not a FITS file")
    good = _frame_cat(tmp_path / "A-0002V.cat.fits", [1.0], [2.0], n_aper=3)
    by_stem = {"A-0000V": tmp_path / "missing.cat.fits", "A-0001V": bad, "A-0002V": good}
    assert C._aperture_count(["A-0000V", "A-0001V", "A-0002V"], by_stem, 7) == 3
    assert C._aperture_count(["A-0000V", "A-0001V"], by_stem, 7) == 7


def test_read_frame_warns_and_gives_none(tmp_path, caplog):
    bad = tmp_path / "A-0001V.cat.fits"
    bad.write_text("not a FITS file")
    with caplog.at_level(logging.WARNING, logger="qlcp.catalogue"):
        assert C._read_frame("A-0001V", bad) is None
        assert C._read_frame("A-0002V", None) is None
    assert "unreadable catalogue" in caplog.text and "A-0002V: no catalogue" in caplog.text
    t = C._read_frame("A-0003V", _frame_cat(tmp_path / "A-0003V.cat.fits", [1.0, 2.0], [3.0, 4.0]))
    assert len(t) == 2 and list(t["X"]) == [1.0, 2.0]


def test_empty_columns_mark_every_star_missing():
    cols = C._NightColumns.empty(["a.fit", "b.fit", "c.fit"], 4, 2)
    assert cols.stars["flags"].dtype == np.int32 and np.all(cols.stars["flags"] == FLAG_MISSING)
    assert cols.stars["x"].shape == (3, 4) and cols.stars["mag"].shape == (3, 4, 2)
    assert all(np.isnan(cols.stars[k]).all() for k in C._STAR_COLUMNS if k != "flags")
    assert not cols.ok.any() and cols.aper_r.shape == (3, 2) and list(cols.files) == ["a.fit", "b.fit", "c.fit"]


def test_store_header_keeps_the_offsets_jd_and_name(tmp_path):
    cols = C._NightColumns.empty(["A-0001V.fit", "A-0002V"], 1, 2)
    cols.scalars["jd"][:] = [2460000.5, 2460000.6]
    p1 = _frame_cat(tmp_path / "A-0001V.cat.fits", [1.0], [1.0], JD="unknown", AIRMASS=1.3, RAWFILE="other.fit",
                    GAIN=1.5, APER0=4.0, APER1=6.0)
    p2 = _frame_cat(tmp_path / "A-0002V.cat.fits", [1.0], [1.0], JD=2460000.7, RAWFILE="A-0002V.fit", RDNOISE=7.0)
    C._store_header(cols, 0, C.read_frame_catalogue(p1), True, 2)
    C._store_header(cols, 1, C.read_frame_catalogue(p2), False, 2)
    assert cols.scalars["jd"][0] == 2460000.5 and cols.scalars["jd"][1] == 2460000.7   # no finite JD: not taken
    assert list(cols.files) == ["A-0001V.fit", "A-0002V.fit"]        # RAWFILE only without an offset
    assert cols.scalars["airmass"][0] == 1.3 and np.isnan(cols.scalars["airmass"][1])
    assert cols.gains == [1.5] and cols.rdnoises == [7.0]
    np.testing.assert_array_equal(cols.aper_r, [[4.0, 6.0], [np.nan, np.nan]])


def test_source_columns_names_missing_columns_and_aperture_count(tmp_path):
    t = C.read_frame_catalogue(_frame_cat(tmp_path / "A-0001V.cat.fits", [1.0, 2.0], [3.0, 4.0]))
    src = C._source_columns(t, 2)
    assert set(src) == set(C._STAR_COLUMNS)
    np.testing.assert_array_equal(src["flux"], [[1.0, 2.0], [3.0, 4.0]])
    assert np.isnan(src["ferr"]).all() and np.isnan(src["peak"]).all()     # not in the file
    assert src["flags"].dtype == np.int32 and list(src["flags"]) == [0, 1]
    with pytest.raises(InputError, match="Flux has 2 apertures, expected 3"):
        C._source_columns(t, 3)


def test_match_frame_finds_shifted_stars_and_leaves_the_missing_one():
    starxy = np.array([[100.0, 100.0], [300.0, 120.0], [200.0, 400.0], [500.0, 500.0]])
    offset = {"dx": 10.0, "dy": -5.0}
    true = starxy[[0, 1, 3]] + (10.4, -5.3)               # star 2 is not in the frame
    order = np.array([2, 0, 1])
    src = {name: np.full(3, np.nan) for name in C._STAR_COLUMNS}
    src.update(x=true[order, 0], y=true[order, 1], flags=np.array([5, 6, 7], dtype=np.int32),
               flux=np.array([[1.0], [2.0], [3.0]]), mag=np.zeros((3, 1)), err=np.zeros((3, 1)),
               ferr=np.zeros((3, 1)))
    cols = C._NightColumns.empty(["a", "b"], 4, 1)
    assert C._match_frame(cols, 1, src, starxy, offset, 5.0) == 3
    assert cols.ok[1] and not cols.ok[0] and cols.n_found[1] == 3
    assert cols.dx[1] == pytest.approx(10.4) and cols.dy[1] == pytest.approx(-5.3)
    np.testing.assert_allclose(cols.stars["x"][1], [110.4, 310.4, np.nan, 510.4])
    assert list(cols.stars["flags"][1]) == [6, 7, FLAG_MISSING, 5]
    np.testing.assert_array_equal(cols.stars["flux"][1, :, 0], [2.0, 3.0, np.nan, 1.0])
    assert np.all(cols.stars["flags"][0] == FLAG_MISSING)


def test_night_table_in_time_order_with_meta():
    cols = C._NightColumns.empty(["c", "a", "b"], 2, 1)
    cols.scalars["jd"][:] = [3.0, np.nan, 1.0]
    cols.stars["x"][:, 0] = [30.0, 10.0, 20.0]
    cols.gains.extend([1.0, 2.0, 4.0])
    cfg = cfg_for_tests(match_max_dis=7.0)
    t = C._night_table(cols, np.array([[1.0, 2.0], [3.0, 4.0]]), cfg, None, 1)
    assert list(t["file"]) == ["b", "c", "a"]              # no JD: last
    np.testing.assert_array_equal(t["x"][:, 0], [20.0, 30.0, 10.0])
    assert t.colnames[:9] == ["file", "jd", "mjd", "hjd", "bjd_tdb", "airmass", "exptime", "fwhm", "sky"]
    assert t.colnames[-11:] == list(C._STAR_COLUMNS)
    assert t.meta["gain"] == 2.0 and "rdnoise" not in t.meta and t.meta["base_file"] == ""
    assert t.meta["starxy"] == [[1.0, 2.0], [3.0, 4.0]] and t.meta["n_star"] == 2 and t.meta["match_max_dis"] == 7.0
