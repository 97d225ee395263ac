"""Gain and read noise from the data (photon transfer), honest errors and the NOISY flag,
against known truth: synthetic arrays of known gain, and the simulator's GAIN and RDNOISE."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table

from qlcp.core import detector, run
from qlcp.core.catalogue import read_catalogue
from qlcp.core.config import load_config
from qlcp.core.differential import differential, robust_scatter
from qlcp.core.simulate import simulate_night, simulate_small


# ------------------------------------------------------------ pure functions
def _exposure(rng, level_adu, gain, rn_adu, resp):
    """Bias-subtracted frame of uniform light ``level_adu`` x ``resp``: Poisson electrons, read noise."""
    return rng.poisson(level_adu * gain * resp) / gain + rng.normal(0, rn_adu, resp.shape)


@pytest.mark.parametrize("gain, rn_e", [(1.5, 8.0), (3.2, 4.0)])
def test_photon_transfer_recovers_known_gain_and_read_noise(gain, rn_e):
    rng = np.random.default_rng(3)
    shape = (256, 256)
    resp = 1 + rng.normal(0, 0.02, shape)              # pixel response: must cancel in the differences
    rn_adu = rn_e / gain
    b1, b2 = (rng.normal(0, rn_adu, shape) + 500 for _ in range(2))
    assert detector.read_noise_adu(b1, b2) == pytest.approx(rn_adu, rel=0.03)
    f1 = _exposure(rng, 30000, gain, rn_adu, resp)
    f2 = _exposure(rng, 21000, gain, rn_adu, resp)     # different levels: k = m1/m2 scaling
    assert detector.pair_gain(f1, f2, rn_adu) == pytest.approx(gain, rel=0.03)
    # faint "sky" pairs, where the read noise matters
    s1, s2 = _exposure(rng, 200, gain, rn_adu, resp), _exposure(rng, 180, gain, rn_adu, resp)
    assert detector.pair_gain(s1, s2, rn_adu) == pytest.approx(gain, rel=0.05)
    # ignoring the read noise biases the gain low by the read-noise share of the variance
    assert detector.pair_gain(s1, s2, 0.0) == pytest.approx(gain / (1 + gain * rn_adu**2 / 190), rel=0.03)


def test_clipped_var_ignores_outliers_and_level_pairs_pair_similar_levels():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 2.0, 100_000)
    a[:200] = 5000.0                                   # cosmic rays
    assert detector.clipped_var(a) == pytest.approx(4.0, rel=0.02)
    assert detector.level_pairs([100, 400, 210, 390, 90]) == [(1, 3), (2, 0)]


def test_resolve_order_config_header_flats_sky_assumed():
    r = detector.resolve
    assert r(2.0, 5.0, {"GAIN": 1.1, "RDNOISE": 9.0}).gain_source == "config"
    d = r(None, None, {"GAIN": 1.1, "RDNOISE": 9.0}, {"GAINEST": 1.4})
    assert (d.gain, d.rdnoise, d.gain_source, d.rdnoise_source) == (1.1, 9.0, "header", "header")
    d = r(None, None, {}, {"GAINEST": 1.4}, {"RDNADU": 5.0}, sky=lambda: 1 / 0)   # sky not needed: not called
    assert (d.gain, d.rdnoise, d.gain_source, d.rdnoise_source) == (1.4, 7.0, "flats", "bias")
    d = r(None, None, {}, {}, {"RDNADU": 5.0}, sky=lambda: 2.0)
    assert (d.gain, d.rdnoise, d.gain_source) == (2.0, 10.0, "sky")
    d = r(None, None, {"GAIN": "n/a"}, None, None, sky=lambda: float("nan"))
    assert (d.gain, d.rdnoise, d.gain_source, d.rdnoise_source) == (1.0, 0.0, "assumed", "assumed")


def test_saturation_from_config_then_header_then_assumed_by_bit_depth():
    s = detector.saturation
    assert s(40000.0, {"SATURATE": 50000, "BITPIX": 16}) == (40000.0, "config")
    assert s(None, {"DATAMAX": 50000, "BITPIX": 16}) == (50000.0, "header")
    assert s(None, {"SATURATE": "n/a", "BITPIX": 16}) == (65535.0, "assumed")
    assert s(None, {"BITPIX": -32}) == (detector.NO_SATURATION, "assumed")


def test_record_reads_the_products_and_assumed_lines_name_groups_only_when_some_differ():
    bf = {"GAIN": 1.0, "GAINSRC": "assumed", "RDNOISE": 0.0, "RDNSRC": "assumed", "SATRAW": 1e30,
          "SATSRC": "assumed"}
    rec = detector.record(bf, {"PIXSCALE": 0.62, "SCALESRC": "solved"})
    assert rec == {"gain": {"value": 1.0, "source": "assumed"}, "rdnoise": {"value": 0.0, "source": "assumed"},
                   "saturation": {"value": None, "source": "assumed"},
                   "pixel_scale": {"value": 0.62, "source": "solved"}}
    old = detector.record({"GAIN": 2.0}, None)          # a frame made before SATSRC, no WCS product
    assert old["saturation"] == {"value": None, "source": "unknown"}
    assert old["gain"]["source"] == "unknown" and old["pixel_scale"] == {"value": None, "source": "none"}
    known = detector.record({**bf, "GAINSRC": "header", "RDNSRC": "bias", "SATRAW": 65535.0}, None)
    lines = detector.assumed_lines({"A V": rec, "B V": known, "C V": {}})
    assert lines == ["gain: assumed 1 e-/ADU (no GAIN/EGAIN/CCDGAIN header, no gain in the config, no master "
                     "bias to measure it from flats or sky) - in A V",
                     "read noise: assumed 0 e- (no RDNOISE/READNOIS/RON header, no rdnoise in the config, no bias "
                     "pairs to measure it) - in A V",
                     "saturation: assumed none (floating-point frames, no SATURATE/DATAMAX/SATLEVEL header, no "
                     "saturation in the config): saturated stars are not flagged - in A V",
                     "saturation: assumed 65535 ADU, the 16-bit limit (no SATURATE/DATAMAX/SATLEVEL header, no "
                     "saturation in the config) - in B V"]
    assert detector.assumed_lines({"A V": rec, "C V": {}})[0].endswith("from flats or sky)")   # every group: no names


# ------------------------------------------------------------ simulated nights
def _strip_detector_cards(sim) -> None:
    """Real nights often lack GAIN/RDNOISE: remove them from every raw frame of ``sim``."""
    for f in sim.raw_dir.glob("*.fit"):
        with fits.open(f, mode="update") as h:
            for k in ("GAIN", "RDNOISE"):
                h[0].header.remove(k, ignore_missing=True)


def _site_config(sim, **kw):
    """The night's config without its gain and read noise."""
    base = yaml.safe_load(sim.config_path.read_text())
    base.pop("gain")
    base.pop("rdnoise")
    return load_config([], {**base, **kw})


