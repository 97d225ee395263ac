"""The worker pool: ordered results, and scripts without a __main__ guard work (as the manual's usage)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qlcp.core.parallel import pmap
from qlcp.core.simulate import simulate_small


def test_pmap_keeps_order_and_matches_serial():
    items = list(range(23))
    assert pmap(abs, [-i for i in items], workers=2) == items
    assert pmap(abs, [-i for i in items], workers=1) == items


def test_script_without_main_guard_runs_once(tmp_path):
    sim = simulate_small(tmp_path / "n", n_frames=4, size=128, seed=51, n_bias=3, n_flats=3, thick_cloud=False)
    script = tmp_path / "reduce.py"
    script.write_text(textwrap.dedent(f"""
        import qlcp.core
        print("TOP-LEVEL", flush=True)
        qlcp.core.run({str(sim.raw_dir)!r}, {str(tmp_path / 'red')!r}, steps="lbfip",
                      ini_file=[{str(sim.config_path)!r}], workers=2, scr_log="WARNING")
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("TOP-LEVEL") == 1
    assert len(list((tmp_path / "red" / "SIMV_V").glob("*.cat.fits"))) == 4


def _cat_rows(path):
    from astropy.io import fits

    with fits.open(path) as h:
        return h[1].data.copy(), {k: v for k, v in h[1].header.items() if k not in ("QLCPKEY",)}


def test_i_and_p_in_one_pass_equal_the_steps_apart(tmp_path):
    """``lbfip`` corrects and measures each frame in one job; the files are those of ``lbfi`` then ``p``,
    and each step's log keeps its own records."""
    import numpy as np
    from astropy.io import fits

    from qlcp.core import run

    sim = simulate_small(tmp_path / "n", n_frames=7, size=192, seed=52, n_bias=3, n_flats=3, thick_cloud=False)
    one, two = tmp_path / "one", tmp_path / "two"
    run(sim.raw_dir, one, steps="lbfip", ini_file=[sim.config_path], workers=2, scr_log="WARNING")
    run(sim.raw_dir, two, steps="lbfi", ini_file=[sim.config_path], workers=2, scr_log="WARNING")
    run(sim.raw_dir, two, steps="p", ini_file=[sim.config_path], workers=2, scr_log="WARNING")
    cats = sorted((one / "SIMV_V").glob("*.cat.fits"))
    assert len(cats) == 7
    for c in cats:
        a, ha = _cat_rows(c)
        b, hb = _cat_rows(two / "SIMV_V" / c.name)
        assert ha == hb
        for name in a.names:
            np.testing.assert_array_equal(a[name], b[name])
        bf = c.name.replace(".cat.fits", ".bf.fits")
        np.testing.assert_array_equal(fits.getdata(one / "SIMV_V" / bf), fits.getdata(two / "SIMV_V" / bf))
    i_log, p_log = (one / "log" / "i.log").read_text(), (one / "log" / "p.log").read_text()
    assert "frames corrected" in i_log and "frames corrected" not in p_log
    assert "photometry of 7 frames" in p_log


def test_guided_chunks_cover_the_items_in_order():
    from qlcp.core.steps.correct import _guided_chunks

    for n in (0, 1, 5, 200, 1001):
        for w in (1, 2, 8):
            ch = _guided_chunks(list(range(n)), w)
            assert [x for c in ch for x in c] == list(range(n))
            sizes = [len(c) for c in ch]
            assert sizes == sorted(sizes, reverse=True) and all(s >= 1 for s in sizes)
            assert max(sizes, default=0) <= 40
    assert len(_guided_chunks(list(range(200)), 2)) < 40      # few jobs, not one per frame


