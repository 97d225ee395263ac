"""``reprocess`` starts no run for a night whose fingerprint is unchanged since its last good run."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from qlcp.core.simulate import simulate_small

pytestmark = pytest.mark.usefixtures("prefect_db")

CAM = dict(size=128, detector_seed=9, thick_cloud=False, n_frames=3, n_bias=3, n_flats=3)


def _states(red):
    states = json.loads((red / "summary.json").read_text())["run"]["task_states"]
    return {st for by_state in states.values() for st in by_state}


def test_reprocess_skips_unchanged_nights_and_runs_changed_or_failed_ones(tmp_path, monkeypatch):
    from qlcp.core.walk import NightWalk
    from qlcp.flows.night import reprocess

    raw, red = tmp_path / "raw", tmp_path / "red"
    for name, seed in (("20240606", 71), ("20240607", 72)):
        sim = simulate_small(tmp_path / name, seed=seed, night=f"{name[:4]}-{name[4:6]}-{name[6:]}", **CAM)
        shutil.copytree(sim.raw_dir, raw / name)
    conf = {"workers": 1, "steps": "lbf", "calib_dir": str(tmp_path / "calib"), "field_dir": str(tmp_path / "f")}
    a, b = str((raw / "20240606").resolve()), str((raw / "20240607").resolve())
    kw = dict(raw_root=str(raw), red_root=str(red), config=conf, deployment=None)
    assert reprocess(**kw) == {a: "Completed", b: "Completed"}
    assert reprocess(**kw) == {a: "Skipped", b: "Skipped"}
    assert reprocess(**kw, force=True) == {a: "Completed", b: "Completed"}
    assert _states(red / "20240606") == {"Cached"}                        # forced: run, every task cached

    f = sorted((raw / "20240607").rglob("*.fit*"))[0]
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))   # touched: the listing's key changes
    assert reprocess(**kw) == {a: "Skipped", b: "Completed"}
    assert "Completed" in _states(red / "20240607")                      # its listing at least ran again
    assert reprocess(**{**kw, "config": {**conf, "combine_sigma": 2.0}}) == {a: "Completed", b: "Completed"}
    assert reprocess(**kw) == {a: "Completed", b: "Completed"}           # the settings back: run again
    assert reprocess(**kw) == {a: "Skipped", b: "Skipped"}

    def fail(self):
        raise RuntimeError("every group failed")

    monkeypatch.setattr(NightWalk, "check", fail)
    assert reprocess(**kw, force=True) == {a: "Failed", b: "Failed"}
    monkeypatch.undo()
    assert reprocess(**kw) == {a: "Completed", b: "Completed"}           # the last run failed: run again
    assert reprocess(**kw) == {a: "Skipped", b: "Skipped"}


def test_reprocess_skips_an_unchanged_night_of_a_registry_instrument(tmp_path):
    """Issue 27: a night reduced with its instrument's settings is compared with them (not with the
    site config alone, which would run it again every time); a changed instrument file runs it again."""
    import yaml

    from qlcp.flows.night import reprocess

    raw, red, reg = tmp_path / "raw", tmp_path / "red", tmp_path / "instruments"
    sim = simulate_small(tmp_path / "n", seed=71, night="2024-06-06", **CAM)
    shutil.copytree(sim.raw_dir, raw / "20240606")
    reg.mkdir()
    inst = {"name": "sim", "match": {"header": {"TELESCOP": "XL85-SIM"}}, "settings": {"combine_sigma": 2.5}}
    (reg / "sim.yaml").write_text(yaml.safe_dump(inst))
    conf = {"workers": 1, "steps": "lb", "calib_dir": str(tmp_path / "calib"), "instruments_dir": str(reg)}
    a = str((raw / "20240606").resolve())
    kw = dict(raw_root=str(raw), red_root=str(red), config=conf, deployment=None)
    assert reprocess(**kw) == {a: "Completed"}
    assert json.loads((red / "20240606" / "summary.json").read_text())["instrument"] == "sim"
    assert reprocess(**kw) == {a: "Skipped"}
    (reg / "sim.yaml").write_text(yaml.safe_dump({**inst, "settings": {"combine_sigma": 2.0}}))
    assert reprocess(**kw) == {a: "Completed"}
