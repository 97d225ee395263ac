#!/usr/bin/env python
"""Benchmark: reduce a simulated night and print seconds per frame per step and peak memory.

    python bench/bench_pipeline.py                     # 200 frames of 1024x1024, plain core
    python bench/bench_pipeline.py --scaling 50,200    # peak memory must not grow with frames
    python bench/bench_pipeline.py --prefect           # also through the Prefect flow (PREFECT_API_URL set)
    python bench/bench_pipeline.py --original          # also the original QLCP v2024.6 on the same night
    python bench/bench_pipeline.py --original --seeds 5   # ... on 5 nights: speed and scatter ratios

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


def night_dir(work: Path, frames: int, size: int, seed: int, n_stars: int | None = None) -> Path:
    """Simulate (once) and return the night's directory (``n_stars``: the field's crowding, simulator default
    200 per 1024^2, ~85 detected sources a frame; 7000 gives ~1,500)."""
    from qlcp.core.simulate import simulate_night

    d = work / (f"night_{frames}x{size}_s{seed}" + (f"_n{n_stars}" if n_stars else ""))
    if not (d / "truth" / "truth.json").is_file():
        shutil.rmtree(d, ignore_errors=True)
        t0 = time.perf_counter()
        simulate_night(d, n_frames=frames, size=size, seed=seed, **({"n_stars": n_stars} if n_stars else {}))
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
def child_plain(raw: str, red: str, config: str, extra: str) -> dict:
    from qlcp.core import run
    from qlcp.core.pipeline import make_config

    cfg = make_config([config], mode=["EXIST_OVER", "MISS_SKIP"], scr_log="WARNING", file_log="INFO",
                      **json.loads(extra))
    t0 = time.perf_counter()
    summary = run(raw, red, config=cfg)
    return {"wall": time.perf_counter() - t0, "timings": summary.timings}


def child_prefect(raw: str, red: str, config: str, extra: str, refresh: bool = False) -> dict:
    from qlcp.core.pipeline import make_config
    from qlcp.flows.night import interactive_settings, process_night, start_workers

    t0 = time.perf_counter()
    start_workers(red, make_config([config], **json.loads(extra)))     # as qlcp run does
    with interactive_settings():
        res = process_night(raw_dir=raw, red_dir=red, config_files=[config], refresh=refresh,
                            config={"mode": ["EXIST_OVER", "MISS_SKIP"], "scr_log": "WARNING", "file_log": "INFO",
                                    **json.loads(extra)})
    return {"wall": time.perf_counter() - t0, "states": res["run"].get("task_states", {})}


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


def run_child(kind: str, raw: Path, red: Path, config: Path, extra: dict, env=None, keep: bool = False) -> dict:
    """Run one reduction in a child process; add its peak RSS (MiB) from wait4."""
    if not keep:
        shutil.rmtree(red, ignore_errors=True)
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

    sys.path.insert(0, str(HERE))
    import original_qlcp as orig

    try:
        python = orig.setup_original()
    except orig.OriginalError as e:  # the original is optional: say why and go on
        print(f"\noriginal QLCP not available: {e}")
        return
    print(f"\nours vs the original QLCP (lbfiopcd, SExtractor, single-threaded) on {len(seeds)} night(s), "
          f"same stars (truth's target, 5 comparisons, 1 check), aperture 5 px; scatter in mmag:")
    print(f"  {'night':>6} {'ours s':>7} {'orig s':>7} {'speed-up':>8}   {'stars ours/orig':>15}   "
          f"{'target-truth':>13}   {'check':>13}")
    rows = []
    for seed in seeds:
        night = night_dir(work, frames, size, seed, n_stars)
        red_q, red_o = work / f"red_cmp_ours_{night.name}", work / f"red_cmp_orig_{night.name}"
        ours = run_child("plain", night / "raw", red_q, night / "night.yaml", {**truth_starxy(night), "steps": steps})
        st = orig.truth_stars(night, n_check=1)
        settle(night / "raw")
        try:
            res = orig.run_original(night / "raw", red_o, python, st["starxy"], st["ind_tgt"], st["ind_ref"],
                                    st["ind_chk"], aper=5.0, steps="lbfiopcd", site=orig.site_from_night(night))
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
    ap.add_argument("--original", action="store_true", help="also run the original QLCP on the same night(s)")
    ap.add_argument("--seeds", type=int, default=1, help="with --original: compare on this many nights "
                    "(seeds --seed, --seed + 1, ...)")
    ap.add_argument("--steps", default="lbfiopcd",
                    help="steps of the plain run (default lbfiopcd, the original's chain for the comparison)")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
