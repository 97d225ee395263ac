"""A first night at a new telescope (issue #24 item 5): the example site file, time zones by name,
sexagesimal values YAML would turn into numbers, the warning when no site is configured."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from qlcp.core.config import load_config, parse_set
from qlcp.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "site.yaml"


def test_the_example_site_file_loads_through_the_config_loader():
    cfg = load_config([EXAMPLE])
    assert (cfg.site_lat, cfg.site_lon, cfg.site_ele) == (32.7803, -105.8203, 2788)
    assert cfg.site_timezone == "America/Denver" and cfg.site_tz == -7.0
    from qlcp.core.targets import all_targets

    (xo1,) = all_targets(cfg)
    assert xo1.name == "XO-1" and abs(xo1.ra - 240.54933) < 1e-4 and abs(xo1.dec - 28.16956) < 1e-4
    assert "XO1B" in xo1.names()            # the ARCSAT frames' OBJECT, XO1-b
    assert "Your own telescope" in (REPO / "README.md").read_text()
    assert "examples/site.yaml" in (REPO / "README.md").read_text()


def test_the_example_site_file_classifies_the_real_arcsat_night(xo1_dir):
    from qlcp.core.listing import list_night

    night = list_night(xo1_dir, None, load_config([EXAMPLE]), write=False)
    assert night.science_groups() == [("XO1-b", "z")] and len(night.rejected) == 0


@pytest.mark.parametrize("tz, hours", [("America/Phoenix", -7.0), ("America/Denver", -7.0),
                                       ("Asia/Shanghai", 8.0), ("Australia/Sydney", 10.0), (-7, -7.0),
                                       ("5.5", 5.5)])
def test_site_tz_as_an_iana_name_or_hours(tz, hours):
    cfg = load_config(None, {"site_tz": tz})
    assert cfg.site_tz == hours
    assert cfg.site_timezone == (tz if isinstance(tz, str) and "/" in tz else None)
    again = load_config(None, cfg.plain(only_set=True))          # a flow's parameters round-trip
    assert (again.site_tz, again.site_timezone) == (cfg.site_tz, cfg.site_timezone)


def test_unknown_time_zone_names_the_key(tmp_path):
    f = tmp_path / "site.yaml"
    f.write_text("site_tz: Mars/Olympus_Mons\n")
    with pytest.raises(ConfigError, match=rf"^{f}: site_tz: unknown time zone 'Mars/Olympus_Mons'"):
        load_config([f])


@pytest.mark.parametrize("text, key, value", [
    ("targets: [{name: XO-1, ra: 16:02:11.84, dec: '+28:10:10.4'}]", "targets[0].ra", "16:02:11.84"),
    ("targets:\n  - name: XO-1\n    ra: '16:02:11.84'\n    dec: +28:10:10.4\n", "targets[0].dec", "+28:10:10.4"),
    ("alt_coord: {XO1: [16:02:11, '+28:10:10']}", "alt_coord.XO1[0]", "16:02:11"),
])
def test_sexagesimal_that_yaml_makes_a_number_is_refused_with_quote_it(tmp_path, text, key, value):
    """YAML 1.1 reads an unquoted 16:02:11.84 as a base-60 number (57731.84): refused at load, naming the
    key and file (before: taken as 57731.84 degrees and refused only at step i, after the masters)."""
    f = tmp_path / "site.yaml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        load_config([f])
    assert str(e.value) == (f"{f}: key {key!r}: {value} unquoted is a base-60 number in YAML: quote it "
                            f"('{value}')")


def test_sexagesimal_in_set_is_refused_too():
    with pytest.raises(ConfigError, match="argument: key 'alt_coord\\[0\\]'.*quote it"):
        load_config(None, parse_set(["alt_coord=[16:02:11.84, '+28:10:10']"]))
    assert load_config(None, parse_set(["aper=[4, 6]"])).aper == [4.0, 6.0]


def test_no_site_configured_is_a_warning_once(caplog, monkeypatch):
    from qlcp.core import runsetup

    monkeypatch.setattr(runsetup, "_SITE_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="qlcp.runsetup"):
        runsetup.make_config(None)
        runsetup.make_config(None)
        runsetup.make_config(None, site_lat=32.78, site_lon=-105.82)
    lines = [r.getMessage() for r in caplog.records if "no site configured" in r.getMessage()]
    assert len(lines) == 1 and "Xinglong" in lines[0] and "examples/site.yaml" in lines[0]


def test_summary_paths_are_absolute_on_the_plain_path_as_on_prefect(tmp_path, monkeypatch):
    """Relative RAW and RED on the command line: summary.json's paths were relative to the current
    directory on the plain path and absolute on the Prefect path; now absolute on both."""
    import json

    from qlcp.core.simulate import simulate_small
    from qlcp.deployments.cli import main

    sim = simulate_small(tmp_path / "n", n_frames=6, size=128, seed=3, n_bias=2, n_flats=2)
    monkeypatch.chdir(tmp_path)
    rc = main(["run", str(sim.raw_dir.relative_to(tmp_path)), "red", "--no-prefect", "--steps", "lbfiop",
               "--config", str(sim.config_path), "--set", "workers=1", "--set", "calib_library=false"])
    s = json.loads((tmp_path / "red" / "summary.json").read_text())
    assert rc == 0 and s["red_dir"] == str(tmp_path / "red") and s["raw_dir"] == str(sim.raw_dir)
    paths = [p for g in s["groups"] for p in g["outputs"].values()] + [m["path"] for m in s["masters"].values()
                                                                        if m.get("path")]
    assert paths and all(Path(p).is_absolute() and Path(p).is_file() for p in paths), paths
