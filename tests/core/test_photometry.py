"""Tests of step p (qlcp.core.photometry) on small simulated frames with known truth.

Stars are pixel-integrated Gaussians (so the flux in the image is exactly the
true flux) on a flat sky, with Poisson noise in electrons and Gaussian read
noise, converted to ADU with a known gain.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sep
from astropy.io import fits
from astropy.table import Table
from scipy.spatial import cKDTree
from scipy.special import ndtr

from qlcp.core import photometry as P
from qlcp.core.photometry import frame as FR
from qlcp.core.photometry import measurement as M
from qlcp.core.photometry import pixels as PX
from qlcp.core.config import Config
from qlcp.core.errors import InputError

GAIN, RDN, SKY = 2.0, 8.0, 300.0
SIG2FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))


# ---------------------------------------------------------------- simulator
def model(shape, xs, ys, fluxes, fwhm, sky=SKY):
    """Noise-free image: pixel-integrated Gaussian stars (0-based centres) on a flat sky, ADU."""
    ny, nx = shape
    img = np.full(shape, float(sky))
    s = fwhm / SIG2FWHM
    h = int(math.ceil(7 * s)) + 2
    for x, y, f in zip(np.atleast_1d(xs), np.atleast_1d(ys), np.atleast_1d(fluxes)):
        ix, iy = int(round(x)), int(round(y))
        cx = np.arange(max(ix - h, 0), min(ix + h + 1, nx))
        cy = np.arange(max(iy - h, 0), min(iy + h + 1, ny))
        if cx.size == 0 or cy.size == 0:
            continue
        ex = ndtr((cx + 0.5 - x) / s) - ndtr((cx - 0.5 - x) / s)
        ey = ndtr((cy + 0.5 - y) / s) - ndtr((cy - 0.5 - y) / s)
        img[cy[0]:cy[-1] + 1, cx[0]:cx[-1] + 1] += f * np.outer(ey, ex)
    return img


def noisy(m, rng, gain=GAIN, rdn=RDN):
    return ((rng.poisson(m * gain) + rng.normal(0.0, rdn, m.shape)) / gain).astype(np.float32)


def grid_stars(n_side, size, margin, rng, fmin, fmax):
    """Well separated stars on a jittered grid, log-uniform fluxes."""
    g = np.linspace(margin, size - 1 - margin, n_side)
    xs, ys = np.meshgrid(g, g)
    xs = xs.ravel() + rng.uniform(-0.5, 0.5, xs.size)
    ys = ys.ravel() + rng.uniform(-0.5, 0.5, ys.size)
    fl = 10 ** rng.uniform(math.log10(fmin), math.log10(fmax), xs.size)
    return xs, ys, fl


def match(tab, xs, ys, tol=1.0):
    """Index into the table of the source nearest each true star (-1 when none within tol)."""
    d, i = cKDTree(np.column_stack([tab["X"], tab["Y"]])).query(np.column_stack([xs, ys]))
    return np.where(d < tol, i, -1)


def enclosed(r, fwhm):
    """Fraction of a pixelated Gaussian within radius r (pixel blur as variance 1/12)."""
    s2 = (fwhm / SIG2FWHM) ** 2 + 1.0 / 12.0
    return 1.0 - np.exp(-np.asarray(r) ** 2 / (2 * s2))


# -------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def field():
    rng = np.random.default_rng(11)
    xs, ys, fl = grid_stars(4, 256, 32, rng, 3e3, 3e5)
    fwhm = 4.0
    img = noisy(model((256, 256), xs, ys, fl, fwhm), rng)
    cfg = Config(aper=[3.0, 15.0])
    tab, stats = P.measure(img, cfg, GAIN, RDN, 60000.0)
    return dict(xs=xs, ys=ys, fl=fl, fwhm=fwhm, img=img, tab=tab, stats=stats)


def test_detects_every_star_with_precise_positions(field):
    tab, xs, ys, fl = field["tab"], field["xs"], field["ys"], field["fl"]
    idx = match(tab, xs, ys)
    assert (idx >= 0).all(), "every simulated star is found"
    assert len(tab) == len(xs), "and nothing else (a clean sky has no spurious sources at 3 sigma x 5 px)"
    bright = fl > 3e4
    assert bright.sum() >= 4
    dx = tab["X"][idx] - xs
    dy = tab["Y"][idx] - ys
    assert np.abs(dx[bright]).max() < 0.05 and np.abs(dy[bright]).max() < 0.05
    assert (tab["Flags"][idx] == 0).all()


def test_aperture_fluxes_match_truth_within_errors(field):
    tab, fl, fwhm = field["tab"], field["fl"], field["fwhm"]
    idx = match(tab, field["xs"], field["ys"])
    flux, ferr = tab["Flux"][idx], tab["FErr"][idx]
    # 15 px = 8.8 sigma: the whole star; pulls must look like N(0, 1)
    pull = (flux[:, 1] - fl * enclosed(15.0, fwhm)) / ferr[:, 1]
    assert np.abs(pull).max() < 4
    assert 0.4 < np.sqrt(np.mean(pull ** 2)) < 1.6
    # 3 px holds a known fraction of a Gaussian star
    bright = fl > 3e4
    ratio = flux[bright, 0] / (fl[bright] * enclosed(3.0, fwhm))
    assert np.abs(ratio - 1).max() < 0.02
    # magnitudes follow the convention
    np.testing.assert_allclose(tab["Mag"][idx], 25 - 2.5 * np.log10(flux), rtol=0, atol=1e-9)
    np.testing.assert_allclose(tab["Err"][idx], 1.0857 * ferr / flux, rtol=1e-3)
    # AUTO (Kron, min 3.5 a) holds nearly all the flux of a Gaussian
    auto = tab["FluxAUTO"][idx]
    assert np.abs(auto[bright] / fl[bright] - 1).max() < 0.02
    assert np.abs((auto - fl) / tab["FErrAUTO"][idx]).max() < 5


def test_frame_stats(field):
    st, tab = field["stats"], field["tab"]
    assert abs(st["FWHM"] / field["fwhm"] - 1) < 0.05
    assert abs(np.median(tab["FWHM"]) / field["fwhm"] - 1) < 0.05
    assert abs(st["SKY"] / SKY - 1) < 0.01
    rms = math.sqrt(SKY / GAIN + (RDN / GAIN) ** 2)
    assert abs(st["SKYRMS"] / rms - 1) < 0.05
    assert st["NSTARS"] == len(tab) and st["APER"] == [3.0, 15.0]
    assert st["SKYANN"] == (19.0, 43.0)      # largest aperture + 4 .. + 28
    np.testing.assert_allclose(tab["Sky"], SKY, atol=2.0)
    for k in ("APER", "FWHM", "SKY", "NSTARS"):
        assert k in tab.meta
    assert tab["Flux"].shape == (len(tab), 2) and tab["Flags"].dtype.kind == "i"


def test_predicted_errors_match_scatter_of_repeated_frames():
    """FErr vs the real scatter over 50 noise realisations, sky- and photon-limited stars.

    A narrow annulus (10..14 px, ~300 pixels) makes the noise of the sky
    estimate as large as the sky noise in the 8 px aperture: a model without
    that term would be ~40 % low, one with the mean's 1/n instead of the
    median's (pi/2)/n ~11 % low, and fail here (precision ~2.5 %).
    """
    rng = np.random.default_rng(5)
    xs, ys, _ = grid_stars(5, 256, 24, rng, 1, 2)
    fl = np.geomspace(500, 4e5, xs.size)
    m = model((256, 256), xs, ys, fl, 3.5)
    radii = np.array([3.0, 8.0])
    cfg = Config(aper=list(radii), sky_annulus=(10.0, 14.0))
    pos = np.column_stack([xs, ys])
    nrep = 50
    flux = np.empty((nrep, xs.size, 2))
    ferr = np.empty_like(flux)
    for k in range(nrep):
        tab, _ = P.measure(noisy(m, rng), cfg, GAIN, RDN, 1e9, positions=pos)
        flux[k], ferr[k] = tab["Flux"], tab["FErr"]
    z = (flux - flux.mean(axis=0)) / ferr * math.sqrt(nrep / (nrep - 1))
    # sky and photon variance in each aperture, to split sky- from photon-limited stars
    skyvar = (SKY / GAIN + (RDN / GAIN) ** 2) * np.pi * radii ** 2
    photon = fl / GAIN
    for ap, sel in ((0, photon < skyvar[0]), (1, photon < skyvar[1]), (0, photon > 3 * skyvar[0])):
        assert sel.sum() >= 8
        ratio = z[:, sel, ap].std()
        assert abs(ratio - 1) < 0.07, f"aperture {radii[ap]}: empirical / predicted scatter = {ratio:.3f}"
    # and the fluxes are unbiased: truth = the noise-free star light in the same apertures
    truth = np.column_stack([sep.sum_circle(m - SKY, xs, ys, r, subpix=0)[0] for r in radii])
    bias = (flux.mean(axis=0) - truth) / (ferr.mean(axis=0) / math.sqrt(nrep))
    assert np.abs(bias).max() < 4


def test_clipped_mean_sky_estimator():
    """The annulus estimator: robust to contamination, unbiased sigma, variance sigma^2 / n (a mean's)."""
    rng = np.random.default_rng(6)
    rows, npx, sig = 4000, 300, 10.0
    v = rng.normal(0.0, sig, (rows, npx))
    med, s, n = PX._clipped_mean(v)
    assert abs(np.mean(s) / sig - 1) < 0.01                  # truncation-corrected clipped std
    assert abs(np.var(med) / (sig ** 2 / np.mean(n)) - 1) < 0.1   # a median would give pi/2
    assert np.mean(n) > 0.995 * npx and n.min() > 0.95 * npx
    # 10 % of the pixels hit by faint stars / cosmic rays, some pixels excluded (NaN)
    w = v.copy()
    hit = rng.random(w.shape) < 0.1
    w[hit] += rng.uniform(50, 5000, hit.sum())
    w[:, :40] = np.nan
    med2, s2, n2 = PX._clipped_mean(w)
    assert abs(np.mean(med2)) < 0.05 * sig and abs(np.mean(s2) / sig - 1) < 0.02
    assert (n2 <= npx - 40).all()
    # fewer than the minimum usable pixels: no estimate
    med3, s3, _ = PX._clipped_mean(np.full((2, 50), np.nan))
    assert np.isnan(med3).all() and np.isnan(s3).all()


def test_sky_gradient_and_given_annulus():
    """A sky ramp of 0.6 ADU/px: the local annulus keeps fluxes and Sky right."""
    rng = np.random.default_rng(9)
    xs, ys, fl = grid_stars(4, 256, 32, rng, 5e3, 2e5)
    ramp = 0.6 * np.arange(256)[None, :] + np.zeros((256, 1))
    img = noisy(model((256, 256), xs, ys, fl, 4.0) + ramp, rng)
    tab, st = P.measure(img, Config(aper=[6.0], sky_annulus=(10.0, 20.0)), GAIN, RDN, 60000.0)
    assert st["SKYANN"] == (10.0, 20.0) and tab.meta["SKYIN"] == 10.0
    idx = match(tab, xs, ys)
    assert (idx >= 0).all()
    np.testing.assert_allclose(tab["Sky"][idx], SKY + 0.6 * xs, atol=1.5)
    pull = (tab["Flux"][idx, 0] - fl * enclosed(6.0, 4.0)) / tab["FErr"][idx, 0]
    assert np.abs(pull).max() < 4


def test_saturation_and_border_flags():
    rng = np.random.default_rng(3)
    xs = np.array([60.3, 180.6, 1.2, 120.4])
    ys = np.array([60.1, 190.2, 128.7, 120.0])
    fl = np.array([1e6, 5e4, 5e4, 5e4])
    img = noisy(model((256, 256), xs, ys, fl, 4.0), rng)
    sat = 30000.0
    img = np.minimum(img, sat)                   # a real CCD clips at its full well
    tab, _ = P.measure(img, Config(aper=[5.0]), GAIN, RDN, sat)
    idx = match(tab, xs, ys, tol=1.5)
    assert (idx >= 0).all()
    f = tab["Flags"][idx]
    assert f[0] & P.FLAG_SATURATED and not f[0] & P.FLAG_BORDER
    assert f[2] & P.FLAG_BORDER and not f[2] & P.FLAG_SATURATED
    assert f[1] == 0 and f[3] == 0
    assert tab["Peak"][idx[0]] == sat


def test_negative_apertures_scale_with_fwhm():
    out = {}
    for fwhm in (3.0, 6.0):
        rng = np.random.default_rng(8)
        xs, ys, fl = grid_stars(4, 256, 40, rng, 5e4, 2e5)
        img = noisy(model((256, 256), xs, ys, fl, fwhm), rng)
        tab, st = P.measure(img, Config(aper=[-1.5, 5.0]), GAIN, RDN, 60000.0)
        assert st["APER"][0] == pytest.approx(1.5 * st["FWHM"]) and st["APER"][1] == 5.0
        assert tab.meta["APER"] == st["APER"]
        idx = match(tab, xs, ys)
        out[fwhm] = (st, tab["Flux"][idx, 0] / fl)
    assert out[6.0][0]["APER"][0] / out[3.0][0]["APER"][0] == pytest.approx(2.0, rel=0.05)
    # the same multiple of the FWHM holds the same fraction of the light
    assert np.median(out[6.0][1]) == pytest.approx(np.median(out[3.0][1]), abs=0.01)


def test_nineteen_apertures_and_limits(field):
    aper = [float(r) for r in range(1, 17)] + [-1.0, -2.0, -3.0]
    tab, st = P.measure(field["img"], Config(aper=[5.0]), GAIN, RDN, 60000.0, aper=aper)
    assert tab["Flux"].shape == (len(tab), 19) and tab["Err"].shape == (len(tab), 19)
    assert len(st["APER"]) == 19 and st["APER"][-1] == pytest.approx(3 * st["FWHM"])
    idx = match(tab, field["xs"], field["ys"])
    b = idx[np.argmax(field["fl"])]
    grow = tab["Flux"][b, :16]
    assert (np.diff(grow[:6]) > 0).all()         # the growth curve of the brightest star
    assert abs(grow[-1] / field["fl"].max() - 1) < 0.01
    with pytest.raises(InputError):
        P.measure(field["img"], Config(), GAIN, RDN, 60000.0, aper=[5.0] * 20)


def test_forced_photometry_keeps_given_order(field):
    xs, ys, fl = field["xs"], field["ys"], field["fl"]
    order = np.random.default_rng(1).permutation(xs.size)
    pos = np.column_stack([xs[order], ys[order]])
    pos = np.vstack([pos, [[128.0, 5.0]]])       # blank sky near the edge
    cfg = Config(aper=[3.0, 15.0])
    tab, st = P.measure(field["img"], cfg, GAIN, RDN, 60000.0, positions=pos)
    assert len(tab) == len(pos)
    np.testing.assert_array_equal(tab["X"], pos[:, 0])
    np.testing.assert_array_equal(tab["Y"], pos[:, 1])
    true = fl[order] * enclosed(15.0, field["fwhm"])
    pull = (tab["Flux"][:-1, 1] - true) / tab["FErr"][:-1, 1]
    assert np.abs(pull).max() < 4
    assert abs(tab["Flux"][-1, 0]) < 4 * tab["FErr"][-1, 0]
    assert tab["Flags"][-1] & P.FLAG_BORDER
    assert abs(st["FWHM"] / field["fwhm"] - 1) < 0.05
    # Kron ellipse from windowed moments: round stars come out round
    assert np.median(tab["Elong"][:-1]) < 1.15
    det = field["tab"][match(field["tab"], xs[order], ys[order])]
    # same fluxes as the detection run (which masks other sources in the sky annulus)
    assert np.abs((tab["Flux"][:-1] - det["Flux"]) / det["FErr"]).max() < 0.3


def test_byte_order_bad_pixels_and_cosmic_rays(field):
    img = field["img"].copy()
    xs, ys = field["xs"], field["ys"]
    k = int(np.argmax(field["fl"]))
    # a NaN pixel near one star, a cosmic-ray hit near another
    img[int(round(ys[k])) + 2, int(round(xs[k])) - 2] = np.nan
    j = (k + 5) % xs.size
    img[int(round(ys[j])) + 6, int(round(xs[j])) + 5] += 3000.0    # inside the 9 px aperture
    img[64, 64] += 2000.0                                               # far from any star
    big = img.astype(">f4")
    keep = big.copy()
    cfg = Config(aper=[3.0, 9.0])
    tab, st = P.measure(big, cfg, GAIN, RDN, 60000.0)
    np.testing.assert_array_equal(big, keep)     # the input is not modified
    tab2, _ = P.measure(img.astype("<f4"), cfg, GAIN, RDN, 60000.0)
    np.testing.assert_array_equal(tab["Flux"], tab2["Flux"])
    idx = match(tab, xs, ys)
    assert tab["Flags"][idx[k]] & P.FLAG_COSMIC
    assert np.isfinite(tab["Flux"][idx[k]]).all()
    assert tab["Flags"][idx[j]] & P.FLAG_COSMIC
    others = np.setdiff1d(np.arange(xs.size), [k, j])
    assert (tab["Flags"][idx[others]] & P.FLAG_COSMIC == 0).all()
    # an isolated hit is detected as a source, flagged as what it is
    hit = match(tab, [64.0], [64.0])[0]
    assert hit >= 0 and tab["Flags"][hit] & P.FLAG_COSMIC
    assert st["FWHM"] == pytest.approx(field["stats"]["FWHM"], rel=0.01)


def test_empty_and_flat_frames():
    rng = np.random.default_rng(2)
    cfg = Config(aper=[-2.0, 4.0])
    flat = np.full((128, 128), 100.0, dtype=np.float32)
    tab, st = P.measure(flat, cfg, GAIN, RDN, 60000.0)
    assert len(tab) == 0 and tab["Flux"].shape == (0, 2) and math.isnan(st["FWHM"])
    noise = noisy(np.full((128, 128), SKY), rng)
    tab, st = P.measure(noise, cfg, GAIN, RDN, 60000.0)
    assert len(tab) < 5                           # a few noise peaks at most
    assert tab["Flux"].shape[1] == 2


def test_photometry_file_writes_catalogue_and_png(tmp_path, field):
    hdr = fits.Header()
    for key, val in dict(GAIN=GAIN, RDNOISE=RDN, SATURATE=50000.0, JD=2460000.5, MJD=60000.0,
                         HJD=2460000.501, BJD=2460000.502, AIRMASS=1.2, EXPTIME=30.0,
                         RAWFILE="UYUMa-0003I.fit", FILTER="I").items():
        hdr[key] = val
    bf = tmp_path / "UYUMa-0003I.bf.fits"
    fits.PrimaryHDU(field["img"], hdr).writeto(bf)      # big-endian on disk
    cfg = Config(aper=[3.0, -2.0], draw_phot=True, draw_phot_err=0.05)
    res = P.photometry_file(bf, tmp_path, cfg)
    cat = tmp_path / "UYUMa-0003I.cat.fits"
    assert res["file"] == str(cat) and cat.is_file()
    assert res["NSTARS"] == len(field["xs"]) and abs(res["FWHM"] / field["fwhm"] - 1) < 0.05
    t = Table.read(cat)
    assert list(t.colnames) == list(P.COLUMNS)
    assert t["Flux"].shape == (len(t), 2)
    for key in ("JD", "MJD", "HJD", "BJD", "AIRMASS", "EXPTIME", "RAWFILE", "FILTER"):
        assert t.meta[key] == hdr[key]
    assert t.meta["FWHM"] == pytest.approx(res["FWHM"]) and t.meta["APER1"] == pytest.approx(2 * res["FWHM"])
    assert t.meta["NAPER"] == 2 and t.meta["APER0"] == 3.0
    assert t.meta["GAIN"] == GAIN and t.meta["SATURATE"] == 50000.0 and t.meta["NSTARS"] == len(t)
    png = tmp_path / "UYUMa-0003I.cat.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))           # no temporary file left behind
    # cfg gain and read noise win over the header; the saturation is the frame's own (corrected ADU)
    res2 = P.photometry_file(bf, tmp_path / "other.cat.fits", Config(gain=4.0, rdnoise=1.0, saturation=1e5))
    t2 = Table.read(res2["file"])
    assert t2.meta["GAIN"] == 4.0 and t2.meta["RDNOISE"] == 1.0 and t2.meta["SATURATE"] == 50000.0
    assert not (tmp_path / "other.cat.png").exists()
    # a frame without SATURATE (not made by step i): the configured level
    del hdr["SATURATE"]
    bf2 = tmp_path / "UYUMa-0004I.bf.fits"
    fits.PrimaryHDU(field["img"], hdr).writeto(bf2)
    t3 = Table.read(P.photometry_file(bf2, tmp_path / "third.cat.fits", Config(saturation=1e5))["file"])
    assert t3.meta["SATURATE"] == 1e5


def test_saturation_in_corrected_adu_flags_a_star_below_the_raw_level(tmp_path):
    """Step i writes SATURATE in corrected ADU ((raw level - bias) / flat). A star that reached the
    raw level is flagged from it, not missed because the bias was subtracted (a fixed bug)."""
    rng = np.random.default_rng(12)
    bias, raw_level = 1000.0, 60000.0
    xs, ys, fl = np.array([40.0, 90.0]), np.array([50.0, 60.0]), np.array([2e6, 2e4])
    img = noisy(model((128, 128), xs, ys, fl, 3.0), rng)
    img = np.minimum(img, raw_level - bias)             # the detector clipped the bright star
    hdr = fits.Header({"GAIN": GAIN, "RDNOISE": RDN, "SATURATE": raw_level - bias})
    bf = tmp_path / "S-0001V.bf.fits"
    fits.PrimaryHDU(img.astype(np.float32), hdr).writeto(bf)
    t = Table.read(P.photometry_file(bf, tmp_path, Config(aper=[5.0], saturation=raw_level))["file"])
    idx = match(t, xs, ys)
    assert (idx >= 0).all()
    assert t["Flags"][idx[0]] & P.FLAG_SATURATED and not t["Flags"][idx[1]] & P.FLAG_SATURATED
    assert t.meta["SATURATE"] == raw_level - bias


def test_full_frame_200_stars_found():
    """A 1024x1024 frame with 200 stars: most found with 1 and 5 apertures (speed is in bench/)."""
    rng = np.random.default_rng(4)
    n = 200
    xs, ys = rng.uniform(10, 1014, n), rng.uniform(10, 1014, n)
    fl = 10 ** rng.uniform(3.0, 5.5, n)
    img = noisy(model((1024, 1024), xs, ys, fl, 3.5, 500.0), rng)
    for aper in ([5.0], [3.0, 5.0, -1.5, -2.5, 10.0]):
        tab, _ = P.measure(img, Config(aper=aper), GAIN, RDN, 60000.0)
        assert len(tab) > 150
        assert np.asarray(tab["Flux"]).shape[1] == len(aper)


# ------------------------------------------------- fast paths against plain references
def _clipped_mean_reference(row):
    """Plain 3-sigma clipping of one row as documented: robust start from every k-th value
    (median, IQR), then rounds of mean and std of the kept values until the count is stable."""
    sub = row[:: max(1, -(-row.size // PX._SKY_START))]
    sub = np.sort(sub[np.isfinite(sub)])
    v = row[np.isfinite(row)]
    if sub.size == 0:
        return np.nan, np.nan, 0
    m = sub.size
    cen = 0.5 * (sub[(m - 1) // 2] + sub[m // 2])
    sig = (sub[3 * (m - 1) // 4] - sub[(m - 1) // 4]) / 1.349
    cnt = -1
    for _ in range(8):
        keep = np.abs(v - cen) <= 3 * sig
        if keep.sum() == cnt:
            break
        cnt = int(keep.sum())
        cen = v[keep].mean() if cnt else 0.0
        sig = np.std(v[keep], ddof=1) / 0.98658 if cnt > 1 else 0.0
    if cnt < 10:
        return np.nan, np.nan, cnt
    return cen, sig, cnt


def test_clipped_mean_matches_plain_reference():
    rng = np.random.default_rng(21)
    v = rng.normal(5.0, 10.0, (300, 1200))
    hit = rng.random(v.shape) < 0.08
    v[hit] += rng.uniform(30, 3000, hit.sum())          # contamination, clipped in several rounds
    v[rng.random(v.shape) < 0.2] = np.nan                 # excluded pixels, a different number per row
    v[0, 5:] = np.nan                                     # too few pixels
    v[1] = np.nan                                         # none
    for arr in (v, v.astype(np.float32)):
        got = PX._clipped_mean(arr)
        ref = np.array([_clipped_mean_reference(r.astype(float)) for r in arr.astype(float)])
        # a value right at 3 sigma may go either way with rounding (one-pass vs two-pass
        # variance): then one value is swapped for another, a shift of ~6 sigma / n
        same = np.isclose(got[0], ref[:, 0], rtol=1e-6, atol=1e-6) & (got[2] == ref[:, 2])
        assert same[2:].mean() > 0.95
        np.testing.assert_allclose(got[2][2:], ref[2:, 2], atol=2)
        assert (np.abs(got[0][2:] - ref[2:, 0]) < 0.5 * 10.0 / np.sqrt(ref[2:, 2])).all()
        np.testing.assert_allclose(got[1][2:], ref[2:, 1], rtol=0.01)
        assert np.isnan(got[0][:2]).all() and np.isfinite(got[0][2:]).all()


def test_local_sky_selects_the_annulus_pixels():
    """The gathered annulus equals a brute-force selection over the whole image (edges, masks)."""
    rng = np.random.default_rng(22)
    sub = rng.normal(0.0, 5.0, (120, 150)).astype(np.float32)
    seg = np.zeros(sub.shape, dtype=np.int32)
    seg[40:52, 60:75] = 3                                 # a neighbour's footprint
    x = np.array([70.3, 0.2, 149.5, 75.0, 10.61, 140.2, -3.0])
    y = np.array([50.7, 60.1, 119.5, 44.5, 3.49, 115.8, 60.0])
    yy, xx = np.mgrid[: sub.shape[0], : sub.shape[1]]
    for rin, rout in ((6.0, 14.0), (2.5, 5.2), (10.0, 10.9)):
        for exclude in (seg, None):
            rows = []
            for xi, yi in zip(x, y):
                d2 = (xx - xi) ** 2 + (yy - yi) ** 2
                sel = (d2 >= rin * rin) & (d2 < rout * rout)
                if exclude is not None:
                    sel &= exclude == 0
                rows.append(sub[sel].astype(float))
            width = max(len(r) for r in rows)
            ref = np.full((len(rows), width), np.nan)
            for k, r in enumerate(rows):
                ref[k, : len(r)] = r
            want = PX._clipped_mean(ref)
            got = PX._local_sky(sub, exclude, x, y, rin, rout)
            np.testing.assert_array_equal(got[2], want[2])          # the same pixels
            for g, w in zip(got[:2], want[:2]):                      # float32 vs float64 sums
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_half_light_radius_matches_sep_flux_radius():
    rng = np.random.default_rng(23)
    xs, ys, fl = grid_stars(5, 256, 30, rng, 2e3, 3e5)
    img = noisy(model((256, 256), xs, ys, fl, 3.5), rng) - np.float32(SKY)
    xs = np.append(xs, [2.3, 250.0])                      # near the edges
    ys = np.append(ys, [128.0, 253.6])
    rmax = rng.uniform(3.0, 14.0, xs.size)
    rmax[0] = 95.0                                        # beyond sep's always-oversampled range
    rmax[1] = 0.4
    flux = sep.sum_circle(img, xs, ys, 8.0, subpix=0)[0]
    flux = np.where(flux > 0, flux, 1e3)
    want = sep.flux_radius(img, xs, ys, rmax, 0.5, normflux=flux, subpix=5)[0]
    got = PX._half_light_radius(img, xs, ys, rmax, flux, None)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    mask = np.zeros(img.shape, dtype=bool)
    mask[60:64, 60:64] = True
    want_m = sep.flux_radius(img, xs, ys, rmax, 0.5, normflux=flux, mask=mask, subpix=5)[0]
    np.testing.assert_array_equal(PX._half_light_radius(img, xs, ys, rmax, flux, mask), want_m)


def test_sharp_pixels_near_sources_are_those_of_the_whole_image():
    rng = np.random.default_rng(24)
    xs, ys, fl = grid_stars(4, 200, 30, rng, 1e4, 2e5)
    sub = noisy(model((200, 200), xs, ys, fl, 3.5), rng) - np.float32(SKY)
    hits = rng.integers(1, 199, (1500, 2))                # hot pixels everywhere, also at r from a source
    sub[hits[:, 1], hits[:, 0]] += rng.uniform(100, 3000, len(hits)).astype(np.float32)
    rms = math.sqrt(SKY / GAIN + (RDN / GAIN) ** 2)
    c = sub[1:-1, 1:-1]
    d = c - 0.25 * (sub[:-2, 1:-1] + sub[2:, 1:-1] + sub[1:-1, :-2] + sub[1:-1, 2:])
    thr = 1.0 - math.exp(-1.0 / (2.0 * (3.5 / 2.0 / SIG2FWHM) ** 2))
    yp, xp = np.nonzero((d > 10 * rms) & (d > thr * c))
    every = set(zip((xp + 1).tolist(), (yp + 1).tolist()))
    assert len(every) > 1000
    src = np.column_stack([np.append(xs, 0.4), np.append(ys, 100.0)])
    for r in (1.5, 6.0, 11.5):
        gx, gy = PX._sharp_pixels(sub, 3.5, rms, src[:, 0], src[:, 1], r)
        got = set(zip(gx.tolist(), gy.tolist()))
        assert got <= every
        near = {p for p in every if np.hypot(src[:, 0] - p[0], src[:, 1] - p[1]).min() <= r}
        assert near <= got


# ------------------------------------------------- measure against an independent recomputation
def _gauss5():
    r = np.arange(5) - 2
    k = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (2.5 / SIG2FWHM) ** 2))
    return (k / k.sum()).astype(np.float32)


def test_measure_equals_an_independent_recomputation():
    """Every column of measure's catalogue, recomputed from sep and brute-force numpy as the
    module doc describes them (background, extraction, annulus by pixel distances, CCD errors,
    flags), on a frame with a saturated star, a star at the border, a cosmic ray and masked pixels."""
    rng = np.random.default_rng(31)
    xs, ys, fl = grid_stars(4, 256, 40, rng, 5e3, 2e5)
    xs = np.append(xs, [2.3, 150.4])
    ys = np.append(ys, [100.6, 20.2])
    fl = np.append(fl, [8e4, 3e6])
    sat = 40000.0
    img = np.minimum(noisy(model((256, 256), xs, ys, fl, 3.5), rng), np.float32(sat))
    img[int(round(ys[5])) + 3, int(round(xs[5])) - 2] += np.float32(3000.0)     # a cosmic ray near star 5
    img[200:203, 10:14] = np.nan
    cfg = Config(aper=[3.0, -1.5])
    tab, st = P.measure(img, cfg, GAIN, RDN, sat)

    bad = ~np.isfinite(img)
    filled = np.where(bad, np.median(img[~bad]), img).astype(np.float32)
    bkg = sep.Background(filled, mask=bad, bw=64, bh=64, fw=3, fh=3)
    back = bkg.back()
    sub = np.where(bad, np.float32(0), filled - back.astype(np.float32)).astype(np.float32)
    objs, seg = sep.extract(sub, cfg.detect_thresh * bkg.globalrms, mask=bad, minarea=cfg.detect_minarea,
                            filter_kernel=_gauss5(), deblend_nthresh=32, deblend_cont=0.005,
                            segmentation_map=True)
    n = len(objs)
    assert len(tab) == n >= len(xs) and st["NSTARS"] == n
    x, y = np.asarray(tab["X"]), np.asarray(tab["Y"])
    # windowed centroids (a Gaussian window of the star's FWHM; the detection's if that fails or moves >= 1 px)
    xw, yw, wf = sep.winpos(sub, objs["x"], objs["y"], np.asarray(tab["FWHM"]) / SIG2FWHM, mask=bad, subpix=0)
    moved = (wf == 0) & (np.hypot(xw - objs["x"], yw - objs["y"]) < 1.0)
    assert moved.sum() >= len(xs) - 2
    np.testing.assert_array_equal(x, np.where(moved, xw, objs["x"]))
    np.testing.assert_array_equal(y, np.where(moved, yw, objs["y"]))
    assert (match(tab, xs, ys) >= 0).all()
    np.testing.assert_allclose(tab["Elong"], np.maximum(objs["a"], objs["b"]) / objs["b"], rtol=1e-6)

    radii = np.array([3.0, 1.5 * st["FWHM"]])
    assert st["APER"] == pytest.approx(list(radii)) and 3.0 < st["FWHM"] < 4.0
    rin, rout = radii.max() + P.SKY_GAP, radii.max() + P.SKY_GAP + P.SKY_THICK
    yy, xx = np.mgrid[:256, :256]
    rows = []
    for xi, yi in zip(x, y):
        d2 = (xx - xi) ** 2 + (yy - yi) ** 2
        rows.append(sub[(d2 >= rin * rin) & (d2 < rout * rout) & (seg == 0)].astype(float))
    ref = np.full((n, max(len(r) for r in rows)), np.nan)
    for k, r in enumerate(rows):
        ref[k, : len(r)] = r
    sky_res, sky_sig, nsky = PX._clipped_mean(ref)
    assert np.isfinite(sky_res).all()
    ix, iy = np.clip(np.rint(x).astype(int), 0, 255), np.clip(np.rint(y).astype(int), 0, 255)
    np.testing.assert_allclose(tab["Sky"], back[iy, ix] + sky_res, rtol=0, atol=1e-3)

    for k, r in enumerate(radii):
        s = sep.sum_circle(sub, x, y, r, mask=bad, subpix=0)[0]
        f = s - math.pi * r * r * sky_res
        v = (np.maximum(f, 0) / GAIN + math.pi * r * (r - 1 / 3) * sky_sig ** 2
             + (math.pi * r * r) ** 2 * sky_sig ** 2 / nsky)
        np.testing.assert_allclose(tab["Flux"][:, k], f, rtol=1e-6, atol=1e-3)
        np.testing.assert_allclose(tab["FErr"][:, k], np.sqrt(v), rtol=1e-5)
        ok = f > 0
        np.testing.assert_allclose(tab["Mag"][ok, k], 25 - 2.5 * np.log10(f[ok]), atol=1e-7)
        assert np.isnan(tab["Mag"][~ok, k]).all()

    a, b, th = objs["a"].astype(float), objs["b"].astype(float), objs["theta"].astype(float)
    kr = sep.kron_radius(sub, objs["x"], objs["y"], a, b, th, 6.0, mask=bad)[0]
    r_auto = np.maximum(2.5 * kr, 3.5)
    f_auto = sep.sum_ellipse(sub, objs["x"], objs["y"], a, b, th, r_auto, mask=bad, subpix=5)[0]
    np.testing.assert_allclose(tab["FluxAUTO"], f_auto, rtol=1e-12)
    np.testing.assert_allclose(tab["FErrAUTO"], np.sqrt(np.maximum(f_auto, 0) / GAIN
                                                        + math.pi * a * b * r_auto ** 2 * sky_sig ** 2), rtol=1e-5)

    raw = np.where(bad, -np.inf, img)
    peak = np.array([raw[max(j - 2, 0): j + 3, max(i - 2, 0): i + 3].max() for i, j in
                     zip(np.rint(x).astype(int), np.rint(y).astype(int))])
    np.testing.assert_array_equal(tab["Peak"], peak)
    rmax = radii.max()
    border = (x - rmax < -0.5) | (y - rmax < -0.5) | (x + rmax > 255.5) | (y + rmax > 255.5)
    flags = np.asarray(tab["Flags"])
    np.testing.assert_array_equal((flags & P.FLAG_BORDER) != 0, border)
    np.testing.assert_array_equal((flags & P.FLAG_SATURATED) != 0, peak >= sat)
    np.testing.assert_array_equal((flags & P.FLAG_BLENDED) != 0, (objs["flag"] & sep.OBJ_MERGED) != 0)
    badflux = (np.asarray(tab["Flux"]) <= 0).any(axis=1) | (f_auto <= 0)
    np.testing.assert_array_equal((flags & P.FLAG_BADFLUX) != 0, badflux)
    idx = match(tab, xs, ys)
    assert flags[idx[-1]] & P.FLAG_SATURATED and flags[idx[-2]] & P.FLAG_BORDER
    assert flags[idx[5]] & P.FLAG_COSMIC                          # the hit 3.6 px from its centre
    assert (flags[idx[:16]][np.arange(16) != 5] == 0).all()       # the other grid stars are clean


# ------------------------------------------------------------------ the steps of measure
def _frame(img, **cfg):
    return FR._background(img, Config(**cfg) if cfg else Config())


def test_check_settings_rejects_bad_apertures_and_gain():
    assert FR._check_settings((3, -1.5), 1.2, None, None) == ([3, -1.5], 0.0, math.inf)
    for aper, gain in (([], 1.0), ([0.0], 1.0), ([np.nan], 1.0), ([1.0] * 20, 1.0), ([3.0], 0.0), ([3.0], None)):
        with pytest.raises(InputError):
            FR._check_settings(aper, gain, 8.0, 6e4)


def test_background_level_rms_and_masked_pixels():
    rng = np.random.default_rng(40)
    img = noisy(np.full((200, 300), SKY), rng).astype(">f8")       # big-endian, float64
    img[50:55, 60:70] = np.nan
    fr = _frame(img)
    rms = math.sqrt(SKY / GAIN + (RDN / GAIN) ** 2)
    assert fr.sky == pytest.approx(SKY, rel=0.005) and fr.rms == pytest.approx(rms, rel=0.05)
    assert fr.mask is fr.bad and fr.bad.sum() == 50
    assert (fr.sub[fr.bad] == 0).all() and np.isfinite(fr.img).all()
    assert abs(float(np.mean(fr.sub[~fr.bad]))) < 0.1 * rms
    assert fr.img.dtype == np.float32 and fr.img.flags.c_contiguous
    assert _frame(np.full((50, 50), 7.0)).mask is None
    with pytest.raises(InputError):
        _frame(np.zeros((3, 4, 5)))


def test_subsampled_background_has_the_full_models_level_rms_and_map():
    """A tracked frame's map from every 4th pixel (forced.TRACKED_STEP): the same sky level, per-pixel rms
    and large-scale map as the full model, against the truth (a tilted sky, stars, masked pixels, odd size)."""
    rng = np.random.default_rng(43)
    ny, nx = 515, 770                                       # not multiples of the step
    yy, xx = np.mgrid[0:ny, 0:nx]
    sky = SKY + 0.04 * xx - 0.03 * yy                        # ADU: +31 across x, -15 across y
    xs, ys = rng.uniform(20, nx - 20, 300), rng.uniform(20, ny - 20, 300)
    img = noisy(sky + model((ny, nx), xs, ys, rng.uniform(2e3, 5e4, 300), 3.0, sky=0.0), rng)
    img[100:104, 200:230] = np.nan
    full = FR._background(img, Config(), 128)
    sub4 = FR._background(img, Config(), 128, step=4)
    assert full.step == 1 and sub4.step == 4
    rms = math.sqrt(SKY / GAIN + (RDN / GAIN) ** 2)
    assert sub4.rms == pytest.approx(rms, rel=0.05) and sub4.rms == pytest.approx(full.rms, rel=0.02)
    assert sub4.sky == pytest.approx(full.sky, abs=0.05 * rms)
    inner = (slice(64, ny - 64), slice(64, nx - 64))         # away from the map's extrapolated edges
    model4 = (sub4.img - sub4.sub)[inner]                    # the subtracted map, in 4 x 4 blocks
    err4, err1 = model4 - sky[inner], (full.img - full.sub)[inner] - sky[inner]
    # a block holds the map of its first pixel: up to 3 px of the tilt (<= 0.2 ADU) on top of the estimate's
    assert abs(float(np.median(err4))) < 0.1 * rms and float(np.std(err4)) < 0.15 * rms
    assert float(np.std(err4)) < 2.5 * float(np.std(err1)) + 0.05 * rms
    assert (sub4.sub[sub4.bad] == 0).all() and sub4.sub.dtype == np.float32
    assert sub4.rms_at([0, ny - 1], [0, nx - 1]) == pytest.approx([sub4.rms] * 2, rel=0.2)
    # on meshes under 32 pixels a side the step is halved: 64 px -> every 2nd pixel
    assert FR._background(img, Config(), 64, step=4).step == 2
    assert FR._background(img, Config(), 48, step=4).step == 1


@pytest.mark.parametrize("shape", [(28, 36), (27, 35), (25, 33), (4, 4), (3, 9)])
def test_subtract_blocks_holds_each_map_value_over_its_block(shape):
    rng = np.random.default_rng(sum(shape))
    img = rng.normal(size=shape).astype(np.float32)
    back = rng.normal(size=(-(-shape[0] // 4), -(-shape[1] // 4))).astype(np.float32)
    want = img - np.repeat(np.repeat(back, 4, axis=0), 4, axis=1)[:shape[0], :shape[1]]
    np.testing.assert_array_equal(FR._subtract_blocks(img, back, 4), want)


def test_find_sources_detected_and_forced():
    rng = np.random.default_rng(41)
    xs, ys = np.array([40.2, 120.7, 70.5]), np.array([50.1, 90.4, 130.3])
    img = noisy(model((180, 180), xs, ys, [1e5, 5e4, 2e4], 4.0), rng)
    fr = _frame(img)
    src = FR._find_sources(fr, Config(), None, GAIN)
    assert not src.forced and src.seg is not None and len(src.x0) == 3
    d, _ = cKDTree(np.column_stack([src.x0, src.y0])).query(np.column_stack([xs, ys]))
    assert d.max() < 0.1
    # a round Gaussian of FWHM 4 px: isophotal a = b near sigma (pixel blur adds 1/12 px^2)
    sigma = math.sqrt((4.0 / SIG2FWHM) ** 2 + 1 / 12)
    assert ((src.a > 0.9 * sigma) & (src.a < 1.3 * sigma)).all()
    assert (src.elong < 1.15).all() and not src.merged.any()
    pos = np.column_stack([xs[::-1], ys[::-1]])
    forced = FR._find_sources(fr, Config(), pos, GAIN)
    assert forced.forced and forced.seg is None
    np.testing.assert_array_equal(forced.x0, xs[::-1])                # the given order, not recentred
    np.testing.assert_allclose(forced.a, sigma, rtol=0.1)           # windowed moments: sigma itself
    np.testing.assert_allclose(forced.b, sigma, rtol=0.1)
    assert len(FR._find_sources(fr, Config(), np.zeros((0, 2)), GAIN).x0) == 0
    with pytest.raises(InputError):
        FR._find_sources(fr, Config(), [[1.0, np.nan]], GAIN)
    assert len(FR._find_sources(_frame(np.full((60, 60), 5.0)), Config(), None, GAIN).x0) == 0


def _one_star(flux=8e4, x=60.3, y=55.8, fwhm=4.0, size=120, seed=42):
    rng = np.random.default_rng(seed)
    fr = _frame(noisy(model((size, size), [x], [y], [flux], fwhm), rng))
    return fr, FR._find_sources(fr, Config(), None, GAIN)


def test_auto_fwhm_and_centroid_of_a_known_star():
    fr, src = _one_star()
    assert len(src.x0) == 1
    f_auto, sep_flags, area = M._auto_photometry(fr, src)
    assert sep_flags[0] == 0 and area[0] >= math.pi * 3.5 ** 2 * src.a[0] * src.b[0]
    err = math.sqrt(8e4 / GAIN + area[0] * fr.rms ** 2)
    assert abs(f_auto[0] - 8e4) < 4 * err
    fw = M._star_fwhm(fr, src, f_auto)
    assert 4.0 < fw[0] < 4.3                       # +3 % expected at 4 px (module doc)
    assert np.isnan(M._star_fwhm(fr, src, np.array([-5.0]))[0])
    x, y = M._centroids(fr, src, fw)
    assert abs(x[0] - 60.3) < 0.02 and abs(y[0] - 55.8) < 0.02
    forced = FR._find_sources(fr, Config(), [[60.0, 56.0]], GAIN)
    assert M._centroids(fr, forced, fw) == (forced.x0, forced.y0)


def test_aperture_photometry_of_a_known_star_within_its_error():
    fr, src = _one_star(flux=3e4)
    x, y = np.array([60.3]), np.array([55.8])
    radii = np.array([3.0, 12.0, np.nan])
    back, resid, var, est_var = M._sky(fr, src.seg, x, y, 16.0, 40.0, GAIN, RDN)
    assert back[0] + resid[0] == pytest.approx(SKY, abs=1.0)
    rms = math.sqrt(SKY / GAIN + (RDN / GAIN) ** 2)
    assert math.sqrt(var[0]) == pytest.approx(rms, rel=0.05) and 0 < est_var[0] < var[0] / 1000
    flux, ferr, sep_flags = M._aperture_photometry(fr, x, y, radii, resid, var, est_var, GAIN)
    for k, r in enumerate(radii[:2]):
        want = 3e4 * enclosed(r, 4.0)
        assert abs(flux[0, k] - want) < 3.5 * ferr[0, k]
        assert ferr[0, k] == pytest.approx(math.sqrt(want / GAIN + math.pi * r * r * rms ** 2), rel=0.1)
    assert np.isnan(flux[0, 2]) and np.isnan(ferr[0, 2]) and sep_flags[0] == 0


def test_sky_without_annulus_falls_back_to_the_ccd_equation():
    xy = np.array([20.0])
    fr = _frame(np.full((40, 40), SKY, dtype=np.float32) + np.float32(0.5) * (np.arange(40) % 2))
    back, resid, var, est_var = M._sky(fr, None, xy, xy, 100.0, 120.0, GAIN, RDN)
    assert resid[0] == 0 and est_var[0] == 0                           # no pixel in the annulus
    assert back[0] == pytest.approx(SKY, abs=0.5)
    assert var[0] == pytest.approx(back[0] / GAIN + (RDN / GAIN) ** 2)
    # a sky noisier than the CCD equation says: the background map's rms is the floor
    rng = np.random.default_rng(44)
    fr = _frame(rng.normal(SKY, 30.0, (64, 64)).astype(np.float32))
    back, resid, var, est_var = M._sky(fr, None, xy, xy, 100.0, 120.0, GAIN, RDN)
    assert math.sqrt(var[0]) == pytest.approx(30.0, rel=0.1)


def test_peaks_of_raw_pixels_near_the_position():
    img = np.zeros((30, 30), dtype=np.float32)
    img[10, 12] = 500.0
    img[20, 20] = np.nan
    fr = FR._background(img + 100, Config())
    pk = M._peaks(fr, np.array([10.4, 14.0, 15.0, 20.0, 28.9]), np.array([9.6, 10.0, 10.0, 20.0, 28.9]))
    assert pk[0] == 600.0 and pk[1] == 600.0 and pk[2] == 100.0      # the 5x5 box: 2 px, not 3
    assert pk[3] == 100.0 and pk[4] == 100.0                          # the NaN is skipped; corners clip
    assert np.isnan(M._peaks(fr, np.array([-10.0]), np.array([5.0]))[0])


def test_flags_bits():
    x = np.array([50.0, 1.0, 50.0, 50.0, 50.0, 50.0, 97.0])
    y = np.array([50.0, 50.0, 50.0, 50.0, 50.0, 50.0, 50.0])
    n = len(x)
    no = np.zeros(n, dtype=bool)
    sat, bl, sh = no.copy(), no.copy(), no.copy()
    sat[2], bl[3], sh[5] = True, True, True
    flux = np.ones((n, 2))
    flux[4, 1] = -1.0
    f_auto = np.ones(n)
    sep_flags = np.zeros(n, dtype=np.int64)
    sep_flags[6] = sep.APER_HASMASKED
    fl = M._flags((100, 100), x, y, 3.0, sat, bl, flux, f_auto, sep_flags, sh)
    assert list(fl) == [0, P.FLAG_BORDER, P.FLAG_SATURATED, P.FLAG_BLENDED, P.FLAG_BADFLUX, P.FLAG_COSMIC,
                        P.FLAG_BORDER | P.FLAG_COSMIC]
    f_auto[0] = np.nan
    flux[1, 0] = np.nan
    fl = M._flags((100, 100), x, y, 1.0, no, no, flux, f_auto, np.zeros(n, dtype=np.int64), no)
    assert list(fl) == [P.FLAG_BADFLUX, P.FLAG_BADFLUX, 0, 0, P.FLAG_BADFLUX, 0, 0]
    assert fl.dtype == np.int32


def test_good_stars_drop_sharp_crowded_and_elongated_candidates():
    n = 8
    cand = np.ones(n, dtype=bool)
    cand[7] = False
    sharp = np.zeros(n, dtype=bool)
    sharp[0] = True
    nn = np.full(n, 100.0)
    nn[1] = 10.0                                   # < 4 x 3 px
    elong = np.ones(n)
    elong[2] = 2.5
    fw = np.full(n, 3.0)
    sat = np.zeros(n, dtype=bool)
    good = M._good_stars(cand, sharp, nn, elong, fw, sat, 3.0)
    assert list(np.flatnonzero(good)) == [3, 4, 5, 6]
    # fewer than 3 isolated round ones: all candidates that are not sharp
    nn[3:] = 1.0
    assert list(np.flatnonzero(M._good_stars(cand, sharp, nn, elong, fw, sat, 3.0))) == [1, 2, 3, 4, 5, 6]
    # no candidate FWHM: every unsaturated source with a FWHM
    fw[4], sat[5] = np.nan, True
    assert list(np.flatnonzero(M._good_stars(cand, sharp, nn, elong, fw, sat, np.nan))) == [0, 1, 2, 3, 6, 7]


def test_fwhm_candidates():
    src = FR._Sources(*(np.zeros(5),) * 2, np.full(5, 2.0), np.full(5, 2.0), np.zeros(5),
                     np.array([False, True, False, False, False]), None, False)
    x = np.array([50.0, 50.0, 50.0, 5.0, 50.0])
    ok = M._fwhm_candidates((100, 100), x, np.full(5, 50.0), src, np.array([3.0, 3.0, np.nan, 3.0, 3.0]),
                            np.array([30.0, 30.0, 30.0, 30.0, 10.0]), np.zeros(5, dtype=bool))
    assert list(ok) == [True, False, False, False, False]     # merged, no FWHM, 6 px inside < 3 a, S/N


def test_apertures_relative_radii_and_warnings(caplog):
    radii, rin, rout, rmax = M._apertures(Config(), [3.0, -2.0], 4.0)
    assert list(radii) == [3.0, 8.0] and rmax == 8.0 and (rin, rout) == (12.0, 36.0)
    with caplog.at_level("WARNING", logger="qlcp.photometry"):
        radii, rin, rout, rmax = M._apertures(Config(), [5.0, -2.0], np.nan)
    assert np.isnan(radii[1]) and rmax == 5.0 and rin == 9.0 and "FWHM unknown" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="qlcp.photometry"):
        M._apertures(Config(aper=[6.0], sky_annulus=[4.0, 10.0]), [6.0], 3.0)
    assert "starts inside the largest aperture" in caplog.text


def test_sharp_pixels_found_once_as_the_radius_grows():
    rng = np.random.default_rng(43)
    xs, ys, fl = grid_stars(3, 120, 25, rng, 1e4, 1e5)
    sub = noisy(model((120, 120), xs, ys, fl, 3.5), rng) - np.float32(SKY)
    hits = rng.integers(1, 119, (300, 2))
    sub[hits[:, 1], hits[:, 0]] += np.float32(2000.0)
    rms = math.sqrt(SKY / GAIN + (RDN / GAIN) ** 2)
    sp = PX._SharpPixels(sub, 3.5, rms, xs, ys)
    for r in (1.5, 6.0, 6.0, 2.0, 9.5):
        got = sp.near(r)
        gx, gy = PX._sharp_pixels(sub, 3.5, rms, xs, ys, r)
        want = np.array([np.hypot(gx - xi, gy - yi).min() <= r if gx.size else False for xi, yi in zip(xs, ys)])
        np.testing.assert_array_equal(got, want)
    assert sp.r == 9.5
    once = PX._sharp_index(sub, 3.5, rms, xs, ys, 9.5)
    np.testing.assert_array_equal(sp.index, once)     # 1.5, then the ring to 6, then to 9.5: the same pixels
    assert once.size > 10
    assert not PX._SharpPixels(sub, np.nan, rms, xs, ys).near(5.0).any()
