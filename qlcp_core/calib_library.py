"""The calibration library: every master a night makes, registered, quality-checked, and reused by
the nights that have none of their own.

In the spirit of LCO BANZAI's calibration database: each master bias, dark and
flat is copied, immutable and named by its content hash, into ``calib_dir``
(``{kind}/{date}_{band}_{sha8}.fits``) and registered in ``calib.sqlite`` with
its kind, band, detector shape, binning, instrument and telescope, exposure
(darks), the date range of its inputs, the number of frames, its level and
noise.  A new master is compared with the previous good one of its kind before
it is trusted (:func:`qc_bias`, :func:`qc_flat`); one that fails is kept as
``rejected`` with the numbers and never selected (an operator may override with
``qlcp calib accept ID``).  A night without a master of a kind uses the nearest
good one that matches, within ``calib_max_age_days`` (:func:`select`).

The database is an index: :func:`rebuild` makes it again from the files, whose
headers carry what it holds.  SQLite in WAL mode with a busy timeout; every
registration is one transaction keyed on the content hash, so two processes
registering at once neither corrupt it nor register a master twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from .errors import InputError

log = logging.getLogger("qlcp.calib")


class LibraryError(InputError):
    """The library's index (``calib.sqlite``) cannot be read: corrupt or truncated.  One line naming
    the file and what to do; a night goes on without the library (``degraded``)."""

KINDS = ("bias", "dark", "flat")
DB_NAME = "calib.sqlite"
#: header cards of a library copy (what :func:`rebuild` reads back)
_CARDS = {"kind": "CALKIND", "band": "CALBAND", "instrument": "CALINST", "telescope": "CALTEL",
          "binning": "CALBIN", "exptime": "CALEXPT", "date_start": "CALDATE0", "date_end": "CALDATE1",
          "jd_mid": "CALJDMID", "n_frames": "CALNFRM", "night": "CALNIGHT", "level": "CALLEVEL",
          "noise": "CALNOISE", "camera": "CALCAM", "epoch": "CALEPOCH", "instrument_name": "CALINSNM"}
#: fewest frames for tonight's master of a kind to be trusted by itself (its own checks)
MIN_FRAMES = {"bias": 3, "dark": 1, "flat": 3}
#: a master bias noisier than this (ADU, robust rms about its 32 px structure) holds light, not bias
BIAS_NOISE_MAX = 50.0
#: a master flat with more dead (<= 0.05) or non-finite pixels than this fraction is not a flat
FLAT_DEAD_MAX = 0.05

_SCHEMA = """
CREATE TABLE IF NOT EXISTS masters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT UNIQUE NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL, band TEXT,
    ny INTEGER, nx INTEGER, binning TEXT, instrument TEXT, telescope TEXT, exptime REAL,
    date_start TEXT, date_end TEXT, jd_mid REAL, n_frames INTEGER, level REAL, noise REAL,
    night TEXT, status TEXT NOT NULL DEFAULT 'ok', qc TEXT, registered TEXT,
    camera TEXT, epoch INTEGER NOT NULL DEFAULT 1, size INTEGER, mtime_ns INTEGER, instrument_name TEXT)
