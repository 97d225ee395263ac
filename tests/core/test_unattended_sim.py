"""Unattended science on simulated nights with sky coordinates: the target found by its sky position,
comparisons chosen for it, honest errors without GAIN, and a second night of the field (pointed
elsewhere, flipped halfway) matched to the first by WCS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table

from qlcp.core import run
from qlcp.core.config import load_config
from qlcp.core.differential import robust_scatter
from qlcp.core.simulate import simulate_small

RA, DEC = 255.0, 31.0
SKY = dict(size=384, n_frames=24, thick_cloud=False, wcs=True, pixel_scale=1.2, target_ra=RA, target_dec=DEC,
           detector_seed=11, n_bias=0, n_flats=0)


def _no_gain(sim):
    for f in sim.raw_dir.glob("*.fit"):
        with fits.open(f, mode="update") as h:
            for k in ("GAIN", "RDNOISE"):
                h[0].header.remove(k, ignore_missing=True)


def _site_only(sim, fields, **kw):
    base = yaml.safe_load(sim.config_path.read_text())
    keep = {k: base[k] for k in ("site_lon", "site_lat", "site_ele", "site_tz", "tel_diameter") if k in base}
    return load_config([], {**keep, "workers": 2, "field_dir": str(fields), **kw})


@pytest.fixture(scope="module")
def sky_nights(tmp_path_factory):
    root = tmp_path_factory.mktemp("sky")
    n1 = simulate_small(root / "n1", seed=81, **SKY)
    n2 = simulate_small(root / "n2", seed=82, field_of=str(n1.out_dir), pointing=(-45.0, 20.0), flip_at=0.5, **SKY)
    for n in (n1, n2):
        _no_gain(n)
    fields = root / "fields"
    target = [{"name": "SIMV", "ra": RA, "dec": DEC}]
    first = run(n1.raw_dir, root / "red" / "n1", config=_site_only(n1, fields, targets=target))
    second = run(n2.raw_dir, root / "red" / "n2", config=_site_only(n2, fields))   # no targets, no positions
    return n1, n2, first, second


def test_target_by_sky_position_with_honest_errors(sky_nights):
    n1, _, first, _ = sky_nights
    g = first.groups[0]
    assert not g.error and g.stars["source"] == "targets" and g.stars["targets"] == ["SIMV"]
    w = fits.getheader(g.outputs["wcs"])
    assert w["WCSSRC"] == "header"
    sel = json.loads((Path(first.red_dir) / "select_SIMV_V.json").read_text())
    tx, ty = sel["starxy"][sel["ind_tgt"][0]]
    assert np.hypot(tx - n1.stars["x"][0], ty - n1.stars["y"][0]) < 1.5
    assert len(sel["ind_ref"]) >= 2
    lc = Table.read(g.outputs["lightcurve"], format="ascii.ecsv")
    assert lc.meta["gain_source"] in ("sky", "assumed")            # no GAIN anywhere, no calibration frames
    ok = np.asarray(lc["ok"], bool)
    for col in [c for c in lc.colnames if c.startswith(("mag_t", "mag_c")) and c.endswith("_a0")]:
        m, e = np.asarray(lc[col], float), np.asarray(lc[col.replace("mag_", "err_")], float)
        good = ok & np.isfinite(m) & np.isfinite(e)
        assert 1 / 1.4 < np.median(e[good]) / robust_scatter(m[good]) < 1.4, col


def test_second_night_matched_by_wcs_despite_pointing_and_flip(sky_nights):
    n1, n2, first, second = sky_nights
    st = second.groups[0].stars
    assert st["source"] == "field" and st["field_match"] == "wcs" and not st["lost"]
    sel = json.loads((Path(second.red_dir) / "select_SIMV_V.json").read_text())
    tx, ty = sel["starxy"][sel["ind_tgt"][0]]
    assert np.hypot(tx - n2.stars["x"][0], ty - n2.stars["y"][0]) < 1.5       # the same star, tonight
    lc = Table.read(second.groups[0].outputs["lightcurve"], format="ascii.ecsv")
    assert np.asarray(lc["ok"], bool).mean() >= 0.95
    # every frame's measured positions through its own WCS land on the stars' sky positions, flip or not
    from qlcp.core.catalogue import read_catalogue

    cata = read_catalogue(Path(second.red_dir) / "cata_SIMV_V.fits")
    ra0, dec0 = float(n1.stars["ra"][0]), float(n1.stars["dec"][0])
    t = sel["ind_tgt"][0]
    sep = np.hypot((np.asarray(cata["ra"])[:, t] - ra0) * np.cos(np.radians(dec0)), np.asarray(cata["dec"])[:, t] - dec0)
    assert np.nanmax(sep) * 3600 < 0.5 * 1.2 and np.isfinite(sep).mean() >= 0.95
