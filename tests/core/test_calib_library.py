"""The calibration library (qlcp.core.calib_library): masters registered, quality-checked and reused by
nights that have none, on simulated nights of one camera (``detector_seed``)."""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import sqlite3
from pathlib import Path

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


# ------------------------------------------------- cameras and epochs (issue #24 item 2)
def _blank_camera(sim):
    """The night's frames without INSTRUME and TELESCOP (a camera the headers do not name)."""
    from astropy.io import fits

    for p in sorted(sim.raw_dir.rglob("*.fit")):
        with fits.open(p, mode="update") as h:
            h[0].header["INSTRUME"] = ""
            h[0].header["TELESCOP"] = ""


def _quick(sim, lib, steps="lb", **kw):
    return load_config([sim.config_path], {"workers": 1, "calib_dir": str(lib), "steps": steps, **kw})


def test_real_xo1_and_a_simulated_camera_of_its_size_each_use_their_own_bias(xo1_dir, tmp_path):
    """Issue #24: under one output root, the XO-1 night (512x512, bias ~1360 ADU) and a simulated camera
    of the same size with no INSTRUME/TELESCOP, a few nights later (bias ~1000 ADU): each uses its own
    bias; a science-only night of each camera is offered only its own camera's."""
    lib = tmp_path / "calib"
    x = run(xo1_dir, tmp_path / "red" / "20250601", config=Config(steps="lb", workers=1, calib_dir=str(lib)))
    sim = simulate_small(tmp_path / "S", seed=81, night="2025-06-05", size=512, n_frames=2, thick_cloud=False)
    _blank_camera(sim)
    s = run(sim.raw_dir, tmp_path / "red" / "20250605", config=_quick(sim, lib))
    assert x.masters["bias"]["source"] == "tonight" and s.masters["bias"]["source"] == "tonight"
    biases = L.entries(lib, "bias")
    assert [e.status for e in biases] == ["ok", "ok"] and len({e.camera for e in biases}) == 2
    levels = {e.night: e.level for e in biases}
    assert 1350 < levels["20250601"] < 1370 and 990 < levels["20250605"] < 1010
    sci = _science_only(sim, tmp_path / "rawS2" / "20250606")
    s2 = run(sci, tmp_path / "red" / "20250606", config=_quick(sim, lib))
    assert s2.masters["bias"]["source"] == "library" and "night 20250605" in s2.masters["bias"]["why"]
    xsci = tmp_path / "rawX2" / "20250602"
    xsci.mkdir(parents=True)
    for p in sorted(xo1_dir.glob("XO1-b_*.fits"))[:2]:
        shutil.copy2(p, xsci / p.name)
    x2 = run(xsci, tmp_path / "red" / "20250602", config=Config(steps="lb", workers=1, calib_dir=str(lib)))
    assert x2.masters["bias"]["source"] == "library" and "night 20250601" in x2.masters["bias"]["why"]


