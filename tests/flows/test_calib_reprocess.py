"""Registering a better master and reprocessing re-corrects exactly the nights that now select it."""

from __future__ import annotations

import json
import shutil

import pytest

from qlcp.core import calib_library as L
from qlcp.core.simulate import simulate_small

pytestmark = pytest.mark.usefixtures("prefect_db")

CAM = dict(size=192, detector_seed=9, thick_cloud=False, n_frames=6)


def _science_only(sim, dest):
    dest.mkdir(parents=True)
    for p in sim.science_files:
        shutil.copy2(p, dest / p.name)
    return str(dest)


def test_new_flat_reprocesses_only_the_nights_that_select_it(tmp_path):
    from qlcp.flows.night import process_night, reprocess

    lib = tmp_path / "calib"
    conf = {"workers": 1, "calib_dir": str(lib), "steps": "lbfi", "field_dir": str(tmp_path / "fields")}
    a = simulate_small(tmp_path / "A", seed=71, night="2024-06-06", **CAM)
    b = simulate_small(tmp_path / "B", seed=72, night="2024-06-08", **CAM)
    c = simulate_small(tmp_path / "C", seed=73, night="2024-06-18", **CAM)
    e = simulate_small(tmp_path / "E", seed=74, night="2024-06-17", **CAM)
    raw = tmp_path / "raw"
    nights = [_science_only(b, raw / "20240608"), _science_only(c, raw / "20240618")]
    red = tmp_path / "red"
    process_night(raw_dir=str(a.raw_dir), red_dir=str(red / "A"), config=conf)
    reprocess(nights=nights, red_root=str(red), config=conf, deployment=None)
    used = {n: json.loads((red / n / "summary.json").read_text())["masters"]["flat_V"] for n in ("20240608", "20240618")}
    assert all(m["source"] == "library" and "night A" in m["why"] for m in used.values())

    process_night(raw_dir=str(e.raw_dir), red_dir=str(red / "E"), config=conf)      # registers E's flat (day 11)
    assert sorted(x.night for x in L.entries(lib, "flat", "V", "ok")) == ["A", "E"]
    reprocess(nights=nights, red_root=str(red), config=conf, deployment=None)
    s_b = json.loads((red / "20240608" / "summary.json").read_text())
    s_c = json.loads((red / "20240618" / "summary.json").read_text())
    assert "night A" in s_b["masters"]["flat_V"]["why"] and "night E" in s_c["masters"]["flat_V"]["why"]
    assert set(s_b["run"]["task_states"]["correct"]) == {"Cached"}           # still A's flat: nothing to redo
    assert set(s_c["run"]["task_states"]["correct"]) == {"Completed"}        # E's flat now: re-corrected
    # the night's report lists the library masters it used, not the whole library
    from prefect.artifacts import Artifact

    art = Artifact.get("night-20240618-calib")
    rows = json.loads(art.data) if isinstance(art.data, str) else art.data
    assert sorted((r["kind"], r["night"]) for r in rows) == [("bias", "E"), ("flat", "E")]
    assert len(L.entries(lib)) == 4                            # A's two masters are not in the report


def _blank_camera(sim):
    from astropy.io import fits

    for p in sorted(sim.raw_dir.rglob("*.fit")):
        with fits.open(p, mode="update") as h:
            h[0].header["INSTRUME"] = ""
            h[0].header["TELESCOP"] = ""


def test_flow_reports_a_new_epoch_and_goes_on_without_a_corrupt_library(tmp_path):
    """Through the Prefect flow: a camera's bias level change (1000 -> 1400 ADU) is epoch 2, used by its
    night and shown in summary.json and the night's calib artifact; then a damaged calib.sqlite: the
    next night completes with tonight's masters, degraded with the one line the plain driver gives (R12)."""
    from prefect.artifacts import Artifact

    from qlcp.flows.night import process_night

    lib = tmp_path / "calib"
    conf = {"workers": 1, "calib_dir": str(lib), "steps": "lbfi", "field_dir": str(tmp_path / "fields")}
    cam = dict(size=128, detector_seed=12, thick_cloud=False, n_frames=3)
    a = simulate_small(tmp_path / "A", seed=75, night="2024-06-06", **cam)
    b = simulate_small(tmp_path / "B", seed=76, night="2024-06-09", bias_level=1400.0, **cam)
    c = simulate_small(tmp_path / "C", seed=77, night="2024-06-10", bias_level=1400.0, **cam)
    for sim in (a, b, c):
        _blank_camera(sim)
    red = tmp_path / "red"
    process_night(raw_dir=str(a.raw_dir), red_dir=str(red / "20240606"), config=conf)
    s = process_night(raw_dir=str(b.raw_dir), red_dir=str(red / "20240609"), config=conf)
    assert s["masters"]["bias"]["source"] == "tonight" and s["masters"]["bias"]["epoch"] == 2
    assert "new epoch 2" in s["masters"]["bias"]["epoch_change"] and not s["degraded"]
    art = Artifact.get("night-20240609-calib")
    rows = json.loads(art.data) if isinstance(art.data, str) else art.data
    assert {(r["kind"], r["epoch"]) for r in rows} == {("bias", 2), ("flat", 2)}
    assert "NEW EPOCH" in art.description

    db = lib / L.DB_NAME
    data = db.read_bytes()
    db.write_bytes(data[:100] + b"\xff" * 200 + data[300:len(data) // 2])
    for f in ("calib.sqlite-wal", "calib.sqlite-shm"):
        (lib / f).unlink(missing_ok=True)
    s = process_night(raw_dir=str(c.raw_dir), red_dir=str(red / "20240610"), config=conf)
    assert s["masters"]["bias"]["source"] == "tonight" and s["groups"][0]["corrected"] == 3
    assert len(s["degraded"]) == 1 and str(db) in s["degraded"][0] and "qlcp calib rebuild" in s["degraded"][0]
