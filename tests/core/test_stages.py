"""The stage graph (qlcp.core.stages): its plan, its config views, product paths, the calibration policy."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from qlcp.core import stages as S
from qlcp.core.configview import UndeclaredConfigKey, view
from qlcp.core.calibration import choose_master
from qlcp.core.config import Config
from qlcp.core.errors import InputError
from qlcp.core.products import KINDS, product_path
from qlcp.core.simulate import simulate_small

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ plan
def test_plan_order_and_fusions():
    names = [b.name for b in S.plan("lbfiopwkcdg")]
    assert names == ["list", "bias", "dark", "flat", "ip", "offsets", "astrometry", "select", "lc"]
    assert [s.name for s in S.plan("lbfiopwkcdg")[-1].stages] == ["catalogue", "differential", "chart"]
    assert [b.name for b in S.plan("lbfiopkcdg")] == ["list", "bias", "dark", "flat", "ip", "offsets", "select", "lc"]
    assert [b.name for b in S.plan("w")] == ["list", "astrometry"]
    assert S.plan(Config().steps) == S.plan("lbfiopwkcdgt")             # w and t are in the default chain
    assert [b.name for b in S.plan("lbfiopwkcdgt")][-2:] == ["lc", "timing"]
    # i alone is not fused; the listing always runs (every stage needs it); c needs a selection
    assert [b.name for b in S.plan("i")] == ["list", "correct"]
    assert [b.name for b in S.plan("p")] == ["list", "photometry"]
    assert [b.name for b in S.plan("cd")] == ["list", "select", "lc"]      # stars are chosen before the catalogue
    assert [b.name for b in S.plan("d")] == ["list", "differential"]


def test_every_stage_holds_its_runner_and_known_products():
    for s in S.STAGES:
        assert callable(s.run) and s.run.__module__.startswith("qlcp.core.steps."), s.name
        assert set(s.writes) <= KINDS, s.name
        assert set(s.keys) <= set(Config.model_fields), (s.name, set(s.keys) - set(Config.model_fields))
    assert len({s.name for s in S.STAGES}) == len(S.STAGES)
    for f in S.FUSIONS:
        assert f.run is None or callable(f.run)
    fused = S.plan("lbfiopkcdg")
    assert fused[4].run is S.FUSIONS[0].run and fused[-1].run is None      # ip in one pass; lc stage by stage


def test_letters_and_group_products_come_from_the_stages():
    """``steps`` accepts exactly the graph's letters (and K); the default runs every stage."""
    from qlcp.core.walk import GROUP_PRODUCTS

    assert set(Config().steps) == set(S.STEP_LETTERS)
    from qlcp.core.runsetup import make_config

    with pytest.raises(Exception, match="key 'steps': unknown step"):
        make_config(steps="lz")
    with pytest.raises(Exception, match="unknown step"):
        S.plan("lz")
    assert {"offsets", "wcs", "selection", "lightcurve", "chart", "timing"} <= GROUP_PRODUCTS
    assert not GROUP_PRODUCTS & {"corrected", "frame_catalogue", "bias", "flat", "masters"}


def test_no_runner_is_found_by_name():
    """No ``globals()`` lookup and no runner named by a string: a stage's code is one step from its row."""
    for f in (REPO / "qlcp_core").rglob("*.py"):
        assert "globals()" not in f.read_text(), f


def test_block_files_drop_what_an_earlier_stage_of_the_block_writes():
    lc = S.plan("kcdg")[-1]
    assert "night_catalogue" not in lc.files and "stars" not in lc.files and "selection" in lc.files
    assert "wcs" in lc.files                    # the catalogue reads step w's product (its stars' RA, Dec)
    assert S.plan("d")[-1].files == ("night_catalogue", "masters", "corrected")     # GAINSRC, the masters used


def test_step_order_is_written_once():
    """No driver spells the step order or the k/c/d/g sequence again."""
    for f in ["qlcp_core/pipeline.py", "flows/night.py", "tasks/steps.py", "tasks/common.py", "qlcp_core/walk.py"]:
        text = (REPO / f).read_text()
        assert not re.search(r"['\"](l?bfi|kcdg|kKcdg|lbfiopw?kcdg)['\"]", text), f
        assert "STEP_KEYS" not in text, f


def test_markdown_table_lists_every_stage():
    table = S.markdown_table()
    for s in S.STAGES:
        assert f"**{s.name}**" in table


# ----------------------------------------------------------- config view
def test_view_refuses_undeclared_keys_and_allows_declared_and_free():
    cfg = Config(aper=[4.0], gain=2.0)
    v = view(cfg, S.stage("photometry"))
    assert v.aper == [4.0] and v.gain == 2.0 and v.workers is None     # declared, declared, free
    with pytest.raises(UndeclaredConfigKey, match="pick_ref_n"):
        v.pick_ref_n
    with pytest.raises(UndeclaredConfigKey, match="ind_tgt"):
        v.for_object("ind_tgt", "X")
    assert v.hash() == cfg.hash(sorted(S.stage("photometry").keys))


