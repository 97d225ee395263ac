"""Step w (qlcp.core.astrometry): header WCS checks, offline plate solving against a known truth, frame WCSs."""

from __future__ import annotations

import shutil
import subprocess
import time
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, Sip

from qlcp.core import astrometry as A
from qlcp.core.config import Config
from qlcp.core.io import read_table_fast

needs_solver = pytest.mark.skipif(shutil.which("solve-field") is None or shutil.which("build-astrometry-index") is None,
                                   reason="astrometry.net (solve-field, build-astrometry-index) not installed")

XO1_RA, XO1_DEC = 240.5493333, 28.1695556          # 16:02:11.84 +28:10:10.4
SHAPE = (512, 512)                                  # (ny, nx) of the synthetic field


def tan_wcs(ra=150.0, dec=20.0, scale=1.0, rot_deg=30.0, crpix=(256.5, 256.5)) -> WCS:
    """A TAN WCS, ``scale`` arcsec/px, rotated by ``rot_deg``, east left (negative determinant)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = list(crpix)
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    w.wcs.cd = scale / 3600.0 * np.array([[-c, s], [s, c]])
    w.wcs.set()
    return w


def sep_grid(a: WCS, b: WCS, shape=SHAPE, n=9, b_of=None) -> np.ndarray:
    """Distances (arcsec) between the sky positions ``a`` and ``b`` give a grid over the frame
    (``b_of``: maps the grid's pixels to ``b``'s pixels)."""
    x, y = (g.ravel() for g in np.meshgrid(np.linspace(0, shape[1] - 1, n), np.linspace(0, shape[0] - 1, n)))
    bx, by = b_of(x, y) if b_of else (x, y)
    ra1, de1 = a.all_pix2world(x, y, 0)
    ra2, de2 = b.all_pix2world(bx, by, 0)
    return A.angular_sep(ra1, de1, ra2, de2)


# ------------------------------------------------------------- frame_wcs
def test_frame_wcs_pure_shift_and_rotation():
    base = tan_wcs(rot_deg=12.0)
    th = np.radians(7.0)
    for m in ([[1, 0, 13.5], [0, 1, -42.25]],
              [[np.cos(th), -np.sin(th), 30.0], [np.sin(th), np.cos(th), -12.0]],
              [[1.001 * np.cos(th), np.sin(th), -5.0], [-np.sin(th), np.cos(th), 8.0]]):   # scale, flip
        m = np.asarray(m, dtype=float)
        fw = A.frame_wcs(base, m)
        d = sep_grid(base, fw, b_of=lambda x, y: (m[0, 0] * x + m[0, 1] * y + m[0, 2],
                                                  m[1, 0] * x + m[1, 1] * y + m[1, 2]))
        assert d.max() < 1e-6, m
    assert base.wcs.crpix[0] == 256.5                      # pure: the base is untouched
    shifted = A.frame_wcs(base, [[1, 0, 10.0], [0, 1, 0]])
    assert np.allclose(shifted.wcs.crpix, [266.5, 256.5])
    with pytest.raises(ValueError, match="singular"):
        A.frame_wcs(base, [[1, 2, 0], [2, 4, 0]])


def test_frame_wcs_keeps_sip_distortion():
    base = tan_wcs(rot_deg=0.0)
    a = np.zeros((3, 3))
    b = np.zeros((3, 3))
    a[2, 0], a[1, 1], b[0, 2], b[1, 1] = 2e-5, -1e-5, 3e-5, 1e-5      # up to ~8 px at the corners
    base.sip = Sip(a, b, None, None, base.wcs.crpix)
    base.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    th = np.radians(20.0)
    m = np.array([[np.cos(th), -np.sin(th), 40.0], [np.sin(th), np.cos(th), -7.0]])
    fw = A.frame_wcs(base, m)
    d = sep_grid(base, fw, b_of=lambda x, y: (m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]))
    assert d.max() < 1e-4
    no_sip = tan_wcs(rot_deg=0.0)
    assert sep_grid(base, no_sip).max() > 1.0              # the distortion is there, and was carried over


# ---------------------------------------------------------- header checks
def test_header_checks_reject_with_a_reason():
    good = tan_wcs(scale=0.67).to_header()
    assert A.pixel_scale(A.header_wcs(good)) == pytest.approx(0.67)
    with pytest.raises(A.WcsRejected, match="no WCS"):
        A.header_wcs(fits.Header({"NAXIS": 2}))
    bad_proj = good.copy()
    bad_proj["CTYPE1"], bad_proj["CTYPE2"] = "RA---AIT", "DEC--AIT"
    for k in ("LONPOLE", "LATPOLE"):
        bad_proj.remove(k, ignore_missing=True)
    with pytest.raises(A.WcsRejected, match="AIT"):
        A.header_wcs(bad_proj)
    with pytest.raises(A.WcsRejected, match="implausible pixel scale"):
        A.header_wcs(tan_wcs(scale=900.0).to_header())
    with pytest.raises(A.WcsRejected, match="expected about 1.5"):
        A.header_wcs(good, scale_hint=1.5)
    stretched = tan_wcs(scale=0.67)
    stretched.wcs.cd = stretched.wcs.cd @ np.diag([1.0, 1.5])
    with pytest.raises(A.WcsRejected, match="square"):
        A.check_wcs(stretched)
    linear = fits.Header({"CTYPE1": "LINEAR", "CTYPE2": "LINEAR", "CDELT1": 1.0, "CDELT2": 1.0})
    with pytest.raises(A.WcsRejected, match="celestial"):
        A.header_wcs(linear)


def test_scale_hint_order():
    h = tan_wcs(scale=0.67).to_header()
    assert A.scale_hint_of(h) == pytest.approx(0.67)
    h["SECPIX"] = 0.7
    assert A.scale_hint_of(h) == 0.7
    h["PIXSCALE"] = 0.71
    assert A.scale_hint_of(h) == 0.71
    assert A.scale_hint_of(h, 0.5) == 0.5
    assert A.scale_hint_of(fits.Header()) is None


def test_wcs_product_round_trip(tmp_path):
    res = A.WcsResult(tan_wcs(), "solved", "a long reason, " * 20 + "end", {"scale": 1.0, "n_stars": 50, "solve_seconds": 0.5})
    back = A.read_wcs_product(A.write_wcs_product(res, tmp_path / "wcs.fits", "/x/base.bf.fits", "k1"))
    assert back.source == "solved" and back.reason == res.reason and back.info["n_stars"] == 50
    assert sep_grid(res.wcs, back.wcs).max() < 1e-6
    none = A.read_wcs_product(A.write_wcs_product(A.WcsResult(None, "none", "why"), tmp_path / "n.fits"))
    assert none.wcs is None and none.reason == "why"


# -------------------------------------------------- the real XO-1 frames
def test_xo1_header_wcs_is_accepted_and_places_xo1(xo1_dir):
    h = fits.getheader(sorted(xo1_dir.glob("XO1-b_z_*.fits"))[0])
    w = A.header_wcs(h, A.scale_hint_of(h))
    assert A.pixel_scale(w) == pytest.approx(0.67, abs=0.01)        # README: 0.67 arcsec/px
    x, y = w.all_world2pix(XO1_RA, XO1_DEC, 0)
    assert abs(x - 396) < 2 and abs(y - 359) < 2
    with pytest.raises(A.WcsRejected, match="no WCS"):              # calibration frames have none
        A.header_wcs(fits.getheader(xo1_dir / "domeflat_z_001.fits"))


def test_xo1_night_step_w_and_sky_positions_of_the_stars(xo1_dir, tmp_path):
    """The real night through step w and the light curve: the header WCS is kept, and the stars
    table gives XO-1 its catalogue position."""
    from qlcp.core import run

    s = run(xo1_dir, tmp_path / "red", steps="lbfiopwcd", workers=2, astrometry_index=[str(tmp_path)],
            starxy=[(396, 359), (274, 58), (370, 464)], ind_tgt=[0], ind_ref=[1], ind_chk=[2])
    g = s.groups[0]
    assert not g.error and g.outputs["wcs"].endswith("wcs_XO1-b_z.fits")
    res = A.read_wcs_product(g.outputs["wcs"])
    assert res.source == "header" and "not compared with the stars" in res.reason     # no index (or no solver)
    stars = Table.read(g.outputs["stars"], format="ascii.ecsv")
    d = A.angular_sep(stars["ra"][0], stars["dec"][0], XO1_RA, XO1_DEC)
    assert d < 2.0                                                  # 3 px: centroid vs the header's WCS


# ------------------------------------------------------- no index: none
def test_no_index_gives_none_with_reason_and_the_night_runs(tmp_path):
    from qlcp.core import run
    from qlcp.core.config import load_config
    from qlcp.core.simulate import simulate_small

    sim = simulate_small(tmp_path / "n", n_frames=4, size=128, seed=7, n_bias=3, n_flats=3, thick_cloud=False)
    s = run(sim.raw_dir, tmp_path / "red", config=load_config(
        [sim.config_path], {"workers": 1, "astrometry_index": [str(tmp_path / "empty")]}))
    g = s.groups[0]
    assert not g.error and g.outputs["lightcurve"]
    res = A.read_wcs_product(g.outputs["wcs"])
    assert res.wcs is None and res.source == "none"
    assert "the header has no WCS" in res.reason and "pixel coordinates only" in res.reason
    assert "ra" not in Table.read(g.outputs["stars"], format="ascii.ecsv").colnames


# --------------------------------------------- solving a synthetic field
def synthetic_field(tmp_path, truth: WCS, n=400, seed=3):
    """A star catalogue (RA, Dec, mag) around the truth's centre and a corrected frame of it
    (Gaussian stars projected with ``truth``, sky and noise; no WCS in the header)."""
    rng = np.random.default_rng(seed)
    ra0, dec0 = truth.wcs.crval
    half = 14.0 / 60.0 / 2                                         # a 14' square around an 8.5' field
    dec = dec0 + rng.uniform(-half, half, n)
    ra = ra0 + rng.uniform(-half, half, n) / np.cos(np.radians(dec0))
    mag = rng.uniform(12.0, 18.0, n)
    x, y = truth.all_world2pix(ra, dec, 0)
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    img = np.full(SHAPE, 100.0)
    sigma = 1.4
    for xi, yi, m in zip(x, y, mag):
        if -10 < xi < SHAPE[1] + 10 and -10 < yi < SHAPE[0] + 10:
            flux = 2e5 * 10 ** (-0.4 * (m - 12.0))
            sl = (slice(max(0, int(yi) - 8), int(yi) + 9), slice(max(0, int(xi) - 8), int(xi) + 9))
            img[sl] += flux / (2 * np.pi * sigma ** 2) * np.exp(
                -((xx[sl] - xi) ** 2 + (yy[sl] - yi) ** 2) / (2 * sigma ** 2))
    img = rng.poisson(np.clip(img, 0, None)).astype(np.float32)
    bf = tmp_path / "field.bf.fits"
    fits.PrimaryHDU(img, fits.Header({"GAIN": 1.0, "RDNOISE": 0.0, "SATURATE": 1e9, "EXPTIME": 60.0,
                                      "RA": "10:00:00", "DEC": "+20:00:00"})).writeto(bf)
    cat = Table({"RA": ra, "DEC": dec, "MAG": mag})
    cat.write(tmp_path / "refcat.fits")
    return bf, tmp_path / "refcat.fits"


def build_index(refcat, out_dir, scales=(0, 1, 2)) -> float:
    """astrometry.net index files of ``refcat`` in ``out_dir`` (one per scale preset); returns seconds."""
    out_dir.mkdir()
    t0 = time.perf_counter()
    for p in scales:
        subprocess.run(["build-astrometry-index", "-i", str(refcat), "-o", str(out_dir / f"index-test-{p:02d}.fits"),
                        "-P", str(p), "-S", "MAG", "-A", "RA", "-D", "DEC", "-E", "-M", "-I", str(100 + p),
                        "-t", str(out_dir)], check=True, capture_output=True)
    return time.perf_counter() - t0


@needs_solver
def test_solve_synthetic_field_matches_truth(tmp_path, record_property):
    """Our detection (step p) on a simulated frame, solved by the real solve-field against an index
    built from the field's catalogue: within 1 arcsec of the true WCS everywhere in the frame."""
    from qlcp.core.photometry import photometry_file

    truth = tan_wcs(ra=150.0, dec=20.0, scale=1.0, rot_deg=30.0)
    bf, refcat = synthetic_field(tmp_path, truth)
    record_property("index_seconds", build_index(refcat, tmp_path / "index"))
    cat = tmp_path / "field.cat.fits"
    photometry_file(bf, cat, Config(aper=[4.0]))
    stars = A.usable_stars(read_table_fast(cat)[0])
    assert len(stars[0]) > 40
    header = fits.getheader(bf)
    res = A.base_wcs(header, stars, SHAPE, tmp_path / "red", [str(tmp_path / "index")], scale_hint=1.0,
                     center=(150.0, 20.0), timeout=60)
    assert res.source == "solved", res.reason
    d = sep_grid(truth, res.wcs)
    record_property("solve_seconds", res.info["solve_seconds"])
    record_property("max_error_arcsec", float(d.max()))
    assert d.max() < 1.0, d.max()
    assert res.info["n_match"] >= 10 and res.info["match_rms_arcsec"] < 0.5
    assert not list((tmp_path / "red").iterdir())                    # the temporary directory is gone


