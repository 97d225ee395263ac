#!/usr/bin/env python
"""Benchmark: reduce a simulated night and print seconds per frame per step and peak memory.

    python bench/bench_pipeline.py                     # 200 frames of 1024x1024, plain core
    python bench/bench_pipeline.py --scaling 50,200    # peak memory must not grow with frames
    python bench/bench_pipeline.py --prefect           # also through the Prefect flow (PREFECT_API_URL set)
    python bench/bench_pipeline.py --original          # also the original QLCP v2024.6 on the same night
    python bench/bench_pipeline.py --original --seeds 5   # ... on 5 nights: speed and scatter ratios
    python bench/bench_pipeline.py --original --real all  # ... and on the real frames of ../shared/data
    python bench/bench_pipeline.py --real all             # only the real frames, ours vs the original
    python bench/bench_pipeline.py --drift --frames 200 --size 768 --n-stars 5000 --original
                                                       # a night drifting like a real one, vs the same night
                                                       # without drift (CPU, astroalign calls), and the original

Each reduction runs in its own child process, so its wall time and peak
resident memory (from the kernel's accounting of that child) are its own;
each starts from the same state (:func:`settle`): the night's raw files in the
page cache, the writes of the run before it flushed.
Not a test: numbers, no pass/fail.  Nights are cached under ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

STEPS = "lbfiopkcdg"


#: a night drifting like a real one (a 0.15 m telescope's 142 frames: 273 of 650 px in x, 62 of 500 in y,
#: <= 0.13 deg of rotation): the drift as fractions of the frame over the night, and the total turn (deg)
DRIFT = (0.42, 0.12)
DRIFT_ROTATION = 0.13


def night_dir(work: Path, frames: int, size: int, seed: int, n_stars: int | None = None, drift: bool = False) -> Path:
    """Simulate (once) and return the night's directory (``n_stars``: the field's crowding, simulator default
    200 per 1024^2, ~85 detected sources a frame; 7000 gives ~1,500); ``drift``: the night drifts by
    :data:`DRIFT` of the frame and turns by :data:`DRIFT_ROTATION` deg."""
    from qlcp.core.simulate import simulate_night

    d = work / (f"night_{frames}x{size}_s{seed}" + (f"_n{n_stars}" if n_stars else "") + ("_drift" if drift else ""))
    if not (d / "truth" / "truth.json").is_file():
        shutil.rmtree(d, ignore_errors=True)
        t0 = time.perf_counter()
        geometry = {"drift_total": (DRIFT[0] * size, DRIFT[1] * size), "rotation_total_deg": DRIFT_ROTATION} \
            if drift else {}
        simulate_night(d, n_frames=frames, size=size, seed=seed, **({"n_stars": n_stars} if n_stars else {}),
                       **geometry)
        print(f"simulated {frames} frames of {size}x{size} in {time.perf_counter() - t0:.1f} s", flush=True)
    return d


def truth_starxy(night: Path) -> dict:
    """The truth's target and constant stars, so every run measures the same stars."""
    from astropy.table import Table

    info = json.loads((night / "truth" / "truth.json").read_text())
    s = Table.read(night / "truth" / "stars.ecsv")
    ids = [info["target_id"], *info["constant_ids"]]
    xy = [[float(s["x"][s["id"] == i][0]), float(s["y"][s["id"] == i][0])] for i in ids]
    n = len(ids)
    return {"starxy": xy, "ind_tgt": [0], "ind_ref": list(range(1, n - 1)), "ind_chk": [n - 1]}


