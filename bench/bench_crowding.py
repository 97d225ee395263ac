"""Cost per frame against the crowding of the field: ``frame_catalogues: stars`` and ``full``.

    python bench/bench_crowding.py [--frames 100] [--levels 450,7000] [--seeds 41,42]
    python bench/bench_crowding.py --unattended --levels 7000 [--real] [--repeat 2]

Simulated 1024x1024 nights (seeds other than the tests'), ``n_stars`` per level (450 gives
~150 detected sources a frame, 7,000 ~1,500), reduced by the plain core (``lbfiopcd``, the
truth's target and constant stars given; ``--pick``: ``lbfiopkcd``, the automatic pick), each
run from the same state (``bench_pipeline.settle``).
Prints wall time, CPU seconds per frame (the run and its worker processes), sources per frame
and the photometric precision of both modes (``bench_pipeline.precision``, mmag).
Not a test: numbers, no pass/fail.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_pipeline as B  # noqa: E402


def night(work: Path, frames: int, n_stars: int, seed: int) -> Path:
    from qlcp.core.simulate import simulate_night

    d = work / f"crowd_{frames}_n{n_stars}_s{seed}"
    if not (d / "truth" / "truth.json").is_file():
        simulate_night(d, n_frames=frames, size=1024, seed=seed, n_stars=n_stars, overwrite=True)
    return d


def sources_per_frame(red: Path) -> tuple[float, float]:
    """Sources of the first frame (the reference, measured in full either way), and the median
    number measured on the others."""
    from astropy.io import fits
    import numpy as np

    n = [fits.getheader(c, 1).get("NSTARS") for c in sorted(red.glob("*/*.cat.fits"))]
    return (float(n[0]), float(np.median(n[1:]))) if len(n) > 1 else (float("nan"), float("nan"))


def real_night(work: Path, modes: list[str]) -> None:
    """The real crowded TrES-1 night (42 frames, ~800 sources, darks only): the region file's stars
    (the first as target, the last as check; ``bench_pipeline.REAL_NIGHTS``), both modes; CPU per
    frame and the achieved scatter."""
    from astropy.table import Table

    inp = B.real_inputs("tres1", work)
    if inp is None:
        print(f"\n{B.SHARED_DATA / B.REAL_NIGHTS['tres1']['dir']}: not present; real night skipped")
        return
    n = inp["n_frames"]
    print(f"\nreal: {inp['raw'].name}, {n} frames; region file's stars, aperture 6 px")
    print("| mode | sources (first frame) | measured per frame | wall s | CPU ms/frame | achieved scatter, mmag "
          "(target, check) |")
    print("|---|---|---|---|---|---|")
    for mode in modes:
        red = work / f"red_tres1_{mode}"
        res = B.run_child("plain", inp["raw"], red, inp["config"], {**inp["stars"], "aper": [6.0],
                                                                    "steps": "lbfiopcd", "frame_catalogues": mode})
        lc = Table.read(next(red.glob("lc_*.ecsv")))
        ach = {f"{x['role']}{x['k']}": 1e3 * x["achieved"] for x in lc.meta["noise"] if x.get("aperture") == 0}
        n_ref, n_meas = sources_per_frame(red)
        print(f"| {mode} | {n_ref:.0f} | {n_meas:.0f} | {res['wall']:.2f} | {1e3 * res['cpu'] / n:.0f} | "
              f"{ach.get('target0', float('nan')):.2f}, {ach.get('check0', float('nan')):.2f} |", flush=True)


def _ratio_rows(label: str, raw: Path, config: Path, stars: dict, n: int, work: Path, repeat: int,
                extra: dict) -> None:
    """Given stars (``lbfiopcd``), unattended (``lbfiopkcd``, no stars: the automatic pick) and the stars
    the unattended run chose given back (the same light curves to make), alternating ``repeat`` times;
    CPU ms per frame and the ratios of each repetition (same state, one after the other)."""
    import json

    for rep in range(repeat):
        cpu = {}
        for mode in ("given", "unattended", "given_picked"):
            red = work / f"red_{label}_{mode}"
            if mode == "given":
                st = stars
            elif mode == "unattended":
                st = {}
            else:
                sel = json.loads(next((work / f"red_{label}_unattended").glob("select_*.json")).read_text())
                st = {k: sel[k] for k in ("starxy", "ind_tgt", "ind_ref", "ind_chk")}
            steps = "lbfiopkcd" if mode == "unattended" else "lbfiopcd"
            res = B.run_child("plain", raw, red, config, {**extra, **st, "steps": steps,
                                                          "field_dir": str(red / "fields")})
            cpu[mode] = 1e3 * res["cpu"] / n
            if mode == "unattended":
                sel = json.loads(next(red.glob("select_*.json")).read_text())
                picked = f"{len(sel['ind_tgt'])}/{len(sel['ind_ref'])}/{len(sel['ind_chk'])}"
        print(f"| {label} | {rep + 1} | {cpu['given']:.0f} | {cpu['unattended']:.0f} | {cpu['given_picked']:.0f} | "
              f"{picked} | {cpu['unattended'] / cpu['given']:.2f} | {cpu['unattended'] / cpu['given_picked']:.2f} |",
              flush=True)


def unattended(work: Path, frames: int, levels: list[int], seeds: list[int], real: bool, repeat: int) -> None:
    """CPU per frame of the unattended path (no ``starxy``: the automatic pick) against the same night
    with stars given: the truth's (the region file's on TrES-1), and the stars the unattended run chose."""
    print("| night | rep | given ms/frame | unattended ms/frame | given the picked stars ms/frame | "
          "picked (targets/comparisons/checks) | unattended / given | unattended / given picked |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in seeds:
        for level in levels:
            d = night(work, frames, level, seed)
            _ratio_rows(d.name, d / "raw", d / "night.yaml", B.truth_starxy(d), frames, work, repeat, {})
    if real:
        inp = B.real_inputs("tres1", work)
        if inp is None:
            print(f"{B.SHARED_DATA / B.REAL_NIGHTS['tres1']['dir']}: not present; real night skipped")
            return
        _ratio_rows("tres1", inp["raw"], inp["config"], inp["stars"], inp["n_frames"], work, repeat, {"aper": [6.0]})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--levels", default="450,7000")
    ap.add_argument("--seeds", default="41")
    ap.add_argument("--modes", default="stars,full")
    ap.add_argument("--pick", action="store_true", help="the automatic pick (steps lbfiopkcd, no stars given: "
                    "pick_star_n candidates measured on every frame); no precision column")
    ap.add_argument("--real", action="store_true", help="also the real TrES-1 night of ../shared/data")
    ap.add_argument("--unattended", action="store_true", help="CPU per frame without starxy (the automatic "
                    "pick) against the same night with stars given, and their ratio (with --real: TrES-1 too)")
    ap.add_argument("--repeat", type=int, default=2, help="--unattended: alternating repetitions")
    ap.add_argument("--workdir", default=os.environ.get("QLCP_BENCH_DIR", "/tmp/qlcp-bench"))
    a = ap.parse_args(argv)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if a.unattended:
        unattended(work, a.frames, [int(v) for v in a.levels.split(",")], [int(s) for s in a.seeds.split(",")],
                   a.real, a.repeat)
        return 0
    print("| n_stars | seed | mode | sources (first frame) | measured per frame | wall s | CPU ms/frame | "
          "precision mmag (stars, target, check) |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in (int(s) for s in a.seeds.split(",")):
        for level in (int(v) for v in a.levels.split(",")):
            d = night(work, a.frames, level, seed)
            sx = B.truth_starxy(d)
            for mode in a.modes.split(","):
                red = work / f"red_{d.name}_{mode}{'_pick' if a.pick else ''}"
                extra = {"steps": "lbfiopkcd"} if a.pick else {**sx, "steps": "lbfiopcd"}
                res = B.run_child("plain", d / "raw", red, d / "night.yaml", {**extra, "frame_catalogues": mode})
                nan = float("nan")
                pr = {"stars": nan, "target": nan, "check": nan} if a.pick else B.precision(d, red)
                n_ref, n_meas = sources_per_frame(red)
                print(f"| {level} | {seed} | {mode} | {n_ref:.0f} | {n_meas:.0f} | {res['wall']:.2f} | "
                      f"{1e3 * res['cpu'] / a.frames:.0f} | {1e3 * pr['stars']:.2f}, {1e3 * pr['target']:.2f}, "
                      f"{1e3 * pr['check']:.2f} |", flush=True)
    if a.real:
        real_night(work, a.modes.split(","))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
