"""The instrument registry (qlcp.core.instruments): files, matching, the night's choice and the
precedence of its settings; the two real cameras of ../shared/data told apart and reduced each with
its own instrument; an unknown camera never reduced with guessed settings."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest
import yaml
from astropy.io import fits

from qlcp.core import instruments as I
from qlcp.core.config import load_config
from qlcp.core.errors import ConfigError
from qlcp.core.runsetup import for_night, make_config, write_effective_config
from qlcp.core.simulate import simulate_small

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
ARCSAT, SBIG = DATA / "xo1_arcsat_20250601", DATA / "tres1_oscaar_20120617"


def _write(d: Path, name: str, **content) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"name": name, **content}))
    return p


def _hdr(**cards) -> fits.Header:
    h = fits.Header({"NAXIS": 2, "NAXIS1": 100, "NAXIS2": 80})
    for k, v in cards.items():
        h[k] = v
    return h


# ------------------------------------------------------------------ files
def test_builtin_files_load_and_name_the_two_real_cameras():
    reg = I.registry("builtin")
    assert {i.name for i in reg.instruments} == {"arcsat", "sbig-st10"}
    arc = reg.get("ARCSAT 0.5-m")                                   # an alias
    assert arc.name == "arcsat" and arc.settings["site_lat"] == pytest.approx(32.78028)
    assert "gain" not in reg.get("sbig-st10").settings             # its gain is the headers' EGAIN


@pytest.mark.parametrize("content, words", [
    ({"match": {"header": {"TELESCOP": "X"}}, "nmae": 1}, ["'nmae'"]),
    ({"match": {"header": {"TELESCOP": "X"}, "sise": [1, 2]}}, ["'match.sise'"]),
    ({"match": {}, "settings": {"gian": 1.2}}, ["settings", "'gian'", "did you mean 'gain'"]),
    ({"match": {}, "settings": {"gain": -1}}, ["settings", "'gain'", "-1"]),
    ({"match": {}, "settings": {"instruments_dir": "x"}}, ["'instruments_dir'", "not an instrument's setting"]),
    ({"match": {}, "valid_from": "June"}, ["'valid_from'"]),
])
def test_a_bad_instrument_file_is_one_line_naming_file_and_key(tmp_path, content, words):
    p = _write(tmp_path / "reg", "cam", **content)
    with pytest.raises(ConfigError) as e:
        I.registry(str(tmp_path / "reg"))
    msg = str(e.value)
    assert str(p) in msg and "\n" not in msg and all(w in msg for w in words), msg


def test_a_bad_file_stops_the_run_before_any_work_and_the_cli_exits_2(tmp_path, capsys):
    from qlcp.deployments.cli import main

    _write(tmp_path / "reg", "cam", match={}, settings={"aper": [0]})
    with pytest.raises(ConfigError, match="cam.yaml: settings: key 'aper'"):
        make_config(None, instruments_dir=str(tmp_path / "reg"))
    assert main(["instruments", "list", "--dir", str(tmp_path / "reg")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([x for x in err if "error" in x]) == 1 and "cam.yaml" in err[-1]


# ------------------------------------------------------------------ matching
def test_rules_ignore_case_and_blanks_and_take_globs(tmp_path):
    _write(tmp_path / "reg", "a", match={"header": {"telescop": "big  scope", "INSTRUME": "cam-*"}, "size": [[100, 80]]})
    reg = I.registry(str(tmp_path / "reg"))
    assert reg.match(_hdr(TELESCOP="BIG SCOPE ", INSTRUME="CAM-2"), None).name == "a"
    v = reg.match(_hdr(TELESCOP="Big Scope", INSTRUME="other"), None)
    assert v.instrument is None and v.reason.startswith("unknown instrument: TELESCOP='Big Scope' INSTRUME='other'")
    assert "NAXIS1=100 NAXIS2=80" in v.reason
    assert reg.match(_hdr(NAXIS1=200, TELESCOP="big scope", INSTRUME="cam-1"), None).instrument is None


def test_two_instruments_matching_one_frame_is_ambiguous(tmp_path):
    _write(tmp_path / "reg", "a", match={"header": {"TELESCOP": "T1"}})
    _write(tmp_path / "reg", "b", match={"header": {"INSTRUME": "C*"}})
    v = I.registry(str(tmp_path / "reg")).match(_hdr(TELESCOP="T1", INSTRUME="C9"), None)
    assert v.instrument is None and v.reason.startswith("ambiguous instrument: matches a and b")


def test_a_camera_swap_halfway_is_a_new_instrument_from_that_date(tmp_path):
    rules = {"header": {"TELESCOP": "T1"}}
    _write(tmp_path / "reg", "old-cam", match=rules, valid_to="2024-06-15")
    _write(tmp_path / "reg", "new-cam", match=rules, valid_from="2024-06-15")
    reg = I.registry(str(tmp_path / "reg"))
    h = _hdr(TELESCOP="T1")
    assert reg.match(h, dt.date(2024, 6, 14)).name == "old-cam"
    assert reg.match(h, dt.date(2024, 6, 15)).name == "new-cam"
    v = reg.match(h, None)                                          # an undated frame: no guess
    assert v.instrument is None and "old-cam matches the header but is in use ... to 2024-06-15" in v.reason
    h["DATE-OBS"] = "2024-06-14T23:59:59"
    assert I.header_date(h) == dt.date(2024, 6, 14)


def test_the_night_takes_the_majority_and_a_tie_is_not_guessed():
    a, b = (I.Instrument(name=n, match={}) for n in "ab")
    va, vb, unknown = I.Verdict(a, ""), I.Verdict(b, ""), I.Verdict(None, "unknown instrument: x")
    assert I.choose([va, va, vb, unknown])[0] is a
    inst, why = I.choose([va, vb])
    assert inst is None and "as many frames of" in why
    assert I.choose([unknown])[0] is None


# ------------------------------------------------------------------ precedence
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return simulate_small(tmp_path_factory.mktemp("inst") / "n", n_frames=3, size=128, seed=1, n_bias=1, n_flats=1)


def test_precedence_arguments_night_file_instrument_site_default(tiny, tmp_path):
    reg = tmp_path / "reg"
    inst_file = _write(reg, "sim", match={"header": {"TELESCOP": "XL85-SIM"}},
                       settings={"gain": 2.0, "aper": [3.0], "site_lat": 10.0, "pixel_scale": 1.1})
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"instruments_dir": str(reg), "gain": 1.5, "aper": [4.0], "rdnoise": 5.0}))
    night = tmp_path / "night.yaml"
    night.write_text(yaml.safe_dump({"aper": [6.0]}))
    cfg = for_night(make_config([site, night], site_lat=20.0), tiny.raw_dir)
    assert (cfg.instrument, cfg.gain, cfg.aper, cfg.site_lat, cfg.rdnoise, cfg.pixel_scale) == \
        ("sim", 2.0, [6.0], 20.0, 5.0, 1.1)
    src = cfg._sources
    assert src["gain"] == src["pixel_scale"] == f"instrument sim ({inst_file})"
    assert (src["aper"], src["site_lat"], src["rdnoise"]) == (str(night), "argument", str(site))
    assert "detect_thresh" not in src                               # a built-in default: no source
    text = write_effective_config(tmp_path, cfg).read_text()
    assert f"# gain from instrument sim ({inst_file})\ngain: 2.0\n" in text
    assert load_config(None, yaml.safe_load(text)).gain == 2.0      # the file still reads as a config
    again = for_night(cfg, tiny.raw_dir)                            # a config made for a night: the same
    assert again.plain() == cfg.plain() and again._sources == cfg._sources


def test_no_registry_changes_nothing(tiny):
    cfg = make_config(None, gain=1.5)
    assert for_night(cfg, tiny.raw_dir) is cfg and cfg.instrument is None


def test_an_instrument_named_in_the_config_is_used(tiny, tmp_path):
    _write(tmp_path / "reg", "sim", match={"header": {"TELESCOP": "XL85-SIM"}}, settings={"gain": 2.0})
    _write(tmp_path / "reg", "other", match={"header": {"TELESCOP": "OTHER"}}, settings={"gain": 3.0})
    cfg = for_night(make_config(None, instruments_dir=str(tmp_path / "reg"), instrument="other"), tiny.raw_dir)
    assert (cfg.instrument, cfg.gain) == ("other", 3.0)
    with pytest.raises(ConfigError, match="instrument 'nope': not in"):
        for_night(make_config(None, instruments_dir=str(tmp_path / "reg"), instrument="nope"), tiny.raw_dir)


# ------------------------------------------------------------------ an unknown camera
def test_an_unknown_camera_is_rejected_and_named_never_reduced(tiny, tmp_path):
    """The simulated camera (TELESCOP XL85-SIM) matches no built-in file: with the built-ins on, every
    frame is rejected as an unknown instrument and nothing is reduced; without a registry (today) the
    same night is listed as before."""
    from qlcp.core import run
    from qlcp.core.errors import QLCPError
    from qlcp.core.listing import list_night

    cfg = load_config([tiny.config_path], {"instruments_dir": "builtin", "steps": "lbi", "calib_library": False})
    with pytest.raises(QLCPError, match="unknown instrument: TELESCOP='XL85-SIM'"):
        run(tiny.raw_dir, tmp_path / "red", config=cfg)
    assert not list((tmp_path / "red").rglob("*.bf.fits"))
    night = list_night(tiny.raw_dir, None, load_config([tiny.config_path]), write=False)
    assert len(night.rejected) == 0 and night.science_groups()


# ------------------------------------------------------------------ the two real cameras
needs_data = pytest.mark.skipif(not (ARCSAT.is_dir() and SBIG.is_dir()), reason="../shared/data absent")


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw_root")
    (root / "20250601").symlink_to(ARCSAT, target_is_directory=True)
    (root / "20120616").symlink_to(SBIG, target_is_directory=True)
    return root


@pytest.mark.realdata
@needs_data
def test_instruments_check_tells_the_two_real_cameras_apart(raw_root, capsys):
    from qlcp.deployments.cli import main

    out = {}
    for night in ("20250601", "20120616"):
        assert main(["instruments", "check", str(raw_root / night)]) == 0
        out[night] = capsys.readouterr().out.splitlines()
    assert "Bias_BIN1_20250602_032138.fits: arcsat: TELESCOP='ARCSAT 0.5-m' INSTRUME='dcam-spare'" in out["20250601"][0]
    assert out["20250601"][-1].endswith("arcsat: 45; night's instrument: arcsat (arcsat: 45 frame(s))")
    assert "tres1-001d.fit: sbig-st10: TELESCOP='' INSTRUME='SBIG ST-10 3 CCD Camera'" in out["20120616"][0]
    assert out["20120616"][-1].endswith("sbig-st10: 50; night's instrument: sbig-st10 (sbig-st10: 50 frame(s))")
    assert main(["instruments", "list"]) == 0
    listed = capsys.readouterr().out
    assert "arcsat (ARCSAT 0.5-m): TELESCOP='ARCSAT 0.5-m' INSTRUME='dcam-spare'; in use always" in listed


@pytest.mark.realdata
@needs_data
@pytest.mark.parametrize("night, instrument, gain, gainsrc", [
    ("20120616", "sbig-st10", 0.78, "header"),          # EGAIN = 0.78 (the night's README)
    ("20250601", "arcsat", None, "flats"),              # no gain card: the flats' photon transfer
])
def test_each_real_night_is_reduced_with_its_own_instrument(raw_root, tmp_path, night, instrument, gain, gainsrc):
    from qlcp.core import run

    cfg = make_config(None, instruments_dir="builtin", steps="lbfi", calib_library=False, workers=1)
    s = run(raw_root / night, tmp_path / night, config=cfg)
    summary = json.loads((tmp_path / night / "summary.json").read_text())
    assert summary["instrument"] == instrument and summary["settings"]["instrument"] == "chosen from the headers"
    assert summary["rejected"] == [] and s.groups[0].corrected == s.groups[0].frames
    frames = sorted((tmp_path / night).glob("*/*.bf.fits"))
    heads = [fits.getheader(f) for f in frames]
    assert heads and all(h["GAINSRC"] == gainsrc for h in heads)
    if gain is not None:
        assert all(h["GAIN"] == pytest.approx(gain, abs=1e-6) for h in heads)
    else:
        assert len({h["GAIN"] for h in heads}) == 1 and 0.5 < heads[0]["GAIN"] < 5
    text = (tmp_path / night / "config.yaml").read_text()
    assert f"# instrument from chosen from the headers\ninstrument: {instrument}\n" in text
    if instrument == "arcsat":                         # the site comes from the instrument file
        assert summary["settings"]["site_lat"].startswith("instrument arcsat (") and "site_lat: 32.78028" in text


@pytest.mark.realdata
@needs_data
def test_frames_of_another_camera_in_the_night_are_rejected_not_reduced(tmp_path):
    """Two SBIG darks copied into the ARCSAT night: the night is ARCSAT's (most frames); the SBIG
    frames are rejected as another instrument's, and the night says so (degraded)."""
    from qlcp.core import run

    raw = tmp_path / "raw" / "20250601"
    shutil.copytree(ARCSAT, raw)
    for f in ("tres1-001d.fit", "tres1-002d.fit"):
        shutil.copy(SBIG / f, raw / f)
    s = run(raw, tmp_path / "red", config=make_config(None, instruments_dir="builtin", steps="lb",
                                                         calib_library=False, workers=1))
    why = dict(s.rejected)
    assert why["tres1-001d.fit"] == "another instrument (sbig-st10) in this night: mixed-instrument nights are " \
                                    "not reduced yet"
    assert s.instrument == "arcsat" and s.outcome == "degraded"
    assert any("2 frame(s) not reduced, not of the night's instrument (arcsat)" in d for d in s.degraded)


