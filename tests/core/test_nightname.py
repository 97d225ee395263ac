"""A night's name: its directory's, or the local evening date of its first science frame when generic."""

from __future__ import annotations

import json
import shutil

import pytest
from astropy.time import Time

from qlcp.core import run
from qlcp.core.nightname import evening_date, is_generic, night_name
from qlcp.core.runsetup import make_config
from qlcp.core.simulate import simulate_small
from tests.conftest import write_frame


@pytest.mark.parametrize("name", ["raw", "RAW", "Data", "images", "night", "fits", "tmp"])
def test_generic_names(name):
    assert is_generic(name)


@pytest.mark.parametrize("name", ["20240606", "20240606_85", "2024-06-06", "UYUMa_night1"])
def test_dated_names_are_kept(name, tmp_path):
    assert not is_generic(name)
    (tmp_path / name).mkdir()
    assert night_name(tmp_path / name) == name


def test_evening_date_uses_the_site_time_zone():
    t = Time("2024-06-06T17:30:00", scale="utc")          # 01:30 on the 7th at UTC+8: the evening of the 6th
    assert evening_date(t, 8) == "20240606"
    assert evening_date(Time("2024-06-06T13:00:00", scale="utc"), 8) == "20240606"   # 21:00 local
    assert evening_date(Time("2024-06-07T03:00:00", scale="utc"), -7) == "20240606"  # 20:00 local, UTC-7
    assert evening_date(Time("2024-06-06T03:00:00", scale="utc"), 0) == "20240605"   # after midnight UTC


def test_generic_directory_named_by_first_science_frame(tmp_path):
    raw = tmp_path / "Images"
    # a bias first (by name), dated the evening before; then a science frame after local midnight
    write_frame(raw / "a_bias.fits", IMAGETYP="BIAS", DATE_OBS="2024-06-05T10:00:00", EXPTIME=0.0)
    write_frame(raw / "b_sci.fits", IMAGETYP="LIGHT", OBJECT="XO1", FILTER="V", EXPTIME=30.0,
                DATE_OBS="2024-06-06T18:10:00")
    cfg = make_config([], site_tz=8)
    assert night_name(raw, cfg) == "20240606"               # 02:10 local on the 7th: night of the 6th
    assert night_name(raw, make_config([], site_tz=-7)) == "20240605"   # 11:10 local: still the night before


def test_generic_directory_without_science_keeps_its_name(tmp_path):
    raw = tmp_path / "data"
    write_frame(raw / "bias.fits", IMAGETYP="BIAS", DATE_OBS="2024-06-05T10:00:00", EXPTIME=0.0)
    assert night_name(raw) == "data"


def test_summary_and_plot_title_use_the_date_name(tmp_path):
    sim = simulate_small(tmp_path / "sim", n_frames=6, size=160, seed=41, n_bias=3, n_flats=3, thick_cloud=False)
    assert sim.raw_dir.name == "raw"
    cfg = make_config([sim.config_path], steps="lbfiopkcd")
    s = run(sim.raw_dir, tmp_path / "red", config=cfg)
    assert s.night == "20240606"
    assert json.loads((tmp_path / "red" / "summary.json").read_text())["night"] == "20240606"


def test_simulate_dated_layout_keeps_the_default(tmp_path):
    a = simulate_small(tmp_path / "a", n_frames=2, size=96, seed=1, n_bias=1, n_flats=1, thick_cloud=False)
    b = simulate_small(tmp_path / "b", n_frames=2, size=96, seed=1, n_bias=1, n_flats=1, thick_cloud=False,
                       dated=True, night="2024-07-01")
    assert a.raw_dir == tmp_path / "a" / "raw"
    assert b.raw_dir == tmp_path / "b" / "raw" / "20240701"
    assert sorted(p.name for p in a.raw_dir.iterdir()) == sorted(p.name for p in b.raw_dir.iterdir())
    assert night_name(b.raw_dir) == "20240701"
    shutil.rmtree(tmp_path / "a")
