"""Flow runs of ``process-night`` are named and tagged after their night (read back from the server)."""

from __future__ import annotations

import asyncio
import shutil
import time

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


def test_flow_run_records_its_parameters_without_prefects_general_encoder(generic_night, tmp_path, monkeypatch):
    """The parameters a run shows in the UI are the ones given (non-ASCII names, nested lists, floats),
    recorded by QLCP's JSON path: Prefect's general encoder (FastAPI's, imported on first use at
    0.15-0.25 s of CPU per process) is not called for them."""
    from prefect import Flow

    from qlcp.flows.night import process_night

    general = []
    real = Flow.serialize_parameters
    monkeypatch.setattr(Flow, "serialize_parameters", lambda self, p: general.append(p) or real(self, p))
    sim = generic_night
    config = {"targets": [{"name": "Ζ Her's neighbour", "ra": "16:41:20.4", "dec": 31.6}], "aper": [4.0, 6.5],
              "gain": 1.5, "starxy": [[10.5, 20.25]], "rdnoise": None}
    st = process_night(raw_dir=str(sim.raw_dir), red_dir=str(tmp_path / "red"), config_files=[str(sim.config_path)],
                       config=config, steps="l", return_state=True)
    assert st.is_completed()
    fr = _read_run(st.state_details.flow_run_id)
    assert fr.parameters["config"] == config
    assert fr.parameters["raw_dir"] == str(sim.raw_dir)
    assert fr.parameters["config_files"] == [str(sim.config_path)]
    assert general == []


def test_other_parameters_go_prefects_general_way():
    from pathlib import Path

    from qlcp.flows.night import night_flow, process_night
    from qlcp.flows.params import JsonParamsFlow

    assert process_night.serialize_parameters({"raw_dir": Path("/data/raw")}) == {"raw_dir": "/data/raw"}
    assert process_night.serialize_parameters({"a": (1, 2), "b": {"c": float("inf")}}) == {"a": [1, 2],
                                                                                           "b": {"c": float("inf")}}
    assert isinstance(process_night.with_options(name="x"), JsonParamsFlow)
    assert night_flow("thread") is process_night


def _run_logs(flow_run_id) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read():
        async with get_client() as c:
            return await c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))

    return [lg.message for lg in asyncio.run(read())]


@pytest.mark.parametrize("scr_log", ["WARNING", "INFO"])
def test_the_console_shows_qlcp_records_from_scr_log_up_the_runs_logs_all(generic_night, tmp_path, monkeypatch,
                                                                          scr_log):
    """``scr_log`` is the screen's level on both drivers; the run's logs in the UI keep every INFO record."""
    from prefect.logging.handlers import PrefectConsoleHandler

    from qlcp.flows.night import process_night

    console = []
    monkeypatch.setattr(PrefectConsoleHandler, "emit", lambda self, record: console.append(record.getMessage()))
    sim = generic_night
    st = process_night(raw_dir=str(sim.raw_dir), red_dir=str(tmp_path / "red"), config_files=[str(sim.config_path)],
                       config={"scr_log": scr_log}, steps="l", return_state=True)
    assert st.is_completed()
    listing = f"{sim.raw_dir}: "                          # qlcp.listing's INFO line: "{raw}: 2 bias, ..."
    assert any(m.startswith("Beginning flow run") for m in console)          # Prefect's own lines: as they were
    assert any(m.startswith(listing) for m in console) == (scr_log == "INFO")
    deadline = time.monotonic() + 20                      # the API's log records arrive in batches, a bit later
    while not any(m.startswith(listing) for m in _run_logs(st.state_details.flow_run_id)):
        assert time.monotonic() < deadline, "the listing's record never reached the run's logs"
        time.sleep(0.5)