# ------------------------------------------------------------------ calibrations
@pytest.mark.parametrize("calibrations, outcome", [("none", "ok"), (["dark"], "ok"), (None, "degraded")])
def test_a_camera_that_needs_no_calibration_gives_ok_nights_without_any(tiny, tmp_path, calibrations, outcome):
    """Issue 27: a camera delivering calibrated frames (``calibrations: none``) and a night with no
    bias and no flat: ok, not degraded, and no library or alt master stands in; the same camera without
    the key: degraded as before."""
    from qlcp.core import run

    raw = tmp_path / "raw"
    raw.mkdir()
    for f in sorted(tiny.raw_dir.glob("SIMV-*")):
        shutil.copy(f, raw / f.name)
    extra = {} if calibrations is None else {"calibrations": calibrations}
    _write(tmp_path / "reg", "sim", match={"header": {"TELESCOP": "XL85-SIM"}}, **extra)
    cfg = load_config([tiny.config_path], {"instruments_dir": str(tmp_path / "reg"), "steps": "lbfi",
                                           "workers": 1, "calib_library": False, "alt_bias": str(raw / "SIMV-0001V.fit")})
    s = run(raw, tmp_path / "red", config=cfg)
    assert s.outcome == outcome, s.degraded
    if outcome == "ok":
        assert s.masters["bias"]["source"] == s.masters["flat_V"]["source"] == "not needed"
        assert s.settings["calibrations"].startswith("instrument sim (") and s.degraded == []
    else:
        assert s.masters["bias"]["source"] == "alt" and any("no flat for V" in d for d in s.degraded)
    assert s.groups[0].corrected == 3


