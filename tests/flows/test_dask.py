"""Scale-out: the night flow on Prefect's Dask task runner gives the same light curves."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from qlcp.core.simulate import simulate_small

pytestmark = pytest.mark.usefixtures("prefect_db")


def test_dask_runner_two_workers_identical_light_curves(tmp_path):
    pytest.importorskip("prefect_dask")
    from qlcp.flows.night import night_flow

    sim = simulate_small(tmp_path / "n", n_frames=8, size=192, seed=31, n_bias=3, n_flats=3, thick_cloud=False)
    kw = dict(raw_dir=str(sim.raw_dir), config_files=[str(sim.config_path)], chunk=3)
    night_flow("thread")(red_dir=str(tmp_path / "thread"), **kw)
    b = night_flow("dask", workers=2)(red_dir=str(tmp_path / "dask"), **kw)
    assert b["run"]["task_states"]["correct-photometry"] == {"Completed": 3}   # 8 frames in chunks of 3, on Dask
    ta = Table.read(tmp_path / "thread" / "lc_SIMV_V.ecsv")
    tb = Table.read(tmp_path / "dask" / "lc_SIMV_V.ecsv")
    assert ta.colnames == tb.colnames and len(ta) == 8
    for c in ta.colnames:
        assert np.array_equal(np.asarray(ta[c]), np.asarray(tb[c]), equal_nan=ta[c].dtype.kind == "f"), c
