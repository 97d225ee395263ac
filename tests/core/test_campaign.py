"""Campaign products against the truth.

* four simulated nights of one field days apart (epochs 0, 2, 5, 7 of an ephemeris given to the
  simulator), reduced, timed: the refined period within 3 sigma of the truth from a catalogue
  ephemeris that is off; a common zero point; O-C table and plots;
* twelve synthetic nights of an eclipsing binary with no known period: the box search finds
  the period, and the refined ephemeris is within 3 sigma of the truth.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from astropy.table import Table
from astropy.time import Time

from qlcp.core import run
from qlcp.core.campaign import build_campaign, find_nights
from qlcp.core.event_timing import run_timing
from qlcp.core.io import write_table
from qlcp.core.products import product_path
from qlcp.core.simulate import simulate_night

P_TRUE = 2.0172
EPOCHS = (0, 2, 5, 7)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """Four nights of one field at epochs 0, 2, 5, 7 of ``(t0, P_TRUE)``; the first night's stars on all."""
    root = tmp_path_factory.mktemp("campaign")
    t0 = Time("2024-06-06T14:35:00", scale="utc").jd        # near BJD_TDB: the simulator picks the nearest event
    first, truth = None, []
    for e in EPOCHS:
        start = Time(t0 + e * P_TRUE - 35 / 1440, format="jd", scale="utc").isot
        kw = dict(n_bias=3, n_flats=5, n_constant=4, cadence=60, exptime=50, eclipse_duration=1800,
                  ephemeris=(t0, P_TRUE), start_utc=start, night=start[:10])
        if first is not None:          # the same field (stars and sky position), another night
            kw.update(field_of=str(first.out_dir), target_ra=first.info["target"]["ra_deg"],
                      target_dec=first.info["target"]["dec_deg"])
        sim = simulate_night(root / f"sim{e}", n_frames=70, size=256, seed=20 + e, **kw)
        first = first or sim
        red = root / "red" / start[:10].replace("-", "")
        run(sim.raw_dir, red, ini_file=[sim.config_path])
        run_timing(red, "SIMV", "V")
        truth.append(sim.info["eclipse"]["t0_bjd_tdb"])
    t0_true = truth[0]
    cat = {"SIMV": {"kind": "eclipsing", "t0": t0_true + 0.001, "period": P_TRUE + 0.0004, "duration": 1800 / 86400}}
    return root / "red", truth, cat


def test_simulated_events_follow_the_ephemeris(campaign):
    _, truth, _ = campaign
    assert np.allclose(np.diff(truth), np.diff(EPOCHS) * P_TRUE, atol=1e-8)


def test_refined_period_within_3_sigma_of_the_truth(campaign):
    red_root, truth, cat = campaign
    out = build_campaign(red_root, "SIMV", targets=cat)
    eph = yaml.safe_load(out["ephemeris"].read_text())
    assert eph["n_events"] == 4 and eph["epochs"] == list(EPOCHS)
    assert abs(eph["period"] - P_TRUE) < 3 * eph["period_err"], eph
    assert abs(eph["t0"] - truth[0]) < 3 * eph["t0_err"], eph
    assert abs(cat["SIMV"]["period"] - P_TRUE) > 10 * eph["period_err"]        # the catalogue's was off
    assert np.array(eph["covariance"]).shape == (2, 2) and eph["chi2"] >= 0
    oc = Table.read(out["oc"], format="ascii.ecsv")
    assert list(oc["epoch"]) == list(EPOCHS) and str(oc["oc_min"].unit) == "min"
    assert np.allclose(oc["oc_min"], (oc["time_bjd_tdb"] - cat["SIMV"]["t0"] - oc["epoch"] * cat["SIMV"]["period"]) * 1440)
    for k in ("oc_png", "campaign_lc_png"):
        assert out[k].stat().st_size > 5000
    assert out["oc"] == product_path(red_root, "oc", "SIMV")


def test_campaign_light_curve_on_one_zero_point(campaign):
    red_root, truth, cat = campaign
    assert [e["night"] for e in find_nights(red_root, "simv")] == ["20240606", "20240610", "20240616", "20240620"]
    out = build_campaign(red_root, "SIMV", targets=cat)
    lc = Table.read(out["campaign_lc"], format="ascii.ecsv")
    assert sorted(set(lc["night"])) == ["20240606", "20240610", "20240616", "20240620"]
    for n, tc in zip(sorted(set(lc["night"])), truth):
        r = lc[lc["night"] == n]
        assert abs(np.median(r["mag"][r["out_of_event"]])) < 1e-9
        bottom = np.abs(r["bjd_tdb"] - tc) < 60 / 86400
        assert abs(np.mean(r["mag"][bottom]) - 0.3) < 0.03          # the eclipse, 0.3 mag below the zero point
    again = build_campaign(red_root, "SIMV", targets=cat)            # rebuildable: same products
    assert again["ephemeris"].read_text() == out["ephemeris"].read_text()