def test_calibrations_in_an_instrument_file_are_checked(tmp_path):
    p = _write(tmp_path / "reg", "cam", match={}, calibrations=["bias", "flats"])
    with pytest.raises(ConfigError, match=f"{p}: key 'calibrations'"):
        I.registry(str(tmp_path / "reg"))


def test_the_complete_file_in_the_docs_is_a_valid_instrument_file(tmp_path):
    import re

    doc = (Path(__file__).resolve().parents[2] / "docs" / "instruments.md").read_text()
    block = re.search(r"```yaml\n(# /etc/qlcp/instruments/roof-cam2.yaml.*?)```", doc, re.S).group(1)
    (tmp_path / "reg").mkdir()
    (tmp_path / "reg" / "roof-cam2.yaml").write_text(block)
    (inst,) = I.registry(str(tmp_path / "reg")).instruments
    assert inst.valid_from == dt.date(2024, 6, 15) and inst.layer()["calibrations"] == ["bias", "flat"]
    h = _hdr(TELESCOP="Roof 0.4m", INSTRUME="QHY600M", NAXIS1=4788, NAXIS2=3194, XBINNING=1, YBINNING=1)
    assert I.registry(str(tmp_path / "reg")).match(h, dt.date(2024, 7, 1)).name == "roof-cam2"


def test_choosing_the_instrument_and_listing_read_each_file_once(tiny, tmp_path, monkeypatch):
    from qlcp.core import listing

    _write(tmp_path / "reg", "sim", match={"header": {"TELESCOP": "XL85-SIM"}})
    reads = []
    real = listing._read_probe
    monkeypatch.setattr(listing, "_read_probe", lambda p: reads.append(p.name) or real(p))
    cfg = for_night(load_config([tiny.config_path], {"instruments_dir": str(tmp_path / "reg")}), tiny.raw_dir)
    night = listing.list_night(tiny.raw_dir, None, cfg, write=False)
    assert cfg.instrument == "sim" and len(night.science_groups()) == 1 and len(night.rejected) == 0
    assert sorted(reads) == sorted(set(reads)) and len(reads) == len(night.table) - int(sum(night.table["kind"] == "not FITS"))
    assert listing._HEADERS == {}                                   # taken by the listing: nothing kept