def test_a_camera_level_change_is_a_new_epoch_and_the_night_uses_its_own_master(tmp_path):
    """One camera (detector_seed, no INSTRUME/TELESCOP) whose bias level moves from 1000 to 1400 ADU
    between nights A and B: B's bias starts epoch 2 (reported in masters.json and the summary) and B
    uses it; a later night without calibration frames is offered only epoch 2's masters, a night
    between A and B only epoch 1's."""
    lib = tmp_path / "calib"
    cam = dict(size=192, detector_seed=11, thick_cloud=False, n_frames=3)
    a = simulate_small(tmp_path / "A", seed=91, night="2024-06-06", **cam)
    b = simulate_small(tmp_path / "B", seed=92, night="2024-06-10", bias_level=1400.0, **cam)
    c = simulate_small(tmp_path / "C", seed=93, night="2024-06-12", bias_level=1400.0, **cam)
    d = simulate_small(tmp_path / "D", seed=94, night="2024-06-08", **cam)
    for sim in (a, b, c, d):
        _blank_camera(sim)
    run(a.raw_dir, tmp_path / "red" / "A", config=_quick(a, lib, "lbf"))
    sb = run(b.raw_dir, tmp_path / "red" / "B", config=_quick(b, lib, "lbfi"))
    mb = sb.masters["bias"]
    assert mb["source"] == "tonight" and mb["epoch"] == 2 and "new epoch 2" in mb["epoch_change"]
    assert "level_shift_adu" in mb["epoch_change"]
    on_disk = json.loads((tmp_path / "red" / "B" / "masters.json").read_text())
    assert on_disk["bias"]["epoch"] == 2 and "new epoch 2" in on_disk["bias"]["epoch_change"]
    summary = json.loads((tmp_path / "red" / "B" / "summary.json").read_text())
    assert "new epoch 2" in summary["masters"]["bias"]["epoch_change"] and not summary["degraded"]
    assert sb.masters["flat_V"]["source"] == "tonight" and sb.masters["flat_V"]["epoch"] == 2
    got = {(e.kind, e.night): (e.status, e.epoch) for e in L.entries(lib)}
    assert got == {("bias", "A"): ("ok", 1), ("flat", "A"): ("ok", 1),
                   ("bias", "B"): ("ok", 2), ("flat", "B"): ("ok", 2)}
    sc = run(_science_only(c, tmp_path / "rawC" / "20240612"), tmp_path / "red" / "C", config=_quick(c, lib, "lbf"))
    assert "night B" in sc.masters["bias"]["why"] and "night B" in sc.masters["flat_V"]["why"]
    assert sc.masters["bias"]["epoch"] == 2
    sd = run(_science_only(d, tmp_path / "rawD" / "20240608"), tmp_path / "red" / "D", config=_quick(d, lib, "lbf"))
    assert "night A" in sd.masters["bias"]["why"] and "night A" in sd.masters["flat_V"]["why"]


def test_a_library_db_of_the_old_schema_is_migrated(tmp_path):
    """A calib.sqlite made before cameras and epochs: its masters become epoch 1 of their camera."""
    lib = tmp_path / "lib"
    lib.mkdir()
    with sqlite3.connect(lib / L.DB_NAME) as db:
        db.execute("""CREATE TABLE masters (id INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT UNIQUE NOT NULL,
            path TEXT NOT NULL, kind TEXT NOT NULL, band TEXT, ny INTEGER, nx INTEGER, binning TEXT, instrument TEXT,
            telescope TEXT, exptime REAL, date_start TEXT, date_end TEXT, jd_mid REAL, n_frames INTEGER, level REAL,
            noise REAL, night TEXT, status TEXT NOT NULL DEFAULT 'ok', qc TEXT, registered TEXT)""")
        db.execute("INSERT INTO masters (sha256, path, kind, ny, nx, binning, instrument, telescope, jd_mid, "
                   "n_frames, level, noise, night) VALUES ('x', '/nowhere.fits', 'bias', 64, 32, '1,1', 'CAM', '', "
                   "2460000.5, 5, 1000, 3, 'old')")
    (e,) = L.entries(lib)
    assert (e.camera, e.epoch) == ("64x32|1,1|CAM|", 1)


