"""The fault table (``tests/faults.py``) through the Prefect flow: the same outcome as the plain
driver, the same summary.json (minus ``run`` and paths), and the same exit status."""

from __future__ import annotations

import json

import pytest

from qlcp.core import run
from qlcp.core.config import load_config
from qlcp.core.simulate import simulate_small
from qlcp.deployments.cli import exit_status
from tests.faults import FAULTS, check_outcome, comparable, make_night, together_fault

pytestmark = pytest.mark.usefixtures("prefect_db")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate_small(tmp_path_factory.mktemp("faults") / "n", n_frames=10, size=128, seed=3, n_bias=3,
                          n_flats=3)


def _flow(sim, raw, red, chunk=3):
    from qlcp.flows.night import process_night

    return process_night(raw_dir=str(raw), red_dir=str(red), config_files=[str(sim.config_path)],
                         config={"workers": 1, "field_dir": str(red / "fields"), "calib_library": False},
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
