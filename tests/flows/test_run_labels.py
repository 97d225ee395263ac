"""Flow runs of ``process-night`` are named and tagged after their night (read back from the server)."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from qlcp.core.simulate import simulate_small

pytestmark = pytest.mark.usefixtures("prefect_db")


def _read_run(flow_run_id):
    from prefect import get_client

    async def read():
        async with get_client() as c:
            return await c.read_flow_run(flow_run_id)

    return asyncio.run(read())


@pytest.fixture(scope="module")
def generic_night(tmp_path_factory):
    """A small night whose raw directory has a generic name (``raw``), evening of 2024-06-06."""
    base = tmp_path_factory.mktemp("labels")
    return simulate_small(base / "sim", n_frames=4, size=128, seed=5, n_bias=2, n_flats=2, thick_cloud=False)


def test_flow_run_named_and_tagged_after_the_night(generic_night, tmp_path):
    from qlcp.flows.night import process_night

    sim = generic_night
    assert sim.raw_dir.name == "raw"
    st = process_night(raw_dir=str(sim.raw_dir), red_dir=str(tmp_path / "red"), config_files=[str(sim.config_path)],
                       steps="l", return_state=True)
    assert st.is_completed() and st.result()["night"] == "20240606"
    fr = _read_run(st.state_details.flow_run_id)
    assert fr.name == "night-20240606"
    assert {"night:20240606", "obj:SIMV", "band:V"} <= set(fr.tags)


def test_restricted_run_names_its_object_and_band(generic_night, tmp_path):
    from qlcp.flows.night import process_night

    sim = generic_night
    raw = tmp_path / "20240606_85"                            # a dated directory keeps its own name
    shutil.copytree(sim.raw_dir, raw)
    st = process_night(raw_dir=str(raw), red_dir=str(tmp_path / "red"), config_files=[str(sim.config_path)],
                       steps="l", obj=["SIMV"], band=["V"], return_state=True)
    fr = _read_run(st.state_details.flow_run_id)
    assert fr.name == "night-20240606_85-SIMV-V"
    assert {"night:20240606_85", "obj:SIMV", "band:V"} <= set(fr.tags)
