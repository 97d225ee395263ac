"""The real XO-1 night reduced as the service would: site settings and the target's name and sky
position only — no calibration frames, no GAIN, no pixel positions."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from astropy.table import Table

from qlcp.core import run
from qlcp.core.config import load_config

pytestmark = pytest.mark.realdata

SITE = {"site_lon": -105.82028, "site_lat": 32.78028, "site_ele": 2788.0, "site_tz": 0, "tel_diameter": 0.5}
XO1 = {"name": "XO-1", "ra": "16:02:11.84", "dec": "+28:10:10.4"}


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    from tests.conftest import XO1 as DATA

    if not (DATA / "README.md").is_file():
        pytest.skip("real data ../shared/data/xo1_arcsat_20250601 not present")
    root = tmp_path_factory.mktemp("xo1")
    raw = root / "raw" / "20250601"
    raw.mkdir(parents=True)
    for p in sorted(DATA.glob("XO1-b_*.fits")):          # science frames only: no bias, dark or flat
        shutil.copy2(p, raw / p.name)
    cfg = load_config(None, {**SITE, "targets": [XO1], "aper": [6.0], "workers": 2,
                             "field_dir": str(root / "red" / "fields")})
    summary = run(raw, root / "red" / "20250601", config=cfg)
    return root, summary


def test_target_found_by_sky_position_with_comparisons_chosen(reduced):
    root, s = reduced
    g = s.groups[0]
    assert not g.error and g.stars["source"] == "targets" and g.stars["targets"] == ["XO-1"]
    stars = Table.read(g.outputs["stars"], format="ascii.ecsv")
    tgt = stars[stars["role"] == "target"][0]
    assert np.hypot(tgt["x"] - 396, tgt["y"] - 359) < 4           # the README's position in the first frame
    comps = stars[stars["role"] == "comparison"]
    assert len(comps) >= 2
    assert np.min(np.hypot(comps["x"] - 274, comps["y"] - 58)) < 4     # C1, 0.92 x XO-1 in z
    lc = Table.read(g.outputs["lightcurve"], format="ascii.ecsv")
    assert "mag_t0_a0" in lc.colnames and np.sum(np.isfinite(lc["mag_t0_a0"])) >= 28


def test_field_reference_written_and_used_by_the_next_night(reduced):
    root, s = reduced
    ref = root / "red" / "fields" / "XO1B.ecsv"
    assert ref.is_file() and s.groups[0].stars["field_reference"] == str(ref)
    t = Table.read(ref, format="ascii.ecsv")
    assert np.sum(t["role"] == "target") == 1 and np.isfinite(t["ra"]).all()
    cfg = load_config(None, {**SITE, "aper": [6.0], "workers": 2,          # no targets: the reference decides
                             "field_dir": str(root / "red" / "fields")})
    again = run(root / "raw" / "20250601", root / "red" / "again", config=cfg)
    st = again.groups[0].stars
    assert st["source"] == "field" and st["field_match"] == "wcs" and not st["lost"]
    a = Table.read(s.groups[0].outputs["stars"], format="ascii.ecsv")
    b = Table.read(again.groups[0].outputs["stars"], format="ascii.ecsv")
    for role in ("target", "comparison", "check"):
        pa, pb = a[a["role"] == role], b[b["role"] == role]
        assert len(pa) == len(pb)
        assert np.allclose(np.sort(pa["x"]), np.sort(pb["x"]), atol=2.0)


def test_errors_honest_without_gain(reduced):
    _, s = reduced
    lc = Table.read(s.groups[0].outputs["lightcurve"], format="ascii.ecsv")
    ok = np.asarray(lc["ok"], bool)
    for col in [c for c in lc.colnames if c.startswith(("mag_c", "mag_t")) and c.endswith("_a0")]:
        m, e = np.asarray(lc[col], float)[ok], np.asarray(lc[col.replace("mag_", "err_")], float)[ok]
        good = np.isfinite(m) & np.isfinite(e)
        scatter = np.std(np.diff(m[good])) / np.sqrt(2)        # point to point: the transit is slow
        assert 1 / 1.4 < np.median(e[good]) / scatter < 1.4, (col, np.median(e[good]), scatter)
