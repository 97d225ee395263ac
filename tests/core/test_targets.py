"""Targets by name and sky position (qlcp.core.targets)."""

from __future__ import annotations

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
