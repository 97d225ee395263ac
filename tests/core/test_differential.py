"""Step d (differential photometry) on a synthetic night with known truth.

The night (see test_catalogue.make_night) has an eclipsing target (star 0),
a second eclipsing star among the comparisons (9), a bright comparison that
drops out in the second half of the night (10), a saturated star (7), a check
star (11), extinction, clouds, a drift and a jump of the pointing.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from qlcp.core.catalogue import FLAG_MISSING, FLAG_SATURATED, build_catalogue
from qlcp.core.differential import differential, resolve_indexes, robust_scatter, write_lightcurve
from qlcp.core.differential.lightcurves import _reject_unusable, _reject_variable
from qlcp.core.errors import ConfigError

try:
    from .synthetic_night import CHK, DROP_COMP, SAT, TGT, VAR_COMP, cfg_for_tests, make_night
except ImportError:          # rootdir-less import mode
    from synthetic_night import CHK, DROP_COMP, SAT, TGT, VAR_COMP, cfg_for_tests, make_night

NA = 2


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    """Two nights identical but for the target's eclipse depth."""
    cfg = cfg_for_tests()
    out = {}
    for depth in (0.3, 0.6):
        n = make_night(tmp_path_factory.mktemp(f"d{depth}"), depth=depth, var_comp=True, drop_comp=True)
        n["cata"] = build_catalogue(n["cat_files"], n["offsets"], n["starxy"], cfg)
        out[depth] = n
    return out


@pytest.fixture(scope="module")
def night(nights):
    return nights[0.3]


@pytest.fixture(scope="module")
def result(night):
    return differential(night["cata"], [TGT], None, [CHK], cfg_for_tests())


def _noise(lc, role, k, j):
    (row,) = [r for r in lc.meta["noise"] if r["role"] == role and r["k"] == k and r["aperture"] == j]
    return row


def test_output_contract(result, night):
    lc, stars = result
    expected = ["file", "jd", "bjd_tdb", "hjd", "airmass", "fwhm", "sky", "ok"]
    for j in range(NA):
        expected += [f"mag_t0_a{j}", f"err_t0_a{j}"]
    for j in range(NA):
        expected += [f"mag_c0_a{j}", f"err_c0_a{j}"]
    assert lc.colnames == expected
    assert len(lc) == night["nf"]
    assert list(lc["file"][:1]) == ["M1-0000V.fit"]
    np.testing.assert_allclose(lc["jd"], night["jd"])
    assert lc["ok"].dtype == bool
    assert lc.meta["apertures"] == [4.0, 6.0]
    roles = {s["index"]: s["role"] for s in lc.meta["stars"]}
    assert roles[TGT] == "target" and roles[CHK] == "check" and roles[VAR_COMP] == "rejected"
    assert {(r["role"], r["k"], r["aperture"]) for r in lc.meta["noise"]} == \
        {(role, 0, j) for role in ("target", "check") for j in range(NA)}
    assert stars.colnames == ["index", "label", "x", "y", "role", "source", "weight", "scatter", "reason"]
    assert len(stars) == night["ns"]
    assert stars["label"][TGT] == "T0" and stars["label"][CHK] == "C0"     # as mag_t0_*, mag_c0_*
    assert stars["label"][VAR_COMP].startswith("X")
    assert {r["label"] for r in lc.meta["noise"]} == {"T0", "C0"}
    assert set(stars["role"]) == {"target", "comparison", "check", "rejected"}
    assert set(stars["source"]) == {"given"}
    np.testing.assert_allclose(stars["x"], [p[0] for p in night["starxy"]])
    assert stars["weight"].shape == (night["ns"], NA)
    np.testing.assert_allclose(stars["weight"].sum(axis=0), 1.0)


def test_bad_frames_not_ok(result):
    lc, _ = result
    assert not lc["ok"][10] and not lc["ok"][20]
    assert np.isnan(lc["mag_t0_a0"][10])
    assert lc["ok"].sum() == len(lc) - 2


def test_target_light_curve_matches_truth(result, night):
    lc, _ = result
    ok = np.asarray(lc["ok"])
    for j in range(NA):
        resid = (lc[f"mag_t0_a{j}"] - night["var"][:, TGT])[ok]
        resid -= np.median(resid)
        rms = np.sqrt(np.mean(resid**2))
        pred = _noise(lc, "target", 0, j)["predicted"]
        assert rms < 1.5 * pred
        # the prediction itself agrees with the noise put in (target alone, without the ensemble)
        injected = np.median(night["sigma_mag"][ok, TGT, j])
        assert injected < pred < 1.3 * injected
        # the error column is the propagated error, of the right size
        assert 0.7 < np.median(lc[f"err_t0_a{j}"][ok]) / pred < 1.3
        assert not _noise(lc, "target", 0, j)["noisy"]


