"""Cost per frame against the crowding of the field: ``frame_catalogues: stars`` and ``full``.

    python bench/bench_crowding.py [--frames 100] [--levels 450,7000] [--seeds 41,42]

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--levels", default="450,7000")
    ap.add_argument("--seeds", default="41")
    ap.add_argument("--modes", default="stars,full")
    ap.add_argument("--pick", action="store_true", help="the automatic pick (steps lbfiopkcd, no stars given: "
                    "pick_star_n candidates measured on every frame); no precision column")
    ap.add_argument("--real", action="store_true", help="also the real TrES-1 night of ../shared/data")
    ap.add_argument("--workdir", default=os.environ.get("QLCP_BENCH_DIR", "/tmp/qlcp-bench"))
    a = ap.parse_args(argv)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
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