def _corrected_header(red):
    return fits.getheader(sorted((red / "SIMV_V").glob("*.bf.fits"))[0])


@pytest.mark.parametrize("seed, gain, rdnoise", [(21, 1.5, 8.0), (22, 2.6, 5.0)])
def test_gain_and_read_noise_from_tonights_bias_and_flats(tmp_path, seed, gain, rdnoise):
    sim = simulate_small(tmp_path / "night", n_frames=4, seed=seed, gain=gain, rdnoise=rdnoise)
    _strip_detector_cards(sim)
    red = tmp_path / "red"
    run(sim.raw_dir, red, config=_site_config(sim, steps="lbfi"))
    flat, bias = fits.getheader(red / "flat_V.fits"), fits.getheader(red / "bias.fits")
    assert flat["NGAINPR"] >= 1 and bias["NRDNPAIR"] == 2
    assert flat["GAINEST"] == pytest.approx(sim.info["gain"], rel=0.1)
    assert bias["RDNADU"] * sim.info["gain"] == pytest.approx(sim.info["rdnoise"], rel=0.1)
    h = _corrected_header(red)
    assert (h["GAINSRC"], h["RDNSRC"]) == ("flats", "bias")
    assert h["GAIN"] == pytest.approx(sim.info["gain"], rel=0.1)
    assert h["RDNOISE"] == pytest.approx(sim.info["rdnoise"], rel=0.1)


