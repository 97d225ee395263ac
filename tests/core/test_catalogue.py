"""Step c (catalogue) on a synthetic night of per-frame catalogues (``synthetic_night``)."""

from __future__ import annotations

import numpy as np
import pytest

from qlcp.core.catalogue import (
    FLAG_MISSING,
    build_catalogue,
    match_stars,
    read_catalogue,
    write_catalogue,
)

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
