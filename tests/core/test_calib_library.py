"""The calibration library (qlcp.core.calib_library): masters registered, quality-checked and reused by
nights that have none, on simulated nights of one camera (``detector_seed``)."""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import sqlite3

import numpy as np
import pytest
from astropy.table import Table

from qlcp.core import calib_library as L
from qlcp.core import run
from qlcp.core.config import Config, load_config
from qlcp.core.simulate import simulate_small

CAM = dict(size=256, detector_seed=7, thick_cloud=False, n_frames=10)


def _days(why: str) -> float:
    import re

    return float(re.search(r"([0-9.]+) days", why).group(1))


def _science_only(sim, dest):
    """The night's science frames alone (a night with no calibration frames)."""
    dest.mkdir(parents=True)
    for p in sim.science_files:
        shutil.copy2(p, dest / p.name)
    return dest


def _cfg(sim, lib, **kw):
    s = sim.stars
    ids = [0, *sim.constant_ids]
    xy = [[float(s["x"][s["id"] == i][0]), float(s["y"][s["id"] == i][0])] for i in ids]
    return load_config([sim.config_path], {"workers": 1, "calib_dir": str(lib), "starxy": xy, "ind_tgt": [0],
                                           "ind_ref": list(range(1, len(xy) - 1)), "ind_chk": [len(xy) - 1],
                                           "steps": "lbfiopcd", **kw})


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    lib = root / "calib"
    a = simulate_small(root / "A", seed=61, night="2024-06-06", **CAM)
    b = simulate_small(root / "B", seed=62, night="2024-06-08", **CAM)           # has flats, to compare
    c = simulate_small(root / "C", seed=63, night="2024-06-26", **CAM)
    ra = run(a.raw_dir, root / "red" / "A", config=_cfg(a, lib))
    rb_lib = run(_science_only(b, root / "rawB" / "20240608"), root / "red" / "B", config=_cfg(b, lib))
    rc = run(_science_only(c, root / "rawC" / "20240626"), root / "red" / "C", config=_cfg(c, lib))
    rb_own = run(b.raw_dir, root / "red_own" / "B", config=_cfg(b, root / "other_lib"))
    return root, lib, (a, b, c), (ra, rb_lib, rc, rb_own)


def test_night_a_registers_its_masters(nights):
    root, lib, _, (ra, *_) = nights
    kinds = sorted((e.kind, e.band, e.status) for e in L.entries(lib))
    assert kinds == [("bias", None, "ok"), ("flat", "V", "ok")]
    assert ra.masters["bias"]["source"] == "tonight" and ra.masters["flat_V"]["source"] == "tonight"
    e = L.entries(lib, "flat")[0]
    assert (e.ny, e.nx, e.binning, e.n_frames, e.night) == (256, 256, "1,1", 5, "A") and e.path.startswith(str(lib))


def test_night_b_uses_a_masters_and_matches_its_own_flats(nights):
    root, lib, (a, b, c), (ra, rb_lib, rc, rb_own) = nights
    m = rb_lib.masters
    assert m["bias"]["source"] == "library" and m["flat_V"]["source"] == "library"
    assert "night A" in m["flat_V"]["why"] and 1.5 < _days(m["flat_V"]["why"]) < 2.5
    lc = Table.read(rb_lib.groups[0].outputs["lightcurve"], format="ascii.ecsv")
    prov = lc.meta["provenance"]
    assert prov["flat_source"] == "library" and prov["flat_path"] == m["flat_V"]["path"] and prov["flat_sha256"]
    own = Table.read(rb_own.groups[0].outputs["lightcurve"], format="ascii.ecsv")
    d = np.asarray(lc["mag_t0_a0"], float) - np.asarray(own["mag_t0_a0"], float)
    pred = next(n["predicted"] for n in own.meta["noise"] if n["role"] == "target" and n["aperture"] == 0)
    assert np.nanstd(d) < pred and abs(np.nanmedian(d)) < 3 * pred     # the same camera's flat: within noise


def test_night_c_uses_a_bias_but_no_flat_too_old(nights):
    root, lib, _, (ra, rb_lib, rc, _) = nights
    assert rc.masters["bias"]["source"] == "library" and 19.5 < _days(rc.masters["bias"]["why"]) < 20.5
    assert rc.masters["flat_V"]["source"] == "none" and rc.masters["flat_V"]["path"] is None
    s = json.loads((root / "red" / "C" / "summary.json").read_text())
    assert s["masters"]["flat_V"]["source"] == "none"


def test_bad_flat_set_rejected_and_not_selected(nights, tmp_path):
    root, lib, (a, b, c), _ = nights
    d = simulate_small(tmp_path / "D", seed=64, night="2024-06-09", flat_gradient=0.08, **CAM)
    rd = run(d.raw_dir, tmp_path / "red" / "D", config=_cfg(d, lib, steps="lbfi"))
    flats = L.entries(lib, "flat")
    bad = [e for e in flats if e.night == "D"]
    assert len(bad) == 1 and bad[0].status == "rejected"
    qc = json.loads(bad[0].qc)
    assert qc["gradient"] > 0.05 and not qc["ok"]
    assert rd.masters["flat_V"]["source"] == "library" and "night A" in rd.masters["flat_V"]["why"]
    frame = L.frame_info(d.science_files[0], "DATE-OBS")
    assert L.select(lib, "flat", "V", frame, 14.0).night == "A"        # never the rejected one
    L.set_status(lib, bad[0].id, "ok")                                  # an operator overrides QC
    assert L.select(lib, "flat", "V", frame, 14.0).night == "D"
    L.set_status(lib, bad[0].id, "rejected")


