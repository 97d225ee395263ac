"""The campaign flow: run by the night flow for the night's targets, Cached when nothing changed, with
its artifacts in the UI."""

from __future__ import annotations

import asyncio

import pytest

from qlcp.core.simulate import simulate_small

pytestmark = pytest.mark.usefixtures("prefect_db")

EPH = (2460468.10, 2.0172)
NIGHT = dict(size=256, n_frames=40, thick_cloud=False, detector_seed=3, target_ra=250.0, target_dec=30.0,
             ephemeris=EPH)


def _artifact_keys():
    from prefect import get_client

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():       # the campaign's artifacts only: the server's list is paged (200 a page)
        async with get_client() as c:
            f = ArtifactFilter(key=ArtifactFilterKey(like_="campaign-"))
            return {a.key for a in await c.read_artifacts(artifact_filter=f)}

    return asyncio.run(read())


def test_night_flow_updates_the_campaign_which_is_cached_when_nothing_changed(tmp_path):
    from qlcp.flows.campaign import campaign
    from qlcp.flows.night import process_night

    red = tmp_path / "red"
    first = simulate_small(tmp_path / "n1", seed=91, night="2024-06-06", **NIGHT)
    s1 = process_night(raw_dir=str(first.raw_dir), red_dir=str(red / "20240606"),
                       config_files=[str(first.config_path)], config={"workers": 1})
    assert s1["groups"][0]["outputs"]["timing"]
    second = simulate_small(tmp_path / "n2", seed=92, night="2024-06-10", field_of=str(first.out_dir), **NIGHT)
    process_night(raw_dir=str(second.raw_dir), red_dir=str(red / "20240610"),
                  config_files=[str(second.config_path)], config={"workers": 1})
    camp = red / "campaign" / "SIMV"
    assert (camp / "oc_SIMV.ecsv").is_file() or list(camp.glob("lc_SIMV_*.ecsv"))
    state = campaign(red_root=str(red), target="SIMV", config_files=[str(second.config_path)], return_state=True)
    res = state.result()
    assert res["SIMV"].get("campaign_lc") or any(k.startswith("campaign_lc") for k in res["SIMV"])
    from prefect import get_client

    async def task_states():
        async with get_client() as c:
            runs = await c.read_task_runs()
            return [r.state.name for r in runs if r.flow_run_id == state.state_details.flow_run_id]

    assert asyncio.run(task_states()) == ["Cached"]          # the night flow built it from these very files
    keys = _artifact_keys()
    assert any(k.startswith("campaign-simv-lc") for k in keys)
    assert "campaign-simv-oc" in keys or "campaign-simv-period" in keys


def test_campaign_runs_are_named_after_their_target(tmp_path):
    """A campaign flow run (the night flow's subflow, or the deployment's) is ``campaign-<target>``,
    ``campaign-all`` without one, never one of Prefect's random adjective-animal names."""
    from prefect import get_client

    from qlcp.flows.campaign import campaign

    red = tmp_path / "red"
    red.mkdir()
    ids = [campaign(red_root=str(red), target=t, return_state=True).state_details.flow_run_id
           for t in ("XO-1", None)]

    async def names():
        async with get_client() as c:
            return [(await c.read_flow_run(i)).name for i in ids]

    assert asyncio.run(names()) == ["campaign-XO-1", "campaign-all"]