# ------------------------------------------------------------------ children
def _run_cpu() -> float:
    """CPU seconds so far of this process, its reaped children and its live ones (the frame workers,
    from /proc): the difference across a run is the run's CPU, imports excluded."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + done.ru_utime + done.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                f = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(f[1]) == os.getpid():
                total += (int(f[11]) + int(f[12])) / tick
    return total


def child_plain(raw: str, red: str, config: str, extra: str) -> dict:
    from qlcp.core import run
    from qlcp.core.runsetup import make_config

    cfg = make_config([config], mode=["EXIST_OVER", "MISS_SKIP"], scr_log="WARNING", file_log="INFO",
                      **json.loads(extra))
    t0, c0 = time.perf_counter(), _run_cpu()
    summary = run(raw, red, config=cfg)
    return {"wall": time.perf_counter() - t0, "run_cpu": _run_cpu() - c0, "timings": summary.timings}


def child_prefect(raw: str, red: str, config: str, extra: str, refresh: bool = False) -> dict:
    from qlcp.core.runsetup import make_config
    from qlcp.flows.night import interactive_settings, process_night, start_workers

    t0, c0 = time.perf_counter(), _run_cpu()
    start_workers(red, make_config([config], **json.loads(extra)))     # as qlcp run does
    with interactive_settings():
        res = process_night(raw_dir=raw, red_dir=red, config_files=[config], refresh=refresh,
                            config={"mode": ["EXIST_OVER", "MISS_SKIP"], "scr_log": "WARNING", "file_log": "INFO",
                                    **json.loads(extra)})
    return {"wall": time.perf_counter() - t0, "run_cpu": _run_cpu() - c0, "states": res["run"].get("task_states", {})}


def settle(raw: Path) -> None:
    """Start a timed run from the same state for every pipeline: the night's raw files in the
    page cache (as just after the camera wrote them; the first run on a night would otherwise
    pay the disk reads that the next one is spared), and the writes of the run before flushed
    (~1 GB a night, which would otherwise be written back during this run)."""
    for f in sorted(Path(raw).iterdir()):
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(1 << 22):
                    pass
    os.sync()


#: output directories this invocation wrote (removed at its end unless --keep-outputs: ~0.8 GB a
#: 200-frame night; a few hundred of them once filled this machine's /tmp and failed a CI run)
_WRITTEN: set[Path] = set()


def run_child(kind: str, raw: Path, red: Path, config: Path, extra: dict, env=None, keep: bool = False) -> dict:
    """Run one reduction in a child process; add its peak RSS (MiB) from wait4."""
    if not keep:
        shutil.rmtree(red, ignore_errors=True)
    _WRITTEN.add(Path(red))
    cmd = [sys.executable, __file__, "--child", kind, str(raw), str(red), str(config), json.dumps(extra)]
    out_path = red.parent / f".{red.name}.{kind}.json"
    settle(raw)
    with open(out_path, "w") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env or os.environ.copy())
        _, status, usage = os.wait4(p.pid, 0)
    err = p.stderr.read()
    if status != 0:
        raise SystemExit(f"{kind} run failed:\n{err[-3000:]}")
    res = json.loads(out_path.read_text().strip().splitlines()[-1])
    res["peak_mib"] = usage.ru_maxrss / 1024
    res["cpu"] = usage.ru_utime + usage.ru_stime      # the child's and its reaped workers'
    res["majflt"], res["minflt"] = usage.ru_majflt, usage.ru_minflt   # page faults: read from disk; new memory
    return res


# -------------------------------------------------------------------- report
def lc_scatter(red: Path) -> dict:
    """Check-star and target scatter of our light curve (robust, mmag) and vs the truth."""
    import numpy as np
    from astropy.table import Table

    lc = next(red.glob("lc_*.ecsv"))
    t = Table.read(lc)
    out = {}
    for n in t.meta.get("noise", []):
        if n.get("aperture") == 0:
            out[f"{n['role']}{n['k']}"] = (1e3 * n["achieved"], 1e3 * n["predicted"])
    ok = np.asarray(t["ok"], bool)
    out["frames_ok"] = int(ok.sum())
    return out


def _clipped_std(x) -> float:
    """Standard deviation after 5-sigma clipping around the median (NaN ignored).

    Efficient (a plain std: ~5 % relative error on 200 frames, against ~8 % for a MAD)
    and blind to the rare outlier frame."""
    import numpy as np

    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    for _ in range(5):
        if x.size < 4:
            return float("nan")
        m, sd = np.median(x), np.std(x)
        keep = np.abs(x - m) < 5 * sd
        if keep.all():
            break
        x = x[keep]
    return float(np.std(x))


def precision(night: Path, red: Path, original: bool = False) -> dict:
    """Scatter (mag) of one pipeline's results on the truth's stars (aperture 5 px).

    ``stars``: the photometric precision itself, the same formula for both pipelines:
    each of the 7 stars (target with the truth removed, and the 6 constants) against
    the equal-weight mean of the *other* constant stars, 5-sigma-clipped std, root mean
    square over the stars.  ``target``: the delivered light curve of the target minus
    the truth; ``check``: the delivered check-star light curve (ours: our weighted
    ensemble; the original's: ``mag - mean(ref mags)``, as it computes it).
    """
    import numpy as np
    from astropy.io import fits
    from astropy.table import Table

    sys.path.insert(0, str(HERE))
    import original_qlcp as orig

    st = orig.truth_stars(night, n_check=1)
    fr = Table.read(night / "truth" / "frames.ecsv")
    truth = -2.5 * np.log10(np.asarray(fr["target_rel_flux"], float))
    obj = next(red.glob("cata_*.fits"))
    if original:
        cat = fits.getdata(obj, 1)
        mags = np.array(cat[f"Mag{orig.aper_label(5.0)}"], dtype=float)
        mags[mags == -1] = np.nan
        ref_mean = np.mean(mags[:, st["ind_ref"]], axis=1)
        tgt = mags[:, st["ind_tgt"][0]] - ref_mean
        chk = mags[:, st["ind_chk"][0]] - ref_mean
    else:
        mags = np.array(fits.getdata(obj, "FRAMES")["mag"], dtype=float)[:, :, 0]
        lc = Table.read(next(red.glob("lc_*.ecsv")))
        ok = np.asarray(lc["ok"], bool)
        tgt = np.where(ok, np.asarray(lc["mag_t0_a0"], float), np.nan)
        chk = np.where(ok, np.asarray(lc["mag_c0_a0"], float), np.nan)
    m = mags.copy()
    m[:, 0] -= truth
    const = [*st["ind_ref"], *st["ind_chk"]]
    per_star = [_clipped_std(m[:, k] - np.mean(m[:, [j for j in const if j != k]], axis=1))
                for k in range(m.shape[1])]
    return {"stars": float(np.sqrt(np.nanmean(np.square(per_star)))),
            "target": _clipped_std(tgt - truth), "check": _clipped_std(chk)}


def compare_original(work: Path, seeds: list[int], frames: int, size: int, steps: str,
                     n_stars: int | None = None) -> None:
    """Ours (plain core) and the original on the same nights, stars and machine, one after the other."""
    import numpy as np

    got = _original()
    if got is None:
        return
    orig, python = got
    print(f"\nours vs the original QLCP (lbfiopcd, SExtractor, single-threaded) on {len(seeds)} night(s), "
          f"same stars (truth's target, 5 comparisons, 1 check), aperture 5 px; scatter in mmag:")
    print(f"  {'night':>6} {'ours s':>7} {'orig s':>7} {'speed-up':>8}   {'stars ours/orig':>15}   "
          f"{'target-truth':>13}   {'check':>13}")
    rows = []
    for seed in seeds:
        night = night_dir(work, frames, size, seed, n_stars)
        red_q, red_o = work / f"red_cmp_ours_{night.name}", work / f"red_cmp_orig_{night.name}"
        ours = run_child("plain", night / "raw", red_q, night / "night.yaml", {**truth_starxy(night), "steps": steps})
        try:
            res = _run_original(orig, python, night, red_o)
        except orig.OriginalError as e:
            print(f"  seed {seed}: original failed: {e}")
            continue
        q, o = precision(night, red_q), precision(night, red_o, original=True)
        rows.append([res["seconds"] / ours["wall"]] + [q[k] / o[k] for k in ("stars", "target", "check")])
        print(f"  {seed:>6} {ours['wall']:>7.1f} {res['seconds']:>7.1f} {rows[-1][0]:>7.1f}x   "
              f"(CPU per frame: ours {1e3 * ours['cpu'] / frames:.0f} ms)   "
              f"{1e3 * q['stars']:>6.2f} / {1e3 * o['stars']:<6.2f}   {1e3 * q['target']:>5.2f} / {1e3 * o['target']:<5.2f}"
              f"   {1e3 * q['check']:>5.2f} / {1e3 * o['check']:<5.2f}", flush=True)
    if rows:
        r = np.array(rows)
        print(f"  mean over nights: speed-up {r[:, 0].mean():.1f}x; scatter ours/original: stars "
              f"{r[:, 1].mean():.3f}, target-truth {r[:, 2].mean():.3f}, check {r[:, 3].mean():.3f} "
              f"(< 1: ours better; one night's ratio scatters by ~5 %)")


def astroalign_calls(red: Path) -> int:
    """astroalign searches a reduction made (steps p and o log one INFO line each: offset.matching._astroalign_matrix)."""
    return sum(f.read_text().count("astroalign.find_transform") for f in (red / "log").glob("[po].log"))


def compare_drift(work: Path, a) -> None:
    """A drifting night against the same night without drift (``pairs`` alternating runs each: CPU per
    frame, its ratio, astroalign calls, frames aligned by step p's transform), then the original on the
    drifting night (wall time, as :func:`compare_original`)."""
    import numpy as np

    nights = {k: night_dir(work, a.frames, a.size, a.seed, a.n_stars, drift=k == "drift") for k in ("still", "drift")}
    print(f"\ndrifting night ({DRIFT[0]:.0%} of the frame in x, {DRIFT[1]:.0%} in y, {DRIFT_ROTATION} deg) vs the "
          f"same night without drift: {a.frames} frames of {a.size}^2, seed {a.seed}, n_stars {a.n_stars}; "
          f"{max(a.pairs, 1)} alternating pair(s), CPU of the reduction's processes")
    cpu: dict = {"still": [], "drift": []}
    wall: dict = {"still": [], "drift": []}
    for _ in range(max(a.pairs, 1)):
        for k, night in nights.items():
            red = work / f"red_drift_{k}"
            r = run_child("plain", night / "raw", red, night / "night.yaml", {**truth_starxy(night), "steps": a.steps})
            cpu[k].append(r["cpu"] / a.frames)
            wall[k].append(r["wall"])
            calls = astroalign_calls(red)
            off = _read_offsets(red)
            given = int(sum("step p's" in str(x) for x in off["reason"])) if off is not None else -1
            print(f"  {k:>5}: {1e3 * cpu[k][-1]:6.1f} ms CPU/frame, {r['wall']:6.1f} s wall, astroalign {calls} "
                  f"({100 * calls / a.frames:.1f} % of frames), step o used step p's transform on {given} frames",
                  flush=True)
    ratio = np.array(cpu["drift"]) / np.array(cpu["still"])
    print(f"  CPU per frame drift/still: {', '.join(f'{x:.2f}' for x in ratio)} (median {np.median(ratio):.2f}x)")
    got = _original() if a.original else None
    if got is None:
        return
    orig, python = got
    try:
        res = _run_original(orig, python, nights["drift"], work / "red_drift_orig")
    except orig.OriginalError as e:
        print(f"  original failed on the drifting night: {e}")
        return
    ours = min(wall["drift"])
    print(f"  the original on the drifting night: {res['seconds']:.1f} s, ours {ours:.1f} s (best of "
          f"{len(wall['drift'])}): {res['seconds'] / ours:.1f}x")


def _read_offsets(red: Path):
    from astropy.table import Table

    f = next(red.glob("offset_*.ecsv"), None)
    return Table.read(f, format="ascii.ecsv") if f is not None else None


# ------------------------------------------------------------------ the real nights
SHARED_DATA = HERE.parents[1] / "shared" / "data"


def _region_xy(path: Path) -> list[list[float]]:
    """Circle centres of a DS9 region file (physical, 1-based) as 0-based x, y; commented lines skipped."""
    import re
    return [[float(a) - 1, float(b) - 1]
            for a, b in re.findall(r"^circle\(([\d.]+),([\d.]+),", path.read_text(), flags=re.M)]


#: The real frames of ../shared/data, as both pipelines are given them.  ``stars``: target first, check
#: last, comparisons between; ``science``/``bias``/``dark``/``flat``: globs; ``site`` in the original's
#: names; ``ours``: our configuration.  Aperture radius 6 px for both (the original gets 12, a diameter).
REAL_NIGHTS = {
    "tres1": {
        "dir": "tres1_oscaar_20120617", "obj": "tres1", "band": "C",
        "science": "tres1-[0-9][0-9][0-9].fit", "bias": None, "dark": "tres1-*d.fit", "flat": None,
        "coord": ("19:04:09.8", "+36:37:57"),
        "site": {"site_lon": -76.94, "site_lat": 38.99, "site_ele": 50.0, "site_tz": -5.0},
        "ours": {"gain": 0.78},
        "stars": lambda d: _region_xy(d / "stars2.reg"),
    },
    "xo1": {
        "dir": "xo1_arcsat_20250601", "obj": "xo1b", "band": "z",
        "science": "XO1-b_z_*.fits", "bias": "Bias_*.fits", "dark": "Dark_*.fits", "flat": "domeflat_z_*.fits",
        "coord": ("16:02:11.84", "+28:10:10.4"),
        "site": {"site_lon": -105.82028, "site_lat": 32.78028, "site_ele": 2788.0, "site_tz": 0.0},
        "ours": {},
        "stars": lambda d: [[396.0, 359.0], [274.0, 58.0], [370.0, 464.0]],   # XO-1, C1, C2 (its README)
    },
}


def real_inputs(name: str, work: Path) -> dict | None:
    """Raw directory, our configuration file and the stars of one real night (None when absent)."""
    spec = REAL_NIGHTS[name]
    raw = SHARED_DATA / spec["dir"]
    if not (raw / "README.md").is_file():
        return None
    cfg = work / f"{name}.yaml"
    cfg.write_text(json.dumps({**spec["site"], **spec["ours"], "alt_coord": list(spec["coord"])}))  # JSON is YAML
    xy = spec["stars"](raw)
    n = len(xy)
    return {"raw": raw, "config": cfg, "n_frames": len(list(raw.glob(spec["science"]))),
            "stars": {"starxy": xy, "ind_tgt": [0], "ind_ref": list(range(1, n - 1)), "ind_chk": [n - 1]}}


def original_view(name: str, work: Path) -> tuple[Path, dict, str, float]:
    """What the original is given for a real night: its file names, its calibrations.

    The original reads object, number and band from ``obj-NNN[band].fit`` and knows only bias and
    flat frames.  So: science, bias and flat frames are symlinked under such names into a new
    directory (the raw one is never written); a night without bias frames gets the median of its
    darks as ``use_bias`` (darks of the science exposure time hold bias and dark current, as our
    dark step subtracts); a night without flats gets a flat of ones as ``use_flat``.  Returns the
    view, the extra configuration, the original's steps, and the seconds spent making those
    substitute masters (added to the original's time).
    """
    import numpy as np
    from astropy.io import fits

    spec = REAL_NIGHTS[name]
    raw = SHARED_DATA / spec["dir"]
    view = work / f"orig_view_{name}"
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    obj, band = spec["obj"], spec["band"]
    for kind, pattern, stem in (("science", spec["science"], f"{obj}-{{:03d}}{band}"),
                                ("bias", spec["bias"], "bias-{:03d}"), ("flat", spec["flat"], f"flat-{{:03d}}{band}")):
        for i, p in enumerate(sorted(raw.glob(pattern)) if pattern else [], 1):
            (view / (stem.format(i) + p.suffix)).symlink_to(p)
    conf: dict = {"alt_coord": list(spec["coord"]), **spec["site"]}
    steps, t0 = "lbfiopcd", time.perf_counter()
    if not spec["bias"]:
        darks = np.stack([fits.getdata(p).astype(np.float32) for p in sorted(raw.glob(spec["dark"]))])
        conf["use_bias"] = str(work / f"orig_master_{name}_bias_from_darks.fits")
        fits.writeto(conf["use_bias"], np.median(darks, axis=0), overwrite=True)
        steps = steps.replace("b", "")
    if not spec["flat"]:
        shape = fits.getdata(next(raw.glob(spec["science"]))).shape
        conf["use_flat"] = str(work / f"orig_master_{name}_unit_flat.fits")
        fits.writeto(conf["use_flat"], np.ones(shape, np.float32), overwrite=True)
        steps = steps.replace("f", "")
    return view, conf, steps, time.perf_counter() - t0


def real_scatter(red: Path, stars: dict, original: bool, aper: float = 6.0) -> dict:
    """Scatter (mag) of one pipeline's catalogue on a real night, the same formula for both.

    Every non-target star against the median of the *other* comparison stars (robust to a few wrong ones;
    5-sigma-clipped std): ``stars`` is the median over the stars, ``lost`` how many stars scatter more than 5 times that
    (a star matched to the wrong source on some frames).  No astrophysical signal, no truth needed.
    ``target_p2p``: the target against the median of the comparisons, point-to-point (robust; a transit's
    slow signal hardly enters it).  ``valid``: the fraction of finite magnitudes.
    """
    import numpy as np
    from astropy.io import fits

    sys.path.insert(0, str(HERE))
    import original_qlcp as orig

    cat = next(red.glob("cata_*.fits"))
    if original:
        data = fits.getdata(cat, 1)
        mags = np.array(data[f"Mag{orig.aper_label(aper)}"], dtype=float)
        mags[mags == -1] = np.nan
    else:
        mags = np.array(fits.getdata(cat, "FRAMES")["mag"], dtype=float)[:, :, 0]
    ref, chk, tgt = stars["ind_ref"], stars["ind_chk"], stars["ind_tgt"][0]
    const = [*ref, *chk]
    per = []
    for k in const:
        others = [j for j in ref if j != k] or [j for j in const if j != k]
        per.append(_clipped_std(mags[:, k] - np.nanmedian(mags[:, others], axis=1)))
    per = np.array(per)
    t = mags[:, tgt] - np.nanmedian(mags[:, ref], axis=1)
    med = float(np.nanmedian(per))
    return {"stars": med, "lost": int(np.sum(per > 5 * med)), "target_p2p": orig.p2p_scatter(t),
            "valid": float(np.mean(np.isfinite(mags[:, [tgt, *const]])))}


def _original():
    """(the ``original_qlcp`` module, the original's Python) or None, having said why it is not available."""
    sys.path.insert(0, str(HERE))
    import original_qlcp as orig

    try:
        return orig, orig.setup_original()
    except orig.OriginalError as e:  # the original is optional: say why and go on
        print(f"\noriginal QLCP not available: {e}")
        return None


def _run_original(orig, python: str, night: Path, red_o: Path) -> dict:
    """The original's lbfiopcd on a simulated night, the truth's stars (target, comparisons, one check),
    aperture 5 px, from the same state as ours (:func:`settle`); raises ``orig.OriginalError``."""
    st = orig.truth_stars(night, n_check=1)
    settle(night / "raw")
    _WRITTEN.add(red_o)
    return orig.run_original(night / "raw", red_o, python, st["starxy"], st["ind_tgt"], st["ind_ref"], st["ind_chk"],
                             aper=5.0, steps="lbfiopcd", site=orig.site_from_night(night))


def compare_real(work: Path, names: list[str]) -> None:
    """Ours (plain core) and the original on the real frames of ../shared/data, one after the other."""
    got = _original()
    if got is None:
        return
    orig, python = got
    print("\nours vs the original QLCP on the real frames (same stars, aperture radius 6 px; scatter in mmag, "
          "the same formula for both: comparison/check stars leave-one-out (median; stars lost: > 5x it), "
          "target point-to-point):")
    print("| night | frames | ours s | original s | speed-up | CPU per frame, ours | stars ours / orig | "
          "stars lost ours / orig | target p2p ours / orig | measured points ours / orig |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        inp = real_inputs(name, work)
        if inp is None:
            print(f"| {name} | not present in {SHARED_DATA} | | | | | | | | |")
            continue
        n = inp["n_frames"]
        ours = run_child("plain", inp["raw"], work / f"red_real_ours_{name}", inp["config"],
                         {**inp["stars"], "aper": [6.0], "steps": "lbfiopcd"})
        view, conf, steps, prep = original_view(name, work)
        st = inp["stars"]
        settle(inp["raw"])
        _WRITTEN.add(work / f"red_real_orig_{name}")
        try:
            res = orig.run_original(view, work / f"red_real_orig_{name}", python, st["starxy"], st["ind_tgt"],
                                    st["ind_ref"], st["ind_chk"], aper=6.0, steps=steps, conf=conf)
        except orig.OriginalError as e:
            print(f"| {name} | original failed: {str(e).splitlines()[0]} | | | | | | | | |")
            continue
        q = real_scatter(work / f"red_real_ours_{name}", st, original=False)
        o = real_scatter(work / f"red_real_orig_{name}", st, original=True)
        t_orig = res["seconds"] + prep
        print(f"| {name} | {n} | {ours['wall']:.2f} | {t_orig:.2f} | {t_orig / ours['wall']:.1f}x | "
              f"{1e3 * ours['cpu'] / n:.0f} ms | {1e3 * q['stars']:.2f} / {1e3 * o['stars']:.2f} | "
              f"{q['lost']} / {o['lost']} of {len(st['ind_ref']) + len(st['ind_chk'])} | "
              f"{1e3 * q['target_p2p']:.2f} / {1e3 * o['target_p2p']:.2f} | "
              f"{100 * q['valid']:.0f} % / {100 * o['valid']:.0f} % |", flush=True)


def flow_pairs(night: Path, work: Path, cfg: Path, stars: dict, pairs: int, env: dict) -> list[float]:
    """Flow against plain, ``pairs`` times, alternating (the machine's drift hits both alike): the
    wall time of each in its own process, imports excluded for both, the flow against a new result
    store (a new night's first run).  Prints each pair and the median; returns the ratios."""
    import statistics

    ratios, extra = [], []
    print(f"\nflow / plain, {pairs} alternating pairs (wall and CPU in the run, of the process and its workers; "
          f"the server's is not counted):")
    for i in range(pairs):
        p = run_child("plain", night / "raw", work / "red_pair_plain", cfg, stars)
        shutil.rmtree(env["QLCP_RESULTS"], ignore_errors=True)
        f = run_child("prefect", night / "raw", work / "red_pair_flow", cfg, stars, env=env)
        ratios.append(f["wall"] / p["wall"])
        extra.append(f["wall"] - p["wall"])
        print(f"  {i + 1}: plain {p['wall']:.2f} s (CPU {p['run_cpu']:.2f} s), flow {f['wall']:.2f} s "
              f"(CPU {f['run_cpu']:.2f} s): {ratios[-1]:.3f}", flush=True)
    print(f"  median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}); the flow's extra "
          f"wall: median {statistics.median(extra):+.2f} s")
    return ratios


def print_steps(name: str, res: dict, frames: int) -> None:
    print(f"\n{name}: {res['wall']:.1f} s wall, {res['wall'] / frames:.3f} s/frame, peak {res['peak_mib']:.0f} MiB")
    tim = res.get("timings") or {}
    if tim:
        print(f"  {'step':<6}{'seconds':>9}{'s/frame':>10}")
        for s in STEPS:
            if s in tim:
                print(f"  {s:<6}{tim[s]:>9.2f}{tim[s] / frames:>10.4f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n-stars", type=int, default=None, help="simulated stars per 1024^2 (crowding; default 200)")
    ap.add_argument("--workdir", default=os.environ.get("QLCP_BENCH_DIR", "/tmp/qlcp-bench"))
    ap.add_argument("--scaling", default="", help="comma list of frame counts: peak memory per count")
    ap.add_argument("--prefect", action="store_true", help="also run the Prefect flow (needs PREFECT_API_URL)")
    ap.add_argument("--no-embedded", action="store_true", help="with --prefect: skip the embedded start-up timing")
    ap.add_argument("--pairs", type=int, default=0, help="with --prefect: this many alternating plain/flow runs "
                    "of a new night (the result store emptied before each flow run); each ratio and the median; "
                    "with --drift: alternating drifting/still runs")
    ap.add_argument("--drift", action="store_true", help="only the drifting night (and the same night without "
                    "drift; with --original also the original on it)")
    ap.add_argument("--original", action="store_true", help="also run the original QLCP on the same night(s)")
    ap.add_argument("--seeds", type=int, default=1, help="with --original: compare on this many nights "
                    "(seeds --seed, --seed + 1, ...)")
    ap.add_argument("--real", default="", help="also (alone: only) these real nights of ../shared/data "
                    "(comma list of " + ", ".join(REAL_NIGHTS) + ", or 'all')")
    ap.add_argument("--steps", default="lbfiopcd",
                    help="steps of the plain run (default lbfiopcd, the original's chain for the comparison)")
    ap.add_argument("--keep-outputs", action="store_true", help="keep the reductions' output directories "
                    "(default: removed at the end; the simulated nights stay cached)")
    ap.add_argument("--child", nargs=5, metavar=("KIND", "RAW", "RED", "CONFIG", "EXTRA"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        kind, raw, red, config, extra = a.child
        if extra.startswith("@"):            # @file: the JSON in a file (for paired timing tools)
            extra = Path(extra[1:]).read_text()
        # prefect-refresh: a first run's work (every task recomputed) for paired timing
        res = {"plain": child_plain, "prefect": child_prefect,
               "prefect-refresh": lambda *x: child_prefect(*x, refresh=True)}[kind](raw, red, config, extra)
        print(json.dumps(res, default=str))
        return 0

    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        return measure(a, work)
    finally:
        if not a.keep_outputs:
            for d in sorted(_WRITTEN):
                shutil.rmtree(d, ignore_errors=True)
                for j in d.parent.glob(f".{d.name}.*.json"):
                    j.unlink(missing_ok=True)


def measure(a, work: Path) -> int:
    """Everything main() was asked to measure, in ``work``."""
    real = list(REAL_NIGHTS) if a.real == "all" else [r for r in a.real.split(",") if r]
    if a.drift:
        compare_drift(work, a)
        return 0
    if real and not a.original:
        compare_real(work, real)
        return 0
    night = night_dir(work, a.frames, a.size, a.seed, a.n_stars)
    stars = {**truth_starxy(night), "steps": a.steps}
    cfg = night / "night.yaml"
    print(f"night: {night} ({a.frames} frames, {a.size}x{a.size}); machine: {os.cpu_count()} cores")

    plain = run_child("plain", night / "raw", work / "red_plain", cfg, stars)
    print_steps("QLCP (plain core)", plain, a.frames)
    ours = lc_scatter(work / "red_plain")
    print(f"  light curve: {ours}")

    if a.scaling:
        print("\npeak memory vs number of frames (plain core, full chain):")
        for n in [int(x) for x in a.scaling.split(",")]:
            nd = night_dir(work, n, a.size, a.seed)
            r = run_child("plain", nd / "raw", work / f"red_scale_{n}", nd / "night.yaml", truth_starxy(nd))
            print(f"  {n:>5} frames: peak {r['peak_mib']:.0f} MiB, {r['wall'] / n:.3f} s/frame")

    if a.prefect:
        if not os.environ.get("PREFECT_API_URL"):
            print("\n--prefect: set PREFECT_API_URL to a running server (prefect server start); skipped")
        else:
            env = dict(os.environ, QLCP_RESULTS=str(work / "prefect-results"))
            shutil.rmtree(work / "prefect-results", ignore_errors=True)
            red = work / "red_prefect"
            cold = run_child("prefect", night / "raw", red, cfg, stars, env=env)
            warm = run_child("prefect", night / "raw", red, cfg, stars, env=env, keep=True)
            print(f"\nPrefect flow against {os.environ['PREFECT_API_URL']}:")
            print(f"  first run {cold['wall']:.1f} s ({cold['wall'] / a.frames:.3f} s/frame), "
                  f"overhead vs plain {100 * (cold['wall'] / plain['wall'] - 1):+.0f} %, peak {cold['peak_mib']:.0f} MiB")
            print(f"  rerun, nothing changed: {warm['wall']:.1f} s, states {warm['states']}; "
                  f"{cold['wall'] / warm['wall']:.0f}x faster than the first run")
            if a.pairs:
                flow_pairs(night, work, cfg, stars, a.pairs, env)
        if not a.no_embedded:
            t0 = time.perf_counter()
            env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
            env["PREFECT_HOME"] = str(work / "prefect-home-embedded")
            shutil.rmtree(env["PREFECT_HOME"], ignore_errors=True)
            os.makedirs(env["PREFECT_HOME"])
            code = "from prefect import flow\n@flow\ndef f(): return 1\nf()\nf()"
            subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
            print(f"  embedded mode start-up (no PREFECT_API_URL; process with two trivial flow runs): "
                  f"{first:.1f} s with a fresh database, {time.perf_counter() - t0:.1f} s with an existing one")

    if a.original:
        compare_original(work, list(range(a.seed, a.seed + a.seeds)), a.frames, a.size, a.steps, a.n_stars)
        if real:
            compare_real(work, real)
    return 0


if __name__ == "__main__":
    sys.exit(main())
