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