def test_night_without_flats_gain_from_the_sky(tmp_path):
    sim = simulate_small(tmp_path / "night", n_frames=4, seed=23, n_flats=0, gain=2.0)
    _strip_detector_cards(sim)
    red = tmp_path / "red"
    run(sim.raw_dir, red, config=_site_config(sim, steps="lbfi"))
    h = _corrected_header(red)
    assert h["GAINSRC"] == "sky"
    assert h["GAIN"] == pytest.approx(sim.info["gain"], rel=0.1)
    assert h["RDNOISE"] == pytest.approx(sim.info["rdnoise"], rel=0.1)


def test_header_and_config_values_come_first(tmp_path):
    sim = simulate_small(tmp_path / "night", n_frames=2, seed=24)
    red = tmp_path / "red"
    run(sim.raw_dir, red, config=_site_config(sim, steps="lbfi"))
    assert _corrected_header(red)["GAINSRC"] == "header"
    run(sim.raw_dir, red, config=_site_config(sim, steps="i", gain=3.0, mode=["EXIST_OVER"]))
    h = _corrected_header(red)
    assert (h["GAINSRC"], h["GAIN"]) == ("config", 3.0)


# ------------------------------------------------------------ error model and NOISY
@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """A short night (36 frames, 27 min of eclipse) with the truth's target, 3 comparisons, 2 checks."""
    sim = simulate_night(tmp_path_factory.mktemp("honest") / "night", n_frames=36, size=384, seed=25,
                         n_bias=5, n_flats=5, n_constant=5)
    s = sim.stars
    xy = [[float(s["x"][s["id"] == i][0]), float(s["y"][s["id"] == i][0])]
          for i in [sim.target_id] + sim.constant_ids]
    stars = dict(starxy=xy, ind_tgt=[0], ind_ref=[1, 2, 3], ind_chk=[4, 5], aper=[6.0])
    return sim, stars


def _reduce(sim, tmp_path_factory, name, **kw):
    red = tmp_path_factory.mktemp(name)
    base = yaml.safe_load(sim.config_path.read_text())
    summary = run(sim.raw_dir, red, config=load_config([], {**base, **kw}))
    return red, summary


def _check_ratio(lc, k=0):
    """Achieved scatter of constant check star ``k`` (frame to frame, as the noise table's ``achieved``)
    over its median per-point error, clear frames.  Slow systematics (a night without flats drifting
    over the pixel response) are not per-point noise and are not what the errors describe."""
    ok = np.asarray(lc["ok"], dtype=bool) & np.isfinite(np.asarray(lc[f"mag_c{k}_a0"], dtype=float))
    m, e = np.asarray(lc[f"mag_c{k}_a0"])[ok], np.asarray(lc[f"err_c{k}_a0"])[ok]
    return robust_scatter(m) / np.median(e)


