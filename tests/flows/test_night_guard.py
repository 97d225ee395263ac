"""The night flow's clean ends: its workers die with it, its lock, a killed run marked Crashed."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from qlcp.core.simulate import simulate_small
from tests.core.test_runguard import HOLD_LOCK, LOCK_NAME, kill_when_workers_run, linux_only

pytestmark = pytest.mark.usefixtures("prefect_db")


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    return simulate_small(tmp_path_factory.mktemp("night"), n_frames=40, size=384, seed=6)


FLOW_RUN = """import sys
from qlcp.flows.night import process_night
process_night(raw_dir=sys.argv[1], red_dir=sys.argv[2], config_files=[sys.argv[3]], config={"workers": 2})
"""


@linux_only
def test_kill_9_of_a_flow_run_process_kills_its_workers(night, tmp_path):
    """A flow runs threads, so its workers fork from a fork server: they, and it, go with the run."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}     # the harness's server
    proc = subprocess.Popen([sys.executable, "-c", FLOW_RUN, night.raw_dir, tmp_path / "red", night.config_path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    kids, seconds = kill_when_workers_run(proc, 3)     # the fork server and (at least) two workers
    print(f"{len(kids)} processes (fork server, workers, resource tracker) gone {seconds:.2f} s after kill -9")


def _running_run(red, raw):
    """A flow run of process_night on ``red`` left Running (its process killed), as the server sees it."""
    from prefect import get_client
    from prefect.states import Running

    from qlcp.flows.night import process_night

    with get_client(sync_client=True) as c:
        return c.create_flow_run(process_night, parameters={"raw_dir": str(raw), "red_dir": str(red)},
                                 state=Running()).id


def _state(run_id):
    from prefect import get_client

    with get_client(sync_client=True) as c:
        return c.read_flow_run(run_id).state


def test_a_run_left_running_on_the_same_night_is_marked_crashed(night, tmp_path):
    from qlcp.flows.night import process_night

    red, other = tmp_path / "red", tmp_path / "other"
    dead = _running_run(red, night.raw_dir)
    dead_alias = _running_run(str(tmp_path / "x" / ".." / "red"), night.raw_dir)   # the same directory
    elsewhere = _running_run(other, night.raw_dir)
    state = process_night(raw_dir=str(night.raw_dir), red_dir=str(red), config_files=[str(night.config_path)],
                          steps="l", return_state=True)
    assert state.is_completed(), state.message
    for run_id in (dead, dead_alias):
        st = _state(run_id)
        assert st.type.value == "CRASHED" and st.name == "Crashed"
        assert "process is gone" in st.message and str(red) in st.message
    assert _state(elsewhere).type.value == "RUNNING"        # another night's run: not ours to judge


def test_a_flow_run_on_a_locked_night_is_cancelled_naming_the_holder(night, tmp_path):
    """A second run of a night in progress (e.g. a second trigger) ends Cancelled, not Failed (the UI
    showed a Failed run for it), its message naming the holder; the caller still gets the error."""
    from qlcp.core.errors import RunLockedError
    from qlcp.flows.night import process_night

    red = tmp_path / "red"
    red.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(red / LOCK_NAME)], stdout=subprocess.PIPE,
                              text=True)
    live = _running_run(red, night.raw_dir)             # that holder's flow run: alive, never marked Crashed
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid} on "):
            process_night(raw_dir=str(night.raw_dir), red_dir=str(red), config_files=[str(night.config_path)],
                          steps="l")
        state = process_night(raw_dir=str(night.raw_dir), red_dir=str(red), config_files=[str(night.config_path)],
                              steps="l", return_state=True)
        assert state.is_cancelled() and not state.is_failed(), state
        assert state.message.startswith("not run: ") and f"pid {holder.pid} on " in state.message
        assert _state(state.state_details.flow_run_id).type.value == "CANCELLED"     # as the server has it
        with pytest.raises(RunLockedError):
            state.result()
        assert not (red / "config.yaml").exists()
        assert _state(live).type.value == "RUNNING"
    finally:
        holder.kill()
        holder.wait()
    assert isinstance(live, uuid.UUID)


JUNK_RUN = """import sys
from qlcp.flows.night import process_night
st = process_night(raw_dir=sys.argv[1], red_dir=sys.argv[2], return_state=True)
print("STATE", st.type.value, st.state_details.flow_run_id)
"""


def test_a_night_failing_on_bad_input_is_one_line_on_the_console_and_a_traceback_in_its_log(tmp_path):
    """A flow run (here in a process of its own, as ``qlcp serve`` runs them) that fails on a data
    problem: the console (the ``qlcp up`` log) has no traceback (Prefect printed two), the run's log
    on the server keeps it."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL

    raw = tmp_path / "raw" / "20240606"
    raw.mkdir(parents=True)
    for i in range(3):
        (raw / f"junk{i}.fits").write_bytes(os.urandom(4000))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOGGING_LEVEL": "INFO"}
    r = subprocess.run([sys.executable, "-c", JUNK_RUN, str(raw), str(tmp_path / "red")], capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    _, state, run_id = r.stdout.strip().splitlines()[-1].split()
    assert state == "FAILED"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if "no usable FITS frames" in ln]
    assert errors and any("Encountered exception" in ln for ln in errors), r.stderr[-3000:]
    assert not any("Engine execution exited" in ln for ln in r.stderr.splitlines())
    with get_client(sync_client=True) as c:
        logs = c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(run_id)])))
    assert any("Traceback" in lg.message and "no usable FITS frames" in lg.message for lg in logs), \
        [lg.message[:200] for lg in logs]
