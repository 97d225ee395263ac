"""Config: defaults of the manual, precedence, YAML and INI, clear errors."""

from __future__ import annotations

import logging

import pytest
import yaml

from qlcp.core.config import Config, load_config, parse_set
from qlcp.core.errors import ConfigError
from qlcp.core.runsetup import make_config
from qlcp.core.workmode import workmode


def test_manual_defaults():
    c = Config()
    assert (c.site_lon, c.site_lat, c.site_ele, c.site_tz) == (117.57722, 40.395833, 960, 8)
    assert (c.flat_limit_low, c.flat_limit_high, c.border_cut) == (5000, 50000, 0)
    assert (c.draw_phot, c.draw_phot_err, c.offset_max_dis, c.match_max_dis) == (False, 0.05, 250, 10.0)
    assert (c.pick_err_max, c.pick_bad_max, c.pick_var_std, c.pick_var_rad) == (0.02, 0.2, 0.05, 0.5)
    assert (c.pick_ref_n, c.pick_ref_std, c.pick_ref_dif) == (20, 0.05, 0.10)
    assert c.file_log == logging.DEBUG and c.scr_log == logging.INFO
    assert c.aper == [5.0] and c.date_key == "DATE-OBS" and c.time_ref == "start"
    assert c.mode == workmode(workmode.EXIST_APPEND + workmode.MISS_SKIP)


def test_precedence_arguments_over_later_files_over_earlier(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.ini"
    a.write_text(yaml.safe_dump({"site_lat": 10.0, "site_lon": 20.0, "border_cut": 3}))
    b.write_text("# site of b\nsite_lat = 30.5\nfile_log = logging.WARNING\n")
    c = load_config([a, b], {"border_cut": 7, "site_lon": None})
    assert c.site_lat == 30.5          # later file wins
    assert c.site_lon == 20.0          # None argument = not given
    assert c.border_cut == 7           # argument wins
    assert c.file_log == logging.WARNING


def test_yaml_carries_run_parameters(tmp_path):
    f = tmp_path / "night.yaml"
    f.write_text(yaml.safe_dump({
        "steps": "lbfi", "obj": "UYUMa", "band": "BV", "aper": [3, 6.0, -1.5],
        "starxy": {"UYUMa": [[927, 1018], [855, 920]]}, "ind_tgt": {"UYUMa": 0},
        "ind_ref": [1], "alt_coord": ["12:34:56", "+23:45:12.3"], "mode": ["EXIST_OVER", "MISS_ERROR"],
        "use_flat": {"B": "/x/flat_B.fits"}}))
    c = load_config(f)
    assert c.steps == "lbfi" and c.obj == ["UYUMa"] and c.band == ["B", "V"]
    assert c.aper == [3.0, 6.0, -1.5]
    assert c.for_object("starxy", "UYUMa") == [(927, 1018), (855, 920)]
    assert c.for_object("starxy", "other") is None
    assert c.for_object("ind_tgt", "UYUMa") == [0] and c.for_object("ind_ref", "any") == [1]
    assert c.mode == workmode(workmode.EXIST_OVER + workmode.MISS_ERROR)
    assert c.flat_for("use_flat", "B") == "/x/flat_B.fits" and c.flat_for("use_flat", "V") is None


@pytest.mark.parametrize("content, key", [
    ({"gain": -1.0}, "gain"),
    ({"aper": list(range(1, 21))}, "aper"),
    ({"flat_limit_low": 60000}, "flat_limit_low"),
    ({"site_lat": "north"}, "site_lat"),
    ({"pick_bad_max": 1.5}, "pick_bad_max"),
    ({"steps": "lbxq"}, "steps"),
    ({"mode": ["EXIST_OVER", "EXIST_SKIP"]}, "mode"),
    ({"gian": 1.2}, "gian"),
])
def test_bad_config_names_key_and_file(tmp_path, content, key):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError) as e:
        make_config([f])                        # as a run makes it: the step letters are the stage graph's
    msg = str(e.value)
    assert key in msg and str(f) in msg and "\n" not in msg


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match="did you mean 'gain'"):
        load_config(overrides={"gian": 1})


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    f = tmp_path / "broken.yaml"
    f.write_text("aper: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml.*not valid YAML"):
        load_config(f)
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(f)
    g = tmp_path / "bad.ini"
    g.write_text("site_lat 40\n")
    with pytest.raises(ConfigError, match=r"bad.ini:1"):
        load_config(g)


def test_set_values_and_hash():
    d = parse_set(["aper=[4, 6]", "site_lat=32.7", "draw_phot=true"])
    assert d == {"aper": [4, 6], "site_lat": 32.7, "draw_phot": True}
    c1, c2 = load_config(overrides=d), load_config(overrides={**d, "aper": [4, 7]})
    assert c1.hash(["site_lat"]) == c2.hash(["site_lat"])
    assert c1.hash(["aper"]) != c2.hash(["aper"])


def test_effective_config_round_trips(tmp_path):
    c = load_config(overrides={"aper": [3, 5], "mode": "EXIST_OVER+MISS_ERROR", "scr_log": "WARNING"})
    f = tmp_path / "eff.yaml"
    f.write_text(c.to_yaml())
    assert load_config(f) == c or load_config(f).plain() == c.plain()
