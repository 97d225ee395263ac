"""The worker pool: ordered results, and scripts without a __main__ guard work (as the manual's usage)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from qlcp_core.parallel import pmap
from qlcp_core.simulate import simulate_small


def test_pmap_keeps_order_and_matches_serial():
    items = list(range(23))
    assert pmap(abs, [-i for i in items], workers=2) == items
    assert pmap(abs, [-i for i in items], workers=1) == items


def test_script_without_main_guard_runs_once(tmp_path):
    sim = simulate_small(tmp_path / "n", n_frames=4, size=128, seed=51, n_bias=3, n_flats=3, thick_cloud=False)
    script = tmp_path / "reduce.py"
    script.write_text(textwrap.dedent(f"""
        import qlcp_core
        print("TOP-LEVEL", flush=True)
        qlcp_core.run({str(sim.raw_dir)!r}, {str(tmp_path / 'red')!r}, steps="lbfip",
                      ini_file=[{str(sim.config_path)!r}], workers=2, scr_log="WARNING")
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("TOP-LEVEL") == 1
    assert len(list((tmp_path / "red" / "SIMV_V").glob("*.cat.fits"))) == 4
