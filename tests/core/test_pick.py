"""Step k (automatic choice of target, comparison and check stars) on a synthetic night.

The night (test_catalogue.make_night) has the eclipsing target (star 0, at
the centre), a second, shallower eclipsing star (9), a saturated star (7), a
star whose peak is within 10 % of saturation but unflagged (8), a bright star
missing in half the frames (10), and constant stars.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from qlcp.core.catalogue import build_catalogue
from qlcp.core.differential import differential
from qlcp.core.errors import MissingInputError
from qlcp.core.pick import (_classify, _NightStats, _night_statistics, _roles_and_reasons, pick_stars, read_pick,
                             write_pick)

try:
    from .synthetic_night import DROP_COMP, NEAR_SAT, SAT, SHAPE, TGT, VAR_COMP, cfg_for_tests, make_night
except ImportError:          # rootdir-less import mode
    from synthetic_night import DROP_COMP, NEAR_SAT, SAT, SHAPE, TGT, VAR_COMP, cfg_for_tests, make_night


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    return make_night(tmp_path_factory.mktemp("pick"), var_comp=True, drop_comp=True)


@pytest.fixture(scope="module")
def sel(night):
    return pick_stars(night["cat_files"], night["offsets"], cfg_for_tests(), SHAPE)


def _which(night, xy, tol=1.0):
    """Index of the true star at base position xy (None if none within tol px)."""
    d = [math.dist(xy, p) for p in night["starxy"]]
    i = int(np.argmin(d))
    return i if d[i] < tol else None


def test_finds_eclipsing_star_as_target(night, sel):
    assert sel.ind_tgt == [0]                                # targets come first in starxy
    assert _which(night, sel.starxy[0], tol=0.2) == TGT
    # the second eclipsing star lies outside the central region: not a target, not a comparison
    (r,) = [r for r in sel.report if _which(night, (r["x"], r["y"])) == VAR_COMP]
    assert r["role"] == "rejected" and "outside the central region" in r["reason"]
    # with the whole image allowed, it is the second (less variable) target
    s = pick_stars(night["cat_files"], night["offsets"], cfg_for_tests(pick_var_rad=1.0), SHAPE)
    assert [_which(night, s.starxy[i]) for i in s.ind_tgt] == [TGT, VAR_COMP]


def test_comparisons_are_stable_and_never_saturated(night, sel):
    refs = [_which(night, sel.starxy[i]) for i in sel.ind_ref]
    chks = [_which(night, sel.starxy[i]) for i in sel.ind_chk]
    assert None not in refs and None not in chks
    assert len(refs) >= 10
    assert SAT not in refs + chks and NEAR_SAT not in refs + chks
    assert DROP_COMP not in refs + chks
    for i in refs + chks:
        assert np.all(night["var"][:, i] == 0)               # truly constant
    rep = sel.report
    used = rep[rep["role"] == "comparison"]
    assert np.all(used["std"] < 0.05) and np.all(used["range"] < 0.10)
    # why the saturated and the drop-out stars were turned down
    by_star = {_which(night, (r["x"], r["y"])): r for r in rep}
    assert by_star[SAT]["saturated"] and "saturated" in by_star[SAT]["reason"]
    assert by_star[NEAR_SAT]["saturated"]
    assert "missing" in by_star[DROP_COMP]["reason"] and by_star[DROP_COMP]["missing"] > 0.45
    assert set(rep["role"]) <= {"target", "comparison", "check", "rejected"}
    assert len(rep) >= len(night["starxy"]) - 2               # all but the faintest are candidates


def test_indexes_partition_starxy(sel):
    all_ix = sel.ind_tgt + sel.ind_ref + sel.ind_chk
    assert sorted(all_ix) == list(range(len(sel.starxy)))
    assert 1 <= len(sel.ind_chk) <= 2


def test_ref_limit_and_checks_are_next_most_stable(night):
    s = pick_stars(night["cat_files"], night["offsets"], cfg_for_tests(pick_ref_n=5), SHAPE)
    assert len(s.ind_ref) == 5 and len(s.ind_chk) == 2
    rep = s.report
    std_of = {int(r["star"]): r["std"] for r in rep if r["star"] >= 0}
    assert max(std_of[i] for i in s.ind_ref) <= min(std_of[i] for i in s.ind_chk)
    rest = rep[rep["reason"] == "stable, beyond pick_ref_n and the check stars"]
    assert len(rest) > 0 and min(rest["std"]) >= max(std_of[i] for i in s.ind_chk)


def test_no_variable_gives_empty_target_list(night, caplog):
    with caplog.at_level(logging.WARNING, logger="qlcp.pick"):
        s = pick_stars(night["cat_files"], night["offsets"], cfg_for_tests(pick_var_std=1.0), SHAPE)
    assert s.ind_tgt == [] and len(s.ind_ref) > 0
    assert "no variable" in caplog.text


def test_variable_outside_centre_not_a_target(night):
    s = pick_stars(night["cat_files"], night["offsets"], cfg_for_tests(pick_var_rad=0.02), SHAPE)
    assert s.ind_tgt == []           # the target is 12 px from the centre, the limit 0.02 x 512 px
    rep = s.report
    for star in (TGT, VAR_COMP):
        (r,) = [r for r in rep if _which(night, (r["x"], r["y"])) == star]
        assert "outside the central region" in r["reason"]


def test_write_read_pick(tmp_path, sel):
    p = write_pick(sel, tmp_path, "M1", "V")
    assert p.name == "pick_M1_V.ecsv"
    back = read_pick(tmp_path, "M1", "V")
    assert back.ind_tgt == sel.ind_tgt and back.ind_ref == sel.ind_ref and back.ind_chk == sel.ind_chk
    np.testing.assert_allclose(back.starxy, sel.starxy)
    assert list(back.report["reason"]) == list(sel.report["reason"])
    with pytest.raises(MissingInputError, match="pick_M1_B"):
        read_pick(tmp_path, "M1", "B")


def test_selection_feeds_catalogue_and_differential(night, sel):
    cfg = cfg_for_tests()
    cata = build_catalogue(night["cat_files"], night["offsets"], sel.starxy, cfg)
    cata.meta["source"] = "picked"
    lc, stars = differential(cata, sel.ind_tgt, sel.ind_ref, sel.ind_chk, cfg)
    ok = np.asarray(lc["ok"])
    resid = (lc["mag_t0_a1"] - night["var"][:, TGT])[ok]
    pred = [r for r in lc.meta["noise"] if r["role"] == "target" and r["k"] == 0 and r["aperture"] == 1][0]
    assert np.std(resid) < 1.5 * pred["predicted"]
    assert set(stars["source"]) == {"picked"}


# ------------------------------------------------ the pieces of pick_stars, on their own
def test_night_statistics_removes_frame_zero_points_and_measures_each_star():
    nf, ng = 40, 10
    true = np.linspace(12.0, 15.0, ng)
    zp = np.linspace(0.0, 0.6, nf) + np.where(np.arange(nf) % 7 == 0, 0.4, 0.0)   # extinction, clouds
    var = 0.1 * np.sin(np.linspace(0, 4 * np.pi, nf))
    mags = true[None, :] + zp[:, None]
    mags[:, 2] += var
    mags[:10, 5] = np.nan                             # missing in a quarter of the frames
    mags[0, :8] = np.nan                              # only 2 of 10 stars found: frame not aligned
    xb = np.tile(np.arange(ng, dtype=float), (nf, 1))
    xb[:, 3] += np.where(np.arange(nf) % 2 == 0, 0.5, -0.5)
    st = _night_statistics(mags, xb, xb + 100)
    assert st.n_frames == nf - 1 and st.magc.shape == (nf - 1, ng)
    const = [i for i in range(ng) if i != 2]
    np.testing.assert_allclose(st.std[const], 0.0, atol=1e-9)           # zero points fully removed
    assert st.std[2] == pytest.approx(np.std(var[1:]), rel=1e-6)
    assert st.rng[2] == pytest.approx(np.ptp(var[1:]), rel=1e-6)
    assert st.missing[5] == pytest.approx(9 / 39)
    np.testing.assert_allclose(st.x, np.arange(ng))
    np.testing.assert_allclose(st.y, np.arange(ng) + 100.0)


def _stats(std, x=None, y=None, missing=None):
    std = np.asarray(std, dtype=float)
    n = len(std)
    return _NightStats(magc=np.zeros((5, n)), n_frames=5, missing=np.zeros(n) if missing is None else missing,
                       std=std, rng=3 * std, mag=np.full(n, 14.0),
                       x=np.full(n, 255.5) if x is None else np.asarray(x, float),
                       y=np.full(n, 255.5) if y is None else np.asarray(y, float))


def test_classify_targets_central_and_most_variable_first_comparisons_most_stable():
    cfg = cfg_for_tests(pick_ref_n=3, pick_var_std=0.05, pick_ref_std=0.02, pick_ref_dif=0.1, pick_var_rad=0.5)
    std = [0.10, 0.004, 0.30, 0.002, 0.003, 0.010, 0.001, 0.005, 0.007, 0.006, 0.2, 0.0015, 0.03]
    x = np.full(len(std), 255.5)
    x[10] = 10.0                                        # a variable far from the centre
    sat = np.zeros(len(std), bool)
    sat[6] = True                                       # the most stable star saturates
    cls = _classify(_stats(std, x=x), sat, cfg, (512, 512))
    assert list(cls.var_ix) == [2, 0]
    assert list(cls.ref_ix) == [11, 3, 4]               # 9 stable stars: 3 comparisons, 2 checks
    assert list(cls.chk_ix) == [1, 7]
    role, reason = _roles_and_reasons(_stats(std, x=x), sat, cls, cfg)
    assert role[10] == "rejected" and reason[10] == "variable but outside the central region"
    assert role[6] == "rejected" and reason[6] == "saturated"
    assert reason[12] == "std 0.030 neither stable nor variable"
    assert role[5] == "rejected" and reason[5].startswith("stable, beyond")


def test_classify_takes_checks_from_the_end_when_few_stable_stars():
    cfg = cfg_for_tests(pick_ref_n=10, pick_ref_std=0.02, pick_var_std=0.05)
    cls = _classify(_stats([0.001, 0.003, 0.002, 0.004]), np.zeros(4, bool), cfg, (512, 512))
    assert list(cls.ref_ix) == [0, 2, 1] and list(cls.chk_ix) == [3]
    cls = _classify(_stats([0.001, 0.003]), np.zeros(2, bool), cfg, (512, 512))
    assert list(cls.ref_ix) == [0, 1] and list(cls.chk_ix) == []