def test_qc_sees_moved_dust_and_lights_on():
    cfg = Config()
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:256, :256]
    base = 1 + 0.01 * rng.standard_normal((256, 256)) * 0
    donut = 1 - 0.04 * (np.hypot(xx - 100, yy - 120) < 12)
    prev = base * donut * (1 + 0.002 * rng.standard_normal((256, 256)))
    same = base * donut * (1 + 0.002 * rng.standard_normal((256, 256)))
    moved = base * np.roll(donut, 20, axis=1) * (1 + 0.002 * rng.standard_normal((256, 256)))
    lights = same * (1 + 0.05 * (xx / 255 - 0.5))
    assert L.qc_flat(same, prev, cfg)["ok"]
    assert not L.qc_flat(moved, prev, cfg)["ok"]
    assert not L.qc_flat(lights, prev, cfg)["ok"]


def _register_many(lib, src, start, n, q):
    from astropy.io import fits

    cfg = Config()
    try:
        for i in range(start, start + n):
            p = src / f"m{i}.fits"
            fits.PrimaryHDU(np.full((64, 64), 1000.0 + i, np.float32)).writeto(p)
            L.register(lib, p, "bias", None, [], f"n{i}", cfg)
        q.put("ok")
    except Exception as e:  # reported to the parent
        q.put(repr(e))


def test_two_processes_registering_at_once(tmp_path):
    lib = tmp_path / "lib"
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    srcs = [tmp_path / "s0", tmp_path / "s1"]
    for s in srcs:
        s.mkdir()
    procs = [ctx.Process(target=_register_many, args=(lib, srcs[k], 100 * k, 15, q)) for k in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert sorted(q.get(timeout=5) for _ in procs) == ["ok", "ok"]
    es = L.entries(lib, "bias")
    assert len(es) == 30 and len({e.sha256 for e in es}) == 30 and len({e.path for e in es}) == 30
    with sqlite3.connect(lib / L.DB_NAME) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    (lib / L.DB_NAME).unlink()
    for f in ("calib.sqlite-wal", "calib.sqlite-shm"):
        (lib / f).unlink(missing_ok=True)
    assert L.rebuild(lib) == 30 and len(L.entries(lib, "bias")) == 30         # the files hold the index


def test_an_unwritable_library_costs_the_night_nothing(tmp_path):
    sim = simulate_small(tmp_path / "n", seed=65, night="2024-06-06", **CAM)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the library's parent should be")
    s = run(sim.raw_dir, tmp_path / "red", config=_cfg(sim, blocker / "calib", steps="lbfi",
                                                      field_dir=str(blocker / "fields")))
    assert not s.failed and s.groups[0].corrected == 10
    assert s.masters["flat_V"]["source"] == "tonight"


def _open_at_once(lib, bar, q):
    bar.wait()
    try:
        with L.connect(lib) as db:
            db.execute("SELECT count(*) FROM masters").fetchone()
        q.put("ok")
    except Exception as e:  # reported to the parent
        q.put(repr(e))


def test_processes_opening_a_new_library_at_the_same_moment(tmp_path):
    """Switching a new database to WAL made SQLite answer "database is locked" at once (no busy wait)
    to a process opening it at the same moment (CI saw it in the test above; ~6 % of openings here)."""
    ctx = mp.get_context("fork")
    res = []
    for rep in range(10):
        bar, q = ctx.Barrier(6), ctx.Queue()
        ps = [ctx.Process(target=_open_at_once, args=(tmp_path / f"lib{rep}", bar, q)) for _ in range(6)]
        for p in ps:
            p.start()
        for p in ps:
            p.join(60)
        res += [q.get(timeout=5) for _ in ps]
    assert res == ["ok"] * 60


def test_a_nights_report_reads_its_own_masters_not_the_whole_library(tmp_path):
    """``entries_of_night``: the masters a night registered or used (by path), and the library's size."""
    import queue

    lib, src = tmp_path / "lib", tmp_path / "src"
    src.mkdir()
    q = queue.Queue()
    _register_many(lib, src, 0, 12, q)
    assert q.get() == "ok"
    every = L.entries(lib)
    old = next(e for e in every if e.night == "n3")
    found, total = L.entries_of_night(lib, "n7", [old.path, str(tmp_path / "not-in-the-library.fits")])
    assert total == 12
    assert sorted(e.night for e in found) == ["n3", "n7"]
    assert L.entries_of_night(lib, "n99", []) == ([], 12)
    assert L.entries_of_night(tmp_path / "none", "n7", []) == ([], 0)


def test_a_night_reduced_again_registers_no_second_copy_of_its_masters(tmp_path):
    """Remade masters carry new header cards (their provenance keys hold the inputs' mtimes): the
    library knows a master by kind, band and pixels, so a rerun adds nothing; new pixels do."""
    sim = simulate_small(tmp_path / "n", seed=66, night="2024-06-06", **CAM)
    lib = tmp_path / "calib"
    cfg = _cfg(sim, lib, steps="lbf")
    run(sim.raw_dir, tmp_path / "red" / "N", config=cfg)
    first = {(e.kind, e.band): e.id for e in L.entries(lib)}
    assert set(first) == {("bias", None), ("flat", "V")}
    shutil.rmtree(tmp_path / "red" / "N")
    run(sim.raw_dir, tmp_path / "red" / "N", config=cfg)               # the same night, reduced again
    assert {(e.kind, e.band): e.id for e in L.entries(lib)} == first
    run(sim.raw_dir, tmp_path / "red" / "N", config=_cfg(sim, lib, steps="lbf", combine_sigma=2.0))
    assert len(L.entries(lib, "flat")) == 2                             # other settings, other pixels
