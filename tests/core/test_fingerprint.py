"""A night's fingerprint (what ``reprocess`` compares to skip it) changes exactly when its result may."""

from __future__ import annotations

import os
import shutil

import pytest

from qlcp.core import fingerprint as F
from qlcp.core.config import load_config
from qlcp.core.pipeline import run
from qlcp.core.runsetup import raw_identities
from qlcp.core.simulate import simulate_small

CAM = dict(size=128, detector_seed=7, thick_cloud=False, n_frames=3, n_bias=3, n_flats=3)


def _cfg(sim, root, **kw):
    return load_config([sim.config_path], {"workers": 1, "calib_dir": str(root / "calib"),
                                           "field_dir": str(root / "fields"), "steps": "lbf", **kw})


def _reduce(sim, red, cfg):
    s = run(sim.raw_dir, red, config=cfg)              # records the fingerprint when it ends well
    assert (red / F.FILE_NAME).is_file()
    return s


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    """Night A (its own bias and flats) and night S (science frames only: library masters)."""
    root = tmp_path_factory.mktemp("fp")
    a = simulate_small(root / "A", seed=61, night="2024-06-06", **CAM)
    s = simulate_small(root / "S0", seed=62, night="2024-06-08", **CAM)
    (root / "S").mkdir()
    for p in s.science_files:
        shutil.copy2(p, root / "S" / p.name)
    cfg = _cfg(a, root)
    sa = _reduce(a, root / "red" / "A", cfg)
    s.raw_dir = root / "S"
    ss = _reduce(s, root / "red" / "S", cfg)
    assert sa.masters["bias"]["source"] == "tonight" and ss.masters["bias"]["source"] == "library"
    return root, a, s, cfg


def test_an_unchanged_night_matches_and_a_touched_raw_file_does_not(nights):
    root, a, _, cfg = nights
    red = root / "red" / "A"
    assert F.unchanged(a.raw_dir, red, cfg) is not None
    f = sorted(a.raw_dir.rglob("*.fit*"))[0]
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        assert F.unchanged(a.raw_dir, red, cfg) is None
    finally:
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert F.unchanged(a.raw_dir, red, cfg) is not None        # the same identity again: unchanged


def test_a_setting_the_version_or_a_failed_run_change_it(nights, monkeypatch):
    root, a, _, cfg = nights
    red = root / "red" / "A"
    assert F.unchanged(a.raw_dir, red, _cfg(a, root, combine_sigma=2.0)) is None
    assert F.unchanged(a.raw_dir, red, _cfg(a, root, workers=2)) is not None    # how it runs, not what
    monkeypatch.setattr(F, "__version__", "0.0.0")
    assert F.unchanged(a.raw_dir, red, cfg) is None
    monkeypatch.undo()
    F.forget(red)                                              # what a run does when it starts
    assert F.unchanged(a.raw_dir, red, cfg) is None
    F.record(red, raw_identities(a.raw_dir.resolve()), cfg, {**_summary(red), "outcome": "failed"})
    assert F.unchanged(a.raw_dir, red, cfg) is None
    F.record(red, raw_identities(a.raw_dir.resolve()), cfg, _summary(red))
    assert F.unchanged(a.raw_dir, red, cfg) is not None


def _summary(red):
    import json

    return json.loads((red / "summary.json").read_text())


def test_a_new_master_changes_the_nights_that_could_select_it(nights):
    root, a, s, cfg = nights
    assert F.unchanged(s.raw_dir, root / "red" / "S", cfg) is not None
    e = simulate_small(root / "E", seed=63, night="2024-06-09", **CAM)
    run(e.raw_dir, root / "red" / "E", config=cfg)                     # registers E's bias and flat
    assert F.unchanged(s.raw_dir, root / "red" / "S", cfg) is None     # S uses library masters: may change
    assert F.unchanged(a.raw_dir, root / "red" / "A", cfg) is not None  # A made its own: cannot
