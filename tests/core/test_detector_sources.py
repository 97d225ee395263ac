"""Defaults are never silent: where the gain, read noise, saturation and pixel scale of a night came
from (config, header, measured, solved, or assumed) in its corrected frames, its WCS product and
its summary (``detector`` per group, the night's ``assumed`` lines)."""

from __future__ import annotations

import json

import pytest
import yaml
from astropy.io import fits

from qlcp.core import run
from qlcp.core.config import load_config
from qlcp.core.simulate import simulate_small
from tests.conftest import SHARED_DATA, strip_cards

TRES1 = SHARED_DATA / "tres1_oscaar_20120617"

#: what each night removes from its raw headers and its config, what it sets, and the sources expected
CASES = {
    "nothing anywhere": dict(strip=("GAIN", "RDNOISE", "SATURATE"), sim={"n_bias": 0, "n_flats": 0}, config={},
                             sources={"gain": "assumed", "rdnoise": "assumed", "saturation": "assumed",
                                      "pixel_scale": "header"}),
    "header": dict(strip=(), sim={}, config={},
                   sources={"gain": "header", "rdnoise": "header", "saturation": "header", "pixel_scale": "header"}),
    "config": dict(strip=("GAIN", "RDNOISE", "SATURATE"), sim={"wcs": False},
                   config={"gain": 2.5, "rdnoise": 7.0, "saturation": 50000.0, "pixel_scale": 1.1},
                   sources={"gain": "config", "rdnoise": "config", "saturation": "config", "pixel_scale": "config"}),
}


def _config(sim, **kw):
    """The simulated night's config without its detector settings, no astrometry index (the header WCS
    is taken as it is, no solve), plus ``kw``."""
    base = {k: v for k, v in yaml.safe_load(sim.config_path.read_text()).items()
            if k not in ("gain", "rdnoise", "saturation")}
    return load_config([], {**base, "astrometry_index": [], "workers": 1, **kw})


@pytest.fixture(scope="module", params=list(CASES))
def reduced(request, tmp_path_factory):
    case = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param.replace(" ", "_"))
    sim = simulate_small(root / "night", n_frames=4, size=192, seed=31, **{"wcs": True, "pixel_scale": 1.2,
                                                                           **case["sim"]})
    strip_cards(sim.raw_dir, *case["strip"])
    red = root / "red"
    summary = run(sim.raw_dir, red, config=_config(sim, steps="lbfiopw", **case["config"]))
    return request.param, sim, red, summary


def test_frames_wcs_product_and_summary_say_where_each_value_came_from(reduced):
    name, sim, red, summary = reduced
    want = CASES[name]["sources"]
    h = fits.getheader(sorted((red / "SIMV_V").glob("*.bf.fits"))[0])
    assert (h["GAINSRC"], h["RDNSRC"], h["SATSRC"]) == (want["gain"], want["rdnoise"], want["saturation"])
    w = fits.getheader(red / "wcs_SIMV_V.fits")
    assert w["SCALESRC"] == want["pixel_scale"]
    d = json.loads((red / "summary.json").read_text())
    det = d["groups"][0]["detector"]
    assert {k: v["source"] for k, v in det.items()} == want
    assert det["gain"]["value"] == pytest.approx(h["GAIN"]) and det["rdnoise"]["value"] == pytest.approx(h["RDNOISE"])
    assert det["saturation"]["value"] == h["SATRAW"]
    assert det["pixel_scale"]["value"] == pytest.approx(w["PIXSCALE"])
    if name == "config":
        assert (det["gain"]["value"], det["rdnoise"]["value"], det["saturation"]["value"]) == (2.5, 7.0, 50000.0)
        assert det["pixel_scale"]["value"] == 1.1 and w["WCSSRC"] == "none"
    else:
        assert det["pixel_scale"]["value"] == pytest.approx(1.2, rel=1e-3) and w["WCSSRC"] == "header"
    if name == "header":
        assert (det["gain"]["value"], det["rdnoise"]["value"], det["saturation"]["value"]) == \
            (sim.info["gain"], sim.info["rdnoise"], sim.info["saturation"])


def test_assumed_lines_name_every_default_and_do_not_degrade_the_night(reduced):
    name, _, red, summary = reduced
    d = json.loads((red / "summary.json").read_text())
    if name == "nothing anywhere":
        assert [a.split(":")[0] for a in d["assumed"]] == ["gain", "read noise", "saturation"]
        assert d["assumed"][0].startswith("gain: assumed 1 e-/ADU (no GAIN/EGAIN/CCDGAIN header, no gain in the "
                                          "config")
        assert "assumed 65535 ADU" in d["assumed"][2]
        # degraded for the calibrations it went without, never for the assumed values
        assert d["degraded"] == ["no bias: no bias frames tonight", "no flat for V: no flats tonight"]
    else:
        assert d["assumed"] == [] and d["degraded"] == [] and d["outcome"] == "ok"


def test_assumed_saturation_alone_is_said_and_the_night_stays_ok(tmp_path):
    """A 16-bit camera with no SATURATE: 65535 is assumed and said, and the night is ok (exit status 0)."""
    sim = simulate_small(tmp_path / "night", n_frames=2, size=128, seed=32)
    strip_cards(sim.raw_dir, "SATURATE")
    s = run(sim.raw_dir, tmp_path / "red", config=_config(sim, steps="lbfi", gain=1.5, rdnoise=8.0))
    assert s.outcome == "ok" and not s.degraded
    assert s.assumed == ["saturation: assumed 65535 ADU, the 16-bit limit (no SATURATE/DATAMAX/SATLEVEL header, "
                         "no saturation in the config)"]
    assert s.groups[0].detector["saturation"] == {"value": 65535.0, "source": "assumed"}
    assert s.groups[0].detector["pixel_scale"] == {"value": None, "source": "none"}     # no step w


@pytest.mark.realdata
def test_real_tres1_night_gain_from_egain_read_noise_assumed(tmp_path):
    """TrES-1 (SBIG ST-10): EGAIN = 0.78 in every header; no read-noise keyword and no bias frames to
    measure it (darks only), so the read noise is assumed; BITPIX 16 without SATURATE: 65535 assumed."""
    if not (TRES1 / "README.md").is_file():
        pytest.skip(f"real data {TRES1} not present")
    red = tmp_path / "red"
    s = run(TRES1, red, config=load_config(None, {"steps": "lbfi", "workers": 2}))
    det = s.groups[0].detector
    assert det["gain"]["source"] == "header" and det["gain"]["value"] == pytest.approx(0.78)
    assert det["rdnoise"] == {"value": 0.0, "source": "assumed"}
    assert det["saturation"] == {"value": 65535.0, "source": "assumed"}
    assert [a.split(":")[0] for a in s.assumed] == ["read noise", "saturation"]
    assert s.masters["dark"]["source"] == "tonight" and s.masters["bias"]["path"] is None
    g = s.groups[0]
    h = fits.getheader(sorted((red / f"{g.obj}_{g.band}").glob("*.bf.fits"))[0])
    assert (h["GAINSRC"], h["RDNSRC"], h["SATSRC"]) == ("header", "assumed", "assumed")