"""
#: columns added since the first schema: (name, SQL type); an older library gets them on opening
_ADDED = (("camera", "TEXT"), ("epoch", "INTEGER NOT NULL DEFAULT 1"), ("size", "INTEGER"), ("mtime_ns", "INTEGER"),
          ("instrument_name", "TEXT"))
#: the camera key in SQL, for rows registered before the column existed (as :func:`camera_key`)
_CAMERA_SQL = "ny || 'x' || nx || '|' || COALESCE(binning, '1,1') || '|' || COALESCE(instrument, '') || '|' " \
              "|| COALESCE(telescope, '')"


@dataclass
class Entry:
    """One registered master (a row of the library)."""

    id: int
    sha256: str
    path: str
    kind: str
    band: str | None
    ny: int
    nx: int
    binning: str
    instrument: str
    telescope: str
    exptime: float | None
    date_start: str
    date_end: str
    jd_mid: float
    n_frames: int
    level: float
    noise: float
    night: str
    status: str
    qc: str
    registered: str
    camera: str = ""            #: :func:`camera_key`: shape, binning, INSTRUME, TELESCOP
    epoch: int = 1              #: the camera's epoch: a new one starts when a master changes a lot (QC)
    size: int | None = None     #: the file's size and mtime when its hash was last checked (memo)
    mtime_ns: int | None = None
    instrument_name: str | None = None  #: the registry's instrument (``instrument``), None before or without one

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def library_dir(red, cfg) -> Path:
    """``calib_dir`` of the config, else ``$QLCP_CALIB_DIR``, else ``{red}/../calib`` (shared by the
    nights under one output root)."""
    from .products import shared_dir

    return shared_dir(red, cfg.calib_dir, "QLCP_CALIB_DIR", "calib")


@contextlib.contextmanager
def connect(lib: Path):
    """The library's database (created when absent), WAL mode, waiting up to 60 s for a writer; closed
    on exit."""
    lib.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(lib / DB_NAME, timeout=60, isolation_level=None)
    try:
        _setup(db)
        db.row_factory = sqlite3.Row
        yield db
    except sqlite3.DatabaseError as e:
        if "locked" in str(e) or not _corrupt(e):
            raise
        raise LibraryError(f"{lib / DB_NAME}: the calibration library's index is corrupt or truncated ({e}): "
                           f"run `qlcp calib rebuild --dir {lib}` (it sets the file aside and indexes the "
                           "masters' files again)") from None
    finally:
        db.close()


def _corrupt(e: sqlite3.DatabaseError) -> bool:
    """A database error that says the file itself is damaged (not locked, not a permission)."""
    text = str(e).lower()
    return any(w in text for w in ("not a database", "malformed", "corrupt", "no such table", "no such column",
                                   "file is encrypted"))


def _setup(db, patience: float = 60.0) -> None:
    """WAL mode (kept by the file once set) and the schema.  Switching a new database to WAL needs it
    alone and SQLite answers "database is locked" at once, without its busy wait, when another
    process is opening it at the same moment: retried here for up to ``patience`` seconds."""
    t0 = time.monotonic()
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            _migrate(db)
            for col in ("night", "path"):           # a night's report reads its own masters by these
                db.execute(f"CREATE INDEX IF NOT EXISTS masters_{col} ON masters ({col})")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() - t0 > patience:
                raise
            time.sleep(0.05)


def _migrate(db) -> None:
    """Add the columns of :data:`_ADDED` to a library made before them (every old master becomes
    epoch 1 of its camera, whose key is made from its own columns).  Two processes may do it at
    once: a column another just added is fine."""
    have = {r[1] for r in db.execute("PRAGMA table_info(masters)")}
    missing = [(c, t) for c, t in _ADDED if c not in have]
    for col, typ in missing:
        try:
            db.execute(f"ALTER TABLE masters ADD COLUMN {col} {typ}")
        except sqlite3.OperationalError as e:
            if "duplicate column" not in str(e):
                raise
    if missing:
        db.execute(f"UPDATE masters SET camera = {_CAMERA_SQL} WHERE camera IS NULL")
        log.info("calibration library: index migrated (columns %s added)", ", ".join(c for c, _ in missing))


def camera_key(d: dict) -> str:
    """A camera as the library knows it: ``"NYxNX|bx,by|INSTRUME|TELESCOP"`` (blank header values
    count as their own value, they match only blank), then ``|NAME`` when the instrument registry
    named the camera (``instrument_name``; a library made before it keeps its keys: those masters are
    not offered to a night of a named instrument).  Masters are never offered across cameras;
    two cameras the headers do not tell apart are kept apart by their epochs (a bias of the other
    level fails QC: a new epoch) and by the science frames' floor (:func:`select`)."""
    name = f"|{d['instrument_name']}" if d.get("instrument_name") else ""
    return f"{int(d['ny'])}x{int(d['nx'])}|{d.get('binning') or '1,1'}|{d.get('instrument') or ''}|" \
           f"{d.get('telescope') or ''}{name}"


