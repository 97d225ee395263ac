"""Every output table documents its columns (unit + description), and stars have one name everywhere.

A small simulated night is reduced by the plain core (all steps); then every
table product is read back: ECSV columns must carry a ``unit`` (``""`` =
dimensionless) and a ``description``; FITS tables a ``TUNITn`` and a ``TCOMMn``
card per column; the per-frame table artifact only known columns.  The star
labels of the stars table (``T0``, ``R1``, ``C0`` ...) must be the ones on the
finding chart, on the light-curve panels and in the summary's noise rows.
No Prefect server is needed (the artifact rows are a plain function).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from qlcp.core import run
from qlcp.core.columns import SPECS
from qlcp.core.runsetup import make_config
from qlcp.core.simulate import simulate_small


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    base = tmp_path_factory.mktemp("columns")
    sim = simulate_small(base / "sim", n_frames=8, size=192, seed=7, n_bias=2, n_flats=3, thick_cloud=False)
    red = base / "red"
    summary = run(sim.raw_dir, red, config=make_config([sim.config_path], steps="lbfiopwkcdg"))
    return red, summary.to_dict()


def _ecsv_undocumented(path) -> list[str]:
    t = Table.read(path, format="ascii.ecsv")
    return [c for c in t.colnames if t[c].unit is None or not (t[c].description or "").strip()]


def _fits_undocumented(path) -> list[str]:
    bad = []
    with fits.open(path) as hdul:
        for hdu in hdul[1:]:
            h = hdu.header
            for i in range(1, h["TFIELDS"] + 1):
                if f"TUNIT{i}" not in h or not str(h.get(f"TCOMM{i}", "")).strip():
                    bad.append(f"{hdu.name}:{h[f'TTYPE{i}']}")
    return bad


def test_every_column_has_a_unit_and_a_description(reduced):
    red, _ = reduced
    ecsv = [*red.glob("offset_*.ecsv"), *red.glob("pick_*.ecsv"), *red.glob("stars_*.ecsv"), *red.glob("lc_*.ecsv")]
    assert len(ecsv) == 4, ecsv
    for p in ecsv:
        assert _ecsv_undocumented(p) == [], p.name
    cats = [*red.glob("cata_*.fits"), *sorted(red.glob("*/*.cat.fits"))]
    assert len(cats) == 9
    for p in cats:
        assert _fits_undocumented(p) == [], p.name
    # and astropy reads the units back (the frame catalogues are written by the fast writer)
    frame_cat = Table.read(cats[1], hdu=1)
    assert str(frame_cat["X"].unit) == "pix" and str(frame_cat["MagAUTO"].unit) == "mag"
    lc = Table.read(next(red.glob("lc_*.ecsv")))
    assert str(lc["bjd_tdb"].unit) == "d" and str(lc["mag_t0_a0"].unit) == "mag"
    assert "T0" in lc["mag_t0_a0"].description


def test_frame_table_artifact_columns_are_documented(reduced):
    from qlcp.flows.artifacts import _frame_table

    red, summary = reduced
    rows = _frame_table(red, summary["groups"][0])
    assert rows and set(rows[0]) <= set(SPECS["frames_artifact"])


def test_one_star_name_everywhere(reduced):
    from qlcp.core import plotting

    red, summary = reduced
    stars = Table.read(next(red.glob("stars_*.ecsv")))
    labels = {str(lab): (float(x), float(y)) for lab, x, y in zip(stars["label"], stars["x"], stars["y"]) if lab}
    assert {"T0", "R0", "C0"} <= set(labels)
    # the finding chart: a circle per chosen star, named by the same label, at the same place
    fig = plotting.make_chart_figure(np.zeros((192, 192)), stars)
    circles = {p.get_gid().split(":")[1]: p.center for p in fig.axes[0].patches if p.get_gid()}
    assert set(circles) == set(labels)
    for lab, xy in circles.items():
        np.testing.assert_allclose(xy, labels[lab])
    # the light-curve panels: "T0  (x, y)", "C0  (x, y)"
    lc = Table.read(next(red.glob("lc_*.ecsv")))
    fig = plotting.make_lightcurve_figure(lc, stars)
    texts = " | ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    for lab in ("T0", "C0"):
        assert f"{lab}  ({labels[lab][0]:.0f}, {labels[lab][1]:.0f})" in texts
    assert "frame-to-frame scatter" in fig._suptitle.get_text()      # what sigma is
    # the summary's noise rows
    noise = json.loads((red / "summary.json").read_text())["groups"][0]["noise"]
    assert {n["label"] for n in noise} == {"T0", "C0"}
    for n in noise:
        assert stars["label"][n["star"]] == n["label"]


def test_events_artifact_gives_the_reason_its_own_column(tmp_path):
    """The events artifact's rows: a target with no event says why under ``reason`` (it was put under
    ``method``), with the same keys as a timed event's rows."""
    from qlcp.core.event_timing import timing_table, timing_settings
    from qlcp.flows.artifacts import _event_rows

    row = {"target": "SIMV", "star": 0, "event": 0, "epoch": -999999, "kind": "eclipse", "method": "model",
           "status": "full", "time_bjd_tdb": 2460000.5, "time_err_d": 1e-4, "depth": 0.1, "depth_err": 0.01,
           "duration_d": 0.02, "duration_err_d": 0.001, "n_points": 100, "rms": 0.002, "chi2_red": 1.0,
           "beta": 1.0, "snr": 40.0, "aperture": 0, "reason": ""}
    summary = [{"target": "SIMV", "star": 0, "kind": "eclipse", "status": "full", "reason": ""},
               {"target": "OTHER", "star": 1, "kind": "eclipse", "status": "none",
                "reason": "OTHER: no significant event (S/N 2.0 < 7)"}]
    t = timing_table([row], timing_settings(None), summary)
    t.write(tmp_path / "timing.ecsv", format="ascii.ecsv")
    rows = _event_rows(tmp_path / "timing.ecsv")
    assert [r["target"] for r in rows] == ["SIMV", "OTHER"]
    assert rows[1]["reason"] == "OTHER: no significant event (S/N 2.0 < 7)" and rows[1]["method"] == ""
    assert rows[0]["method"] == "model" and set(rows[0]) == set(rows[1])
