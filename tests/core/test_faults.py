"""One bad file never costs a night: the fault table (``tests/faults.py``) through the plain driver.

Each bad input is injected into a copy of a simulated night and reduced by ``qlcp run --no-prefect``;
the night must give its light curve, name the bad file with its reason in summary.json, and exit 0,
or 3 when it lost a calibration (``degraded``).  The same table runs through the Prefect flow in
``tests/flows/test_faults_prefect.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from qlcp.core.config import load_config
from qlcp.core.simulate import simulate_small
from tests.faults import (BAD_INPUTS, FAULTS, INSTRUMENT_FAULTS, NON_ASCII, PLANTED_LINKS, TARGET_FAULTS, bad_input_setup,
                          check_link_untouched, check_outcome, check_target_outcome, make_night, plant_link,
                          together_fault, write_registry)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate_small(tmp_path_factory.mktemp("faults") / "n", n_frames=10, size=128, seed=3, n_bias=3,
                          n_flats=3)


def _snapshot(raw: Path) -> dict:
    return {str(p.relative_to(raw)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in raw.rglob("*")}


def reduce_cli(sim, raw: Path, red: Path, *extra) -> tuple[int, dict]:
    """``qlcp run RAW RED --no-prefect`` with the night's config: (exit status, summary.json).

    Without the calibration library: these faults are about tonight's frames (the library, which would
    stand in for a lost flat, is tested in test_calib_library.py)."""
    from qlcp.deployments.cli import main

    rc = main(["run", str(raw), str(red), "--no-prefect", "--config", str(sim.config_path), "--set", "workers=1",
               "--set", f"field_dir={red / 'fields'}", "--set", "calib_library=false", *extra])
    summary = json.loads((red / "summary.json").read_text()) if (red / "summary.json").is_file() else {}
    return rc, summary


@pytest.mark.parametrize("fault", FAULTS + [together_fault()], ids=lambda f: f.name)
def test_fault_gives_the_light_curve_and_names_the_bad_file(sim, tmp_path, fault):
    raw = make_night(sim.raw_dir, tmp_path / "raw", [fault])
    before = _snapshot(raw)
    rc, summary = reduce_cli(sim, raw, tmp_path / "red")
    assert rc == fault.exit_status, (fault.name, rc, summary.get("degraded"), summary.get("rejected"))
    check_outcome(fault, summary, tmp_path / "red", raw)
    assert _snapshot(raw) == before                      # nothing written inside the raw directory


@pytest.mark.parametrize("fault", INSTRUMENT_FAULTS, ids=lambda f: f.name)
def test_a_frame_of_no_or_another_instrument_is_rejected_and_named(sim, tmp_path, fault):
    """Issue 27: with an instrument registry, a frame no instrument matches, two match, or another
    instrument than the night's matches is not reduced with guessed settings: rejected with its reason,
    the night degraded (exit 3), the light curve made of the night's instrument's frames."""
    raw = make_night(sim.raw_dir, tmp_path / "raw", [fault])
    rc, summary = reduce_cli(sim, raw, tmp_path / "red", "--set", f"instruments_dir={write_registry(fault, tmp_path)}")
    assert rc == fault.exit_status == 3, (fault.name, rc, summary.get("degraded"), summary.get("rejected"))
    assert summary["instrument"] == "sim" and summary["settings"]["aper"].startswith("instrument sim (")
    check_outcome(fault, summary, tmp_path / "red", raw)


@pytest.mark.parametrize("fault", TARGET_FAULTS, ids=lambda f: f.name)
def test_target_fault_gives_its_outcome_and_exit_status(sim, tmp_path, fault, capsys):
    """A night without a target is its own outcome (exit 4, the comparisons' light curves and the
    chart kept, no field reference from it); a damaged or disagreeing field reference is refused in
    one line (exit 2) and kept as it was."""
    red = tmp_path / "red"
    red.mkdir()
    if fault.red_setup:
        fault.red_setup(red)
    ref = red / "fields" / "SIMV.ecsv"
    before = ref.read_bytes() if ref.exists() else None
    sets = [a for k, v in fault.sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    rc, summary = reduce_cli(sim, sim.raw_dir, red, *sets)
    assert rc == fault.exit_status, (fault.name, rc, summary.get("groups"))
    check_target_outcome(fault, summary, red, before)
    if fault.outcome == "bad input":
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("qlcp: error: ") and all(w in err for w in fault.words), err


def test_non_ascii_name_kept_exactly(sim, tmp_path):
    """The raw name is in the listing as it is; the corrected frame's RAWFILE escapes it losslessly."""
    from urllib.parse import unquote

    from astropy.io import fits

    fault = next(f for f in FAULTS if f.name == "non_ascii_name")
    raw = make_night(sim.raw_dir, tmp_path / "raw", [fault])
    rc, _ = reduce_cli(sim, raw, tmp_path / "red", "--steps", "lbfi")
    assert rc == 0
    assert NON_ASCII in (tmp_path / "red" / "lst" / "SIMV_V.lst").read_text().split("\n")
    bf = next((tmp_path / "red" / "SIMV_V").glob("SIMV-0016V-*.bf.fits"))
    assert unquote(fits.getheader(bf)["RAWFILE"]) == NON_ASCII