def entries(lib: Path, kind: str | None = None, band: str | None = None, status: str | None = None) -> list[Entry]:
    """Registered masters, oldest first, filtered by kind, band and status."""
    if not (lib / DB_NAME).is_file():
        return []
    q, args = "SELECT * FROM masters WHERE 1=1", []
    for col, v in (("kind", kind), ("band", band), ("status", status)):
        if v is not None:
            q += f" AND {col} = ?"
            args.append(v)
    with connect(lib) as db:
        return [Entry(**dict(r)) for r in db.execute(q + " ORDER BY jd_mid, id", args)]


def entries_of_night(lib: Path, night: str, paths: list) -> tuple[list[Entry], int]:
    """The masters registered by ``night`` (its output directory's name) or stored at one of
    ``paths`` (those it used), oldest first, and the number of masters in the library: two indexed
    queries, whatever the library's size."""
    if not (lib / DB_NAME).is_file():
        return [], 0
    paths = [str(p) for p in paths]
    q = f"SELECT * FROM masters WHERE night = ? OR path IN ({','.join('?' * len(paths)) or 'NULL'})"
    with connect(lib) as db:
        found = [Entry(**dict(r)) for r in db.execute(q + " ORDER BY jd_mid, id", [night, *paths])]
        total = db.execute("SELECT COUNT(*) FROM masters").fetchone()[0]
    return found, int(total)


# ------------------------------------------------------------------ describe
def describe(master: Path, kind: str, band: str | None, inputs: list, night: str, date_key: str,
             instrument_name: str | None = None) -> dict:
    """What the library records of a master: detector, instrument (and the registry's name of it),
    dates of its inputs, level, noise."""
    with fits.open(master, memmap=False) as h:
        data = np.asarray(h[0].data, dtype=np.float32)
    sub = data[::4, ::4]
    level = float(np.nanmedian(sub))
    noise = float(1.4826 * np.nanmedian(np.abs(sub - level)))
    heads = [_header(p) for p in (inputs[:1] + inputs[-1:])] if inputs else []
    h0 = heads[0] if heads else fits.Header()
    dates = [d for d in (_date(h, date_key) for h in heads) if d is not None]
    jd = float(np.mean([d.jd for d in dates])) if dates else float("nan")
    return {"kind": kind, "band": band if kind == "flat" else None, "ny": int(data.shape[0]),
            "nx": int(data.shape[1]), "binning": binning_of(h0), "instrument": str(h0.get("INSTRUME", "")).strip(),
            "telescope": str(h0.get("TELESCOP", "")).strip(),
            "exptime": float(h0.get("EXPTIME", np.nan)) if kind == "dark" else None,
            "date_start": dates[0].isot if dates else "", "date_end": dates[-1].isot if dates else "",
            "jd_mid": jd, "n_frames": len(inputs), "level": level, "noise": noise, "night": night,
            "instrument_name": instrument_name, **_camera(data.shape, h0, instrument_name)}


def _camera(shape, h, instrument_name: str | None) -> dict:
    d = {"ny": int(shape[0]), "nx": int(shape[1]), "binning": binning_of(h), "instrument_name": instrument_name,
         "instrument": str(h.get("INSTRUME", "")).strip(), "telescope": str(h.get("TELESCOP", "")).strip()}
    return {"camera": camera_key(d)}


