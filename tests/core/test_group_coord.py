"""Item 4 of issue #24: the configured targets' coordinates drive HJD, BJD_TDB and airmass.

Order: the target named like the group > ``alt_coord`` > the only (or on-frame) target when the
frames name no object > the header's RA/DEC; none at all: the night is degraded with one line.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import EarthLocation, SkyCoord
from astropy.io import fits
from astropy.time import Time

from qlcp.core.config import load_config
from qlcp.core.correct import NO_COORD, correct_frames, group_coord
from tests.conftest import SHARED_DATA

TRES1 = SHARED_DATA / "tres1_oscaar_20120617"
#: a plausible site for the OSCAAR example night (College Park, Maryland): not in the headers
SITE = {"site_lat": 38.9897, "site_lon": -76.9378, "site_ele": 50.0}
TARGET = {"name": "TrES-1", "ra": "19:04:09.8", "dec": "+36:37:57"}


@pytest.fixture
def tres1():
    if not TRES1.is_dir():
        pytest.skip(f"real data {TRES1} not present")
    return TRES1


def test_bjd_from_targets_alone_on_tres1(tres1, tmp_path):
    """TrES-1 (no RA/DEC in its headers): BJD_TDB, HJD and airmass from ``targets`` alone agree with
    astropy's, computed here independently from DATE-OBS + EXPTIME/2 at the configured site."""
    files = [tres1 / f"tres1-{n:03d}.fit" for n in (20, 120, 225)]
    assert all("RA" not in fits.getheader(f) for f in files)
    cfg = load_config(None, {**SITE, "targets": [TARGET], "workers": 1})
    res = correct_frames(files, "tres1", "X", tmp_path, cfg, coord_file=files[0])
    assert res.degraded == [] and len(res.outputs) == 3
    loc = EarthLocation.from_geodetic(SITE["site_lon"] * u.deg, SITE["site_lat"] * u.deg, SITE["site_ele"] * u.m)
    star = SkyCoord("19h04m09.8s", "+36d37m57s", frame="icrs")
    for f, out in zip(files, sorted(res.outputs)):
        h = fits.getheader(f)
        mid = Time(h["DATE-OBS"], scale="utc", location=loc) + h["EXPTIME"] / 2 * u.s
        bjd = (mid.tdb + mid.light_travel_time(star, "barycentric")).jd
        hjd = mid.utc.jd + mid.light_travel_time(star, "heliocentric").to_value(u.day)
        got = fits.getheader(out)
        assert abs(got["BJD"] - bjd) * 86400 < 1.0, (f.name, (got["BJD"] - bjd) * 86400)
        assert abs(got["HJD"] - hjd) * 86400 < 1.0
        assert 1.0 <= got["AIRMASS"] < 3.0


def _hdr(**cards):
    h = fits.Header()
    h["NAXIS"], h["NAXIS1"], h["NAXIS2"] = 2, 200, 200
    for k, v in cards.items():
        h[k] = v
    return h


def test_order_target_then_alt_coord_then_header():
    head = _hdr(OBJECT="XO-1", RA="10:00:00", DEC="+10:00:00")
    xo1 = {"name": "XO-1", "ra": "16:02:11.84", "dec": "+28:10:10.4"}
    other = {"name": "HAT-P-32", "ra": "02:04:10.3", "dec": "+46:41:16"}
    c, src = group_coord("XO1", load_config(None, {"targets": [other, xo1], "alt_coord": ["1:00:00", "+1:00:00"]}),
                         head)
    assert src == "target XO-1" and abs(c.ra.deg - 240.5493) < 1e-3
    c, src = group_coord("XO1", load_config(None, {"targets": [other], "alt_coord": ["1:00:00", "+1:00:00"]}), head)
    assert src == "alt_coord" and abs(c.ra.deg - 15.0) < 1e-9
    c, src = group_coord("XO1", load_config(None, {"targets": [other]}), head)       # OBJECT named: no guess
    assert src == "header" and abs(c.ra.deg - 150.0) < 1e-9
    c, src = group_coord("field7", load_config(None, {"targets": [other]}), _hdr())  # no OBJECT, one target
    assert src == "target HAT-P-32"
    assert group_coord("field7", load_config(None, {"targets": [other, xo1]}), _hdr()) == (None, "")


def test_a_target_on_the_frame_is_the_coordinate_when_frames_name_none():
    hdr = _hdr(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=240.5493, CRVAL2=28.1696, CRPIX1=100.0,
               CRPIX2=100.0, CD1_1=-1e-4, CD1_2=0.0, CD2_1=0.0, CD2_2=1e-4)
    xo1 = {"name": "XO-1", "ra": "16:02:11.84", "dec": "+28:10:10.4"}
    other = {"name": "HAT-P-32", "ra": "02:04:10.3", "dec": "+46:41:16"}
    c, src = group_coord("field7", load_config(None, {"targets": [other, xo1]}), hdr)
    assert src == "target XO-1"


