"""The worker pool: ordered results, and scripts without a __main__ guard work (as the manual's usage)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

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
    from qlcp.core.steps import _guided_chunks

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