def frame_info(path, date_key: str, instrument_name: str | None = None) -> dict:
    """What a library master must match of a night's frame: its camera (shape, binning, instrument,
    telescope), its date (JD) and its floor (ADU: the 0.5th percentile of its pixels; no bias brighter
    than that is the camera's)."""
    h = _header(path)
    d = _date(h, date_key)
    out = {"ny": int(h.get("NAXIS2", 0)), "nx": int(h.get("NAXIS1", 0)), "binning": binning_of(h),
           "instrument": str(h.get("INSTRUME", "")).strip(), "telescope": str(h.get("TELESCOP", "")).strip(),
           "jd_mid": float(d.jd) if d is not None else float("nan"), "floor": _floor(path),
           "instrument_name": instrument_name}
    out["camera"] = camera_key(out)
    return out


def _floor(path) -> float:
    from .io import image_sample

    try:
        return float(np.nanpercentile(image_sample(path, 4)[0], 0.5))
    except Exception:  # noqa: BLE001 - an unreadable frame: no floor (its listing says why)
        return float("nan")


def _header(path) -> fits.Header:
    from .io import read_header

    try:
        return read_header(path)
    except Exception:  # an input that vanished: the master still registers
        return fits.Header()


def _date(h: fits.Header, key: str):
    from astropy.time import Time

    v = h.get(key) or h.get("DATE-OBS")
    try:
        return Time(str(v).strip(), scale="utc") if v else None
    except ValueError:
        return None


def binning_of(h) -> str:
    """``"bx,by"`` from the common binning keywords (1,1 when none)."""
    for kx, ky in (("XBINNING", "YBINNING"), ("CCDXBIN", "CCDYBIN"), ("BINX", "BINY")):
        if kx in h:
            return f"{int(h[kx])},{int(h.get(ky, h[kx]))}"
    if "CCDSUM" in h:
        parts = str(h["CCDSUM"]).split()
        if len(parts) == 2:
            return f"{int(parts[0])},{int(parts[1])}"
    return "1,1"


# ------------------------------------------------------------------------ qc
def qc_bias(new: np.ndarray, prev: np.ndarray, cfg) -> dict:
    """Compare a new master bias with the previous good one: level shift and structure of the difference."""
    d = (new - prev)[::2, ::2]
    shift = float(np.nanmedian(d))
    struct = float(np.nanstd(_block_medians(d - shift, 32)))
    ok = abs(shift) <= cfg.calib_qc_bias_level and struct <= cfg.calib_qc_bias_structure
    return {"ok": ok, "level_shift_adu": shift, "structure_adu": struct,
            "limits": [cfg.calib_qc_bias_level, cfg.calib_qc_bias_structure]}


