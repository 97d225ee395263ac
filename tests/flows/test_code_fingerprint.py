"""Caches know the code: a change in photometry, in an installed copy, re-runs photometry and what
follows it through the night flow, and leaves the listing, the masters and the corrected frames alone."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from qlcp.core.simulate import simulate_small

from ..installed_copy import installed_copy, source_defining

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.usefixtures("prefect_db")]

#: the blocks before photometry, and those that read its catalogues (directly or not)
BEFORE = {"list-night", "bias", "dark", "flat"}
AFTER = {"correct-photometry", "offsets", "astrometry", "select-stars", "lightcurve", "timing"}

RUN = """
import json, sys
import qlcp.core
from qlcp.flows.night import process_night
st = process_night(raw_dir=sys.argv[1], red_dir=sys.argv[2], config_files=[sys.argv[3]], campaigns=False,
                  return_state=True)
print(json.dumps({"flow_run": str(st.state_details.flow_run_id), "core": qlcp.core.__file__,
                  "completed": st.is_completed()}))
"""


def _run(env: dict, cwd: Path, raw: Path, red: Path, config: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", RUN, str(raw), str(red), str(config)], env=env, cwd=cwd,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["completed"] and out["core"].startswith(str(cwd)), out      # the copy ran, to its end
    return out


def _task_states(flow_run_id: str) -> dict[str, set[str]]:
    """Task name -> the states of its runs in the flow run (from the Prefect API)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    async def read():
        async with get_client() as c:
            return await c.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))

    states: dict[str, set[str]] = {}
    for tr in asyncio.run(read()):
        states.setdefault(tr.name.rsplit("-", 1)[0], set()).add(tr.state.name)
    return states


def test_a_photometry_change_reruns_photometry_and_what_follows_only(tmp_path):
    from prefect.settings import get_current_settings

    sim = simulate_small(tmp_path / "sim", n_frames=8, size=256, seed=31, n_bias=3, n_flats=3, flat_bad=False,
                         thick_cloud=False)
    env = installed_copy(tmp_path / "copy")
    env["PREFECT_API_URL"] = str(get_current_settings().api.url)            # the test harness's server
    core = tmp_path / "copy" / "site" / "qlcp" / "core"
    red = tmp_path / "red"
    args = (env, tmp_path / "copy", sim.raw_dir, red, sim.config_path)

    first = _task_states(_run(*args)["flow_run"])
    assert {s for st in first.values() for s in st} == {"Completed"}, first
    again = _task_states(_run(*args)["flow_run"])
    assert again.keys() == first.keys() and {s for st in again.values() for s in st} == {"Cached"}, again

    corrected = {p: p.stat().st_mtime_ns for p in red.rglob("*.bf.fits")}
    masters = {p: p.stat().st_mtime_ns for p in red.glob("*.fits") if p.name.startswith(("bias", "dark", "flat"))}
    assert corrected and masters
    src = source_defining(core, "photometry_file")          # photometry.py, or its package's module
    src.write_text(src.read_text() + "\n\ndef _unused_after_upgrade():\n    return None\n")

    after = _task_states(_run(*args)["flow_run"])
    rerun = {t for t, st in after.items() if st != {"Cached"}}
    cached = {t for t, st in after.items() if st == {"Cached"}}
    assert {"correct-photometry", "offsets", "select-stars", "lightcurve"} <= rerun, after
    assert rerun <= AFTER, f"re-ran before photometry: {rerun - AFTER}"
    assert BEFORE & after.keys() <= cached and {"list-night", "bias", "flat"} <= cached, after
    # the fused i+p task re-ran, but its corrected frames were current (same inputs, config, code of i)
    assert {p: p.stat().st_mtime_ns for p in corrected} == corrected
    assert {p: p.stat().st_mtime_ns for p in masters} == masters