# ------------------------------------------------------------------ no known period
P_SYN, T0_SYN, DUR_SYN, DEPTH_SYN = 0.73457, 2460100.3137, 0.07, 0.25


def _synthetic_nights(root, n_nights=12, seed=5):
    """Nightly 6 h light curves (lc contract) of an eclipsing binary, 2 mmag white noise."""
    rng = np.random.default_rng(seed)
    delta = 1 - 10 ** (-0.4 * DEPTH_SYN)
    for i in range(n_nights):
        t = 2460100.55 + i * 1.0 + np.arange(0, 0.25, 60 / 86400)
        ph = (t - T0_SYN) / P_SYN
        u = 2 * (ph - np.round(ph)) * P_SYN / DUR_SYN
        flux = 1 - delta * np.where(np.abs(u) < 1, np.clip(1 - u * u, 0, None) ** 1.5, 0)
        mag = -2.5 * np.log10(flux) + 0.01 * i + rng.normal(0, 0.002, len(t))
        lc = Table({"file": [f"f{j}" for j in range(len(t))], "jd": t, "bjd_tdb": t, "hjd": t,
                    "airmass": np.full(len(t), 1.2), "fwhm": np.full(len(t), 3.0), "sky": np.full(len(t), 100.0),
                    "ok": np.ones(len(t), bool), "mag_t0_a0": mag, "err_t0_a0": np.full(len(t), 0.002)})
        lc.meta.update(object="SYN", band="R", night=f"n{i:02d}")
        write_table(product_path(root / f"n{i:02d}", "lightcurve", "SYN", "R"), lc)


def test_period_search_then_refined_ephemeris_without_a_known_period(tmp_path):
    _synthetic_nights(tmp_path)
    out = build_campaign(tmp_path, "SYN", targets={"SYN": {"kind": "eclipsing", "duration": DUR_SYN}})
    per = Table.read(out["period"], format="ascii.ecsv")
    assert abs(per.meta["bls_period"] - P_SYN) < 0.002, per.meta
    assert out["period_png"].stat().st_size > 5000
    eph = yaml.safe_load(out["ephemeris"].read_text())
    assert eph["reference"]["source"] == "period search" and eph["n_events"] >= 3
    oc = Table.read(out["oc"], format="ascii.ecsv")                   # the cycle count is right
    assert list(oc["epoch"]) == list(np.round((oc["time_bjd_tdb"] - oc["time_bjd_tdb"][0]) / P_SYN).astype(int))
    assert abs(eph["period"] - P_SYN) < 3 * eph["period_err"], eph


def _night_lc(red, obj: str, band: str, ind_tgt: list, targets=None) -> None:
    """A reduced night's light curve and selection, as step d and step k write them."""
    import json

    lc = Table({"bjd_tdb": 2460000.5 + np.arange(20) / 200, "ok": np.ones(20, bool)})
    for k in range(len(ind_tgt)):
        lc[f"mag_t{k}_a0"], lc[f"err_t{k}_a0"] = np.zeros(20), np.full(20, 0.002)
    lc["mag_r0_a0"], lc["err_r0_a0"] = np.zeros(20), np.full(20, 0.002)
    lc.meta.update(obj=obj, object=obj, band=band, ind_tgt=ind_tgt)
    red.mkdir(parents=True)
    write_table(product_path(red, "lightcurve", obj, band), lc)
    product_path(red, "selection", obj, band).write_text(json.dumps({"ind_tgt": ind_tgt, "targets": targets or []}))


def test_campaign_names_come_from_the_tables_not_the_file_names(tmp_path):
    """A band with an underscore (``Filter_2``) is not part of the target: object and band come from
    the light curve's metadata; a night without target adds no target; ``qlcp campaign`` takes its
    output root from $RED_ROOT (one line, exit 2, without one)."""
    from qlcp.core.campaign import campaign_targets
    from qlcp.deployments.cli import main

    root = tmp_path / "red"
    _night_lc(root / "20240601", "XO-1", "Filter_2", [0])
    _night_lc(root / "20240602", "XO-1", "Filter_2", [0])
    _night_lc(root / "20240603", "EMPTY", "V", [])                # a night without target
    assert campaign_targets(root) == ["XO-1"]
    assert [(n["night"], n["obj"], n["band"]) for n in find_nights(root, "XO-1")] == \
        [("20240601", "XO-1", "Filter_2"), ("20240602", "XO-1", "Filter_2")]
    mp = pytest.MonkeyPatch()
    with mp.context() as m:
        m.delenv("RED_ROOT", raising=False)
        assert main(["campaign"]) == 2
        m.setenv("RED_ROOT", str(root))
        assert main(["campaign", "--target", "XO-1"]) == 0
    assert (root / "campaign").is_dir()