def test_a_library_of_the_last_schema_gains_the_instrument_name_and_keeps_its_masters(tmp_path):
    """Issue 27: a calib.sqlite made before the instrument registry (cameras and epochs, no
    instrument_name) opens and keeps its keys; a master registered for a named instrument is keyed by
    that name too, and offered only to a night of that instrument, never to the same camera unnamed."""
    lib, src = tmp_path / "lib", tmp_path / "src"
    lib.mkdir()
    with sqlite3.connect(lib / L.DB_NAME) as db:
        db.execute("""CREATE TABLE masters (id INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT UNIQUE NOT NULL,
            path TEXT NOT NULL, kind TEXT NOT NULL, band TEXT, ny INTEGER, nx INTEGER, binning TEXT, instrument TEXT,
            telescope TEXT, exptime REAL, date_start TEXT, date_end TEXT, jd_mid REAL, n_frames INTEGER, level REAL,
            noise REAL, night TEXT, status TEXT NOT NULL DEFAULT 'ok', qc TEXT, registered TEXT,
            camera TEXT, epoch INTEGER NOT NULL DEFAULT 1, size INTEGER, mtime_ns INTEGER)""")
        db.execute("INSERT INTO masters (sha256, path, kind, ny, nx, binning, instrument, telescope, jd_mid, "
                   "n_frames, level, noise, night, camera) VALUES ('x', '/nowhere.fits', 'bias', 64, 64, '1,1', "
                   "'CAM', 'T', 2460000.5, 5, 1000, 3, 'old', '64x64|1,1|CAM|T')")
    (old,) = L.entries(lib)
    assert (old.camera, old.instrument_name) == ("64x64|1,1|CAM|T", None)
    m, frames = _bias_master(src, "a", 1000, "2024-06-01")
    named = L.register(lib, m, "bias", None, frames, "A", Config(instrument="cam-a"))
    assert (named.camera, named.instrument_name) == ("64x64|1,1|CAM|T|cam-a", "cam-a")
    frame = L.frame_info(_bias_master(src, "b", 1000, "2024-06-02")[1][0], "DATE-OBS", "cam-a")
    frame["floor"] = float("nan")
    assert L.select(lib, "bias", None, frame, 30).id == named.id
    unnamed = {**frame, "instrument_name": None, "camera": None}
    assert L.select(lib, "bias", None, unnamed, 30) is None          # the same camera, unnamed: not offered
    L.rebuild(lib)
    assert {e.instrument_name for e in L.entries(lib)} == {"cam-a"}  # the copy's CALINSNM card read back


# ------------------------------------------- a library damaged on disk (R4, R5, R12)
def _bias_master(src, name, level, date, n=3):
    """A 64x64 master bias of ``level`` and its ``n`` input frames dated ``date`` (one camera)."""
    from astropy.io import fits

    src.mkdir(exist_ok=True)
    frames = []
    for i in range(n):
        p = src / f"{name}-in{i}.fits"
        fits.PrimaryHDU(np.zeros((64, 64), np.float32),
                        fits.Header({"DATE-OBS": f"{date}T20:00:0{i}", "INSTRUME": "CAM", "TELESCOP": "T"})).writeto(p)
        frames.append(p)
    m = src / f"{name}.fits"
    rng = np.random.default_rng(abs(hash(name)) % 1000)
    fits.PrimaryHDU((level + rng.normal(0, 2, (64, 64))).astype(np.float32)).writeto(m)
    return m, frames


def _reg(lib, m, frames, night, cfg):
    return L.register(lib, m, "bias", None, frames, night, cfg)


def test_a_library_master_deleted_from_disk_is_skipped_and_rebuild_drops_it(tmp_path):
    """R4: the nearest master's file is gone: the next one is selected, the skip said; rebuild drops it."""
    lib, src, cfg = tmp_path / "lib", tmp_path / "src", Config()
    ea = _reg(lib, *_bias_master(src, "a", 1000, "2024-06-01"), "A", cfg)
    eb = _reg(lib, *_bias_master(src, "b", 1001, "2024-06-03"), "B", cfg)
    assert (ea.status, eb.status, ea.epoch, eb.epoch) == ("ok", "ok", 1, 1)
    frame = {"ny": 64, "nx": 64, "binning": "1,1", "instrument": "CAM", "telescope": "T", "jd_mid": eb.jd_mid - 0.1}
    assert L.select(lib, "bias", None, frame, 30).id == eb.id
    Path(eb.path).unlink()
    notes: list = []
    assert L.select(lib, "bias", None, frame, 30, notes=notes).id == ea.id
    assert len(notes) == 1 and "file missing" in notes[0] and "qlcp calib rebuild" in notes[0]
    dropped: list = []
    assert L.rebuild(lib, dropped) == 0 and [e.id for e in dropped] == [eb.id]
    assert [e.id for e in L.entries(lib)] == [ea.id]