def test_constant_check_star_at_predicted_noise(result):
    lc, _ = result
    ok = np.asarray(lc["ok"])
    for j in range(NA):
        row = _noise(lc, "check", 0, j)
        m = lc[f"mag_c0_a{j}"][ok]
        assert np.std(m) < 1.3 * row["predicted"]
        assert row["achieved"] < 1.3 * row["predicted"]
        assert not row["noisy"]


def test_variable_comparison_rejected_with_reason(result):
    lc, stars = result
    s = stars[VAR_COMP]
    assert s["role"] == "rejected" and s["reason"].startswith("variable")
    assert np.all(s["weight"] == 0)
    assert VAR_COMP not in lc.meta["ind_ref"] and VAR_COMP in lc.meta["ind_ref_given"]
    # nothing stable was thrown out with it
    assert sum(stars["role"] == "rejected") == 3


def test_saturated_and_dropped_out_comparisons_rejected(result):
    _, stars = result
    assert stars[SAT]["role"] == "rejected" and "saturated" in stars[SAT]["reason"]
    assert stars[DROP_COMP]["role"] == "rejected" and "missing in 51%" in stars[DROP_COMP]["reason"]


def test_dropout_comparison_kept_without_jump(night):
    """Allowed to miss half the night, a bright comparison must not make the ensemble jump."""
    lc, stars = differential(night["cata"], [TGT], None, [CHK], cfg_for_tests(pick_bad_max=0.6))
    assert stars[DROP_COMP]["role"] == "comparison"
    w = stars["weight"][:, 0]
    assert w[DROP_COMP] > np.median(w[w > 0])           # heavy enough that a jump would show
    ok = np.asarray(lc["ok"])
    half = len(lc) // 2
    for j in range(NA):
        resid = np.asarray(lc[f"mag_t0_a{j}"] - night["var"][:, TGT])
        pred = _noise(lc, "target", 0, j)["predicted"]
        a, b = resid[:half][ok[:half]], resid[half:][ok[half:]]
        assert abs(np.median(a) - np.median(b)) < 1.0 * pred
        chk = np.asarray(lc[f"mag_c0_a{j}"])
        assert abs(np.median(chk[:half][ok[:half]]) - np.median(chk[half:][ok[half:]])) < 1.0 * pred


def test_weights_do_not_depend_on_target(nights):
    lc1, st1 = differential(nights[0.3]["cata"], [TGT], None, [CHK], cfg_for_tests())
    lc2, st2 = differential(nights[0.6]["cata"], [TGT], None, [CHK], cfg_for_tests())
    assert not np.allclose(lc1["mag_t0_a0"][lc1["ok"]], lc2["mag_t0_a0"][lc2["ok"]])   # targets differ
    np.testing.assert_array_equal(st1["weight"], st2["weight"])
    assert list(st1["role"]) == list(st2["role"])
    np.testing.assert_array_equal(lc1["mag_c0_a1"], lc2["mag_c0_a1"])


def test_frame_without_comparison_not_ok(night):
    cata = Table(night["cata"], copy=True)
    comps = [i for i in range(night["ns"]) if i not in (TGT, CHK)]
    flags = np.array(cata["flags"])
    flags[5, comps] |= FLAG_MISSING
    cata["flags"] = flags
    lc, _ = differential(cata, [TGT], None, [CHK], cfg_for_tests())
    assert not lc["ok"][5] and np.isnan(lc["mag_t0_a0"][5])
    assert lc["ok"][4] and lc["ok"][6]


def test_default_indexes():
    assert resolve_indexes(5) == ([0], [1, 2, 3, 4], [])
    assert resolve_indexes(5, 2, None, [4]) == ([2], [0, 1, 3], [4])
    assert resolve_indexes(5, [0], [1, 2, 3], 2) == ([0], [1, 3], [2])   # a check is no comparison
    with pytest.raises(ConfigError, match="ind_ref"):
        resolve_indexes(5, 0, [1, 7])


def test_robust_scatter_ignores_eclipse():
    rng = np.random.default_rng(3)
    t = np.linspace(0, 1, 400)
    y = 0.01 * rng.standard_normal(400)
    dip = 0.5 * np.exp(-0.5 * ((t - 0.5) / 0.05) ** 2)
    assert abs(robust_scatter(y + dip) / 0.01 - 1) < 0.15
    assert np.std(y + dip) > 5 * 0.01


