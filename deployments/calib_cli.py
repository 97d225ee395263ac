"""``qlcp calib``: the operator's view of the calibration library (list, reject, accept, rebuild).

The library is the service's: ``--dir DIR``, else the site config's ``calib_dir`` (``--config
FILE``), else ``$QLCP_CALIB_DIR``, else ``RED_ROOT/calib`` (``RED_ROOT`` given, or ``$RED_ROOT``: as
the nights under that root find it), else ``./calib``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def add_calib_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("list", "reject", "accept", "rebuild"),
                   help="list the masters; reject/accept one (override QC); rebuild the index from the files")
    p.add_argument("args", nargs="*", metavar="[ID] [RED_ROOT]",
                   help="the master's id (reject, accept), then the service's output root, whose calib/ is the "
                        "library (default: $RED_ROOT)")
    p.add_argument("--dir", default=None, metavar="DIR",
                   help="the library itself (default: calib_dir of --config, else $QLCP_CALIB_DIR, else "
                        "RED_ROOT/calib, else ./calib)")
    p.add_argument("--config", action="append", metavar="FILE", help="site config (its calib_dir)")
    p.add_argument("--kind", choices=("bias", "dark", "flat"), help="only this kind (list)")
    p.add_argument("--band", help="only this band (list)")
    p.add_argument("--json", action="store_true", help="list as JSON lines")


def _split(a) -> tuple[int | None, str | None]:
    """``(id, red_root)`` from the positional arguments of ``a.action``."""
    from qlcp.core.errors import InputError

    rest = list(a.args)
    ident = None
    if a.action in ("reject", "accept"):
        if not rest:
            raise InputError(f"qlcp calib {a.action}: give the master's id (see qlcp calib list)")
        try:
            ident = int(rest.pop(0))
        except ValueError:
            raise InputError(f"qlcp calib {a.action}: {a.args[0]!r} is not a master's id (a number)") from None
    if len(rest) > 1:
        raise InputError(f"qlcp calib {a.action}: too many arguments: {' '.join(rest)}")
    return ident, (rest[0] if rest else None)


def library_path(a, red_root: str | None = None) -> Path:
    """The library ``qlcp calib`` works on (module docstring)."""
    if a.dir:
        return Path(a.dir).expanduser()
    configured = None
    if getattr(a, "config", None):
        from qlcp.core.config import load_config

        configured = load_config(a.config).calib_dir
    red_root = red_root or os.environ.get("RED_ROOT")
    if configured or os.environ.get("QLCP_CALIB_DIR") or red_root:
        from qlcp.core.products import shared_dir

        return shared_dir(Path(red_root or ".") / "night", configured, "QLCP_CALIB_DIR", "calib")
    return Path("calib")


def cmd_calib(a) -> int:
    from qlcp.core import calib_library as L
    from qlcp.core.errors import InputError

    ident, red_root = _split(a)
    lib = library_path(a, red_root)
    if a.action == "rebuild":
        if not lib.is_dir():
            raise InputError(f"{lib}: no calibration library there (give RED_ROOT, --config or --dir)")
        dropped: list = []
        n = L.rebuild(lib, dropped)
        for e in dropped:
            print(f"dropped #{e.id} {e.kind} {e.band or ''} of night {e.night}: {e.path}: file missing")
        print(f"{n} masters registered from {lib}, {len(dropped)} dropped")
        return 0
    if not (lib / L.DB_NAME).is_file():
        raise InputError(f"{lib}: no calibration library there (no {L.DB_NAME}): give the service's RED_ROOT, "
                         "--config with its calib_dir, or --dir")
    if a.action in ("reject", "accept"):
        e = L.set_status(lib, ident, "rejected" if a.action == "reject" else "ok")
        print(f"#{e.id} {e.kind} {e.band or ''} of night {e.night}: {e.status}")
        return 0
    rows = L.entries(lib, a.kind, a.band)
    if a.json:
        for e in rows:
            print(json.dumps(e.as_dict()))
        return 0
    print(f"{lib}:")
    print(format_table(rows) if rows else "no masters")
    return 0


def level_text(e) -> str:
    """A master's level with its unit: ADU (bias), ADU/s (darks: per second of exposure), flats are
    normalised (relative)."""
    if e.kind == "flat":
        return f"{e.level:.4g}"
    return f"{e.level:.4g} {'ADU/s' if e.kind == 'dark' else 'ADU'}"


def format_table(rows) -> str:
    """The library as a table; columns as wide as their longest value (night names in full)."""
    head = ["id", "kind", "band", "night", "date", "shape", "bin", "n", "level", "camera", "epoch", "status", "qc"]
    body = [[str(e.id), e.kind, e.band or "-", e.night or "-", e.date_start[:10] or "-", f"{e.nx}x{e.ny}",
             e.binning, str(e.n_frames), level_text(e), e.camera.split("|", 2)[-1].replace("|", " / ") or "-",
             str(e.epoch), e.status, qc_text(e.qc)] for e in rows]
    width = [max(len(r[i]) for r in [head, *body]) for i in range(len(head) - 1)]
    right = {0, 7, 8, 10}
    out = []
    for r in [head, *body]:
        cells = [r[i].rjust(width[i]) if i in right else r[i].ljust(width[i]) for i in range(len(width))]
        out.append(" ".join(cells + [r[-1]]).rstrip())
    return "\n".join(out)


def qc_text(qc: str | None) -> str:
    try:
        d = json.loads(qc or "{}")
    except ValueError:
        return ""
    parts = [d["note"]] if d.get("note") else [f"{k} {v:.3g}" for k, v in d.items() if isinstance(v, float)]
    if d.get("new_epoch"):
        parts.append(f"new epoch {d['new_epoch']}")
    if d.get("own"):
        parts.append("own checks: " + "; ".join(d["own"]))
    return ", ".join(parts)
