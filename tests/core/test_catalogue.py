"""Step c (catalogue) on a synthetic night of per-frame catalogues.

``make_night`` (also used by test_pick and test_differential) writes the
outputs of steps p and o for a field of 30 stars with known fluxes: an
eclipsing target, Poisson-like noise of known sigma (CCD equation +
scintillation), extinction and clouds, a drift and a jump in the offsets.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from qlcp_core.catalogue import FLAG_MISSING, build_catalogue, match_stars, read_catalogue, write_catalogue
from qlcp_core.config import Config

SHAPE = (1024, 1024)
GAIN, RDNOISE, SKY = 1.5, 8.0, 300.0
APER = [4.0, 6.0]
APER_FRAC = np.array([0.85, 0.97])      # fraction of the star's light in each aperture
NSKY = math.pi * ((6 + 12) ** 2 - (6 + 4) ** 2)   # default annulus: largest aperture + 4 .. + 12
FWHM = 3.0
EXPTIME = 30.0
K_EXT = 0.25

# special stars
TGT, SAT, NEAR_SAT, VAR_COMP, DROP_COMP, CHK, PAIR_A, PAIR_B = 0, 7, 8, 9, 10, 11, 5, 6
BAD_OFFSET_FRAME, NO_CAT_FRAME, MISSING_FRAME = 10, 20, 30
ROUGH_OFFSET_FRAMES = (61, 62)


def cfg_for_tests(**kw) -> Config:
    base = dict(gain=GAIN, rdnoise=RDNOISE, aper=APER, tel_diameter=0.85, site_ele=960.0, scint_cy=1.5)
    base.update(kw)
    return Config(**base)


def scint_rel(airmass):
    """Osborn et al. 2015 eq. 7, written out independently of qlcp_core.noise."""
    return np.sqrt(1e-5 * 1.5**2 * 0.85 ** (-4 / 3) / EXPTIME * airmass**3 * np.exp(-2 * 960.0 / 8000.0))


def ccd_sigma_adu(mu, npix):
    return np.sqrt(mu * GAIN + npix * (1 + npix / NSKY) * (SKY * GAIN + RDNOISE**2)) / GAIN


def eclipse(t, depth, t0, width=0.04):
    return depth * np.exp(-0.5 * ((t - t0) / width) ** 2)


def _positions(rng, n):
    xy = [(500.0, 520.0)]
    while len(xy) < n:
        p = rng.uniform(80, 930, 2)
        if len(xy) == PAIR_B:           # the close neighbour of star 5, 6 px away
            p = np.array(xy[PAIR_A]) + (6.0, 0.0)
        elif min(math.dist(p, q) for q in xy) < 35:
            continue
        xy.append(tuple(p))
    return np.array(xy)


def make_night(tmp: Path, *, seed=1, nf=100, depth=0.3, var_comp=False, drop_comp=False):
    """Write ``{tmp}/M1_V/*.cat.fits`` and an offsets table; return everything a test needs."""
    rng = np.random.default_rng(seed)
    ns = 30
    xy0 = _positions(rng, ns)
    flux = 10 ** rng.uniform(np.log10(2e4), np.log10(3e5), ns)
    flux[TGT] = 1.5e5
    flux[SAT] = 1.5e6
    # peak + sky at 95 % of saturation (60000 ADU) in the frames of lowest airmass
    flux[NEAR_SAT] = (0.95 * 60000 - SKY) * 2 * math.pi * (FWHM / 2.3548) ** 2 / 10 ** (-0.4 * K_EXT * 1.05)
    flux[DROP_COMP] = 3e5
    flux[CHK] = 1e5
    field = rng.uniform(60, 960, (15, 2))                 # faint stars not in starxy
    field = field[np.min(np.hypot(*(field[:, None, :] - xy0[None]).transpose(2, 0, 1)), axis=1) > 25]

    jd = 2460400.0 + 0.0025 * np.arange(nf)
    t = jd - jd[0]
    airmass = 1.05 + 3.0 * (t / t[-1] - 0.3) ** 2
    cloud = np.zeros(nf)
    cloud[40:48] = rng.uniform(0.3, 0.7, 8)
    atten = 10 ** (-0.4 * (K_EXT * airmass + cloud))
    var = np.zeros((nf, ns))
    var[:, TGT] = eclipse(t, depth, 0.12)
    if var_comp:
        var[:, VAR_COMP] = eclipse(t, 0.25, 0.18, 0.03)
    off_true = np.column_stack([0.08 * np.arange(nf), -0.05 * np.arange(nf)])
    off_true[nf // 2:] += (35.0, -22.0)                  # a jump (meridian flip, re-pointing)
    npix = math.pi * np.array(APER) ** 2
    sig_s = scint_rel(airmass)

    d = tmp / "M1_V"
    d.mkdir(parents=True, exist_ok=True)
    cat_files, rows = [], []
    true_xy = np.full((nf, ns, 2), np.nan)
    sigma_mag = np.zeros((nf, ns, 2))
    for f in range(nf):
        raw = f"M1-{f:04d}V.fit"
        mu = flux[None, :] * 10 ** (-0.4 * var[f])[None, :] * atten[f] * APER_FRAC[:, None]   # (2, ns)
        mu_auto = flux * 10 ** (-0.4 * var[f]) * atten[f]
        s_ccd = ccd_sigma_adu(mu, npix[:, None])
        n1, n2 = rng.standard_normal(ns), rng.standard_normal(ns)
        obs = mu * (1 + sig_s[f] * n1) + s_ccd * n2
        obs_auto = mu_auto * (1 + sig_s[f] * n1) + ccd_sigma_adu(mu_auto, 2 * npix[1]) * n2
        sigma_mag[f] = (1.0857 * np.sqrt((s_ccd / mu) ** 2 + sig_s[f] ** 2)).T
        pos = xy0 + off_true[f] + rng.normal(0, 0.03, (ns, 2))
        true_xy[f] = pos
        keep = np.ones(ns, bool)
        if f == MISSING_FRAME:
            keep[PAIR_A] = False
        if drop_comp and f >= nf // 2:
            keep[DROP_COMP] = False
        true_xy[f, ~keep] = np.nan
        nfield = len(field)
        fobs = np.full((2, nfield), 800.0) * atten[f] + rng.normal(0, 60, (2, nfield))
        X = np.concatenate([pos[keep, 0], field[:, 0] + off_true[f, 0]])
        Y = np.concatenate([pos[keep, 1], field[:, 1] + off_true[f, 1]])
        Fl = np.concatenate([obs[:, keep], fobs], axis=1).T
        Fe = np.concatenate([s_ccd[:, keep], np.full((2, nfield), 60.0)], axis=1).T
        FA = np.concatenate([obs_auto[keep], fobs[1]])
        FAe = np.concatenate([ccd_sigma_adu(mu_auto, 2 * npix[1])[keep], np.full(nfield, 80.0)])
        peak = FA / (2 * math.pi * (FWHM / 2.3548) ** 2)
        flags = np.zeros(len(X), dtype=np.int16)
        isat = np.flatnonzero(np.arange(ns)[keep] == SAT)
        flags[isat] |= 2
        peak[isat] = 65535 - SKY
        order = rng.permutation(len(X))               # catalogue rows in no particular order
        tab = Table()
        tab["X"], tab["Y"] = X[order], Y[order]
        tab["Elong"] = np.ones(len(X))
        tab["FWHM"] = np.full(len(X), FWHM)
        tab["FluxAUTO"], tab["FErrAUTO"] = FA[order], FAe[order]
        tab["MagAUTO"] = 25 - 2.5 * np.log10(FA[order])
        tab["ErrAUTO"] = 1.0857 * FAe[order] / FA[order]
        tab["Flux"], tab["FErr"] = Fl[order], Fe[order]
        tab["Mag"] = 25 - 2.5 * np.log10(Fl[order])
        tab["Err"] = 1.0857 * Fe[order] / Fl[order]
        tab["Sky"] = np.full(len(X), SKY)
        tab["Peak"] = peak[order]
        tab["Flags"] = flags[order]
        tab.meta.update(JD=jd[f], MJD=jd[f] - 2400000.5, HJD=jd[f] + 0.0029, BJD=jd[f] + 0.0030,
                        AIRMASS=airmass[f], EXPTIME=EXPTIME, RAWFILE=raw, FWHM=FWHM, SKY=SKY, NSTARS=len(X),
                        APER0=APER[0], APER1=APER[1])
        p = d / f"M1-{f:04d}V.cat.fits"
        if f != NO_CAT_FRAME:
            tab.write(p, overwrite=True)
        cat_files.append(p)
        est = off_true[f] + rng.normal(0, 0.4, 2)      # step o is good to a fraction of a pixel
        if f in ROUGH_OFFSET_FRAMES:
            est += (2.5, -2.0)                          # ... but not always
        ok = f != BAD_OFFSET_FRAME
        rows.append((raw, f"M1_V/M1-{f:04d}V.bf.fits", jd[f], est[0] if ok else np.nan,
                     est[1] if ok else np.nan, ns if ok else 0, ok))
    offsets = Table(rows=rows, names=("file", "bf", "jd", "dx", "dy", "n_matched", "ok"))
    m_true = 25 - 2.5 * np.log10(flux[None, :, None] * APER_FRAC[None, None, :]) + var[:, :, None]
    return dict(cat_files=cat_files, offsets=offsets, starxy=[tuple(p) for p in xy0], true_xy=true_xy,
                off_true=off_true, m_true=m_true, var=var, sigma_mag=sigma_mag, airmass=airmass, jd=jd,
                cloud=cloud, flux=flux, nf=nf, ns=ns)


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
