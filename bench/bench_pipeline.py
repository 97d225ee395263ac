#!/usr/bin/env python
"""Benchmark: reduce a simulated night and print seconds per frame per step and peak memory.

    python bench/bench_pipeline.py                     # 200 frames of 1024x1024, plain core
    python bench/bench_pipeline.py --scaling 50,200    # peak memory must not grow with frames
    python bench/bench_pipeline.py --prefect           # also through the Prefect flow (PREFECT_API_URL set)
    python bench/bench_pipeline.py --original          # also the original QLCP v2024.6 on the same night

Each reduction runs in its own child process, so its wall time and peak
resident memory (from the kernel's accounting of that child) are its own.
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


def night_dir(work: Path, frames: int, size: int, seed: int) -> Path:
    """Simulate (once) and return the night's directory."""
    from qlcp_core.simulate import simulate_night

    d = work / f"night_{frames}x{size}_s{seed}"
    if not (d / "truth" / "truth.json").is_file():
        shutil.rmtree(d, ignore_errors=True)
        t0 = time.perf_counter()
        simulate_night(d, n_frames=frames, size=size, seed=seed)
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
    from qlcp_core import run
    from qlcp_core.pipeline import make_config

    cfg = make_config([config], mode=["EXIST_OVER", "MISS_SKIP"], scr_log="WARNING", file_log="INFO",
                      **json.loads(extra))
    t0 = time.perf_counter()
    summary = run(raw, red, config=cfg)
    return {"wall": time.perf_counter() - t0, "timings": summary.timings}


def child_prefect(raw: str, red: str, config: str, extra: str, refresh: bool = False) -> dict:
    from flows.night import interactive_settings, process_night

    t0 = time.perf_counter()
    with interactive_settings():          # as qlcp run does
        res = process_night(raw_dir=raw, red_dir=red, config_files=[config], refresh=refresh,
                            config={"mode": ["EXIST_OVER", "MISS_SKIP"], "scr_log": "WARNING", "file_log": "INFO",
                                    **json.loads(extra)})
    return {"wall": time.perf_counter() - t0, "states": res.get("task_states", {})}


def run_child(kind: str, raw: Path, red: Path, config: Path, extra: dict, env=None, keep: bool = False) -> dict:
    """Run one reduction in a child process; add its peak RSS (MiB) from wait4."""
    if not keep:
        shutil.rmtree(red, ignore_errors=True)
    cmd = [sys.executable, __file__, "--child", kind, str(raw), str(red), str(config), json.dumps(extra)]
    out_path = red.parent / f".{red.name}.{kind}.json"
    with open(out_path, "w") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env or os.environ.copy())
        _, status, usage = os.wait4(p.pid, 0)
    err = p.stderr.read()
    if status != 0:
        raise SystemExit(f"{kind} run failed:\n{err[-3000:]}")
    res = json.loads(out_path.read_text().strip().splitlines()[-1])
    res["peak_mib"] = usage.ru_maxrss / 1024
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


def our_scatter(red: Path, night: Path) -> dict:
    """The same scatter estimators as for the original, on our light curve (aperture 0)."""
    import numpy as np
    from astropy.table import Table

    sys.path.insert(0, str(HERE))
    import original_qlcp as orig

    lc = Table.read(next(red.glob("lc_*.ecsv")))
    fr = Table.read(night / "truth" / "frames.ecsv")
    ok = np.asarray(lc["ok"], bool) & np.isfinite(np.asarray(lc["mag_t0_a0"], float))
    truth = -2.5 * np.log10(np.asarray(fr["target_rel_flux"], float))
    return {"check_p2p_mag": orig.p2p_scatter(np.asarray(lc["mag_c0_a0"], float)[ok]),
            "target_resid_robust_std_mag": orig.robust_std((np.asarray(lc["mag_t0_a0"], float) - truth)[ok])}


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
    ap.add_argument("--workdir", default=os.environ.get("QLCP_BENCH_DIR", "/tmp/qlcp-bench"))
    ap.add_argument("--scaling", default="", help="comma list of frame counts: peak memory per count")
    ap.add_argument("--prefect", action="store_true", help="also run the Prefect flow (needs PREFECT_API_URL)")
    ap.add_argument("--no-embedded", action="store_true", help="with --prefect: skip the embedded start-up timing")
    ap.add_argument("--original", action="store_true", help="also run the original QLCP on the same night")
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
    night = night_dir(work, a.frames, a.size, a.seed)
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
        sys.path.insert(0, str(HERE))
        import original_qlcp as orig

        try:
            python = orig.setup_original()
            st = orig.truth_stars(night, n_check=1)
            red_o = work / "red_original"
            res = orig.run_original(night / "raw", red_o, python, st["starxy"], st["ind_tgt"], st["ind_ref"],
                                    st["ind_chk"], aper=5.0, steps="lbfiopcd", site=orig.site_from_night(night))
            sc = orig.original_scatter(red_o, 5.0, truth_dir=night / "truth", source="fits",
                                       ind_ref=st["ind_ref"], ind_tgt=st["ind_tgt"], ind_chk=st["ind_chk"])
        except orig.OriginalError as e:  # the original is optional: say why and go on
            print(f"\noriginal QLCP not available: {e}")
        else:
            ours = our_scatter(work / "red_plain", night)
            print(f"\noriginal QLCP {res['version']} (lbfiopcd, SExtractor, single-threaded): "
                  f"{res['seconds']:.1f} s, {res['seconds_per_frame']:.3f} s/frame "
                  f"(steps: {', '.join(f'{k} {v:.3f}' for k, v in res['step_seconds_per_frame'].items())})")
            print(f"  check star p2p scatter: original {1e3 * sc['check_p2p_mag']:.2f} mmag, "
                  f"ours {1e3 * ours['check_p2p_mag']:.2f} mmag")
            print(f"  target minus truth (robust std): original {1e3 * sc['target_resid_robust_std_mag']:.2f} mmag, "
                  f"ours {1e3 * ours['target_resid_robust_std_mag']:.2f} mmag")
            print(f"speed-up of QLCP over the original, end to end, same night and stars: "
                  f"{res['seconds'] / plain['wall']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