def test_view_survives_pickling_for_worker_processes():
    import pickle

    v = pickle.loads(pickle.dumps(view(Config(aper=[3.0]), S.stage("photometry"))))
    assert v.aper == [3.0]
    with pytest.raises(UndeclaredConfigKey):
        v.site_lat


def test_a_stage_reading_an_undeclared_key_fails_the_run(tmp_path, monkeypatch):
    """The real declarations let a whole night run; drop one key the correction reads and it fails, naming it."""
    from qlcp.core import run

    sim = simulate_small(tmp_path / "n", n_frames=4, size=128, seed=5, n_bias=3, n_flats=3, thick_cloud=False)
    s = run(sim.raw_dir, tmp_path / "ok", config=_cfg(sim, steps="lbfiopkcdg"))
    assert not s.failed and s.groups[0].outputs["lightcurve"]
    broken = tuple(dataclasses.replace(st, keys=tuple(k for k in st.keys if k != "saturation"))
                   if st.name == "correct" else st for st in S.STAGES)
    monkeypatch.setattr(S, "STAGES", broken)
    monkeypatch.setattr(S, "BY_NAME", {st.name: st for st in broken})
    with pytest.raises(Exception, match="saturation"):
        run(sim.raw_dir, tmp_path / "broken", config=_cfg(sim, steps="lbfi"))


def _cfg(sim, **kw):
    from qlcp.core.config import load_config

    return load_config([sim.config_path], {"workers": 1, **kw})


# --------------------------------------------------------------- products
def test_product_paths(tmp_path):
    assert product_path(tmp_path, "flat", band="V") == tmp_path / "flat_V.fits"
    assert product_path(tmp_path, "corrected", "XO-1", "R", frame="/raw/a-001.fit") == \
        tmp_path / "XO-1_R" / "a-001.bf.fits"
    bf = tmp_path / "XO-1_R" / "a-001.bf.fits"
    assert product_path(tmp_path, "frame_catalogue", frame=bf) == tmp_path / "XO-1_R" / "a-001.cat.fits"
    assert product_path(tmp_path, "lightcurve", "XO-1", "R") == tmp_path / "lc_XO-1_R.ecsv"
    assert product_path(tmp_path, "wcs", "XO-1", "R") == tmp_path / "wcs_XO-1_R.fits"
    with pytest.raises(Exception, match="lightcurve"):
        product_path(tmp_path, "lightcurve", "XO-1")


# ------------------------------------------------------------ calibration
def test_calibration_policy_use_tonight_alt_none(tmp_path):
    red = tmp_path / "red"
    red.mkdir()
    mine, alt = tmp_path / "my_flat.fits", tmp_path / "alt_flat.fits"
    mine.write_bytes(b"x")
    alt.write_bytes(b"x")
    c = Config(mode=["EXIST_APPEND", "MISS_SKIP"])
    assert choose_master(red, c, "flat", "V").source == "none"
    c2 = Config(alt_flat={"V": str(alt)}, mode=["EXIST_APPEND", "MISS_SKIP"])
    assert (choose_master(red, c2, "flat", "V").source, choose_master(red, c2, "flat", "V").path) == ("alt", str(alt))
    product_path(red, "flat", band="V").write_bytes(b"x")
    assert choose_master(red, c2, "flat", "V").source == "tonight"
    c3 = Config(use_flat={"V": str(mine)}, alt_flat={"V": str(alt)})
    assert choose_master(red, c3, "flat", "V").path == str(mine)
    with pytest.raises(InputError, match=r"use_bias: .*nope.fits"):
        choose_master(red, Config(use_bias=str(tmp_path / "nope.fits")), "bias")
    assert choose_master(red, Config(), "dark").source == "none"      # no dark is no error


def test_summary_records_which_masters_were_used(tmp_path):
    from qlcp.core import run

    sim = simulate_small(tmp_path / "n", n_frames=4, size=128, seed=6, n_bias=3, n_flats=3, thick_cloud=False)
    s = run(sim.raw_dir, tmp_path / "red", config=_cfg(sim, steps="lbfi"))
    assert s.masters["bias"]["source"] == "tonight" and s.masters["flat_V"]["source"] == "tonight"
    assert s.masters["dark"]["source"] == "none"
    lib = run(sim.raw_dir, tmp_path / "red2", config=_cfg(sim, steps="li", alt_bias=s.masters["bias"]["path"]))
    assert lib.masters["bias"]["source"] == "library"          # the library (the first run's master) before alt
    again = run(sim.raw_dir, tmp_path / "red3", config=_cfg(sim, steps="li", alt_bias=s.masters["bias"]["path"],
                                                              calib_library=False))
    assert again.masters["bias"] == {"kind": "bias", "band": None, "path": s.masters["bias"]["path"], "source": "alt",
                                     "why": ""}
    assert np.isfinite(again.groups[0].corrected)