def qc_flat(new: np.ndarray, prev: np.ndarray, cfg) -> dict:
    """Compare a new master flat with the previous good one through their ratio.

    ``gradient``: peak to peak over the frame of a plane fitted to the ratio's 32 px block
    medians (an illumination change: lights on, a twilight gradient); ``structure``: the
    99.5th percentile of the 4x4-binned ratio less its 32 px block-median map (features of
    a few to tens of pixels: dust donuts that moved; binning averages the pixel noise away).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        r = new / prev
    r = np.where(np.isfinite(r), r, np.nan)
    r = r / np.nanmedian(r)
    grad = _plane_peak_to_peak(_block_medians(r, 32))
    rb = _block_means(r, 4)
    smooth = np.kron(_block_medians(rb, 8), np.ones((8, 8)))
    resid = np.abs(rb[:smooth.shape[0], :smooth.shape[1]] - smooth)
    small = float(np.nanpercentile(resid, 99.5))
    ok = grad <= cfg.calib_qc_flat_gradient and small <= cfg.calib_qc_flat_structure
    return {"ok": ok, "gradient": grad, "structure": small,
            "limits": [cfg.calib_qc_flat_gradient, cfg.calib_qc_flat_structure]}


def _block_means(a: np.ndarray, n: int) -> np.ndarray:
    ny, nx = (a.shape[0] // n) * n, (a.shape[1] // n) * n
    return np.nanmean(a[:ny, :nx].reshape(ny // n, n, nx // n, n), axis=(1, 3))


def _block_medians(a: np.ndarray, n: int) -> np.ndarray:
    ny, nx = (a.shape[0] // n) * n, (a.shape[1] // n) * n
    b = a[:ny, :nx].reshape(ny // n, n, nx // n, n)
    return np.nanmedian(b, axis=(1, 3))


def _plane_peak_to_peak(b: np.ndarray) -> float:
    yy, xx = np.mgrid[:b.shape[0], :b.shape[1]]
    ok = np.isfinite(b)
    if ok.sum() < 3:
        return 0.0
    A = np.column_stack([xx[ok], yy[ok], np.ones(ok.sum())])
    (gx, gy, _), *_ = np.linalg.lstsq(A, b[ok], rcond=None)
    return float(abs(gx) * (b.shape[1] - 1) + abs(gy) * (b.shape[0] - 1))


# ------------------------------------------------------------------ register
def register(lib: Path, master: Path, kind: str, band: str | None, inputs: list, night: str, cfg) -> Entry:
    """Register ``master`` (a file of tonight's): copy it into the library, check it by itself and
    against the previous good master of its camera, record it.  The same pixels register once: a
    night reduced again remakes its masters with new header cards (provenance keys hold the inputs'
    mtimes), and each rerun must not add a copy of the same master (a bench library had 82 of one
    night's flat).

    What the checks decide (:func:`_judge`): a master that fails its own checks (:func:`own_checks`)
    is ``rejected``; one that passes them but differs a lot from the previous good one starts a new
    *epoch* of its camera (a bias level or structure change, a flat whose small-scale structure
    moved: the camera changed, tonight's master is the truth for tonight and the old masters are
    never offered across the change), except a flat whose illumination gradient changed (lights
    on, a twilight gradient: the flat set is bad by itself), which is ``rejected``."""
    sha = _pixel_sha256(master, kind, band)
    with connect(lib) as db:
        row = db.execute("SELECT * FROM masters WHERE sha256 = ?", (sha,)).fetchone()
    if row is not None:
        return Entry(**dict(row))
    info = describe(master, kind, band, [str(p) for p in inputs], night, cfg.date_key, cfg.instrument)
    own = own_checks(master, kind, info["n_frames"])
    prev = _previous(lib, info)
    qc = _qc(master, prev, kind, cfg) if prev is not None else {"ok": True, "note": "first of its kind"}
    if own:
        qc["own"] = own
    status, info["epoch"] = _judge(lib, info, qc, prev, own, cfg)
    path = _store(lib, master, info, sha)
    st = path.stat()
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    cols = ["sha256", "path", *info, "status", "qc", "registered", "size", "mtime_ns"]
    vals = [sha, str(path), *info.values(), status, json.dumps(qc), now, st.st_size, st.st_mtime_ns]
    with connect(lib) as db:
        db.execute(f"INSERT OR IGNORE INTO masters ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", vals)
        row = db.execute("SELECT * FROM masters WHERE sha256 = ?", (sha,)).fetchone()
    e = Entry(**dict(row))
    (log.info if status == "ok" and "new_epoch" not in qc else log.warning)(
        "calibration library: %s %s%s registered as #%d, %s, epoch %d of camera %s%s%s", kind,
        f"{band} " if band else "", Path(master).name, e.id, status, e.epoch, e.camera,
        f" (own checks: {'; '.join(own)})" if own else "",
        f" (QC: {_qc_text(qc)})" if prev is not None else "")
    return e


def own_checks(master: Path, kind: str, n_frames: int) -> list[str]:
    """What is wrong with tonight's master by itself (empty: nothing): too few frames
    (:data:`MIN_FRAMES`), a bias saturated or holding light (noise about its structure above
    :data:`BIAS_NOISE_MAX`), a flat with too many dead or non-finite pixels."""
    data = fits.getdata(master).astype(np.float32)
    sub = data[::2, ::2]
    bad = []
    if 0 < n_frames < MIN_FRAMES[kind]:
        bad.append(f"{n_frames} frame(s), fewer than {MIN_FRAMES[kind]}")
    if kind == "bias":
        level = float(np.nanmedian(sub))
        if not np.isfinite(level) or level >= 60000:
            bad.append(f"level {level:.0f} ADU: saturated")
        else:
            resid = sub - np.kron(_block_medians(sub, 16), np.ones((16, 16)))[:sub.shape[0], :sub.shape[1]] \
                if min(sub.shape) >= 16 else sub - level
            rms = float(1.4826 * np.nanmedian(np.abs(resid - np.nanmedian(resid))))
            if rms > BIAS_NOISE_MAX:
                bad.append(f"noise {rms:.1f} ADU about its structure, above {BIAS_NOISE_MAX:g}: light, not bias")
    elif kind == "flat":
        dead = float(np.mean(~np.isfinite(data) | (data <= 0.05)))
        if dead > FLAT_DEAD_MAX:
            bad.append(f"{100 * dead:.1f} % dead or non-finite pixels, above {100 * FLAT_DEAD_MAX:g} %")
    return bad


def _judge(lib: Path, info: dict, qc: dict, prev: Entry | None, own: list, cfg) -> tuple[str, int]:
    """``(status, epoch)`` of a new master from its own checks and its QC against ``prev``."""
    if own:
        return "rejected", _epoch_for(lib, info)
    if qc.get("ok", True) or prev is None:
        return "ok", _epoch_for(lib, info)
    if info["kind"] == "flat" and qc.get("gradient", 0.0) > cfg.calib_qc_flat_gradient:
        return "rejected", _epoch_for(lib, info)            # lights on: a bad flat set, not a new camera
    with connect(lib) as db:
        top = db.execute("SELECT MAX(epoch) FROM masters WHERE camera = ?", (info["camera"],)).fetchone()[0]
    qc["new_epoch"] = int(top or prev.epoch) + 1
    return "ok", qc["new_epoch"]


def _epoch_for(lib: Path, info: dict) -> int:
    """The epoch of a master that does not start one: that of the masters its night already
    registered for this camera (a night's masters share its epoch), else the camera's epoch
    covering its date (:func:`epoch_of`), else 1."""
    with connect(lib) as db:
        top = db.execute("SELECT MAX(epoch) FROM masters WHERE night = ? AND camera = ? AND status = 'ok'",
                         (info["night"], info["camera"])).fetchone()[0]
    return int(top) if top else epoch_of(lib, info["camera"], info["jd_mid"]) or 1


def epoch_of(lib: Path, camera: str, jd: float) -> int | None:
    """The camera's epoch covering ``jd``: an epoch runs from its first good master to the next
    epoch's first; a date before every epoch is in the first (None: the camera has no good master)."""
    if not (lib / DB_NAME).is_file():
        return None
    with connect(lib) as db:
        rows = db.execute("SELECT epoch, MIN(jd_mid) FROM masters WHERE camera = ? AND status = 'ok' "
                          "GROUP BY epoch", (camera,)).fetchall()
    starts = sorted((s if s is not None else -np.inf, int(ep)) for ep, s in rows)
    if not starts:
        return None
    if not np.isfinite(jd):
        return max(ep for _, ep in starts)
    before = [ep for s, ep in starts if s <= jd]
    return before[-1] if before else starts[0][1]


def _qc(master: Path, prev: Entry, kind: str, cfg) -> dict:
    new = fits.getdata(master).astype(np.float32)
    old = fits.getdata(prev.path).astype(np.float32)
    res = qc_flat(new, old, cfg) if kind == "flat" else qc_bias(new, old, cfg) if kind == "bias" else {"ok": True}
    res["against"] = prev.id
    return res


def _qc_text(qc: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in qc.items() if isinstance(v, float)) + \
        f"; limits {qc.get('limits')} against #{qc.get('against')}"


def _pixel_sha256(path: Path, kind: str, band: str | None) -> str:
    """The identity of a master: sha256 of its kind, band, pixel type, shape and pixels (not of its
    header, which changes with every remake)."""
    with fits.open(path, memmap=False) as h:
        data = np.ascontiguousarray(h[0].data)
    head = json.dumps([kind, band or "", data.dtype.str, list(data.shape)]).encode()
    return hashlib.sha256(head + data.tobytes()).hexdigest()


def _store(lib: Path, master: Path, info: dict, sha: str) -> Path:
    """Copy ``master`` into the library (atomically; content-named, never overwritten) with its description."""
    from .io import atomic_path

    date = (info["date_start"] or "nodate")[:10].replace("-", "")
    dest = lib / info["kind"] / f"{date}_{info['band'] or 'all'}_{sha[:8]}.fits"
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with fits.open(master, memmap=False) as h:
        hdr, data = h[0].header.copy(), h[0].data
    hdr["CALSHA"] = sha                 # its identity: sha256 of kind, band and pixels (no room for a comment)
    for k, card in _CARDS.items():
        v = info[k]
        if v is not None and not (isinstance(v, float) and not np.isfinite(v)):
            hdr[card] = v
    with atomic_path(dest) as tmp:
        fits.PrimaryHDU(data, hdr).writeto(tmp, overwrite=True)
    return dest


def _previous(lib: Path, info: dict) -> Entry | None:
    """The latest good master of the same kind, band and camera (any epoch) before this one."""
    cands = [e for e in entries(lib, info["kind"], info["band"], "ok") if e.camera == info["camera"]
             and (not np.isfinite(info["jd_mid"]) or e.jd_mid <= info["jd_mid"])]
    return cands[-1] if cands else None


# -------------------------------------------------------------------- select
def select(lib: Path, kind: str, band: str | None, frame: dict, max_age_days: float,
           prefer_earlier: bool = False, notes: list | None = None) -> Entry | None:
    """The good master of ``kind`` (and ``band``) for the night of ``frame``
    (:func:`frame_info`) nearest in time within ``max_age_days``; with ``prefer_earlier`` only
    masters made before the frame count.

    Only masters of the frame's camera and epoch are offered: ``frame["epoch"]`` (the epoch of
    tonight's own masters) when given, else the camera's epoch covering the night
    (:func:`epoch_of`).  A bias brighter than the night's science frames' floor is another
    camera's, whatever the headers say.  A master whose file is missing or whose pixels changed
    since it was registered (sha256, checked when its size or mtime changed) is skipped, said in
    the log and in ``notes``."""
    want_band = band if kind == "flat" else None
    camera = frame.get("camera") or camera_key(frame)
    epoch = frame.get("epoch") or epoch_of(lib, camera, frame["jd_mid"])
    floor = frame.get("floor", float("nan"))
    cands = []
    for e in entries(lib, kind, want_band, "ok"):
        if e.camera != camera or e.epoch != epoch or not np.isfinite(e.jd_mid):
            continue
        d = frame["jd_mid"] - e.jd_mid
        if (prefer_earlier and d < 0) or not abs(d) <= max_age_days:
            continue
        if kind == "bias" and np.isfinite(floor) and e.level > floor + max(50.0, 5 * (e.noise or 0.0)):
            continue
        cands.append((abs(d), e.id, e))
    for _, _, e in sorted(cands, key=lambda c: c[:2]):
        why = _unusable(lib, e)
        if why is None:
            return e
        log.warning("%s", why)
        if notes is not None:
            notes.append(why)
    return None


def _unusable(lib: Path, e: Entry) -> str | None:
    """Why library master ``e`` cannot be used (None: it can): its file is missing, or its pixels
    are not those registered.  The sha256 is computed only when the file's size or mtime differ
    from the memo, which is then updated."""
    p = Path(e.path)
    what = f"calibration library #{e.id} ({e.kind}{' ' + e.band if e.band else ''} of night {e.night})"
    try:
        st = p.stat()
    except OSError:
        return f"{what}: {p}: file missing: skipped (`qlcp calib rebuild` drops it from the index)"
    if (e.size, e.mtime_ns) == (st.st_size, st.st_mtime_ns):
        return None
    try:
        sha = _pixel_sha256(p, e.kind, e.band)
    except Exception as err:  # noqa: BLE001 - any unreadable file is unusable
        return f"{what}: {p}: unreadable ({type(err).__name__}: {err}): skipped"
    if sha != e.sha256:
        return f"{what}: {p} changed on disk since it was registered (sha256 of its pixels differs): not used"
    with connect(lib) as db:
        db.execute("UPDATE masters SET size = ?, mtime_ns = ? WHERE id = ?", (st.st_size, st.st_mtime_ns, e.id))
    return None


def set_status(lib: Path, entry_id: int, status: str) -> Entry:
    """Operator override of QC: ``ok`` (accept) or ``rejected``."""
    if status not in ("ok", "rejected"):
        raise InputError(f"status {status!r}: use ok or rejected")
    with connect(lib) as db:
        cur = db.execute("UPDATE masters SET status = ? WHERE id = ?", (status, entry_id))
        if cur.rowcount == 0:
            raise InputError(f"{lib / DB_NAME}: no master #{entry_id}")
        return Entry(**dict(db.execute("SELECT * FROM masters WHERE id = ?", (entry_id,)).fetchone()))


def rebuild(lib: Path, dropped: list | None = None) -> int:
    """Make the database again from the library's files (their CAL* cards); statuses start as ``ok``
    (a file whose pixels are not those its CALSHA card names: ``rejected``).  Entries whose file is
    gone are dropped (appended to ``dropped``); a corrupt index is first set aside as
    ``calib.sqlite.corrupt-{time}``.  Returns the number of masters registered."""
    try:
        with connect(lib) as db:
            gone = [Entry(**dict(r)) for r in db.execute("SELECT * FROM masters ORDER BY id")
                    if not Path(r["path"]).is_file()]
            for e in gone:
                db.execute("DELETE FROM masters WHERE id = ?", (e.id,))
    except LibraryError as err:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            src = lib / f"{DB_NAME}{suffix}"
            if src.exists():
                src.rename(lib / f"{DB_NAME}.corrupt-{stamp}{suffix}")
        log.warning("%s (set aside as %s.corrupt-%s)", err, DB_NAME, stamp)
        gone = []
    if dropped is not None:
        dropped += gone
    n = 0
    with connect(lib) as db:
        for p in sorted(lib.glob("*/*.fits")):
            h = fits.getheader(p)
            info = {k: h.get(c) for k, c in _CARDS.items()}
            if info["kind"] not in KINDS:
                continue
            data_shape = (int(h["NAXIS2"]), int(h["NAXIS1"]))
            info["camera"] = info["camera"] or camera_key({"ny": data_shape[0], "nx": data_shape[1], **info})
            info["epoch"] = info["epoch"] or 1
            sha = _pixel_sha256(p, info["kind"], info["band"])
            status = "ok" if h.get("CALSHA", sha) == sha else "rejected"
            if status == "rejected":
                log.warning("%s: its pixels are not those registered (CALSHA): indexed as rejected", p)
            st = p.stat()
            cols = ["sha256", "path", "ny", "nx", *info, "status", "registered", "size", "mtime_ns"]
            vals = [sha, str(p), *data_shape, *info.values(), status, dt.datetime.now(dt.timezone.utc).isoformat(),
                    st.st_size, st.st_mtime_ns]
            n += db.execute(f"INSERT OR IGNORE INTO masters ({', '.join(cols)}) VALUES "
                            f"({', '.join('?' * len(cols))})", vals).rowcount
    return n
