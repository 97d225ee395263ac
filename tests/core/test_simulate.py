"""Tests of the night simulator against its own truth (small nights, a few seconds in all)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import sep
from astropy import units as u
from astropy.coordinates import AltAz, EarthLocation, SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time

from qlcp.core.config import DEFAULT_PATTERNS, load_config
from qlcp.core.errors import ConfigError, InputError
from qlcp.core.io import read_image
from qlcp.core.simulate import simulate_night, simulate_small


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    return simulate_small(tmp_path_factory.mktemp("sim") / "night", seed=3)


def _corrected(night, name):
    """(raw - true bias) / true flat of a raw frame, ADU."""
    data, hdr = read_image(night.raw_dir / name, dtype=np.float64)
    bias = read_image(night.truth_dir / "bias.fits", dtype=np.float64)[0]
    flat = read_image(night.truth_dir / f"flat_{night.info['band']}.fits", dtype=np.float64)[0]
    return (data - bias) / flat, hdr


def _sky_map(night, row):
    sm = night.info["sky_model"]
    size = night.info["size"]
    c = (size - 1) / 2.0
    ramp = (np.arange(size) - c) / size
    ang = np.radians(sm["angle_deg"])
    return row["sky_adu"] * (1 + sm["amplitude"] * (np.cos(ang) * ramp[None, :] + np.sin(ang) * ramp[:, None]))


# ------------------------------------------------------------------ layout
def test_layout_names_and_config(night):
    names = sorted(p.name for p in night.raw_dir.iterdir())
    assert all(p.is_file() for p in night.raw_dir.iterdir())
    assert all(n.endswith(".fit") for n in names)              # raw/ holds only the frames
    n_bias, n_flat = night.info["options"]["n_bias"], night.info["options"]["n_flats"]
    assert len(names) == n_bias + n_flat + len(night.frames)
    assert "bias-0001.fit" in names and "flat-0001V.fit" in names and "SIMV-0001V.fit" in names
    # every name parses with the original QLCP patterns into obj / band
    kinds = {}
    for n in names:
        m = next(m for p in DEFAULT_PATTERNS if (m := re.search(p, n)))
        kinds.setdefault((m["obj"], m["band"]), []).append(n)
    assert {k: len(v) for k, v in kinds.items()} == {("bias", ""): n_bias, ("flat", "V"): n_flat,
                                                      ("SIMV", "V"): len(night.frames)}
    for f in ("stars.ecsv", "frames.ecsv", "cosmics.ecsv", "bias.fits", "flat_V.fits", "truth.json"):
        assert (night.truth_dir / f).is_file()
    assert night.truth_dir.parent == night.raw_dir.parent
    cfg = load_config([night.config_path])
    assert (cfg.gain, cfg.rdnoise, cfg.saturation) == (1.5, 8.0, 60000.0)
    assert (cfg.site_lon, cfg.site_lat, cfg.site_ele, cfg.site_tz) == (117.57722, 40.395833, 960.0, 8.0)


def test_truth_files_match_memory(night):
    stars = Table.read(night.truth_dir / "stars.ecsv")
    frames = Table.read(night.truth_dir / "frames.ecsv")
    info = json.loads((night.truth_dir / "truth.json").read_text())
    assert np.allclose(stars["x"], night.stars["x"]) and list(stars["role"]) == list(night.stars["role"])
    assert list(frames["file"]) == [p.name for p in night.science_files]
    assert info["eclipse"] == night.info["eclipse"]
    roles = list(stars["role"])
    assert roles[0] == "target" and roles[info["saturated_id"]] == "saturated"
    assert [roles[i] for i in info["constant_ids"]] == ["constant"] * len(info["constant_ids"])
    assert frames["dx"][0] == 0 and frames["dy"][0] == 0               # base = first frame


def test_headers(night):
    for p in night.bias_files + night.flat_files + night.science_files:
        with fits.open(p) as hdul:
            h = hdul[0].header
            assert h["BITPIX"] == 16 and h["BZERO"] == 32768
            assert hdul[0].data.dtype == np.uint16
        assert h["IMAGETYP"] in ("BIAS", "FLAT", "LIGHT") and h["FILTER"] == "V"
        assert h["GAIN"] == 1.5 and h["RDNOISE"] == 8.0 and h["SATURATE"] == 60000.0
    for row, p in zip(night.frames, night.science_files):
        h = fits.getheader(p)
        assert h["IMAGETYP"] == "LIGHT" and h["OBJECT"] == "SIMV" and h["EXPTIME"] == 60.0
        assert re.fullmatch(r"2024-06-06T\d\d:\d\d:\d\d\.\d{3}", h["DATE-OBS"])
        assert abs(Time(h["DATE-OBS"], scale="utc").jd - row["jd_start_utc"]) * 86400 < 1e-3
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d\d", h["RA"]) and re.fullmatch(r"[+-]\d\d:\d\d:\d\d\.\d", h["DEC"])
    c = SkyCoord(h["RA"], h["DEC"], unit=(u.hourangle, u.deg))
    assert abs(c.ra.deg - night.info["target"]["ra_deg"]) < 1e-9
    assert abs(c.dec.deg - night.info["target"]["dec_deg"]) < 1e-9


def test_airmass_is_astropy_altaz_of_header(night):
    """The truth airmass is what a pipeline gets from the headers and the config."""
    cfg = load_config([night.config_path])
    loc = EarthLocation.from_geodetic(cfg.site_lon * u.deg, cfg.site_lat * u.deg, cfg.site_ele * u.m)
    h = [fits.getheader(p) for p in night.science_files]
    t = Time([x["DATE-OBS"] for x in h], scale="utc") + h[0]["EXPTIME"] / 2 * u.s
    c = SkyCoord(h[0]["RA"], h[0]["DEC"], unit=(u.hourangle, u.deg))
    am = c.transform_to(AltAz(obstime=t, location=loc)).secz
    assert np.allclose(am, night.frames["airmass"], rtol=0, atol=1e-6)
    assert np.allclose(t.jd, night.frames["jd_mid_utc"], rtol=0, atol=1e-8)
    assert 1.0 <= night.frames["airmass"].min() and night.frames["airmass"].max() <= 2.0
    assert np.all(np.diff(night.frames["airmass"]) < 0)                 # rising target: changes noticeably


# ------------------------------------------------------------ calibration
def test_bias_frames_match_truth(night):
    pattern = read_image(night.truth_dir / "bias.fits", dtype=np.float64)[0]
    assert abs(np.median(pattern) - 1000) < 5 and np.ptp(pattern) > 10    # a level and a structure
    sig = 8.0 / 1.5
    for p in night.bias_files[:2]:
        d = read_image(p, dtype=np.float64)[0]
        assert abs(np.median(d) - np.median(pattern)) < 1.0
        res = d - pattern
        assert abs(res.mean()) < 5 * sig / np.sqrt(res.size)
        assert res.std() == pytest.approx(np.sqrt(sig ** 2 + 1 / 12), rel=0.02)


def test_flats_levels_and_response(night):
    cfg = load_config([night.config_path])
    med = [np.median(read_image(p)[0]) for p in night.flat_files]
    low = [m for m in med if m < cfg.flat_limit_low]
    high = [m for m in med if m > cfg.flat_limit_high]
    assert len(low) == 1 and len(high) == 1 and high[0] > 58000
    assert len(med) - 2 >= 3
    # a good flat divided by the true response is flat within its own noise
    bias = read_image(night.truth_dir / "bias.fits", dtype=np.float64)[0]
    resp = read_image(night.truth_dir / "flat_V.fits", dtype=np.float64)[0]
    assert np.median(resp) == pytest.approx(1.0, abs=1e-6)
    assert resp.min() < 0.97 and resp.max() > 1.02                      # vignetting, dust, pixels
    d = read_image(night.flat_files[1], dtype=np.float64)[0] - bias
    level = np.median(d)
    ratio = d / resp / level
    expect = np.sqrt(level * 1.5 + (8.0) ** 2) / (level * 1.5)          # per-pixel noise, relative
    assert ratio.std() == pytest.approx(expect, rel=0.1)
    assert np.corrcoef(d.ravel(), resp.ravel())[0, 1] > 0.9


# ----------------------------------------------------------------- stars
def test_stars_at_truth_positions(night):
    st, fr = night.stars, night.frames
    ids = [night.target_id] + night.constant_ids
    for row in fr:
        if row["transparency"] < 0.5:
            continue
        img, _ = _corrected(night, row["file"])
        sub = np.ascontiguousarray(img - _sky_map(night, row))
        for i in ids:
            x, y = st["x"][i] + row["dx"], st["y"][i] + row["dy"]
            ix, iy = int(round(x)), int(round(y))
            # the local maximum is the pixel holding the truth position (or its neighbour, with noise)
            box = img[iy - 3:iy + 4, ix - 3:ix + 4]
            my, mx = np.unravel_index(np.argmax(box), box.shape)
            assert abs(mx - 3 + ix - x) < 1.0 and abs(my - 3 + iy - y) < 1.0, (row["file"], i)
            assert box.max() > row["sky_adu"] + 50 * np.sqrt(row["sky_adu"] / 1.5)   # well above the sky
            # and the light centroid (windowed, started at the peak pixel) is at the truth position
            xw, yw, _ = sep.winpos(sub, [ix - 3.0 + mx], [iy - 3.0 + my], [row["fwhm"] / 2.3548])
            assert np.hypot(xw[0] - x, yw[0] - y) < 0.05, (row["file"], i)


def test_saturated_star_saturates(night):
    i = night.saturated_id
    for row in night.frames:
        if row["transparency"] < 0.5:
            continue
        d = read_image(night.raw_dir / row["file"])[0]
        x, y = night.stars["x"][i] + row["dx"], night.stars["y"][i] + row["dy"]
        assert d[int(round(y)), int(round(x))] >= night.info["saturation"]
    # no other special star comes near saturation
    assert night.stars["flux_e"][[0] + night.constant_ids].max() < 1e6


def test_photometry_follows_truth_and_ccd_equation(night):
    """Aperture flux of target and constants = truth (extinction, clouds, eclipse), scatter = CCD equation."""
    st, fr = night.stars, night.frames
    g, rn, k, beta = night.info["gain"], night.info["rdnoise"], night.info["extinction_k"], 3.0
    flat = read_image(night.truth_dir / "flat_V.fits", dtype=np.float64)[0]
    r = 10.0
    z = []
    for row in fr:
        if row["transparency"] < 0.5:
            continue
        img, _ = _corrected(night, row["file"])
        sky = _sky_map(night, row)
        alpha = row["fwhm"] / (2 * np.sqrt(2 ** (1 / beta) - 1))
        encl = 1 - (1 + r * r / alpha ** 2) ** (1 - beta)
        fac = 10 ** (-0.4 * k * (row["airmass"] - 1)) * row["transparency"]
        for i in [0] + night.constant_ids:
            x, y = st["x"][i] + row["dx"], st["y"][i] + row["dy"]
            flux = sep.sum_circle(img - sky, [x], [y], r)[0][0]
            var = sep.sum_circle((img * g + rn ** 2 / flat) / g ** 2 / flat, [x], [y], r)[0][0]
            rel = row["target_rel_flux"] if i == 0 else 1.0
            expect = st["flux_e"][i] * fac * rel * encl / g
            z.append((flux - expect) / np.sqrt(var))
    z = np.array(z)
    assert len(z) >= 30
    assert abs(z.mean()) < 4 / np.sqrt(len(z)) + 0.3
    assert 0.7 < z.std() < 1.4


def test_clouds_and_thick_cloud(night):
    tr = np.asarray(night.frames["transparency"])
    assert tr[0] == 1.0
    thin = (tr >= 0.6) & (tr <= 0.9)
    assert thin.sum() >= 1
    assert (tr < 0.1).sum() == 1
    assert list(night.frames["cloudy"]) == list(tr < 1)
    # the thick-cloud frame has (almost) no star light: the target's peak drops tenfold or more
    def target_peak(row):
        img, _ = _corrected(night, row["file"])
        ix, iy = (int(round(night.stars[c][0] + row[d])) for c, d in (("x", "dx"), ("y", "dy")))
        return img[iy - 1:iy + 2, ix - 1:ix + 2].max() - row["sky_adu"]

    assert target_peak(night.frames[int(np.argmin(tr))]) < 0.1 * target_peak(night.frames[0])


def test_offsets_drift_and_jump(night):
    dx, dy = np.asarray(night.frames["dx"]), np.asarray(night.frames["dy"])
    j = night.info["jump_frame"]
    assert j == len(dx) // 2
    step = np.hypot(np.diff(dx), np.diff(dy))
    assert np.allclose(np.delete(step, j - 1), 0.3, atol=0.3)           # slow drift
    assert dx[j] - dx[j - 1] == pytest.approx(35, abs=1) and dy[j] - dy[j - 1] == pytest.approx(-20, abs=1)


def test_cosmics_are_in_the_frames(night):
    cr = Table.read(night.truth_dir / "cosmics.ecsv")
    assert len(cr) >= len(night.frames)                                  # a few per frame
    row = cr[0]
    d = read_image(night.raw_dir / row["file"], dtype=np.float64)[0]
    bias = read_image(night.truth_dir / "bias.fits", dtype=np.float64)[0]
    assert d[row["y"], row["x"]] - bias[row["y"], row["x"]] > 0.5 * row["electrons"] / 1.5


def test_eclipse_within_run(night):
    ecl, fr = night.info["eclipse"], night.frames
    assert fr["jd_start_utc"][0] < ecl["t0_jd_utc"] < fr["jd_start_utc"][-1]
    assert fr["bjd_mid_tdb"][0] < ecl["t0_bjd_tdb"] < fr["bjd_mid_tdb"][-1]
    # BJD_TDB - JD_UTC: TT-UTC (69.184 s) plus a light time under 500 s
    assert abs((ecl["t0_bjd_tdb"] - ecl["t0_jd_utc"]) * 86400 - 69.184) < 510
    rel = np.asarray(fr["target_rel_flux"])
    assert rel.min() == pytest.approx(10 ** (-0.4 * 0.3), abs=0.03)
    imin = int(np.argmin(rel))
    assert 0 < imin < len(rel) - 1
    assert rel[0] == 1.0 and rel[-1] == 1.0                              # out of eclipse at both ends
    assert abs(fr["bjd_mid_tdb"][imin] - ecl["t0_bjd_tdb"]) * 86400 < 90


# ------------------------------------------------------------ determinism
def test_deterministic_for_a_seed(tmp_path):
    kw = dict(n_frames=4, size=128, n_bias=2, n_flats=3, n_constant=2)
    a = simulate_night(tmp_path / "a", seed=7, **kw)
    b = simulate_night(tmp_path / "b", seed=7, **kw)
    c = simulate_night(tmp_path / "c", seed=8, **kw)
    for pa in sorted(a.raw_dir.iterdir()) + sorted(a.truth_dir.iterdir()):
        sub = pa.parent.name
        assert pa.read_bytes() == (b.out_dir / sub / pa.name).read_bytes(), pa.name
    assert (a.raw_dir / "SIMV-0002V.fit").read_bytes() != (c.raw_dir / "SIMV-0002V.fit").read_bytes()
    assert not np.allclose(a.stars["x"][:3], c.stars["x"][:3])


def test_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="unknown option 'n_frame'"):
        simulate_night(tmp_path / "x", n_frames=2, size=128, n_frame=3)
    with pytest.raises(ConfigError, match="obj"):
        simulate_night(tmp_path / "x", n_frames=2, size=128, obj="A-B")
    raw = tmp_path / "y" / "raw"
    raw.mkdir(parents=True)
    (raw / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        simulate_night(tmp_path / "y", n_frames=2, size=128)
    with pytest.raises(InputError, match="other than"):
        simulate_night(tmp_path / "y", n_frames=2, size=128, overwrite=True)
    assert (raw / "keep.txt").read_text() == "mine"


# ------------------------------------------------------- pieces of the night plan, on their own
def test_pointing_offsets_drift_jump_and_jitter():
    from qlcp.core.simulate import SimOptions
    from qlcp.core.simulate.plan import _pointing_offsets
    o = SimOptions(drift=0.5, jump=(30.0, -10.0))
    dx, dy, ang = _pointing_offsets(o, np.random.default_rng(1), 20)
    assert dx[0] == 0 and dy[0] == 0                                    # no jitter in the first frame
    drift_x, drift_y = 0.5 * np.arange(20) * np.cos(ang), 0.5 * np.arange(20) * np.sin(ang)
    jx, jy = dx - drift_x, dy - drift_y
    np.testing.assert_allclose(jx[:10], 0.0, atol=0.25)                 # jitter of 0.05 px only
    np.testing.assert_allclose(jx[10:], 30.0, atol=0.25)                # the jump from the middle frame on
    np.testing.assert_allclose(jy[10:], -10.0, atol=0.25)
    dx1, dy1, _ = _pointing_offsets(o, np.random.default_rng(1), 1)
    assert dx1.tolist() == [0.0] and dy1.tolist() == [0.0]              # one frame: no jump


def test_conditions_clouds_and_seeing_limits():
    from qlcp.core.simulate import SimOptions
    from qlcp.core.simulate.plan import _conditions
    o = SimOptions(n_thin_clouds=4, fwhm_min=2.0, fwhm_max=3.0)
    t = Time("2024-06-06T14:00:00") + np.arange(40) * 90 * u.s
    fwhm, sky, transp = _conditions(o, np.random.default_rng(2), t, 40)
    assert transp[0] == 1.0
    assert np.sum(transp < 0.06) == 1 and np.sum((transp >= 0.6) & (transp <= 0.9)) == 4
    assert np.sum(transp == 1.0) == 40 - 5
    assert fwhm.min() >= 2.0 and fwhm.max() <= 3.0 and np.ptp(fwhm) > 0.1
    assert sky[0] == pytest.approx(o.sky_adu * 1.6) and np.all(sky > o.sky_adu)


def test_start_time_default_is_22h_local_and_bad_dates_are_config_errors():
    from qlcp.core.simulate import SimOptions
    from qlcp.core.simulate.plan import _start_time
    assert _start_time(SimOptions(night="2024-06-06", site_tz=8.0)).isot == "2024-06-06T14:00:00.000"
    assert _start_time(SimOptions(start_utc="2024-06-07T01:02:03")).isot == "2024-06-07T01:02:03.000"
    with pytest.raises(ConfigError, match="night/start_utc"):
        _start_time(SimOptions(night="2024-13-45"))
