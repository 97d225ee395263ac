"""``reprocess`` fanning out to a deployment: its runs followed as a batch, by tag and end time,
never one API call per run per poll (a backlog of 1,000 nights)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("prefect_db")


def _runs(batch: str, n: int) -> dict:
    from prefect import flow, get_client

    @flow(name="bench-night")
    def night():
        return None

    with get_client(sync_client=True) as c:
        return {c.create_flow_run(night, tags=[batch, "other"]).id: f"night{i}" for i in range(n)}


def _finish(runs: dict, states: dict) -> None:
    from prefect import get_client
    from prefect.states import Cancelled, Completed, Crashed, Failed, Running

    make = {"Completed": Completed, "Failed": Failed, "Crashed": Crashed, "Cancelled": Cancelled}
    with get_client(sync_client=True) as c:
        for rid, night in runs.items():
            if night in states:
                c.set_flow_run_state(rid, Running(), force=True)
                c.set_flow_run_state(rid, make[states[night]](), force=True)


def test_wait_runs_reports_each_final_state_and_times_out_the_rest(monkeypatch):
    """Final runs come back with their state names (paged: 5 runs, pages of 2); a run that never
    ends is a Timeout; runs of another batch are not mixed in; no per-run read."""
    from prefect.client.orchestration import SyncPrefectClient

    from qlcp.flows.batch import wait_runs

    runs = _runs("reprocess:test-a", 6)
    other = _runs("reprocess:test-b", 2)
    _finish(runs, {"night0": "Completed", "night1": "Failed", "night2": "Crashed", "night3": "Cancelled",
                   "night4": "Completed"})
    _finish(other, {"night0": "Failed", "night1": "Failed"})

    def per_run_read(*a, **k):
        raise AssertionError("polled run by run")

    monkeypatch.setattr(SyncPrefectClient, "read_flow_run", per_run_read)
    out = wait_runs("reprocess:test-a", runs, timeout_s=1.0, every=0.2, page=2)
    assert out == {"night0": "Completed", "night1": "Failed", "night2": "Crashed", "night3": "Cancelled",
                   "night4": "Completed", "night5": "Timeout"}


def test_reprocess_without_the_deployment_runs_the_nights_here(tmp_path, monkeypatch):
    """A deployment that does not exist: nothing submitted, the nights run in this process, without
    their campaigns; the campaigns are rebuilt once after the nights (not once per night: O(N^2))."""
    from qlcp.flows import night as N

    ran, camps = [], []

    class _State:
        name = "Completed"

        def is_failed(self):
            return False

    def fake_night(raw_dir, red_dir, **kw):
        ran.append((raw_dir, red_dir, kw["campaigns"]))
        return _State()

    def fake_campaign(red_root, **kw):
        camps.append(red_root)
        return _State()

    monkeypatch.setattr(N, "process_night", fake_night)
    monkeypatch.setattr(N, "campaign", fake_campaign)
    for d in ("20250101", "20250102"):
        (tmp_path / "raw" / d).mkdir(parents=True)
    out = N.reprocess(raw_root=str(tmp_path / "raw"), red_root=str(tmp_path / "red"),
                      deployment="no-such/deployment")
    assert sorted(out.values()) == ["Completed", "Completed"]
    assert ran == [(str((tmp_path / "raw" / "20250101").resolve()), str(tmp_path / "red" / "20250101"), False),
                   (str((tmp_path / "raw" / "20250102").resolve()), str(tmp_path / "red" / "20250102"), False)]
    assert camps == [str(tmp_path / "red")]


def test_deploy_to_pool_gives_each_run_its_frame_workers():
    """``qlcp deploy --frame-workers 1``: QLCP_WORKERS=1 in the environment of the deployment's runs;
    without it the job environment is left alone (all the CPUs)."""
    from prefect import get_client

    from qlcp.deployments.serve import deploy_to_pool

    with get_client(sync_client=True) as c:
        one = c.read_deployment(deploy_to_pool("qlcp-test-pool", name="one", frame_workers=1))
        dflt = c.read_deployment(deploy_to_pool("qlcp-test-pool", name="dflt"))
    assert one.job_variables["env"] == {"QLCP_WORKERS": "1"}
    assert "QLCP_WORKERS" not in (dflt.job_variables or {}).get("env", {})
