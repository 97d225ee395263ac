"""Step o: frame offsets against the base image, on synthetic star lists and images."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from qlcp.core.config import Config, load_config
from qlcp.core.errors import ConfigError, InputError
from qlcp.core.offset import (OffsetResult, compute_offsets, detect_stars, find_offset, read_offsets,
                              write_offsets)

SHAPE = (256, 256)
FWHM = 3.0
SKY = 200.0
NOISE = 10.0


# ------------------------------------------------------------------ helpers
def sky_lists(rng, n, lo, hi):
    """Star positions over a sky area and log-uniform fluxes."""
    x = rng.uniform(lo, hi, n)
    y = rng.uniform(lo, hi, n)
    f = 10 ** rng.uniform(3, 5.3, n)
    return x, y, f


def observe(sky, off, size, rng, pos_noise=0.05, n_max=60):
    """Star list of a frame of ``size`` px shifted by ``off``: the brightest inside, with noise."""
    x, y, f = sky
    fx, fy = x + off[0], y + off[1]
    inside = (fx >= 0) & (fx < size) & (fy >= 0) & (fy < size)
    fx, fy, ff = fx[inside], fy[inside], f[inside]
    o = np.argsort(-ff)[:n_max]
    fx, fy, ff = fx[o], fy[o], ff[o]
    return (fx + rng.normal(0, pos_noise, len(fx)), fy + rng.normal(0, pos_noise, len(fy))), ff


def render(sky, off, rng, shape=SHAPE, only=None, flux=None, cosmics=0):
    """Image of the sky stars shifted by ``off``: Gaussian PSF, flat sky, Gaussian noise.

    ``only``: indexes of the sky stars to draw (default all); ``flux``: their
    flux instead of the sky's.
    """
    x, y, f = sky
    ny, nx = shape
    img = np.full(shape, SKY)
    s = FWHM / 2.3548
    r = int(math.ceil(5 * s))
    xs, ys = x + off[0], y + off[1]
    fs = f if flux is None else np.full(len(f), float(flux))
    inside = (xs > -r) & (xs < nx + r) & (ys > -r) & (ys < ny + r)
    idx = np.flatnonzero(inside)
    if only is not None:
        idx = np.intersect1d(idx, np.asarray(only, int))
    for xi, yi, fi in zip(xs[idx], ys[idx], fs[idx]):
        x0, y0 = int(round(xi)), int(round(yi))
        gx = np.arange(max(0, x0 - r), min(nx, x0 + r + 1))
        gy = np.arange(max(0, y0 - r), min(ny, y0 + r + 1))
        if len(gx) == 0 or len(gy) == 0:
            continue
        g = fi / (2 * np.pi * s * s) * np.exp(-((gx[None, :] - xi) ** 2 + (gy[:, None] - yi) ** 2) / (2 * s * s))
        img[gy[0]:gy[-1] + 1, gx[0]:gx[-1] + 1] += g
    for _ in range(cosmics):  # short sharp tracks, 5-8 px long, very bright
        cx, cy = rng.integers(10, nx - 10), rng.integers(10, ny - 10)
        n = rng.integers(5, 9)
        dx, dy = rng.choice([-1, 0, 1], 2)
        if dx == 0 and dy == 0:
            dx = 1
        for k in range(n):
            img[cy + k * dy, cx + k * dx] += rng.uniform(2000, 8000)
    img += rng.normal(0, NOISE, shape)
    return img.astype(np.float32)


def write_bf(path, img, jd, rawfile):
    path.parent.mkdir(parents=True, exist_ok=True)
    hdr = fits.Header()
    hdr["JD"] = jd
    hdr["RAWFILE"] = rawfile
    hdr["SATURATE"] = 60000.0
    fits.writeto(path, img, hdr, overwrite=True)
    return path


def common_stars(sky, off_a, off_b, n, margin=10):
    """Indexes of the ``n`` brightest sky stars well inside both frames (``SHAPE``) of offsets a and b."""
    x, y, f = sky
    ok = np.ones(len(x), bool)
    for ox, oy in (off_a, off_b):
        ok &= (x + ox > margin) & (x + ox < SHAPE[1] - margin) & (y + oy > margin) & (y + oy < SHAPE[0] - margin)
    idx = np.flatnonzero(ok)
    return idx[np.argsort(-f[idx])[:n]]


def make_sky(rng, n=360):
    # a sky larger than the frame so that shifted frames keep their star density
    return sky_lists(rng, n, -260, 520)


def err(res_dx, res_dy, truth):
    return math.hypot(res_dx - truth[0], res_dy - truth[1])


# --------------------------------------------------------- find_offset (lists)
def test_drift_sequence_lists_subpixel():
    rng = np.random.default_rng(1)
    sky = sky_lists(rng, 400, -300, 1400)
    base = observe(sky, (0, 0), 1024, rng)
    prior = (0.0, 0.0)
    for k in range(1, 8):
        truth = (0.73 * k + 0.11, -0.41 * k)
        frame = observe(sky, truth, 1024, rng)
        r = find_offset(base[0], base[1], frame[0], frame[1], 250, prior)
        assert r.ok, r.reason
        assert err(r.dx, r.dy, truth) < 0.05
        assert r.n_matched >= 20
        prior = (r.dx, r.dy)


@pytest.mark.parametrize("truth", [(35.0, -20.0), (243.4, -238.7), (-249.0, 5.3)])
def test_jump_up_to_max_dis(truth):
    rng = np.random.default_rng(2)
    sky = sky_lists(rng, 600, -300, 1400)
    base = observe(sky, (0, 0), 1024, rng)
    frame = observe(sky, truth, 1024, rng)
    r = find_offset(base[0], base[1], frame[0], frame[1], 250)
    assert r.ok, r.reason
    assert err(r.dx, r.dy, truth) < 0.05


def test_jump_beyond_max_dis_fails_and_prior_moves_the_window():
    rng = np.random.default_rng(3)
    sky = sky_lists(rng, 600, -300, 1400)
    base = observe(sky, (0, 0), 1024, rng)
    truth = (300.0, 12.0)
    frame = observe(sky, truth, 1024, rng)
    r = find_offset(base[0], base[1], frame[0], frame[1], 250)
    assert not r.ok and math.isnan(r.dx) and math.isnan(r.dy) and r.reason
    r = find_offset(base[0], base[1], frame[0], frame[1], 250, prior=(200.0, 0.0))
    assert r.ok, r.reason
    assert err(r.dx, r.dy, truth) < 0.05


def test_spurious_detections_30_percent():
    rng = np.random.default_rng(4)
    sky = sky_lists(rng, 400, -300, 1400)
    base = observe(sky, (0, 0), 1024, rng)
    truth = (-12.6, 7.9)
    (fx, fy), ff = observe(sky, truth, 1024, rng, n_max=42)
    n_bad = 18                               # 30 % of 60 detections are cosmic rays
    cx, cy = rng.uniform(0, 1024, n_bad), rng.uniform(0, 1024, n_bad)
    cf = rng.uniform(ff.min(), ff.max(), n_bad)   # as bright as the stars
    fx, fy, ff = np.r_[fx, cx], np.r_[fy, cy], np.r_[ff, cf]
    r = find_offset(base[0], base[1], (fx, fy), ff, 250)
    assert r.ok, r.reason
    assert err(r.dx, r.dy, truth) < 0.05


def test_cloudy_frame_few_stars():
    rng = np.random.default_rng(5)
    sky = sky_lists(rng, 400, -300, 1400)
    base = observe(sky, (0, 0), 1024, rng)
    truth = (4.2, -3.1)
    (fx, fy), ff = observe(sky, truth, 1024, rng, pos_noise=0.1, n_max=4)
    r = find_offset(base[0], base[1], (fx, fy), ff * 0.01, 250)
    assert r.ok, r.reason
    assert r.n_matched == 4
    assert err(r.dx, r.dy, truth) < 0.2
    # three stars are still enough, two are not
    r3 = find_offset(base[0], base[1], (fx[:3], fy[:3]), ff[:3], 250)
    assert r3.ok and r3.n_matched == 3
    r2 = find_offset(base[0], base[1], (fx[:2], fy[:2]), ff[:2], 250)
    assert not r2.ok and "only 2" in r2.reason and math.isnan(r2.dx)


def test_no_stars_and_unrelated_field_are_not_ok():
    rng = np.random.default_rng(6)
    sky = sky_lists(rng, 400, -300, 1400)
    base = observe(sky, (0, 0), 1024, rng)
    r = find_offset(base[0], base[1], (np.array([]), np.array([])), np.array([]), 250)
    assert isinstance(r, OffsetResult)
    assert not r.ok and math.isnan(r.dx) and math.isnan(r.dy) and "no stars" in r.reason
    r = find_offset(np.zeros((0, 2)), None, base[0], base[1], 250)
    assert not r.ok and "base" in r.reason
    # another field entirely: no reliable match, no false positive
    for seed in range(5):
        other = observe(sky_lists(np.random.default_rng(100 + seed), 400, -300, 1400), (0, 0), 1024, rng)
        r = find_offset(base[0], base[1], other[0], other[1], 250)
        assert not r.ok, (seed, r)
        assert math.isnan(r.dx) and r.reason


def test_star_list_forms_agree():
    rng = np.random.default_rng(7)
    sky = sky_lists(rng, 300, -300, 1400)
    (bx, by), bf = observe(sky, (0, 0), 1024, rng)
    (fx, fy), ff = observe(sky, (3.3, 1.1), 1024, rng)
    a = find_offset((bx, by), bf, (fx, fy), ff, 250)
    b = find_offset(np.column_stack([bx, by]), bf, np.column_stack([fx, fy]), ff, 250)
    assert a.ok and b.ok
    assert a.dx == pytest.approx(b.dx) and a.dy == pytest.approx(b.dy)
    # NaN positions are ignored
    c = find_offset((bx, by), bf, (np.r_[fx, np.nan], np.r_[fy, 5.0]), np.r_[ff, 1e9], 250)
    assert c.ok and c.dx == pytest.approx(a.dx)


# -------------------------------------------------------------- detect_stars
def test_detect_stars_positions_and_filters():
    rng = np.random.default_rng(8)
    x = rng.uniform(20, 236, 30)
    y = rng.uniform(20, 236, 30)
    f = 10 ** rng.uniform(3.7, 5.0, 30)
    x[0], y[0], f[0] = 128.3, 128.6, 3e6     # a saturated star
    img = render((x, y, f), (0, 0), rng)
    img = np.minimum(img, 65535).astype(np.float32)
    dx, dy, df = detect_stars(img, n_max=60, saturation=65535.0)
    assert 20 <= len(dx) <= 29
    assert np.all(np.diff(df) <= 0)                      # brightest first
    d = np.hypot(dx[:, None] - x[None, :], dy[:, None] - y[None, :])
    j = d.argmin(axis=1)
    assert np.all(d.min(axis=1) < 0.5)
    assert 0 not in j                                    # saturated star dropped
    assert np.median(d.min(axis=1)) < 0.05               # windowed positions: sub-pixel
    # n_max keeps the brightest
    tx, ty, tf = detect_stars(img, n_max=5, saturation=65535.0)
    assert len(tx) == 5 and np.allclose(tf, df[:5])
    # big-endian input and NaN pixels are handled, input untouched
    be = img.astype(">f4")
    be[5, 5] = np.nan
    keep = be.copy()
    bx, by, bf = detect_stars(be, saturation=65535.0)
    assert len(bx) == len(dx)
    np.testing.assert_array_equal(np.isnan(be), np.isnan(keep))
    # noise only: (almost) nothing
    nx, ny, nf = detect_stars(rng.normal(SKY, NOISE, SHAPE).astype(np.float32))
    assert len(nx) <= 2


def test_detect_stars_drops_cosmic_rays():
    rng = np.random.default_rng(9)
    sky = (rng.uniform(20, 236, 25), rng.uniform(20, 236, 25), 10 ** rng.uniform(3.7, 4.7, 25))
    img = render(sky, (0, 0), rng, cosmics=10)
    x, y, f = detect_stars(img)
    d = np.hypot(x[:, None] - sky[0][None, :], y[:, None] - sky[1][None, :]).min(axis=1)
    assert np.sum(d > 2) <= 3          # at most a few of the 10 tracks survive
    assert np.sum(d < 0.5) >= 18


# ------------------------------------------------------------ compute_offsets
#: per-frame truth (offset of the frame against the sky) and kind
NIGHT = [
    ((0.0, 0.0), "good"),
    ((0.41, -0.27), "good"),
    ((0.93, -0.58), "good"),
    ((1.37, -0.91), "cosmics"),
    ((36.37, -20.91), "good"),      # re-pointing jump of (+35, -20)
    ((36.81, -21.26), "good"),
    ((37.22, -21.63), "cloudy"),    # only 4 faint stars left (peaks ~12 sigma)
    ((37.60, -21.95), "empty"),     # no stars at all
    ((38.05, -22.31), "good"),
]


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    root = tmp_path_factory.mktemp("red")
    rng = np.random.default_rng(10)
    sky = make_sky(rng)
    files = []
    for k, (off, kind) in enumerate(NIGHT):
        if kind == "cloudy":
            img = render(sky, off, rng, only=common_stars(sky, NIGHT[0][0], off, 4), flux=1200)
        elif kind == "empty":
            img = render(sky, off, rng, only=[])
        else:
            img = render(sky, off, rng, cosmics=14 if kind == "cosmics" else 0)
        files.append(write_bf(root / "UYUMa_V" / f"UYUMa-{k:04d}V.bf.fits", img, 2460000.5 + k * 0.001,
                              f"UYUMa-{k:04d}V.fit"))
    return root, files, sky


def check_night(tab, files, base_k):
    assert len(tab) == len(files)
    assert list(tab["bf"]) == [str(f) for f in files]
    assert list(tab["file"]) == [f"UYUMa-{k:04d}V.fit" for k in range(len(files))]
    np.testing.assert_allclose(tab["jd"], 2460000.5 + np.arange(len(files)) * 0.001)
    b = np.array(NIGHT[base_k][0])
    for k, (off, kind) in enumerate(NIGHT):
        row = tab[k]
        if kind == "empty":
            assert not row["ok"] and math.isnan(row["dx"]) and math.isnan(row["dy"])
            assert row["reason"] and row["reason"] != "ok"
            continue
        assert row["ok"], (k, row["reason"])
        truth = np.array(off) - b
        e = err(row["dx"], row["dy"], truth)
        assert e < (0.2 if kind == "cloudy" else 0.1), (k, e)
        if kind == "cloudy":
            assert row["n_matched"] == 4
        else:
            assert row["n_matched"] >= 10


def test_compute_offsets_night(night, caplog):
    root, files, _ = night
    with caplog.at_level("WARNING", logger="qlcp.offset"):
        tab = compute_offsets(files, Config())
    check_night(tab, files, 0)
    assert tab["dx"][0] == 0 and tab["dy"][0] == 0
    assert tab["ok"].dtype == bool
    assert tab.meta["base"] == "UYUMa-0000V.fit" and tab.meta["max_dis"] == 250
    assert "vote" in tab.meta["method"]
    # one warning line per failed frame, naming it
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "UYUMa-0007V" in warned[0].getMessage()


def test_base_img_index_and_name(night):
    _, files, _ = night
    tab = compute_offsets(files, load_config(overrides={"base_img": 2}))
    check_night(tab, files, 2)
    assert tab.meta["base_index"] == 2
    for spec in ("UYUMa-0005V.fit", "UYUMa-0005V.bf.fits", str(files[5])):
        tab = compute_offsets(files, Config(), base_img=spec)
        check_night(tab, files, 5)
        assert tab.meta["base"] == "UYUMa-0005V.fit"


def test_base_img_outside_list(night, tmp_path):
    root, files, sky = night
    # a frame of another night, with the same name as one of tonight's
    other = write_bf(tmp_path / "prev" / "UYUMa-0005V.bf.fits",
                     render(sky, (3.2, -1.7), np.random.default_rng(11)), 2459999.5, "UYUMa-0005V.fit")
    tab = compute_offsets(files, Config(), base_img=str(other))
    assert tab.meta["base_index"] is None and tab.meta["base_bf"] == str(other)
    for k, (off, kind) in enumerate(NIGHT):
        if kind in ("good", "cosmics"):
            assert tab["ok"][k]
            assert err(tab["dx"][k], tab["dy"][k], np.array(off) - (3.2, -1.7)) < 0.1
    small = write_bf(tmp_path / "prev" / "small.bf.fits", np.zeros((128, 128), np.float32), 0.0, "small.fit")
    with pytest.raises(InputError, match="not the same telescope"):
        compute_offsets(files, Config(), base_img=str(small))
    with pytest.raises(InputError, match="nope"):
        compute_offsets(files, Config(), base_img="nope.fit")
    with pytest.raises(ConfigError, match="out of range"):
        compute_offsets(files, Config(), base_img=len(files))
    with pytest.raises(InputError, match="base image has 0"):
        compute_offsets(files, Config(), base_img=7)       # the empty frame


def test_large_drift_with_prior_and_jump_back(tmp_path):
    rng = np.random.default_rng(12)
    sky = make_sky(rng)
    # drift of 30 px per frame: 120 px from the base by the end, with max_dis 50;
    # then a jump back near the base position (beyond 50 px from the previous frame)
    offs = [(0.0, 0.0), (30.3, 10.1), (60.6, 20.2), (90.4, 30.6), (120.2, 40.3), (-5.5, 3.3), (80.0, -90.0)]
    files = [write_bf(tmp_path / f"F-{k:04d}V.bf.fits", render(sky, o, rng), 2460000.0 + k, f"F-{k:04d}V.fit")
             for k, o in enumerate(offs)]
    tab = compute_offsets(files, load_config(overrides={"offset_max_dis": 50}))
    for k in range(6):
        assert tab["ok"][k], (k, tab["reason"][k])
        assert err(tab["dx"][k], tab["dy"][k], offs[k]) < 0.1
    # the last one is beyond 50 px of both the previous frame and the base
    assert not tab["ok"][6] and math.isnan(tab["dx"][6])


def test_unreadable_frame_is_flagged_not_fatal(night, tmp_path):
    _, files, _ = night
    bad = tmp_path / "UYUMa-0100V.bf.fits"
    bad.write_bytes(b"not a FITS file at all" * 100)
    tab = compute_offsets(files[:3] + [bad], Config())
    assert list(tab["ok"]) == [True, True, True, False]
    assert "unreadable" in tab["reason"][3] and tab["file"][3] == "UYUMa-0100V"
    assert math.isnan(tab["jd"][3]) and math.isnan(tab["dx"][3])


# -------------------------------------------------------------------- output
def test_write_offsets_roundtrip(night, tmp_path):
    _, files, _ = night
    tab = compute_offsets(files, Config())
    ecsv, txt = write_offsets(tab, tmp_path, "UYUMa", "V")
    assert ecsv == tmp_path / "offset_UYUMa_V.ecsv" and txt == tmp_path / "offset_UYUMa_V.txt"
    back = Table.read(ecsv)
    # the columns of tables written before the transform, then the transform (base pixel -> frame pixel)
    assert back.colnames == ["file", "bf", "jd", "dx", "dy", "n_matched", "ok", "reason", "align", "rot_deg",
                             "scale", "m00", "m01", "m02", "m10", "m11", "m12"]
    assert back["ok"].dtype == bool and list(back["ok"]) == list(tab["ok"])
    assert list(back["align"]) == ["base"] + ["shift" if ok else "none" for ok in tab["ok"][1:]]
    for c in ("jd", "dx", "dy", "rot_deg", "scale", "m00", "m01", "m02", "m10", "m11", "m12"):
        np.testing.assert_array_equal(np.asarray(back[c]), np.asarray(tab[c]))   # full precision, NaN kept
    assert list(back["file"]) == list(tab["file"]) and list(back["reason"]) == list(tab["reason"])
    assert list(back["n_matched"]) == list(tab["n_matched"])
    for k in ("base", "base_bf", "method", "max_dis", "base_index"):
        assert back.meta[k] == tab.meta[k]
    assert read_offsets(tmp_path, "UYUMa", "V")["dx"][4] == tab["dx"][4]
    lines = txt.read_text().splitlines()
    assert "dx" in lines[0] and len(lines) == 2 + len(tab)
    assert not list(tmp_path.glob(".*tmp*"))    # no temporary files left
    with pytest.raises(InputError):
        read_offsets(tmp_path, "UYUMa", "B")


def test_detection_image_masks_non_finite_pixels_and_fixes_byte_order():
    from qlcp.core.offset.detection import _detection_image
    d = np.arange(12.0).reshape(3, 4).astype(">f8")
    d[1, 2] = np.nan
    img, mask, bad = _detection_image(d)
    assert img.dtype == np.float32 and img.dtype.isnative and img.flags.c_contiguous
    assert img[1, 2] == 0 and img[2, 3] == 11 and np.isnan(d[1, 2])           # input untouched
    np.testing.assert_array_equal(mask, bad)
    assert bad.sum() == 1 and bad[1, 2]
    img, mask, bad = _detection_image(np.ones((3, 3)))
    assert mask is None and not bad.any()
    assert _detection_image(np.full((3, 3), np.inf)) is None
    assert _detection_image(np.ones(5)) is None and _detection_image(np.ones((0, 4))) is None