def test_assumed_gain_errors_scaled_to_the_constant_stars(night, tmp_path_factory):
    sim, stars = night
    red, _ = _reduce(sim, tmp_path_factory, "wrong_gain", gain=sim.info["gain"] / 8, **stars)
    cata = read_catalogue(red / "cata_SIMV_V.fits")
    m = cata.meta
    lc_ccd, _ = differential(cata, m["ind_tgt"], m["ind_ref"], m["ind_chk"], _site_config(sim, gain=sim.info["gain"] / 8))
    assert lc_ccd.meta["error_model"] == "ccd" and lc_ccd.meta["gain_source"] == "config"
    before = [_check_ratio(lc_ccd, k) for k in (0, 1)]
    assert max(before) < 1 / 1.6                               # a gain 8x too low: errors far too large
    lc, _ = differential(cata, m["ind_tgt"], m["ind_ref"], m["ind_chk"], _site_config(sim, gain=sim.info["gain"] / 8),
                         gain_source="assumed")
    assert lc.meta["error_model"] == "scaled" and lc.meta["error_scale"][0] < 0.7
    after = [_check_ratio(lc, k) for k in (0, 1)]
    print("check star scatter / error, before:", before, "after:", after, "scale", lc.meta["error_scale"])
    assert all(1 / 1.4 < r < 1.4 for r in after), (before, after)
    assert all(n["gain_source"] == "assumed" and n["error_model"] == "scaled" for n in lc.meta["noise"])


def test_stripped_night_without_calibrations_is_flagged_and_scaled(tmp_path):
    sim = simulate_small(tmp_path / "night", n_frames=16, size=256, seed=26, n_bias=0, n_flats=0, gain=4.0)
    _strip_detector_cards(sim)
    red = tmp_path / "red"
    s = sim.stars
    xy = [[float(s["x"][s["id"] == i][0]), float(s["y"][s["id"] == i][0])] for i in [0] + sim.constant_ids]
    summary = run(sim.raw_dir, red, config=_site_config(sim, starxy=xy, ind_tgt=[0], ind_ref=[1, 2, 3],
                                                           ind_chk=[4], aper=[5.0], steps="lbfiopcd"))
    assert _corrected_header(red)["GAINSRC"] == "assumed"
    lc = Table.read(red / "lc_SIMV_V.ecsv")
    assert lc.meta["gain_source"] == "assumed" and lc.meta["error_model"] == "scaled"
    scale = lc.meta["error_scale"][0]
    print("no calibrations, gain assumed: scale", scale, "check scatter / error", _check_ratio(lc),
          "before", _check_ratio(lc) * scale)
    assert scale != 1.0 and 1 / 1.4 < _check_ratio(lc) < 1.4
    rows = summary.groups[0].noise
    assert rows and all(r["gain_source"] == "assumed" for r in rows)


def test_eclipse_is_not_noisy_white_noise_is(night, tmp_path_factory):
    sim, stars = night
    assert np.min(sim.frames["target_rel_flux"]) < 0.8          # the truth has a deep eclipse in this short run
    red, summary = _reduce(sim, tmp_path_factory, "right_gain", **stars)
    lc = Table.read(red / "lc_SIMV_V.ecsv")
    rows = {(n["role"], n["k"]): n for n in lc.meta["noise"]}
    assert not rows[("target", 0)]["noisy"]
    assert lc.meta["error_model"] == "ccd" and rows[("target", 0)]["gain_source"] == "config"
    # the same night, check star 0 with white noise 3x its prediction
    cata = read_catalogue(red / "cata_SIMV_V.fits")
    i = rows[("check", 0)]["star"]
    sigma = 3 * rows[("check", 0)]["predicted"]
    mag = np.array(cata["mag"], dtype=float)
    mag[:, i, :] += np.random.default_rng(5).normal(0, sigma, (len(cata), 1))
    cata["mag"] = mag
    m = cata.meta
    lc2, _ = differential(cata, m["ind_tgt"], m["ind_ref"], m["ind_chk"], _site_config(sim, gain=sim.info["gain"]))
    rows2 = {(n["role"], n["k"]): n for n in lc2.meta["noise"]}
    assert rows2[("check", 0)]["noisy"]
    assert not rows2[("check", 1)]["noisy"] and not rows2[("target", 0)]["noisy"]