def test_no_coordinate_at_all_degrades_the_night(tmp_path):
    """A simulated night without RA/DEC in any header and no targets: BJD NaN, the summary's
    ``degraded`` says why in one line, exit status 3 (it was 'ok', exit 0)."""
    from qlcp.core.simulate import simulate_small
    from qlcp.deployments.cli import main

    import json

    sim = simulate_small(tmp_path / "n", n_frames=4, size=96, seed=3, n_bias=2, n_flats=2)
    raw = tmp_path / "raw"
    shutil.copytree(sim.raw_dir, raw)
    for f in raw.glob("SIMV-*.fit"):
        with fits.open(f, mode="update") as h:
            for k in ("RA", "DEC", "OBJCTRA", "OBJCTDEC"):
                h[0].header.remove(k, ignore_missing=True)
    red = tmp_path / "red"
    rc = main(["run", str(raw), str(red), "--no-prefect", "--steps", "lbfi", "--config", str(sim.config_path),
               "--set", "workers=1", "--set", "calib_library=false"])
    s = json.loads((red / "summary.json").read_text())
    assert rc == 3 and s["degraded"] == [f"SIMV: {NO_COORD}"], (rc, s["degraded"])
    bjd = [fits.getheader(f)["BJD"] for f in (red / "SIMV_V").glob("*.bf.fits")]
    assert bjd and all(b == "NaN" for b in bjd)
    # the same night with the target configured: BJD everywhere, not degraded
    red2 = tmp_path / "red2"
    h = fits.getheader(sim.raw_dir / "SIMV-0001V.fit")
    rc = main(["run", str(raw), str(red2), "--no-prefect", "--steps", "lbfi", "--config", str(sim.config_path),
               "--set", "workers=1", "--set", "calib_library=false",
               "--set", f"targets=[{{name: SIMV, ra: '{h['RA']}', dec: '{h['DEC']}'}}]"])
    s = json.loads((red2 / "summary.json").read_text())
    assert rc == 0 and s["degraded"] == []
    assert all(np.isfinite(fits.getheader(f)["BJD"]) for f in (red2 / "SIMV_V").glob("*.bf.fits"))


def test_site_checked_against_the_headers_sitelat_sitelong(xo1_dir, tmp_path):
    """XO-1 (ARCSAT: SITELAT '32 46 49', SITELONG '-105 49 13'): the right site passes; a latitude of the
    wrong sign is named with the header's values, and the group is degraded (it was silent)."""
    files = sorted(xo1_dir.glob("XO1-b_z_*.fits"))[:2]
    good = {"site_lat": 32.78028, "site_lon": -105.82028, "site_ele": 2788.0}
    res = correct_frames(files, "XO1-b", "z", tmp_path / "a", load_config(None, good), coord_file=files[0])
    assert res.degraded == []
    res = correct_frames(files, "XO1-b", "z", tmp_path / "b", load_config(None, {**good, "site_lat": -32.78028}),
                         coord_file=files[0])
    assert len(res.degraded) == 1 and "site_lat -32.7803" in res.degraded[0], res.degraded
    assert "SITELAT/SITELONG (32.7803, -105.8203)" in res.degraded[0]


def test_header_site_forms():
    from qlcp.core.timing import header_site

    assert header_site(_hdr(SITELAT="32 46 49", SITELONG="-105 49 13"))[:2] == pytest.approx((32.78028, -105.82028),
                                                                                              abs=1e-4)
    assert header_site(_hdr(**{"LAT-OBS": 40.3958, "LONG-OBS": 117.5772}))[2] == "LAT-OBS/LONG-OBS"
    assert header_site(_hdr(**{"LAT-OBS": "-31:16:24", "LONG-OBS": "149:03:40"}))[0] == pytest.approx(-31.2733,
                                                                                                   abs=1e-4)
    assert header_site(_hdr()) is None


def test_target_below_the_horizon_degrades_the_group(tmp_path):
    """A latitude of the wrong sign (and no site in the headers to compare with): the simulated target
    is below the horizon, airmass NaN; the group says so in one line (it was silent)."""
    from qlcp.core.correct import BELOW_HORIZON
    from qlcp.core.simulate import simulate_small

    sim = simulate_small(tmp_path / "n", n_frames=3, size=96, seed=3, n_bias=2, n_flats=2)
    cfg = load_config([sim.config_path])
    files = list(sim.science_files)
    assert correct_frames(files, "SIMV", "V", tmp_path / "a", cfg, coord_file=files[0]).degraded == []
    far = load_config([sim.config_path], {"site_lat": -cfg.site_lat})
    res = correct_frames(files, "SIMV", "V", tmp_path / "b", far, coord_file=files[0])
    assert res.degraded == [f"SIMV: {BELOW_HORIZON}"]


def test_a_changed_target_catalog_retimes_the_frames(tmp_path):
    """The catalogue's coordinates time the frames: an edited catalogue changes the corrected frames'
    provenance key, so a rerun (EXIST_APPEND) corrects them again with the new BJD."""
    import os

    from qlcp.core.correct import correction_key

    cat = tmp_path / "targets.csv"
    cat.write_text("name,ra,dec\nSIMV,19:31:05.65,+30:23:45\n")
    raw = tmp_path / "SIMV-0001V.fit"
    raw.write_bytes(b"raw")
    cfg = load_config(None, {"target_catalog": str(cat)})
    before = correction_key(cfg, raw, None, None, None)
    cat.write_text("name,ra,dec\nSIMV,19:31:06.65,+30:23:45\n")
    os.utime(cat, ns=(1, 1))
    assert correction_key(cfg, raw, None, None, None) != before
