"""A night's fingerprint: everything its products depend on, known without reading a frame.

``reprocess`` compares it with the one its last successful run recorded
(``{red}/fingerprint.json``) and does not start a run for a night whose result
cannot change: a cached run still pays a new process and its imports (~3-5 s
CPU), this costs a directory listing, a few stats and one SQLite query.

The parts: the identity (path, size, mtime_ns) of every raw file as the listing
sees it (:func:`qlcp.core.runsetup.raw_identities`), the effective settings
(all but those that only change how a run goes), the code version, and the
inputs shared with other nights: the calibration library's rows the night made
or could select (the kinds it did not make itself, from its summary's masters),
its fields' references (identity) and the target catalogue (content).  Any part
unknown or different makes the night run again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from pathlib import Path

from ._version import __version__
from .config import Config
from .io import write_json
from .products import product_path
from .provenance import file_identity
from .stages import FREE_KEYS

#: settings that change neither what a run writes nor whether it writes it: the stage graph's run-only
#: keys, but ``steps`` (which products a night has) and ``mode``
_RUN_ONLY = FREE_KEYS - {"steps", "mode"}
#: the file a successful run leaves in its output directory
FILE_NAME = "fingerprint.json"
#: outcomes whose fingerprint is recorded: a failed night always runs again
RECORDED = frozenset({"ok", "degraded", "no target"})


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _library_rows(red, cfg: Config, night: str, masters: dict) -> list | None:
    """The library's rows this night made (``night``) or could select (a kind it did not make)."""
    if not cfg.calib_library:
        return None
    from .calib_library import DB_NAME, library_dir

    lib = library_dir(red, cfg)
    kinds = sorted({(m.get("kind"), m.get("band")) for m in masters.values() if m.get("source") != "tonight"})
    if not (lib / DB_NAME).is_file():
        return [str(lib), None]
    q = "SELECT sha256, kind, band, camera, epoch, status, jd_mid, night FROM masters WHERE night = ?"
    args: list = [night]
    for kind, band in kinds:
        q += " OR (kind = ?" + (" AND band = ?)" if band else ")")
        args += [kind, band] if band else [kind]
    db = sqlite3.connect(f"file:{lib / DB_NAME}?mode=ro", uri=True, timeout=60)
    try:
        rows = db.execute(q + " ORDER BY sha256", args).fetchall()
    except sqlite3.Error as e:
        return [str(lib), f"unreadable: {e}"]
    finally:
        db.close()
    return [str(lib), [list(r) for r in rows]]


def parts(raw_ids: list, red, cfg: Config, summary: dict) -> dict:
    """The fingerprint's parts for the night reduced into ``red`` from files ``raw_ids`` with ``cfg``;
    ``summary`` (the night's last summary) says which masters and fields it used."""
    from .field import reference_path

    night = Path(red).name
    objs = sorted({g["obj"] for g in summary.get("groups", []) if g.get("obj")})
    cat = cfg.target_catalog
    try:
        cat_sha = hashlib.sha256(Path(cat).read_bytes()).hexdigest()[:16] if cat else None
    except OSError:
        cat_sha = "unreadable"
    return {
        "version": __version__,
        "raw": _sha(sorted(map(list, raw_ids))),
        "config": cfg.hash(sorted(set(Config.model_fields) - _RUN_ONLY)),
        "library": _sha(_library_rows(red, cfg, night, summary.get("masters", {}))),
        "fields": _sha([[str(p), *file_identity(p)[1:]] for p in (reference_path(red, cfg, o) for o in objs)]),
        "targets": cat_sha,
    }


def fingerprint(p: dict) -> str:
    return _sha(p)


def record(red, raw_ids: list, cfg: Config, summary: dict) -> Path | None:
    """Write ``{red}/fingerprint.json`` after a run that ended with a recorded outcome (else remove it)."""
    dest = Path(red) / FILE_NAME
    if (summary.get("outcome") or "ok") not in RECORDED:
        forget(red)
        return None
    p = parts(raw_ids, red, cfg, summary)
    return write_json(dest, {"fingerprint": fingerprint(p), "parts": p,
                             "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})


def forget(red) -> None:
    """Remove the recorded fingerprint (a run starts: until it ends well, the night is not up to date)."""
    (Path(red) / FILE_NAME).unlink(missing_ok=True)


def unchanged(raw: str | Path, red, cfg: Config) -> str | None:
    """When the night's last run ended well and nothing it depends on changed since: that run's end
    time (ISO, UTC); else None.  Reads no frame."""
    from .runsetup import raw_identities

    try:
        rec = json.loads((Path(red) / FILE_NAME).read_text())
        summary = json.loads(product_path(red, "summary").read_text())
        if (summary.get("outcome") or "ok") not in RECORDED or not Path(raw).is_dir():
            return None
        now = parts(raw_identities(Path(raw).resolve()), red, cfg, summary)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (rec.get("time") or "?") if rec.get("fingerprint") == fingerprint(now) else None
