"""Targets by name and sky position (qlcp.core.targets)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.wcs import WCS

from qlcp.core.config import Config
from qlcp.core.errors import ConfigError
from qlcp.core.targets import all_targets, make_target, norm_name, parse_ra_dec, read_catalog, sky_to_pixel, targets_for


def test_names_match_ignoring_case_spaces_dashes_underscores():
    assert norm_name("HATP-32") == norm_name("HAT-P-32") == norm_name("hat_p 32") == "HATP32"
    assert norm_name("XO-1") != norm_name("XO-11")


def test_coordinates_sexagesimal_and_degrees():
    ra, dec = parse_ra_dec("16:02:11.84", "+28:10:10.4")
    assert ra == pytest.approx(240.549333, abs=1e-5) and dec == pytest.approx(28.169556, abs=1e-5)
    assert parse_ra_dec(240.5, -5.25) == (240.5, -5.25)
    with pytest.raises(ConfigError, match="outside"):
        parse_ra_dec(400.0, 0.0)
    with pytest.raises(ConfigError, match="missing 'dec'"):
        make_target({"name": "X", "ra": 1.0})


def test_catalog_file_and_config_merge(tmp_path):
    p = tmp_path / "targets.csv"
    p.write_text("name,ra,dec,aliases,period,t0\nHAT-P-32,02:04:10.28,+46:41:16.2,HATP32b;TOI-1,2.15,2455867.40\n"
                 "XO-1,16:02:11.84,+28:10:10.4,,,\n")
    cat = read_catalog(p)
    assert [t.name for t in cat] == ["HAT-P-32", "XO-1"]
    assert cat[0].aliases == ("HATP32b", "TOI-1") and cat[0].extra["period"] == pytest.approx(2.15)
    assert "period" not in cat[1].extra
    cfg = Config(targets=[{"name": "XO-1", "ra": 240.0, "dec": 28.0}], target_catalog=str(p))
    both = all_targets(cfg)
    assert [t.name for t in both] == ["XO-1", "HAT-P-32"] and both[0].ra == 240.0      # the config wins
    with pytest.raises(ConfigError, match="file not found"):
        all_targets(Config(target_catalog=str(tmp_path / "nope.csv")))


def test_targets_on_the_frame_through_its_wcs():
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [240.5, 28.2]
    w.wcs.crpix = [257, 257]                # 1-based: pixel 256 (0-based) is the centre
    w.wcs.cd = np.array([[-0.67, 0], [0, 0.67]]) / 3600
    inside = make_target({"name": "XO-1", "ra": 240.5, "dec": 28.21})
    other = make_target({"name": "NEAR", "ra": 240.49, "dec": 28.19})
    far = make_target({"name": "FAR", "ra": 241.5, "dec": 28.2})
    got = targets_for([other, far, inside], "xo_1", w, (512, 512))
    assert [t.name for t in got] == ["XO-1", "NEAR"]          # the object's own first, then others on the frame
    xy = sky_to_pixel(w, [inside])[0]
    assert xy == pytest.approx([256.0, 256.0 + 36.0 / 0.67], abs=0.05)
    assert targets_for([inside], "XO-1") == [inside]          # no WCS: by name only


@pytest.fixture(scope="module")
def wcs_night(tmp_path_factory):
    from qlcp.core.simulate import simulate_small

    return simulate_small(tmp_path_factory.mktemp("wcsnight") / "n", n_frames=10, size=128, seed=3, n_bias=3,
                          n_flats=3, wcs=True)


def _reduce(sim, red, target: dict):
    from qlcp.deployments.cli import main

    rc = main(["run", str(sim.raw_dir), str(red), "--no-prefect", "--config", str(sim.config_path),
               "--set", "workers=1", "--set", f"field_dir={red / 'fields'}", "--set", "calib_library=false",
               "--set", f"targets={json.dumps([target])}"])
    return rc, json.loads((red / "summary.json").read_text())


def test_configured_target_off_the_frames_is_named_and_not_replaced(wcs_night, tmp_path):
    """R7: the configured target 0.05 deg north of the field (the frames carry a WCS) is reported by name
    with how far off it is; no automatic pick replaces it (the simulated eclipsing star is not made a
    target), no field reference is written; exit 4. The same target at its true position is placed on
    the simulated target, and its name is on the light curve and in the summary."""
    from astropy.table import Table

    ra, dec = wcs_night.info["target"]["ra"], wcs_night.info["target"]["dec_deg"]
    rc, s = _reduce(wcs_night, tmp_path / "off", {"name": "XO-1", "aliases": ["SIMV"], "ra": ra, "dec": dec + 0.05})
    g = s["groups"][0]
    assert rc == 4 and g["outcome"] == "no target", (rc, g)
    assert g["note"].startswith("target XO-1 at 19:31:05.65 +30:26:45.0 ") and \
        ("is not on the frames" in g["note"] or "cannot be placed" in g["note"]), g["note"]
    assert g["stars"]["ind_tgt"] == [] and g["stars"]["targets_missing"] == ["XO-1"]
    assert not (tmp_path / "off" / "fields" / "SIMV.ecsv").exists()          # no field reference from it

    rc, s = _reduce(wcs_night, tmp_path / "on", {"name": "XO-1", "aliases": ["SIMV"], "ra": ra, "dec": dec})
    g = s["groups"][0]
    assert rc == 0 and g["outcome"] == "ok" and g["stars"]["targets"] == ["XO-1"], (rc, g)
    truth = wcs_night.stars[wcs_night.target_id]
    stars = Table.read(g["outputs"]["stars"], format="ascii.ecsv")
    t0 = stars[stars["role"] == "target"][0]
    assert np.hypot(t0["x"] - truth["x"], t0["y"] - truth["y"]) < 2.0
    lc = Table.read(g["outputs"]["lightcurve"], format="ascii.ecsv")
    assert lc.meta["targets"] == ["XO-1"]


def test_target_off_a_frame_with_wcs_says_how_far():
    """With a celestial WCS, a target off the frame is said with its distance to the nearest edge."""
    from types import SimpleNamespace

    from qlcp.core.selection import _not_placed

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [292.7735, 30.3958], [64.5, 64.5], [-1 / 3600, 1 / 3600]
    base = SimpleNamespace(wcs=w, shape=(128, 128), name="b.bf.fits", wcs_why="")
    t = make_target({"name": "XO-1", "ra": 292.7735, "dec": 30.3958 + 0.05})      # 180 px north of the centre
    why = _not_placed(t, base)
    assert why.startswith("target XO-1 at 19:31:05.64 +30:26:44.9 is not on the frames (nearest edge 117 px"), why
    assert "too near the edge" in _not_placed(make_target({"name": "E", "ra": 292.7735, "dec": 30.3958 + 62 / 3600}),
                                              base)