def test_write_lightcurve(tmp_path, result):
    lc, stars = result
    prov = {"code_version": "test", "config_hash": "abc", "gain": 1.5}
    paths = write_lightcurve(lc, stars, tmp_path, "M1", "V", prov)
    names = {p.relative_to(tmp_path).as_posix() for p in paths}
    refs = "-".join(str(i) for i in lc.meta["ind_ref"])
    refs = refs if len(refs) <= 40 else f"{lc.meta['ind_ref'][0]}-{lc.meta['ind_ref'][-1]}n{len(lc.meta['ind_ref'])}"
    assert {"lc_M1_V.ecsv", "stars_M1_V.ecsv", f"cali_M1_AP4/M1_V_vc0_{refs}.txt",
            f"cali_M1_AP6/M1_V_chk0_{refs}.txt"} <= names
    assert len(paths) == 2 + 2 * NA
    back = Table.read(tmp_path / "lc_M1_V.ecsv")
    assert back.colnames == lc.colnames
    assert back.meta["provenance"] == prov
    assert back.meta["noise"][0]["predicted"] == pytest.approx(lc.meta["noise"][0]["predicted"])
    st = Table.read(tmp_path / "stars_M1_V.ecsv")
    np.testing.assert_allclose(st["weight"], stars["weight"])
    txt = np.loadtxt(tmp_path / f"cali_M1_AP4/M1_V_vc0_{refs}.txt")
    ok = np.asarray(lc["ok"])
    assert txt.shape == (ok.sum(), 3)
    np.testing.assert_allclose(txt[:, 0], lc["bjd_tdb"][ok], atol=1e-7)
    np.testing.assert_allclose(txt[:, 1], lc["mag_t0_a0"][ok], atol=1e-5)
    assert not list(tmp_path.rglob(".*tmp*"))


# ------------------------------------------------ the pieces of differential, on their own
def _comparison_cube(seed=5, nf=120, nc=6, na=2, sigma=0.01):
    """Comparison magnitudes with white noise of known sigma, extinction and clouds common to all."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, nf)
    common = 0.3 * t + np.where((t > 0.4) & (t < 0.5), 0.5, 0.0)        # extinction and a cloud
    m = (12 + rng.uniform(0, 2, nc))[None, :, None] + common[:, None, None] \
        + sigma * rng.standard_normal((nf, nc, na))
    e = np.full_like(m, sigma)
    return t, m, e


def test_reject_variable_rejects_an_injected_variation_and_keeps_constants():
    t, m, e = _comparison_cube()
    m[:, 3, :] += 0.08 * np.sin(2 * np.pi * 3 * t)[:, None]
    comps, fits, reason = _reject_variable(m, e, e, list(range(6)))
    assert comps == [0, 1, 2, 4, 5]
    assert list(reason) == [3] and reason[3].startswith("variable: scatter")
    assert len(fits) == 2
    for ft in fits:                      # fitted on the 5 constants: scatter at the injected noise
        np.testing.assert_allclose(ft["s"], 0.01 * np.sqrt(1 + 1 / 4), rtol=0.25)


def test_reject_variable_keeps_constant_comparisons_despite_clouds():
    _, m, e = _comparison_cube(seed=8)
    comps, fits, reason = _reject_variable(m, e, e, [0, 1, 2, 3, 4, 5])
    assert comps == [0, 1, 2, 3, 4, 5] and reason == {}
    assert all(np.all(np.isfinite(ft["w"])) for ft in fits)


def test_reject_variable_worst_first_and_needs_three_comparisons():
    t, m, e = _comparison_cube(seed=9)
    m[:, 1, :] += 0.05 * np.sin(2 * np.pi * 2 * t)[:, None]
    m[:, 4, :] += 0.20 * np.sin(2 * np.pi * 2 * t + 1)[:, None]
    comps, _, reason = _reject_variable(m, e, e, list(range(6)))
    assert list(reason) == [4, 1] and comps == [0, 2, 3, 5]
    # with two comparisons there is nothing to tell which one varies
    comps, fits, reason = _reject_variable(m, e, e, [0, 4])
    assert comps == [0, 4] and reason == {} and len(fits) == 2
    assert _reject_variable(m, e, e, []) == ([], None, {})


def test_reject_unusable_saturated_in_an_ok_frame_or_missing_too_often():
    _, m, _ = _comparison_cube(nf=20, nc=5)
    flags = np.zeros((20, 5), dtype=np.int64)
    ok = np.ones(20, bool)
    ok[7] = False
    flags[7, 1] |= FLAG_SATURATED         # saturated only in a frame not ok: kept
    flags[3, 2] |= FLAG_SATURATED
    m[7] = np.nan                         # a frame not ok has no usable magnitude
    m[:6, 4, 1] = np.nan                  # missing in 6 of 19 ok frames in one aperture
    comps, reason = _reject_unusable(flags, m, ok, [0, 1, 2, 4], bad_max=0.3)
    assert comps == [0, 1] and set(reason) == {2, 4}
    assert reason[2] == "saturated in 1 frame(s)"
    assert reason[4] == "missing in 32% of frames > 30%"
    assert _reject_unusable(flags, m, ok, [0, 1, 2, 4], bad_max=0.35)[0] == [0, 1, 4]