def test_failed_bias_unit_degrades_the_night_and_it_goes_on(sim, tmp_path, monkeypatch):
    """A bias step that fails (here: its combine raises) loses the bias, not the night: exit 3,
    the light curve still made, ``degraded`` names the step and its error, no master bias used."""
    from qlcp.core import bias as bias_mod
    from qlcp.core.errors import InputError

    def broken(*a, **k):
        raise InputError("bias-0002.fit: unreadable data (test)")

    monkeypatch.setattr(bias_mod, "make_master_bias", broken)
    rc, s = reduce_cli(sim, sim.raw_dir, tmp_path / "red")
    assert rc == 3
    assert s["degraded"] == ["no bias: step b failed: bias-0002.fit: unreadable data (test)"]
    assert s["masters"]["bias"]["path"] is None and s["masters"]["bias"]["source"] == "failed"
    assert s["groups"][0]["outputs"]["lightcurve"] and not s["groups"][0]["error"]


def test_stale_master_of_a_failed_step_is_not_used(sim, tmp_path, monkeypatch):
    """A bias.fits left by an earlier run is not taken for tonight's when tonight's bias step failed."""
    from qlcp.core import bias as bias_mod
    from qlcp.core.errors import InputError

    red = tmp_path / "red"
    assert reduce_cli(sim, sim.raw_dir, red, "--steps", "lb")[0] == 0
    assert (red / "bias.fits").is_file()

    def broken(*a, **k):
        raise InputError("combine: test")

    monkeypatch.setattr(bias_mod, "make_master_bias", broken)
    rc, s = reduce_cli(sim, sim.raw_dir, red, "--steps", "lbfi")
    assert rc == 3 and s["masters"]["bias"]["path"] is None


def test_failed_group_leaves_no_new_partial_product(sim, tmp_path):
    """A group unit that fails removes the group products it wrote in this run, not older ones."""
    from qlcp.core.products import product_path
    from qlcp.core.stages import plan
    from qlcp.core.walk import NightWalk

    red = tmp_path / "red"
    red.mkdir()
    old = product_path(red, "chart", "SIMV", "V")
    old.write_text("an earlier run's chart")
    os.utime(old, ns=(1, 1))
    cfg = load_config([sim.config_path], {"workers": 1})
    walk = NightWalk(sim.raw_dir, red, cfg, [], driver="plain")
    walk._take_listing({"summary": "", "rejected": [], "groups": [["SIMV", "V", []]], "bias": [], "flats": {},
                        "dark": []})
    lc = product_path(red, "lightcurve", "SIMV", "V")
    lc.write_text("partial")
    block = next(b for b in plan(cfg.steps) if b.name == "lc")
    walk.fail(block, "lc-SIMV-V", {"obj": "SIMV", "band": "V"}, "plot failed")
    assert not lc.exists() and old.exists()
    assert walk.groups[("SIMV", "V")].summary.error == "step cdg: plot failed"


