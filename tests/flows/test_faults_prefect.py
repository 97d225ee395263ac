"""The fault table (``tests/faults.py``) through the Prefect flow: the same outcome as the plain
driver, the same summary.json (minus ``run`` and paths), and the same exit status."""

from __future__ import annotations

import json

import pytest

from qlcp.core import run
from qlcp.core.config import load_config
from qlcp.core.simulate import simulate_small
from qlcp.deployments.cli import exit_status
from tests.faults import (BAD_INPUTS, FAULTS, INSTRUMENT_FAULTS, PLANTED_LINKS, TARGET_FAULTS, bad_input_setup, check_link_untouched,
                          check_outcome, check_target_outcome, comparable, make_night, plant_link, together_fault,
                          write_registry)

pytestmark = pytest.mark.usefixtures("prefect_db")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate_small(tmp_path_factory.mktemp("faults") / "n", n_frames=10, size=128, seed=3, n_bias=3,
                          n_flats=3)


def _flow(sim, raw, red, chunk=3, **sets):
    from qlcp.flows.night import process_night

    return process_night(raw_dir=str(raw), red_dir=str(red), config_files=[str(sim.config_path)],
                         config={"workers": 1, "field_dir": str(red / "fields"), "calib_library": False, **sets},
                         chunk=chunk)


@pytest.mark.parametrize("fault", FAULTS + [together_fault()], ids=lambda f: f.name)
def test_fault_through_prefect_as_through_the_plain_driver(sim, tmp_path, fault):
    raw = make_night(sim.raw_dir, tmp_path / "raw", [fault])
    plain, flow = tmp_path / "plain", tmp_path / "flow"
    sp = run(raw, plain, config=load_config([sim.config_path], {"workers": 1, "field_dir": str(plain / "fields"),
                                                                 "calib_library": False}))
    sf = _flow(sim, raw, flow)                   # chunks of 3 frames: 4 correct-photometry tasks
    assert exit_status(sf) == exit_status(sp.to_dict()) == fault.exit_status
    check_outcome(fault, json.loads((flow / "summary.json").read_text()), flow, raw)
    assert comparable(sf, flow) == comparable(sp.to_dict(), plain)


@pytest.mark.parametrize("fault", INSTRUMENT_FAULTS, ids=lambda f: f.name)
def test_instrument_fault_through_prefect_as_through_the_plain_driver(sim, tmp_path, fault):
    """Unknown, ambiguous and other-instrument frames: the flow rejects and names them as the plain
    driver does, with the same instrument, sources of its settings and summary."""
    raw = make_night(sim.raw_dir, tmp_path / "raw", [fault])
    reg = write_registry(fault, tmp_path)
    plain, flow = tmp_path / "plain", tmp_path / "flow"
    sp = run(raw, plain, config=load_config([sim.config_path], {"workers": 1, "field_dir": str(plain / "fields"),
                                                                 "calib_library": False, "instruments_dir": reg}))
    sf = _flow(sim, raw, flow, instruments_dir=reg)
    assert exit_status(sf) == exit_status(sp.to_dict()) == fault.exit_status
    assert sf["instrument"] == "sim"
    check_outcome(fault, json.loads((flow / "summary.json").read_text()), flow, raw)
    assert comparable(sf, flow) == comparable(sp.to_dict(), plain)


def test_failed_flat_task_degrades_the_night_as_in_the_plain_driver(sim, tmp_path, monkeypatch):
    """A flat task that fails loses the flat, not the groups of its band (before: the Prefect path
    failed them, the plain one said nothing): both say 'degraded', status 3, the light curve made."""
    from qlcp.core import flat as flat_mod
    from qlcp.core.errors import InputError

    def broken(*a, **k):
        raise InputError("flat-0002V.fit: unreadable data (test)")

    monkeypatch.setattr(flat_mod, "make_master_flat", broken)
    plain, flow = tmp_path / "plain", tmp_path / "flow"
    sp = run(sim.raw_dir, plain, config=load_config([sim.config_path], {"workers": 1, "calib_library": False,
                                                                         "field_dir": str(plain / "fields")}))
    sf = _flow(sim, sim.raw_dir, flow)
    assert sf["degraded"] == ["no flat for V: step f failed: flat-0002V.fit: unreadable data (test)"]
    assert exit_status(sf) == exit_status(sp.to_dict()) == 3
    assert sf["groups"][0]["outputs"]["lightcurve"] and not sf["groups"][0]["error"]
    assert comparable(sf, flow) == comparable(sp.to_dict(), plain)


