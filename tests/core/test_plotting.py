"""Light curve, finding chart and frame-source figures (qlcp.core.plotting)."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from matplotlib.patches import Circle

from qlcp.core import plotting
from qlcp.core.errors import InputError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]

N = 120
APERTURES = [4.0, 6.0, 8.0]
# achieved scatter per aperture (mag): t0 is best at aperture 1, c0 at aperture 2
ACHIEVED = {"t0": [0.006, 0.003, 0.004], "t1": [0.008, 0.006, 0.005], "c0": [0.005, 0.004, 0.002]}


def _eclipse(phase_t, t0=0.75, depth=0.45, half=0.035, ingress=0.012):
    """Trapezoid eclipse in magnitudes (positive = fainter)."""
    d = np.abs(phase_t - t0)
    return depth * np.clip((half - d) / ingress, 0.0, 1.0)


def make_lc(with_noise_meta=True, bad_idx=(5, 17, 60, 61, 99), outlier_idx=None) -> Table:
    rng = np.random.default_rng(42)
    bjd = 2460462.62 + np.linspace(0.0, 0.28, N)
    t = Table()
    t["file"] = [f"f{i:04d}.fits" for i in range(N)]
    t["jd"] = bjd - 0.004
    t["bjd_tdb"] = bjd
    t["hjd"] = bjd - 0.0001
    t["airmass"] = 1.0 + 0.8 * (np.linspace(0, 1, N) - 0.3) ** 2
    t["fwhm"] = 3.0 + 0.3 * rng.standard_normal(N)
    t["sky"] = 200.0 + rng.standard_normal(N)
    ok = np.ones(N, bool)
    ok[list(bad_idx)] = False
    t["ok"] = ok
    frac = bjd - 2460462.0
    base = {"t0": 1.2 + _eclipse(frac), "t1": 0.4 + 0.02 * np.sin(frac * 40), "c0": -0.3 + 0 * frac}
    for star, signal in base.items():
        kind, k = star[0], star[1:]
        for j, sig in enumerate(ACHIEVED[star]):
            mag = signal + 0.1 * j + sig * rng.standard_normal(N)   # aperture j identifiable by +0.1 j
            mag[~ok] += 3.0                                           # rejected frames are wild
            t[f"mag_{kind}{k}_a{j}"] = mag
            t[f"err_{kind}{k}_a{j}"] = np.full(N, sig)
    if outlier_idx is not None:
        t["mag_t0_a1"][outlier_idx] += 5.0
    t.meta.update(object="UYUMa", band="V", night="20240606", apertures=APERTURES)
    if with_noise_meta:
        t.meta["noise"] = [{"star": s, "aper": j, "achieved": a, "predicted": 0.8 * a, "noisy": False}
                           for s, v in ACHIEVED.items() for j, a in enumerate(v)]
    return t


def make_stars() -> Table:
    rows = [(0, 40.0, 50.0, "target"), (1, 90.5, 30.2, "target"), (2, 20.0, 80.0, "comparison"),
            (3, 110.0, 95.0, "comparison"), (4, 70.0, 12.0, "comparison"), (5, 60.0, 100.0, "check"),
            (6, 15.0, 15.0, "rejected"), (7, 118.0, 60.0, "rejected")]
    s = Table(rows=rows, names=("index", "x", "y", "role"))
    s["source"] = "auto"
    s["weight"] = [0, 0, 0.5, 0.3, 0.2, 0, 0, 0]
    s["scatter"] = 0.01
    s["reason"] = ""
    return s


def star_axes(fig):
    return {ax.get_label()[5:]: ax for ax in fig.axes if ax.get_label().startswith("star:")}


def line_by_gid(ax, gid):
    found = [ln for ln in ax.lines if ln.get_gid() == gid]
    assert len(found) <= 1
    return found[0] if found else None


# ------------------------------------------------------------- light curve
def test_default_aperture_is_smallest_achieved_scatter_of_first_target():
    assert plotting.choose_aperture(make_lc()) == 1
    assert plotting.choose_aperture(make_lc(with_noise_meta=False)) == 0
    lc = make_lc()
    lc.meta["noise"] = [{"star": "c0", "aper": 2, "achieved": 0.001}, {"star": "t0", "aper": 2, "achieved": 0.002},
                        {"star": "t0", "aper": 0, "achieved": None}, "junk"]
    assert plotting.choose_aperture(lc) == 2


def test_lightcurve_panels_inverted_and_plot_the_chosen_aperture_without_rejected_frames():
    lc = make_lc()
    fig = plotting.make_lightcurve_figure(lc, make_stars())
    axes = star_axes(fig)
    assert list(axes) == ["t0", "t1", "c0"]          # targets first, then check stars
    ok = np.asarray(lc["ok"])
    for star, ax in axes.items():
        assert ax.yaxis_inverted(), star
        data = line_by_gid(ax, f"data:{star}")
        y = np.asarray(data.get_ydata())
        x = np.asarray(data.get_xdata())
        # the chosen aperture is 1 (smallest achieved scatter of t0), even for c0 whose best is 2
        expected = np.asarray(lc[f"mag_{star}_a1"])[ok]
        np.testing.assert_allclose(y, expected)
        np.testing.assert_allclose(x, np.asarray(lc["bjd_tdb"])[ok] - 2460462)
        rej = line_by_gid(ax, f"rejected:{star}")
        np.testing.assert_allclose(np.sort(rej.get_ydata()), np.sort(np.asarray(lc[f"mag_{star}_a1"])[~ok]))
        # rejected frames (3 mag fainter) are outside the display range
        hi = max(ax.get_ylim())
        assert np.all(np.asarray(rej.get_ydata()) > hi)
        assert line_by_gid(ax, f"clipped:{star}") is None
    assert [a.get_xlabel() for a in fig.axes if a.get_label() == "conditions"] == ["BJD_TDB - 2460462"]
    header = fig._suptitle.get_text()
    assert "UYUMa" in header and "r = 6.0 px" in header and "3.0 mmag" in header and "2.4" in header
    assert [a.get_label() for a in fig.axes].count("conditions") == 1


def test_meta_as_written_by_differential():
    """Noise rows named by role/k/aperture, FWHM-relative apertures, star order from ind_tgt."""
    lc = make_lc()
    rows = []
    for star, values in ACHIEVED.items():
        for j, a in enumerate(values):
            if star == "t0" and j == 0:      # a missing row must not matter
                continue
            rows.append({"star": 7, "role": "target" if star[0] == "t" else "check", "k": int(star[1:]),
                         "aperture": j, "achieved": a, "predicted": 0.5 * a, "noisy": star == "c0"})
    lc.meta["noise"] = rows
    lc.meta.update(apertures=[-1.0, -1.5, -2.0], aper_radius=[3.1, 4.6, 6.2], ind_tgt=[1, 0], ind_chk=[5])
    assert plotting.choose_aperture(lc) == 1
    fig = plotting.make_lightcurve_figure(lc, make_stars())
    header = fig._suptitle.get_text()
    assert "r = 1.5 FWHM = 4.6 px" in header and "3.0 mmag (predicted 1.5)" in header
    axes = star_axes(fig)
    texts = {k: " ".join(t.get_text() for t in ax.texts) for k, ax in axes.items()}
    assert "T0  (90, 30)" in texts["t0"] and "T1  (40, 50)" in texts["t1"]   # one name per star: T0, as chart and stars table
    assert "NOISY" in texts["c0"] and "NOISY" not in texts["t0"]
    # without a stars table the positions come from lc.meta["stars"]
    lc.meta["stars"] = [{"index": i, "role": r["role"], "x": r["x"], "y": r["y"]} for i, r in enumerate(make_stars())]
    texts = " ".join(t.get_text() for t in star_axes(plotting.make_lightcurve_figure(lc, None))["t0"].texts)
    assert "T0  (90, 30)" in texts


def test_chart_follows_the_light_curve_star_order():
    stars = make_stars()
    img = star_image(stars)
    for fig in (plotting.make_chart_figure(img, stars, order={"ind_tgt": [1, 0], "ind_ref": [4, 2, 3]}),
                plotting.make_chart_figure(img, Table(stars, meta={"ind_tgt": [1, 0], "ind_ref": [4, 2, 3]}))):
        c = {p.get_gid(): p.center for p in fig.axes[0].patches}
        np.testing.assert_allclose(c["target:T0"], (90.5, 30.2))
        np.testing.assert_allclose(c["target:T1"], (40.0, 50.0))
        np.testing.assert_allclose(c["comparison:R0"], (70.0, 12.0))
        np.testing.assert_allclose(c["comparison:R2"], (110.0, 95.0))


def test_explicit_aperture_and_missing_meta():
    lc = make_lc(with_noise_meta=False)
    lc.meta = {}
    fig = plotting.make_lightcurve_figure(lc, None, aper_index=2)
    ax = star_axes(fig)["t1"]
    np.testing.assert_allclose(line_by_gid(ax, "data:t1").get_ydata(), np.asarray(lc["mag_t1_a2"])[lc["ok"]])
    with pytest.raises(InputError):
        plotting.make_lightcurve_figure(lc, None, aper_index=3)
    with pytest.raises(InputError):
        plotting.make_lightcurve_figure(Table({"jd": [1.0, 2.0]}), None)


def test_y_limits_ignore_a_wild_point_but_keep_the_whole_eclipse():
    lc = make_lc(outlier_idx=30)
    fig = plotting.make_lightcurve_figure(lc, None)
    ax = star_axes(fig)["t0"]
    faint, bright = ax.get_ylim()
    mag = np.asarray(lc["mag_t0_a1"])
    good = np.asarray(lc["ok"]) & (np.arange(N) != 30)
    assert faint < mag[30]                       # the +5 mag outlier is off the axis ...
    assert bright < mag[good].min() and faint > mag[good].max()   # ... the eclipse is all in
    assert faint - bright < 1.0
    clipped = line_by_gid(ax, "clipped:t0")      # ... and flagged on the edge
    np.testing.assert_allclose(clipped.get_ydata(), [faint])
    # rows out of time order give the same limits (spikes are judged in time order)
    shuffled = lc[np.random.default_rng(0).permutation(N)]
    ax2 = star_axes(plotting.make_lightcurve_figure(shuffled, None))["t0"]
    np.testing.assert_allclose(ax2.get_ylim(), (faint, bright))


def test_robust_limits_keep_a_short_sparse_eclipse_and_drop_spikes():
    rng = np.random.default_rng(3)
    m = 0.002 * rng.standard_normal(300)
    dip = np.array([0.06, 0.13, 0.2, 0.27, 0.33, 0.27, 0.2, 0.13, 0.06])   # 3 % of the night, V-shaped
    m[150:159] += dip
    m[40] += 4.0                     # one wild frame
    m[[220, 221]] -= 2.0             # two consecutive wild frames
    m[299] += 3.0                    # a wild last frame
    bright, faint = plotting.robust_limits(m, np.full(300, 0.002))
    assert faint > m[154] and faint < 0.6          # the eclipse bottom is in, the +4 and +3 are out
    assert bright < m[:150].min() and bright > -0.3
    assert plotting.robust_limits([np.nan, np.nan]) is None
    lo, hi = plotting.robust_limits([1.0, 1.0, 1.0])
    assert lo < 1.0 < hi
    lo, hi = plotting.robust_limits(np.r_[np.zeros(200), 10.0], np.full(201, 0.01))
    assert hi < 1.0


def test_plot_lightcurve_writes_png_and_pdf(tmp_path):
    out_png, out_pdf = tmp_path / "lc_UYUMa_V.png", tmp_path / "lc_UYUMa_V.pdf"
    paths = plotting.plot_lightcurve(make_lc(), make_stars(), out_png, out_pdf)
    assert paths == [out_png, out_pdf]
    assert out_png.read_bytes()[:8] == PNG_MAGIC
    assert out_pdf.read_bytes()[:5] == b"%PDF-"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]     # no temp files left
    png = plotting.render_lightcurve_png(make_lc(), make_stars())
    assert png[:8] == PNG_MAGIC and png == out_png.read_bytes()
    assert plotting.plot_lightcurve(make_lc(), None, tmp_path / "a.png") == [tmp_path / "a.png"]


def test_rendering_is_thread_safe_and_never_uses_pyplot():
    lcs = [make_lc(), make_lc(with_noise_meta=False)]
    with ThreadPoolExecutor(2) as pool:
        pngs = list(pool.map(lambda lc: plotting.render_lightcurve_png(lc, None), lcs * 2))
    assert all(p[:8] == PNG_MAGIC for p in pngs)
    assert pngs[0] == pngs[2] and pngs[1] == pngs[3] and pngs[0] != pngs[1]
    code = ("import sys, numpy as np; from astropy.table import Table\n"
            "from qlcp.core import plotting\n"
            "t = Table({'bjd_tdb': np.arange(5.0), 'mag_t0_a0': np.ones(5)})\n"
            "plotting.render_lightcurve_png(t)\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ charts
def star_image(stars, shape=(110, 130)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = 100.0 + np.random.default_rng(1).normal(0, 3, shape)
    for x, y in zip(stars["x"], stars["y"]):
        img += 2000.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))
    return img


def test_chart_marks_each_role_at_its_position(tmp_path):
    stars = make_stars()
    fig = plotting.make_chart_figure(star_image(stars), stars, title="UYUMa V")
    ax = fig.axes[0]
    assert ax.images[0].origin == "lower"
    circles = {p.get_gid(): p for p in ax.patches if isinstance(p, Circle)}
    expected = {"target": ["T0", "T1"], "comparison": ["R0", "R1", "R2"], "check": ["C0"], "rejected": ["X0", "X1"]}
    assert sorted(circles) == sorted(f"{r}:{n}" for r, names in expected.items() for n in names)
    colours = {"target": (1, 0, 0), "check": (0, 0, 1)}
    for role, names in expected.items():
        rows = [r for r in stars if r["role"] == role]
        for name, row in zip(names, rows):
            c = circles[f"{role}:{name}"]
            np.testing.assert_allclose(c.center, (row["x"], row["y"]))
            assert (c.get_linestyle() == "--") == (role == "rejected")
            if role in colours:
                np.testing.assert_allclose(c.get_edgecolor()[:3], colours[role])
    labels = {t.get_text(): t.get_position() for t in ax.texts}
    for name, c in ((n, circles[f"{r}:{n}"]) for r, ns in expected.items() for n in ns):
        assert np.hypot(*(np.subtract(labels[name], c.center))) < 3 * c.radius
    out = plotting.plot_chart(star_image(stars), stars, tmp_path / "chart_UYUMa_V.png")
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_frame_sources_circles_only_good_sources(tmp_path):
    cat = Table()
    cat["X"] = [10.0, 30.0, 50.0, 70.0, 90.0]
    cat["Y"] = [20.0, 40.0, 60.0, 80.0, 100.0]
    cat["Err"] = np.array([[0.01, 0.02], [0.2, 0.01], [0.03, 0.5], [np.nan, 0.0], [0.049, 0.1]])
    img = star_image(Table({"x": cat["X"], "y": cat["Y"]}))
    fig = plotting.make_frame_sources_figure(img, cat, 0.05)
    (marks,) = [ln for ln in fig.axes[0].lines if ln.get_gid() == "sources"]
    np.testing.assert_allclose(marks.get_xdata(), [10.0, 50.0, 90.0])
    np.testing.assert_allclose(marks.get_ydata(), [20.0, 60.0, 100.0])
    out = plotting.plot_frame_sources(img, cat, tmp_path / "f.cat.png", 0.05)
    assert out.read_bytes()[:8] == PNG_MAGIC


# ------------------------------------------------- pieces of make_lightcurve_figure, on their own
def test_scatter_label_from_budget_or_point_to_point():
    lc = make_lc()
    lc.meta["noise"][1]["noisy"] = True                       # t0, aperture 1
    label, noisy = plotting._scatter_label(lc, "t0", 1, np.zeros(3), np.zeros(3))
    a = 1000 * ACHIEVED["t0"][1]
    assert noisy and label == f"\u03c3 {plotting._fmt_num(a)} mmag (predicted {plotting._fmt_num(0.8 * a)})  NOISY"
    bare = make_lc(with_noise_meta=False)
    rng = np.random.default_rng(1)
    mag = 0.005 * rng.standard_normal(2000) + np.linspace(0, 0.3, 2000)   # white noise on a slow trend
    err = np.full(2000, 0.003)
    err[::2] = np.nan
    label, noisy = plotting._scatter_label(bare, "t0", 0, mag, err)
    assert not noisy
    assert label.startswith("\u03c3 p2p ") and label.endswith(" mmag (median err 3.0)")
    assert float(label.split()[2]) == pytest.approx(5.0, abs=0.3)      # the injected 5 mmag, trend ignored


def test_star_points_clips_good_points_to_the_edges_and_ignores_rejected_ones():
    fig = plotting._new_figure((4, 3), 72)
    ax = fig.subplots()
    x = np.arange(60.0)
    mag = 0.01 * np.sin(x)
    mag[10] = -2.0                                           # a wild bright point
    mag[20] = 3.0                                            # and a wild faint one
    ok = np.ones(60, bool)
    ok[30] = False
    mag[30] = 9.0                                            # rejected: a grey cross, no clipping
    plotting._star_points(ax, "t0", x, mag, np.full(60, 0.01), ok, "black")
    faint, bright = ax.get_ylim()
    assert faint > bright and bright < -0.01 and faint > 0.01 and faint < 1.0
    clipped = line_by_gid(ax, "clipped:t0")
    np.testing.assert_array_equal(clipped.get_xdata(), [10.0, 20.0])
    np.testing.assert_array_equal(clipped.get_ydata(), [bright, faint])
    np.testing.assert_array_equal(line_by_gid(ax, "rejected:t0").get_xdata(), [30.0])
    assert len(line_by_gid(ax, "data:t0").get_xdata()) == 59


def test_lc_header_lines():
    ok = np.ones(10, bool)
    ok[[2, 3]] = False
    meta = {"object": "UYUMa", "band": "V", "night": "20240606", "apertures": [5.0], "aper_radius": [5.0]}
    head = plotting._lc_header(meta, "", 0, "T0 s", ok, 3)
    assert head == ("UYUMa  V  20240606\naperture 0: r = 5.0 px   |   T0 s   |   8/10 frames, 2 rejected"
                    "   |   3 comparison stars")
    assert plotting._lc_header({}, "", 0, "", np.ones(4, bool), 0) == "light curve\naperture 0   |   4/4 frames"
