"""Both drivers walk one stage graph: same files, same summary.json; the flow reruns what a changed key feeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from qlcp.core import run
from qlcp.core.config import load_config
from qlcp.core.simulate import simulate_small

pytestmark = pytest.mark.usefixtures("prefect_db")


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    return simulate_small(tmp_path_factory.mktemp("drv") / "n", n_frames=8, size=192, seed=41, n_bias=3,
                          n_flats=3, thick_cloud=False)


def _flow(sim, red, **config):
    from qlcp.flows.night import process_night

    return process_night(raw_dir=str(sim.raw_dir), red_dir=str(red), config_files=[str(sim.config_path)],
                         config={"workers": 1, **config})


def _comparable(summary: dict, red) -> dict:
    """The summary without how it ran, with the output root replaced."""
    d = {k: v for k, v in summary.items() if k not in ("run", "red_dir", "config_hash")}  # field_dir differs
    return json.loads(json.dumps(d).replace(str(red), "RED"))


def test_plain_and_prefect_give_identical_outputs_and_summary(night, tmp_path):
    plain, flow = tmp_path / "plain", tmp_path / "flow"
    # each its own field directory: a second reduction of a field would use the first's field reference
    run(night.raw_dir, plain, config=load_config([night.config_path], {"workers": 1,
                                                                        "field_dir": str(plain / "fields")}))
    _flow(night, flow, field_dir=str(flow / "fields"))
    sp = json.loads((plain / "summary.json").read_text())
    sf = json.loads((flow / "summary.json").read_text())
    assert sp["run"]["driver"] == "plain" and sf["run"]["driver"] == "prefect"
    assert _comparable(sp, plain) == _comparable(sf, flow)
    assert sp["groups"][0]["outputs"]["lightcurve"] and not sp["groups"][0]["error"]
    assert sp["groups"][0]["detector"]["gain"] == {"value": night.info["gain"], "source": "config"}   # compared too
    assert sp["groups"][0]["outputs"]["wcs"].endswith("wcs_SIMV_V.fits")       # step w ran in both drivers
    assert fits.getheader(plain / "wcs_SIMV_V.fits")["WCSSRC"] == fits.getheader(flow / "wcs_SIMV_V.fits")["WCSSRC"]
    a = Table.read(plain / "lc_SIMV_V.ecsv", format="ascii.ecsv")
    b = Table.read(flow / "lc_SIMV_V.ecsv", format="ascii.ecsv")
    assert a.colnames == b.colnames
    for c in a.colnames:
        x, y = np.asarray(a[c]), np.asarray(b[c])
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), c
    cats = sorted((plain / "SIMV_V").glob("*.cat.fits"))
    assert cats
    for f in cats:            # column by column: NaN equals NaN (the pick's light candidates have no AUTO flux)
        x, y = fits.getdata(f, 1), fits.getdata(flow / "SIMV_V" / f.name, 1)
        assert x.names == y.names and len(x) == len(y), f.name
        for c in x.names:
            assert np.array_equal(x[c], y[c], equal_nan=x[c].dtype.kind == "f"), (f.name, c)


def test_qlcp_run_records_where_each_setting_came_from_on_both_drivers(night, tmp_path):
    """``qlcp run --config F --set ...`` through Prefect and with ``--no-prefect``: summary.json names the
    same source of every setting given (the file, or the argument): the CLI hands the flow the files
    and arguments themselves, not their merged values."""
    from qlcp.core.runsetup import make_config
    from qlcp.deployments.cli import _reduce

    cfg = make_config([str(night.config_path)], steps="l", workers=1)
    got = {}
    for no_prefect in (True, False):
        red = tmp_path / ("plain" if no_prefect else "flow")
        _reduce(night.raw_dir, red, cfg, no_prefect)
        got[no_prefect] = json.loads((red / "summary.json").read_text())["settings"]
    assert got[True] == got[False]
    assert got[True]["workers"] == "argument" and str(night.config_path) in got[True].values()


@pytest.mark.parametrize("change", [{"saturation": 30000.0}, {"gain": 1.7}, {"rdnoise": 11.0}])
def test_detector_settings_rerun_the_correction(night, tmp_path, change):
    red = tmp_path / "red"
    first = _flow(night, red, steps="lbfi")
    assert set(first["run"]["task_states"]["correct"]) == {"Completed"}
    again = _flow(night, red, steps="lbfi")
    assert set(again["run"]["task_states"]["correct"]) == {"Cached"}
    bf = sorted((red / "SIMV_V").glob("*.bf.fits"))[0]
    before = fits.getheader(bf)
    changed = _flow(night, red, steps="lbfi", **change)
    assert set(changed["run"]["task_states"]["correct"]) == {"Completed"}
    assert set(changed["run"]["task_states"]["bias"]) == {"Cached"}        # what it does not feed stays cached
    key, value = next(iter(change.items()))
    card = {"saturation": "SATURATE", "gain": "GAIN", "rdnoise": "RDNOISE"}[key]
    h = fits.getheader(bf)
    assert h[card] != before[card]
    if key == "saturation":             # in corrected ADU: below the raw level once bias is removed
        assert h[card] < value
    else:
        assert h[card] == value


def _lc_equal(a_path, b_path) -> None:
    a, b = Table.read(a_path, format="ascii.ecsv"), Table.read(b_path, format="ascii.ecsv")
    assert a.colnames == b.colnames
    for c in a.colnames:
        x, y = np.asarray(a[c]), np.asarray(b[c])
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), c


@pytest.mark.parametrize("driver", ["plain", "prefect"])
def test_keep_corrected_false_removes_a_nights_corrected_frames_but_its_base_and_a_rerun_makes_them_again(
        night, tmp_path, driver):
    """An observatory's disk: the corrected frames (float32, ~2x the raw night) go once the light curve
    is written; the base frame stays for the chart; a rerun corrects the frames again and gives the same
    light curve; a run that writes no light curve removes nothing."""
    keep, lean = tmp_path / "keep", tmp_path / "lean"
    settings = {"workers": 1}

    def reduce(red, **more):
        cfg = {**settings, "field_dir": str(red / "fields"), **more}
        if driver == "plain":
            return run(night.raw_dir, red, config=load_config([night.config_path], cfg)).to_dict()
        return _flow(night, red, **cfg)

    reduce(keep)
    assert reduce(lean, steps="lbfi", keep_corrected=False)["run"].get("corrected_removed") is None
    assert len(list((lean / "SIMV_V").glob("*.bf.fits"))) == 8           # no light curve yet: all kept
    s = reduce(lean, keep_corrected=False)
    left = sorted((lean / "SIMV_V").glob("*.bf.fits"))
    base = Table.read(lean / "offset_SIMV_V.ecsv", format="ascii.ecsv").meta["base_bf"]
    assert [p.name for p in left] == [base.split("/")[-1]]
    assert s["run"]["corrected_removed"] == {"SIMV V": 7}
    assert (lean / "chart_SIMV_V.png").is_file() and len(list((lean / "SIMV_V").glob("*.cat.fits"))) == 8
    _lc_equal(keep / "lc_SIMV_V.ecsv", lean / "lc_SIMV_V.ecsv")
    again = reduce(lean, keep_corrected=False)
    assert not again["groups"][0]["error"] and again["run"]["corrected_removed"] == {"SIMV V": 7}
    _lc_equal(keep / "lc_SIMV_V.ecsv", lean / "lc_SIMV_V.ecsv")