@pytest.mark.parametrize("case", [c for c in PLANTED_LINKS if c.name in ("log_file", "group_directory", "product")],
                         ids=lambda c: c.name)
def test_a_link_planted_in_red_is_never_written_through_by_the_flow(sim, tmp_path, case):
    """R17 through the flow: the same refusal (the same one line) or the same replaced link as the
    plain driver; the target outside RED untouched."""
    from qlcp.core.errors import OutputError

    red = tmp_path / "flow"
    target = plant_link(case, red, tmp_path / "outside")
    if case.refused:
        with pytest.raises(OutputError) as e:
            _flow(sim, sim.raw_dir, red)
        assert str(e.value) == (f"{red / case.link}: is a symbolic link; a run writes nothing through links "
                                f"inside its output directory (remove the link)")
    else:
        assert exit_status(_flow(sim, sim.raw_dir, red)) == 0
    check_link_untouched(case, red, target)


@pytest.mark.parametrize("fault", [f for f in TARGET_FAULTS if f.outcome == "no target"], ids=lambda f: f.name)
def test_night_without_target_completes_through_prefect(sim, tmp_path, fault):
    """A night without a target is a Completed flow run whose summary (and artifact) says ``no target``,
    the same summary as the plain driver's, exit status 4 both ways."""
    from prefect.client.orchestration import get_client

    from qlcp.flows.night import process_night

    plain, flow = tmp_path / "plain", tmp_path / "flow"
    sp = run(sim.raw_dir, plain, config=load_config([sim.config_path], {
        "workers": 1, "field_dir": str(plain / "fields"), "calib_library": False, **fault.sets}))
    state = process_night(raw_dir=str(sim.raw_dir), red_dir=str(flow), config_files=[str(sim.config_path)],
                          config={"workers": 1, "field_dir": str(flow / "fields"), "calib_library": False,
                                  **fault.sets}, chunk=3, return_state=True)
    assert state.is_completed(), state
    sf = state.result()
    assert exit_status(sf) == exit_status(sp.to_dict()) == 4
    check_target_outcome(fault, json.loads((flow / "summary.json").read_text()), flow, None)
    assert comparable(sf, flow) == comparable(sp.to_dict(), plain)
    from prefect.client.schemas.filters import FlowRunFilter

    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:     # this run's artifacts (the server's list is paged)
        arts = client.read_artifacts(flow_run_filter=FlowRunFilter(id={"any_": [run_id]}))
    md = [a.data for a in arts if a.key and a.key.endswith("-summary")]
    assert md and "outcome: **no target**" in md[0], md


@pytest.mark.parametrize("fault", [f for f in TARGET_FAULTS if f.outcome == "bad input"], ids=lambda f: f.name)
def test_refused_field_reference_through_prefect(sim, tmp_path, fault):
    """A damaged or disagreeing field reference: the flow fails with the plain driver's one line, the
    file kept as it was."""
    from qlcp.core.errors import QLCPError

    red = tmp_path / "flow"
    red.mkdir()
    fault.red_setup(red)
    before = (red / "fields" / "SIMV.ecsv").read_bytes()
    with pytest.raises(QLCPError) as e:
        _flow(sim, sim.raw_dir, red, **fault.sets)
    assert all(w in str(e.value) for w in fault.words), str(e.value)
    check_target_outcome(fault, json.loads((red / "summary.json").read_text()), red, before)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c.name)
def test_bad_input_through_prefect_as_through_the_plain_driver(sim, tmp_path, case):
    """The bad-input table: the flow stops with the plain driver's one line (a QLCPError, which the
    CLI turns into exit status 2), before any master is made."""
    from qlcp.core.errors import QLCPError
    from qlcp.flows.night import process_night

    raw, files = bad_input_setup(case, sim, tmp_path)
    red = tmp_path / "flow"
    with pytest.raises(QLCPError) as e:
        process_night(raw_dir=str(raw), red_dir=str(red), config_files=files,
                      config={"workers": 1, "calib_library": False})
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in case.words), (case.name, msg)
    assert not (red / "bias.fits").exists()
