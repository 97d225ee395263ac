"""``qlcp calib``: the operator's view of the calibration library (list, reject, accept, rebuild)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_calib_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("list", "reject", "accept", "rebuild"),
                   help="list the masters; reject/accept one (override QC); rebuild the index from the files")
    p.add_argument("id", nargs="?", type=int, help="master id (reject, accept)")
    p.add_argument("--dir", default=None, metavar="DIR",
                   help="the library (default: $QLCP_CALIB_DIR, else ./calib)")
    p.add_argument("--kind", choices=("bias", "dark", "flat"), help="only this kind (list)")
    p.add_argument("--band", help="only this band (list)")
    p.add_argument("--json", action="store_true", help="list as JSON lines")


def library_path(a) -> Path:
    import os

    return Path(a.dir or os.environ.get("QLCP_CALIB_DIR") or "calib").expanduser()


def cmd_calib(a) -> int:
    from qlcp.core import calib_library as L
    from qlcp.core.errors import InputError

    lib = library_path(a)
    if a.action == "rebuild":
        print(f"{L.rebuild(lib)} masters registered from {lib}")
        return 0
    if a.action in ("reject", "accept"):
        if a.id is None:
            raise InputError(f"qlcp calib {a.action}: give the master's id (see qlcp calib list)")
        e = L.set_status(lib, a.id, "rejected" if a.action == "reject" else "ok")
        print(f"#{e.id} {e.kind} {e.band or ''} of night {e.night}: {e.status}")
        return 0
    rows = L.entries(lib, a.kind, a.band)
    if a.json:
        for e in rows:
            print(json.dumps(e.as_dict()))
        return 0
    print(format_table(rows) if rows else f"no masters in {lib}")
    return 0


def format_table(rows) -> str:
    """The library as a fixed-width table (also the Prefect artifact's rows)."""
    head = f"{'id':>4} {'kind':5} {'band':4} {'night':10} {'date':10} {'shape':9} {'bin':3} {'n':>3} " \
           f"{'level':>9} {'status':8} qc"
    out = [head]
    for e in rows:
        out.append(f"{e.id:>4} {e.kind:5} {e.band or '-':4} {e.night[:10]:10} {e.date_start[:10]:10} "
                   f"{e.nx}x{e.ny:<5} {e.binning:3} {e.n_frames:>3} {e.level:>9.4g} {e.status:8} {qc_text(e.qc)}")
    return "\n".join(out)


def qc_text(qc: str | None) -> str:
    try:
        d = json.loads(qc or "{}")
    except ValueError:
        return ""
    return d.get("note") or ", ".join(f"{k} {v:.3g}" for k, v in d.items() if isinstance(v, float))