@needs_solver
def test_blind_solve_and_a_wrong_header_wcs_is_rejected(tmp_path):
    """No hints at all still solves; a header WCS 1' off is caught by the solution and replaced."""
    truth = tan_wcs(ra=150.0, dec=20.0, scale=1.0, rot_deg=30.0)
    bf, refcat = synthetic_field(tmp_path, truth, seed=4)
    build_index(refcat, tmp_path / "index")
    from qlcp.core.photometry import photometry_file

    photometry_file(bf, tmp_path / "c.cat.fits", Config(aper=[4.0]))
    stars = A.usable_stars(read_table_fast(tmp_path / "c.cat.fits")[0])
    blind = A.base_wcs(fits.Header(), stars, SHAPE, tmp_path, [str(tmp_path / "index")], timeout=60)
    assert blind.source == "solved" and sep_grid(truth, blind.wcs).max() < 1.0
    wrong = tan_wcs(ra=150.0 + 1 / 60 / np.cos(np.radians(20)), dec=20.0, scale=1.0, rot_deg=30.0)
    res = A.base_wcs(wrong.to_header(), stars, SHAPE, tmp_path, [str(tmp_path / "index")], timeout=60)
    assert res.source == "solved" and "header WCS rejected" in res.reason and res.info["agree_arcsec"] > 50
    right = A.base_wcs(truth.to_header(), stars, SHAPE, tmp_path, [str(tmp_path / "index")], timeout=60)
    assert right.source == "header" and right.info["agree_arcsec"] < 1.0