def test_a_library_master_changed_on_disk_is_refused(tmp_path, monkeypatch):
    """R5: pixels changed after registration: refused with one line; an unchanged file is not hashed
    again (size and mtime memo)."""
    from astropy.io import fits

    lib, src, cfg = tmp_path / "lib", tmp_path / "src", Config()
    ea = _reg(lib, *_bias_master(src, "a", 1000, "2024-06-01"), "A", cfg)
    frame = {"ny": 64, "nx": 64, "binning": "1,1", "instrument": "CAM", "telescope": "T", "jd_mid": ea.jd_mid + 1}
    calls = []
    real = L._pixel_sha256
    monkeypatch.setattr(L, "_pixel_sha256", lambda *a: calls.append(a) or real(*a))
    assert L.select(lib, "bias", None, frame, 30).id == ea.id and calls == []      # the memo: no hashing
    with fits.open(ea.path, mode="update") as h:
        h[0].data[10, 10] += 5.0
    notes: list = []
    assert L.select(lib, "bias", None, frame, 30, notes=notes) is None and len(calls) == 1
    assert len(notes) == 1 and "changed on disk since it was registered" in notes[0] and "\n" not in notes[0]


def _corrupt(lib):
    db = lib / L.DB_NAME
    data = db.read_bytes()
    db.write_bytes(data[:100] + b"\xff" * 200 + data[300:len(data) // 2])     # a damaged, truncated index
    for f in ("calib.sqlite-wal", "calib.sqlite-shm"):
        (lib / f).unlink(missing_ok=True)


def test_a_corrupt_library_index_costs_the_night_only_the_library(tmp_path, capsys):
    """R12: calib.sqlite damaged: a night with its own calibration frames reduces with tonight's masters,
    degraded with one line naming the file and `qlcp calib rebuild` (exit 3, not 70); `qlcp calib list`
    says the same in one line, exit 2; rebuild sets the index aside and indexes the files again."""
    from qlcp.deployments.cli import main

    lib = tmp_path / "calib"
    a = simulate_small(tmp_path / "A", seed=95, night="2024-06-06", size=128, n_frames=3, thick_cloud=False)
    b = simulate_small(tmp_path / "B", seed=96, night="2024-06-07", size=128, n_frames=3, thick_cloud=False)
    run(a.raw_dir, tmp_path / "red" / "A", config=_quick(a, lib, "lbf"))
    _corrupt(lib)
    capsys.readouterr()
    rc = main(["run", str(b.raw_dir), str(tmp_path / "red" / "B"), "--no-prefect", "--config", str(b.config_path),
               "--set", "steps=lbfi", "--set", f"calib_dir={lib}", "--set", "workers=1"])
    s = json.loads((tmp_path / "red" / "B" / "summary.json").read_text())
    assert rc == 3 and s["masters"]["bias"]["source"] == "tonight" and s["masters"]["flat_V"]["source"] == "tonight"
    assert s["groups"][0]["corrected"] == 3
    assert len(s["degraded"]) == 1 and str(lib / L.DB_NAME) in s["degraded"][0]
    assert "corrupt or truncated" in s["degraded"][0] and "qlcp calib rebuild" in s["degraded"][0]
    capsys.readouterr()
    assert main(["calib", "list", "--dir", str(lib)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(lib / L.DB_NAME) in err and "qlcp calib rebuild" in err
    assert main(["calib", "rebuild", "--dir", str(lib)]) == 0
    assert sorted(e.kind for e in L.entries(lib)) == ["bias", "flat"]
    assert list(lib.glob(f"{L.DB_NAME}.corrupt-*"))
