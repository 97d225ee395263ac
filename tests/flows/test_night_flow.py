"""The night flow with Prefect's test harness: outputs, artifacts, caching, retries, isolation."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from qlcp.core import run
from qlcp.core.errors import ConfigError, TransientIOError
from qlcp.core.simulate import simulate_small

pytestmark = pytest.mark.usefixtures("prefect_db")


@pytest.fixture(scope="module")
def two_band_night(tmp_path_factory):
    """A small night with bands V and R of one object (shared bias frames)."""
    base = tmp_path_factory.mktemp("flow")
    v = simulate_small(base / "v", n_frames=10, size=256, seed=21, n_bias=3, n_flats=4, flat_bad=False,
                       thick_cloud=False)
    r = simulate_small(base / "r", n_frames=10, size=256, seed=22, n_bias=3, n_flats=4, flat_bad=False,
                       band="R", thick_cloud=False)
    raw = base / "raw" / "20240606"
    raw.mkdir(parents=True)
    for p in v.raw_dir.iterdir():
        shutil.copy2(p, raw / p.name)
    for p in r.raw_dir.iterdir():
        if not p.name.startswith("bias"):
            shutil.copy2(p, raw / p.name)
    return raw, v


def _flow(raw, red, **kw):
    from qlcp.flows.night import process_night

    state = process_night(raw_dir=str(raw), red_dir=str(red), config_files=[str(kw.pop("config"))],
                          return_state=True, **kw)
    return state, state.result()


def _artifacts(flow_run_id):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    async def read():
        async with get_client() as c:
            return await c.read_artifacts(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))

    return asyncio.run(read())


def test_flow_outputs_artifacts_then_everything_cached(two_band_night, tmp_path):
    raw, v = two_band_night
    red = tmp_path / "red"
    state, summary = _flow(raw, red, config=v.config_path)
    assert state.is_completed()
    for b in "VR":
        lc = Table.read(red / f"lc_SIMV_{b}.ecsv")
        assert len(lc) == 10 and "mag_t0_a0" in lc.colnames
        assert (red / f"chart_SIMV_{b}.png").is_file()
    assert (red / "log" / "p.log").read_text().count("sources") >= 20
    arts = {a.key: a for a in _artifacts(state.state_details.flow_run_id)}
    night = raw.name
    assert f"night-{night}-summary" in arts and arts[f"night-{night}-summary"].type == "markdown"
    assert "SIMV" in arts[f"night-{night}-summary"].data
    assert arts[f"night-{night}-simv-v-frames"].type == "table"
    assert '"airmass"' in arts[f"night-{night}-simv-v-frames"].data
    # the light curve linked (no results_url: its file:// path), not its PNG stored in Prefect's database
    lc_art = arts[f"night-{night}-simv-r-lc"]
    assert lc_art.data == f"[lc_SIMV_R.png]({(red / 'lc_SIMV_R.png').resolve().as_uri()})", lc_art.data
    assert arts[f"night-{night}-progress"].type == "progress"
    assert float(arts[f"night-{night}-progress"].data) == 100.0
    assert all(s == "Completed" for s in summary["run"]["task_state_by_label"].values())

    state2, again = _flow(raw, red, config=v.config_path)
    assert set(again["run"]["task_state_by_label"].values()) == {"Cached"}
    assert again["run"]["task_state_by_label"].keys() == summary["run"]["task_state_by_label"].keys()


def test_changed_flat_recomputes_its_band_only(two_band_night, tmp_path):
    raw0, v = two_band_night
    raw = tmp_path / "raw" / raw0.name
    shutil.copytree(raw0, raw)
    red = tmp_path / "red"
    _flow(raw, red, config=v.config_path)
    flat = sorted(raw.glob("flat-*V.fit"))[1]
    with fits.open(flat) as h:
        data = h[0].data.astype(float) * 1.02
        hdr = h[0].header
        fits.PrimaryHDU(np.clip(data, 0, 65535).astype(np.uint16), hdr).writeto(flat, overwrite=True)
    _, summary = _flow(raw, red, config=v.config_path)
    st = summary["run"]["task_state_by_label"]
    assert st["b"] == "Cached" and st["f-R"] == "Cached" and st["f-V"] == "Completed"
    for label, s in st.items():
        if "-SIMV-V" in label:
            assert s == "Completed", label
        if "-SIMV-R" in label:
            assert s == "Cached", label


def test_changed_aper_redoes_photometry_not_correction(two_band_night, tmp_path):
    """i and p run as one task per chunk; a new ``aper`` reruns it, but the corrected frames
    (their provenance key unchanged) are kept and only the catalogues are made again."""
    raw, v = two_band_night
    red = tmp_path / "red"
    _, first = _flow(raw, red, config=v.config_path, obj=["SIMV"], band=["V"])
    assert any(k.startswith("ip-SIMV-V") for k in first["run"]["task_state_by_label"])
    bf = {p: p.stat().st_mtime_ns for p in (red / "SIMV_V").glob("*.bf.fits")}
    cats = {p: p.stat().st_mtime_ns for p in (red / "SIMV_V").glob("*.cat.fits")}
    assert len(bf) == len(cats) == 10
    _, again = _flow_with(raw, red, v, aper=[4.0, 7.0])
    st = again["run"]["task_state_by_label"]
    assert st["b"] == "Cached" and st["f-V"] == "Cached"
    assert all(s == "Completed" for k, s in st.items() if k.startswith("ip-SIMV-V"))
    assert {p: p.stat().st_mtime_ns for p in bf} == bf                          # kept
    assert all(p.stat().st_mtime_ns != t for p, t in cats.items())              # measured again
    with fits.open(next(iter(cats))) as h:
        assert h[1].header["NAPER"] == 2


def _flow_with(raw, red, v, **settings):
    from qlcp.flows.night import process_night

    state = process_night(raw_dir=str(raw), red_dir=str(red), config_files=[str(v.config_path)],
                          config=settings, obj=["SIMV"], band=["V"], return_state=True)
    return state, state.result()


def test_transient_error_is_retried(two_band_night, tmp_path, monkeypatch):
    raw, v = two_band_night
    from qlcp.core.steps import offsets as steps

    calls = {"n": 0}
    real = steps.offset_step

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise TransientIOError("disk busy (simulated)")
        return real(*a, **k)

    monkeypatch.setattr(steps, "offset_step", flaky)
    state, summary = _flow(raw, tmp_path / "red", config=v.config_path, obj=["SIMV"], band=["V"])
    assert state.is_completed() and calls["n"] == 2
    assert summary["run"]["task_state_by_label"]["o-SIMV-V"] == "Completed"
    assert (tmp_path / "red" / "lc_SIMV_V.ecsv").is_file()


def test_corrupt_frame_fails_only_that_frame(two_band_night, tmp_path):
    raw0, v = two_band_night
    raw = tmp_path / "raw" / raw0.name
    shutil.copytree(raw0, raw)
    bad = sorted(raw.glob("SIMV-*V.fit"))[4]
    bad.write_bytes(bad.read_bytes()[:6000])
    state, summary = _flow(raw, tmp_path / "red", config=v.config_path)
    assert state.is_completed()
    assert bad.name in [f for f, _ in summary["rejected"]]
    assert len(Table.read(tmp_path / "red" / "lc_SIMV_V.ecsv")) == 9
    assert len(Table.read(tmp_path / "red" / "lc_SIMV_R.ecsv")) == 10


def test_prefect_and_plain_give_identical_light_curves(two_band_night, tmp_path):
    raw, v = two_band_night
    _flow(raw, tmp_path / "a", config=v.config_path)
    run(raw, tmp_path / "b", ini_file=[v.config_path])
    for b in "VR":
        ta = Table.read(tmp_path / "a" / f"lc_SIMV_{b}.ecsv")
        tb = Table.read(tmp_path / "b" / f"lc_SIMV_{b}.ecsv")
        assert ta.colnames == tb.colnames
        for c in ta.colnames:
            assert np.array_equal(np.asarray(ta[c]), np.asarray(tb[c]), equal_nan=ta[c].dtype.kind == "f"), c


def test_bad_config_fails_before_any_task(two_band_night, tmp_path):
    raw, v = two_band_night
    from qlcp.flows.night import process_night

    with pytest.raises(ConfigError, match="gain"):
        process_night(raw_dir=str(raw), red_dir=str(tmp_path / "red"), config={"gain": -2})
    assert not (tmp_path / "red").exists()


def test_steps_in_config_and_as_parameter(two_band_night, tmp_path):
    raw, v = two_band_night
    from qlcp.flows.night import process_night

    out = process_night(raw_dir=str(raw), red_dir=str(tmp_path / "red"), config_files=[str(v.config_path)],
                        config={"steps": "lbfi", "band": ["V"]}, steps="lb")
    assert (tmp_path / "red" / "bias.fits").is_file() and not (tmp_path / "red" / "flat_V.fits").exists()
    assert out["groups"][0]["band"] == "V"


def test_the_progress_artifact_advances_while_the_frames_task_runs(two_band_night, tmp_path, monkeypatch):
    """One correct-photometry task per group: the progress bar advances from its worker jobs (the
    hook), not only when the task ends."""
    import qlcp.flows.artifacts as A

    raw, v = two_band_night
    seen = []
    real = A.update_progress_artifact

    def record(artifact_id, progress):
        seen.append(float(progress))
        return real(artifact_id=artifact_id, progress=progress)

    monkeypatch.setattr(A, "update_progress_artifact", record)
    monkeypatch.setattr(A.NightProgress, "EVERY", 0.0)
    from qlcp.flows.night import process_night

    state = process_night(raw_dir=str(raw), red_dir=str(tmp_path / "red"), config_files=[str(v.config_path)],
                          config={"workers": 2}, return_state=True)
    summary = state.result()
    assert state.is_completed()
    assert summary["run"]["task_states"]["correct-photometry"] == {"Completed": 2}     # one per band
    assert seen == sorted(set(seen)) and seen[-1] == 100.0          # never back, never the same twice
    # values other than the groups' ends (50, 100): progress from inside the tasks
    assert any(p not in (50.0, 100.0) for p in seen), seen