def test_start_method_forks_only_a_process_without_threads():
    code = textwrap.dedent("""
        import threading, time
        from qlcp.core.parallel import start_method
        print(start_method())
        threading.Thread(target=time.sleep, args=(1,), daemon=True).start()
        print(start_method())
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["fork", "forkserver"]


def _slow_square(x):
    """A job for the pool tests (module-level, so workers can import it)."""
    import time

    time.sleep(0.02)
    return x * x


def _span(_):
    """A job reporting when it ran (for the concurrency check)."""
    import time

    t0 = time.monotonic()
    time.sleep(0.15)
    return t0, time.monotonic()


def test_pmap_from_two_threads_with_different_sizes_shares_one_pool():
    """A Prefect flow runs two tasks at a time, each calling pmap: a 40-item and a 3-item map at
    once (workers=4) both finish with their own results, on one pool that is neither resized nor
    rebuilt.  Runs in a fresh interpreter (its own pool); a hang fails at the join's timeout."""
    code = textwrap.dedent("""
        import json, threading
        from qlcp.core import parallel
        from tests.core.test_parallel import _slow_square, _span

        results, errors = {}, []

        def call(name, n, workers):
            try:
                for _ in range(3):
                    r = parallel.pmap(_slow_square, range(n), workers=workers)
                    assert r == [x * x for x in range(n)], (name, r)
                results[name] = r
            except BaseException as e:
                errors.append(f"{name}: {type(e).__name__}: {e}")

        parallel.pmap(_slow_square, range(4), workers=4)       # the pool exists, as after warm()
        pool = parallel._pool
        threads = [threading.Thread(target=call, args=(name, n, w), daemon=True)
                   for name, n, w in (("big", 40, 4), ("small", 3, 4), ("two", 9, 2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
        spans = parallel.pmap(_span, range(6), workers=2)       # a 2-worker call on the 4-process pool
        most = max(sum(a <= s < b for a, b in spans) for s, _ in spans)     # running at each job's start
        print(json.dumps({"alive": [t.name for t in threads if t.is_alive()], "errors": errors,
                          "done": sorted(results), "same_pool": parallel._pool is pool,
                          "size": parallel._pool_size, "most_at_once": most}), flush=True)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                       env=dict(os.environ, PYTHONPATH=os.getcwd()))
    import json

    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert lines, (r.returncode, r.stderr[-2000:])
    res = json.loads(lines[-1])
    assert res["alive"] == [] and res["errors"] == [], res          # no call hung or failed
    assert res["done"] == ["big", "small", "two"]
    assert res["same_pool"] and res["size"] == 4                    # one pool, sized once
    assert res["most_at_once"] == 2                                 # a call keeps to its own workers


def test_pmap_error_cancels_only_its_own_queued_jobs():
    """A failing job raises in its caller; a concurrent caller's jobs still complete."""
    import threading

    from qlcp.core import parallel

    out, errs = {}, {}

    def call(name, fn, items):
        try:
            out[name] = parallel.pmap(fn, items, workers=2)
        except Exception as e:
            errs[name] = type(e).__name__

    ts = [threading.Thread(target=call, args=("bad", int, ["1", "x", "3", "4", "5"]), daemon=True),
          threading.Thread(target=call, args=("good", _slow_square, list(range(12))), daemon=True)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in ts)
    assert errs == {"bad": "ValueError"}
    assert out["good"] == [x * x for x in range(12)]


def test_the_reference_frame_is_corrected_once_and_counted_once_in_chunks(tmp_path, caplog):
    """With EXIST_OVER the group's reference frame used to be corrected twice ("N+1 frames corrected,
    -1 kept"); a chunk that does not hold it must not rewrite it when it is current."""
    import logging

    from qlcp.core import run
    from qlcp.core.runsetup import make_config
    from qlcp.core.steps.photometry import correct_photometry_step

    sim = simulate_small(tmp_path / "n", n_frames=8, size=160, seed=53, n_bias=3, n_flats=3, thick_cloud=False)
    red = tmp_path / "red"
    run(sim.raw_dir, red, steps="lbf", ini_file=[sim.config_path], workers=2, scr_log="WARNING")
    cfg = make_config([sim.config_path], mode=["EXIST_OVER", "MISS_SKIP"], workers=2, scr_log="WARNING")
    raws = sorted(p for p in sim.raw_dir.iterdir() if "SIM" in p.name)
    assert len(raws) == 8
    bias, flat = str(red / "bias.fits"), str(red / "flat_V.fits")
    with caplog.at_level(logging.INFO, logger="qlcp"):
        res, phot, _ = correct_photometry_step(red, cfg, "SIMV", "V", raws[:4], bias, flat, coord_file=raws[0])
    assert "4 frames corrected, 0 kept from before" in caplog.text
    assert len(res["outputs"]) == 4 and len(phot) == 4
    ref_bf = next((red / "SIMV_V").glob(raws[0].stem + "*.bf.fits"))
    before = ref_bf.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="qlcp"):
        res, phot, _ = correct_photometry_step(red, cfg, "SIMV", "V", raws[4:], bias, flat, coord_file=raws[0])
    assert "4 frames corrected, 0 kept from before" in caplog.text
    assert ref_bf.stat().st_mtime_ns == before          # the other chunk's frame, current: not rewritten
    assert sorted(Path(o).name for o in res["outputs"]) == sorted(
        p.name for p in (red / "SIMV_V").glob("*.bf.fits") if not p.name.startswith(raws[0].stem)
        and any(p.name.startswith(r.stem) for r in raws[4:]))


def test_worker_records_below_the_parent_loggers_level_reach_no_handler():
    """The pool hands a worker's record to the parent's logger only at that logger's level
    (a flow's console and API handlers used to get every DEBUG record of every frame)."""
    import logging

    from qlcp.core.parallel import _Dispatch

    got = []

    class Keep(logging.Handler):
        def emit(self, record):
            got.append(record.getMessage())

    lg = logging.getLogger("qlcp.test_dispatch")
    h = Keep()
    lg.addHandler(h)
    try:
        lg.setLevel(logging.INFO)
        for level, msg in ((logging.DEBUG, "debug"), (logging.INFO, "info"), (logging.WARNING, "warn")):
            _Dispatch().emit(logging.LogRecord(lg.name, level, __file__, 1, msg, None, None))
        assert got == ["info", "warn"]
        lg.setLevel(logging.DEBUG)
        _Dispatch().emit(logging.LogRecord(lg.name, logging.DEBUG, __file__, 1, "debug2", None, None))
        assert got[-1] == "debug2"
    finally:
        lg.removeHandler(h)


def test_default_workers_follows_qlcp_workers(monkeypatch):
    """``QLCP_WORKERS`` (a host running several nights at once) sets the frame workers of a run whose
    config does not; a bad value is a one-line ConfigError naming the variable."""
    from qlcp.core.errors import ConfigError
    from qlcp.core.parallel import default_workers

    monkeypatch.delenv("QLCP_WORKERS", raising=False)
    cpus = default_workers()
    monkeypatch.setenv("QLCP_WORKERS", "1")
    assert default_workers() == 1
    monkeypatch.setenv("QLCP_WORKERS", str(cpus + 3))
    assert default_workers() == cpus + 3
    monkeypatch.setenv("QLCP_WORKERS", "two")
    with pytest.raises(ConfigError, match="QLCP_WORKERS"):
        default_workers()