def test_target_coordinate_does_not_depend_on_chunks(sim, tmp_path):
    """RA/DEC missing from the first frame: every frame gets BJD, however the group is chunked."""
    from astropy.io import fits

    from qlcp.core import run

    fault = next(f for f in FAULTS if f.name == "no_radec_in_first_frame")
    raw = make_night(sim.raw_dir, tmp_path / "raw", [fault])
    for workers in (1, 2):
        red = tmp_path / f"red{workers}"
        run(raw, red, config=load_config([sim.config_path], {"workers": workers, "steps": "lbfi",
                                                              "calib_library": False}))
        bjd = [float(fits.getheader(f)["BJD"]) for f in sorted((red / "SIMV_V").glob("*.bf.fits"))]
        assert len(bjd) == 10 and np.all(np.isfinite(bjd)), (workers, bjd)


@pytest.mark.parametrize("case", PLANTED_LINKS, ids=lambda c: c.name)
def test_a_link_planted_in_red_is_never_written_through(sim, tmp_path, capsys, case):
    """R17: the lock file and the step logs were opened through links planted in a writable RED, and
    a linked directory took the products outside.  Now: refused with one line naming the link (exit 2),
    or, for a product, the link replaced by the product; the target outside untouched either way."""
    red = tmp_path / "red"
    target = plant_link(case, red, tmp_path / "outside")
    capsys.readouterr()
    rc, _ = reduce_cli(sim, sim.raw_dir, red)
    err = capsys.readouterr().err.strip().splitlines()
    check_link_untouched(case, red, target)
    if case.refused:
        assert rc == 2
        assert err[-1] == (f"qlcp: error: {red / case.link}: is a symbolic link; a run writes nothing through "
                           f"links inside its output directory (remove the link)")
        assert sum("error" in line for line in err) == 1
    else:
        assert rc == 0 and (red / "lc_SIMV_V.ecsv").is_file()


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c.name)
def test_bad_input_is_one_line_and_exit_2_before_the_work(sim, tmp_path, capsys, case):
    """Issue #24 item 5, R16: a mistake in the config or the command stops the run with one line naming
    the key (or what the night has) and exit status 2, before any master is made."""
    from qlcp.deployments.cli import main

    raw, files = bad_input_setup(case, sim, tmp_path)
    red = tmp_path / "red"
    capsys.readouterr()
    rc = main(["run", str(raw), str(red), "--no-prefect", *[a for f in files for a in ("--config", f)],
               "--set", "workers=1", "--set", "calib_library=false"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("qlcp: error:")]
    assert rc == 2 and len(err) == 1, (case.name, rc, err)
    assert all(w in err[0] for w in case.words), (case.name, err[0])
    assert not (red / "bias.fits").exists()


def test_a_base_frame_pointed_off_field_is_replaced_and_the_target_kept(tmp_path):
    """D7: a first frame pointed 40 % of a side off in x and y aligns with the others, so it stayed the
    base, but they share ~36 % of its field: the pick saw only that corner's stars and the night ended
    'no target' (256 px, seed 3).  Now the base is the group's best frame, the tracked photometry
    measures the frames that share little of the reference's field in full, and the target is found."""
    import shutil

    from astropy.table import Table

    from qlcp.core.simulate import simulate_night
    from tests.faults import base_off_field

    sim = simulate_night(tmp_path / "n", n_frames=16, size=256, seed=3, n_bias=3, n_flats=3, n_constant=5)
    raw = tmp_path / "raw"
    shutil.copytree(sim.raw_dir, raw)
    base_off_field(raw)
    rc, summary = reduce_cli(sim, raw, tmp_path / "red")
    assert rc == 0 and summary.get("outcome") != "no target"
    off = Table.read(tmp_path / "red" / "offset_SIMV_V.ecsv", format="ascii.ecsv")
    assert off.meta["base"] != "SIMV-0001V.fit" and int(np.sum(off["ok"])) == len(off)
    lc = Table.read(tmp_path / "red" / "lc_SIMV_V.ecsv", format="ascii.ecsv")
    assert "mag_t0_a0" in lc.colnames and np.isfinite(np.asarray(lc["mag_t0_a0"], float)).sum() >= 15
