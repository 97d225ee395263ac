"""Step l: list and classify the files of a night.

Every file under ``raw_dir`` becomes one row of the night table: bias, dark,
flat (per band), science (per object and band) or rejected (with the reason).
The file name is matched against ``cfg.patterns`` (``re.search``, as the
original QLCP does); where no pattern matches or a group is empty, the FITS
header fills in, and a frame type stated in the header (IMAGETYP/OBSTYPE)
always wins over a guess from the name.  Junk, unreadable and truncated files
are rejected, never fatal.

Outputs (when ``write``): ``{red}/lst/bias.lst``, ``dark.lst``,
``flat_{band}.lst``, ``{obj}_{band}.lst`` (file names relative to ``raw_dir``,
one per line, time order) and ``{red}/lst/night.ecsv``.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from . import timing
from .config import Config
from .errors import InputError
from .instruments import frame_problem as instrument_problem, image_size
from .io import FITS_SUFFIXES, GZIP_SUFFIXES, raw_stem, simple_image_header, write_table, write_text
from .provenance import file_identity

log = logging.getLogger("qlcp.listing")

KINDS = ("bias", "dark", "flat", "science", "rejected", "not FITS")
#: a science frame whose time is further than this from the median of the night's science frames is
#: rejected (a camera clock reset or set to another year): a night is shorter than a day
MAX_TIME_FROM_MEDIAN_DAYS = 1.0
UNKNOWN_BAND = "X"

#: header frame-type values -> kind
_TYPE_WORDS = {
    "bias": "bias", "zero": "bias", "bias frame": "bias", "zero frame": "bias",
    "dark": "dark", "dark frame": "dark",
    "flat": "flat", "domeflat": "flat", "dome flat": "flat", "skyflat": "flat", "sky flat": "flat",
    "twflat": "flat", "twilight flat": "flat", "flat field": "flat", "flatfield": "flat", "lamp flat": "flat",
    "light": "science", "object": "science", "science": "science", "light frame": "science",
    "sci": "science", "target": "science",
}


def _kind_from_type(value: str | None) -> str | None:
    if value is None:
        return None
    v = str(value).strip().lower()
    if v in _TYPE_WORDS:
        return _TYPE_WORDS[v]
    for word, kind in (("bias", "bias"), ("zero", "bias"), ("dark", "dark"), ("flat", "flat")):
        if word in v:
            return kind
    return None


def _kind_from_name(obj: str) -> str:
    low = obj.lower()
    if "bias" in low or low == "zero":
        return "bias"
    if "flat" in low:
        return "flat"
    if "dark" in low:
        return "dark"
    return "science"


def safe_name(s: str) -> str:
    """Object/band name usable in file names: spaces and separators become '_'."""
    s = re.sub(r"[\s/\\:*?\"<>|]+", "_", str(s).strip())
    return s.strip("._") or "unknown"


def match_name(name: str, patterns: list[str]) -> dict:
    """Groups (obj, band, sn, date) of the best pattern match of a file name.

    The first pattern whose match gives a non-empty ``obj`` wins; otherwise the
    first match at all; ``{}`` when nothing matches.
    """
    first = None
    for p in patterns:
        m = re.search(p, name, flags=re.IGNORECASE)
        if not m:
            continue
        g = {k: (v or "") for k, v in m.groupdict().items()}
        if g.get("obj"):
            return g
        first = first or g
    return first or {}


def _is_fits_name(name: str) -> bool:
    low = name.lower()
    return any(low.endswith(s) for s in FITS_SUFFIXES)


#: the probes of the last night :func:`night_headers` read (choosing its instrument), by file identity
#: (path, size, mtime): its listing takes each from here instead of reading the file again
_HEADERS: dict = {}


def _identity(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return str(path), st.st_size, st.st_mtime_ns


def _probe(path: Path) -> tuple[fits.Header | None, str]:
    """Header of the first 2-D image HDU and '' or None and the reason it is unusable (the one
    :func:`night_headers` read, when it read this file as it is)."""
    kept = _HEADERS.pop(_identity(path), None) if _HEADERS else None
    return kept if kept is not None else _read_probe(path)


def night_headers(raw_dir: Path) -> list[tuple[str, fits.Header]]:
    """``(file, header)`` of every readable FITS frame of a night; the night's listing then takes
    them from memory (only the last night's are kept)."""
    _HEADERS.clear()
    out = []
    for p in scan_files(Path(raw_dir)):
        if _is_fits_name(p.name):
            key, probe = _identity(p), _read_probe(p)
            if key is not None:
                _HEADERS[key] = probe
            if probe[0] is not None:
                out.append((str(p.relative_to(raw_dir)), probe[0].copy()))
    return out


def _read_probe(path: Path) -> tuple[fits.Header | None, str]:
    try:
        size = path.stat().st_size
        gz = path.name.lower().endswith(GZIP_SUFFIXES)
        if not gz:
            if size < 2880:
                return None, f"too small for FITS ({size} bytes)"
            with open(path, "rb") as f:
                if not f.read(30).startswith(b"SIMPLE  ="):
                    return None, "not a FITS file (no SIMPLE card)"
            try:                                # a plain image: its header blocks, parsed directly
                simple = simple_image_header(path)
            except (OSError, ValueError, KeyError, TypeError):
                simple = None
            if simple is not None:
                hdr, need, size = simple
                return (None, f"truncated ({size} of {need} bytes)") if size < need else (hdr, "")
        return _probe_astropy(path, None if gz else size)
    except Exception as e:  # astropy raises many kinds on corrupt files
        return None, f"unreadable FITS ({type(e).__name__}: {str(e).splitlines()[0][:120]})"


def _probe_astropy(path: Path, size: int | None) -> tuple[fits.Header | None, str]:
    """:func:`_probe` by astropy (extensions, compression, gzip); ``size`` None: not checked for
    truncation here (a gzip file's size is not the data's; a truncated one fails to read)."""
    with warnings.catch_warnings(), fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
        warnings.simplefilter("ignore")         # astropy's truncation warning: we report it ourselves
        for hdu in hdul:
            hdr = hdu.header
            if hdu.is_image and hdr.get("NAXIS", 0) == 2 or hdr.get("ZIMAGE"):
                if not hdr.get("ZIMAGE") and size is not None:
                    need = hdu._data_offset + hdu._data_size
                    if size < need:
                        return None, f"truncated ({size} of {need} bytes)"
                if size is None:
                    hdu.data                    # a truncated gzip stream fails here
                return hdr.copy(), ""
        return None, "no 2-D image in the file"


def _hval(hdr, *keys):
    for k in keys:
        if k and k in hdr:
            v = hdr[k]
            if isinstance(v, str):
                v = v.strip()
            if v not in ("", None):
                return v
    return None


def _shape(hdr) -> tuple:
    """(rows, columns) of the image a header describes (a compressed image's own size)."""
    return image_size(hdr)[::-1]


def _exptime_problem(exptime: float, kind: str, key: str) -> str:
    """Why a frame's exposure time makes it unusable, or '': a science frame or dark needs one
    (times are mid-exposure, darks scale with it), none may be negative, and a science frame's is
    not zero (no light: a bias taken for a science frame, or a broken card)."""
    if not np.isfinite(exptime):
        return f"no exposure time ({key} missing or not a number)" if kind in ("science", "dark") else ""
    if exptime == 0 and kind == "science":
        return f"zero exposure time ({key} = 0) on a science frame"
    return f"negative exposure time ({key} = {exptime:g})" if exptime < 0 else ""


#: the reason of a file that is not a FITS file by its name: listed at INFO, not among the rejected frames
NOT_FITS = "not a FITS file name"


def classify(path: Path, rel: str, cfg: Config) -> dict:
    """One row of the night table for ``path``."""
    row = dict(file=rel, kind="rejected", obj="", band="", exptime=np.nan, date="", reason="")
    name = path.name
    if not _is_fits_name(name):
        row.update(kind="not FITS", reason=NOT_FITS)       # a README, checksums, region files: not a frame
        return row
    hdr, why = _probe(path)
    if hdr is None:
        row["reason"] = why
        return row
    try:
        row = _classify(hdr, name, row, cfg)
        why = instrument_problem(hdr, cfg)
        if why and row["kind"] != "not FITS":
            row.update(kind="rejected", reason=why)
        return row
    except fits.VerifyError as e:      # one unparsable card (EXPTIME = NAN): this file, not the night
        key = re.search(r"\(([^)]+)\)", str(e))
        row.update(kind="rejected", obj="", band="",
                   reason=f"unparsable header card {key.group(1) if key else '?'}: not a FITS value")
        return row


def _classify(hdr, name: str, row: dict, cfg: Config) -> dict:
    groups = match_name(name, cfg.patterns)
    name_obj = groups.get("obj", "")
    htype = _hval(hdr, cfg.imagetyp_key, "IMAGETYP", "OBSTYPE", "FRAMETYP")
    kind = _kind_from_type(htype)
    if kind is None:
        if name_obj:
            kind = _kind_from_name(name_obj)
        else:
            hobj = _hval(hdr, cfg.object_key)
            kind = _kind_from_name(str(hobj)) if hobj else "science"
    band = groups.get("band", "") or _hval(hdr, cfg.filter_key, "FILTER", "FILTNAME", "FILT") or ""
    band = safe_name(band) if band else ""
    exptime = _hval(hdr, cfg.exptime_key, "EXPTIME", "EXPOSURE")
    try:
        row["exptime"] = float(exptime) if exptime is not None else np.nan
    except (TypeError, ValueError):
        row["exptime"] = np.nan
    row["date"] = str(_hval(hdr, cfg.date_key, "DATE-OBS") or "")
    row["shape"] = _shape(hdr)
    why = _exptime_problem(row["exptime"], kind, cfg.exptime_key)
    if why:
        row["reason"] = why
        return row
    if kind == "science":
        obj = name_obj if (name_obj and groups.get("obj")) else _hval(hdr, cfg.object_key)
        if not obj:
            row["reason"] = "science frame without an object name (file name or header OBJECT)"
            return row
        row["obj"] = safe_name(obj)
        row["band"] = band or UNKNOWN_BAND
        try:                            # its time: readable (else rejected, naming the keyword and value)
            row["time"] = float(timing.obs_start(hdr, cfg).jd)
        except InputError as e:
            row["reason"] = str(e)
            return row
    elif kind == "flat":
        row["obj"] = "flat"
        row["band"] = band or UNKNOWN_BAND
    else:
        row["obj"] = kind
    row["kind"] = kind
    return row


@dataclass
class Night:
    """The classified files of one night (paths relative to ``raw_dir``)."""

    raw_dir: Path
    table: Table
    groups: dict = field(default_factory=dict)

    def _files(self, mask) -> list[Path]:
        rows = self.table[mask]
        order = np.lexsort((np.asarray(rows["file"]), np.asarray(rows["date"])))
        return [self.raw_dir / rows["file"][i] for i in order]

    def files(self, kind: str, obj: str | None = None, band: str | None = None) -> list[Path]:
        t = self.table
        m = np.asarray(t["kind"]) == kind
        if obj is not None:
            m &= np.asarray(t["obj"]) == obj
        if band is not None:
            m &= np.asarray(t["band"]) == band
        return self._files(m)

    @property
    def bias(self) -> list[Path]:
        return self.files("bias")

    @property
    def dark(self) -> list[Path]:
        return self.files("dark")

    def flat(self, band: str) -> list[Path]:
        return self.files("flat", band=band)

    @property
    def flat_bands(self) -> list[str]:
        t = self.table
        return sorted(set(t["band"][t["kind"] == "flat"]))

    def science_groups(self, obj=None, band=None) -> list[tuple[str, str]]:
        """(object, band) pairs of science frames, filtered by the run's obj/band lists."""
        t = self.table[self.table["kind"] == "science"]
        pairs = sorted(set(zip(t["obj"], t["band"])))
        if obj:
            wanted = {o.lower() for o in obj} | {safe_name(o).lower() for o in obj}
            pairs = [p for p in pairs if p[0].lower() in wanted]
        if band:
            pairs = [p for p in pairs if p[1] in set(band)]
        return pairs

    def selected_groups(self, obj=None, band=None) -> list[tuple[str, str]]:
        """:meth:`science_groups`, but a selection (``obj``, ``band``) that matches no group of a
        night that has science frames raises :class:`InputError` naming what the night has."""
        pairs = self.science_groups(obj, band)
        every = self.science_groups()
        t = self.table
        lost = t[(np.asarray(t["kind"]) == "rejected") & (np.asarray(t["obj"]) != "")]
        if not every and len(lost):         # science frames, every one rejected: nothing to reduce
            raise InputError(f"every science frame was rejected ({len(lost)}); the first, {lost['file'][0]}: "
                             f"{lost['reason'][0]}")
        if pairs or not every or not (obj or band):
            return pairs
        asked = " and ".join(f"--{k} {', '.join(v)}" for k, v in (("obj", obj), ("band", band)) if v)
        has = ", ".join(f"{o} {b}" for o, b in every)
        raise InputError(f"{asked} matches no science group of this night; it has (object band): {has}")

    def science(self, obj: str, band: str) -> list[Path]:
        return self.files("science", obj, band)

    @property
    def rejected(self) -> Table:
        return self.table[self.table["kind"] == "rejected"]

    def summary(self) -> str:
        t = self.table
        parts = [f"{n} {k}" for k in KINDS if (n := int(np.sum(t['kind'] == k))) or k != "not FITS"]
        return ", ".join(parts)


#: completion markers a camera or a transfer leaves in a night directory (the sensor's ``--marker``
#: default among them): not data, never listed; dot-files are never listed either
MARKER_NAMES = frozenset({"DONE", "done", "DONE.txt", "done.txt", "COMPLETE", "READY"})


def scan_files(raw_dir: Path, dangling: bool = False) -> list[Path]:
    """All regular, non-hidden files under ``raw_dir`` (recursive), sorted, without marker files
    (:data:`MARKER_NAMES`); with ``dangling``, also the symbolic links whose target is missing."""
    out = []
    for p in sorted(raw_dir.rglob("*")):
        rel = p.relative_to(raw_dir)
        if any(part.startswith(".") for part in rel.parts) or p.name in MARKER_NAMES:
            continue
        if p.is_file() or (dangling and p.is_symlink() and not p.exists()):
            out.append(p)
    return out


def raw_identities(raw: Path) -> list:
    """``[path, size, mtime_ns]`` of every file of the night, dangling links too (keys the listing)."""
    return [[str(p), *file_identity(p)[1:]] for p in scan_files(raw, dangling=True)]


def _dangling_row(p: Path, rel: str) -> dict:
    return dict(file=rel, kind="rejected", obj="", band="", exptime=np.nan, date="",
                reason=f"dangling symlink (its target {os.readlink(p)} does not exist)")


def _accepted(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["kind"] != "rejected"]


def _reject(row: dict, why: str) -> None:
    row["kind"], row["reason"] = "rejected", why


def reject_duplicates(rows: list[dict], raw_dir: Path) -> None:
    """Reject, in place, every frame with the same content as another (same size, header date and
    kind, then the same sha256): one exposure counts once; the copy nearest the top of the night
    directory, then with the shortest name, is kept."""
    from .io import file_fingerprint

    by_key: dict = {}
    for r in _accepted(rows):
        size = (raw_dir / r["file"]).stat().st_size
        by_key.setdefault((size, r["date"], r["kind"], r["obj"], r["band"], r.get("shape")), []).append(r)
    for same in (v for v in by_key.values() if len(v) > 1):
        first: dict = {}
        for r in sorted(same, key=lambda r: (len(Path(r["file"]).parts), len(r["file"]), r["file"])):
            h = file_fingerprint(raw_dir / r["file"])
            if h in first:
                _reject(r, f"duplicate of {first[h]} (same content)")
            else:
                first[h] = r["file"]


def reject_odd_times(rows: list[dict]) -> None:
    """Reject, in place, science frames whose time cannot belong to the night (further than
    :data:`MAX_TIME_FROM_MEDIAN_DAYS` from the median of the night's science frames: a clock reset or
    set to another year), then every frame of an (object, band) group whose start time another of its
    frames already has (the first by name is kept): one of the two has a wrong time, and equal times
    would spoil a light curve's timing."""
    from astropy.time import Time

    sci = [r for r in _accepted(rows) if r["kind"] == "science" and "time" in r]
    if not sci:
        return
    mid = float(np.median([r["time"] for r in sci]))
    for r in sci:
        off = r["time"] - mid
        if abs(off) > MAX_TIME_FROM_MEDIAN_DAYS:
            when = Time(r["time"], format="jd", scale="utc").isot[:19]
            _reject(r, f"dated {when} UTC, {abs(off):.1f} days {'after' if off > 0 else 'before'} the night's "
                       f"median ({Time(mid, format='jd', scale='utc').isot[:19]}): a wrong clock?")
    seen: dict = {}
    for r in sorted(_accepted(sci), key=lambda r: r["file"]):
        key = (r["obj"], r["band"], round(r["time"] * 86400e3))     # the same start to the millisecond
        if key in seen:
            _reject(r, f"same start time as {seen[key]} ({r['date']}): one of them has a wrong time")
        else:
            seen[key] = r["file"]


def reject_same_names(rows: list[dict]) -> None:
    """Reject, in place, a science frame whose name (without FITS suffix) another frame of its
    (object, band) group already has, e.g. in a sub-directory: their products would overwrite
    each other.  The one nearest the top of the night directory is kept."""
    seen: dict = {}
    for r in sorted(_accepted(rows), key=lambda r: (len(Path(r["file"]).parts), r["file"])):
        if r["kind"] != "science":
            continue
        key = (r["obj"], r["band"], raw_stem(r["file"]))
        if key in seen:
            _reject(r, f"same name as {seen[key]} in group {r['obj']} {r['band']}: their products "
                       "would overwrite each other (rename one)")
        else:
            seen[key] = r["file"]


def reject_odd_shapes(rows: list[dict]) -> None:
    """Reject, in place, calibration frames whose image size is not their kind's majority (bias,
    dark, flat of each band; a tie goes to the science frames' size): they would spoil the master."""
    science = [r["shape"] for r in _accepted(rows) if r["kind"] == "science"]
    common = max(set(science), key=science.count) if science else None
    kinds: dict = {}
    for r in _accepted(rows):
        if r["kind"] in ("bias", "dark", "flat"):
            kinds.setdefault((r["kind"], r["band"]), []).append(r)
    for (kind, band), frames in kinds.items():
        shapes = [r["shape"] for r in frames]
        best = max(set(shapes), key=lambda s: (shapes.count(s), s == common))
        label = f"{kind} {band}".strip() if kind == "flat" else kind
        for r in frames:
            if r["shape"] != best:
                _reject(r, f"shape {r['shape'][1]}x{r['shape'][0]} differs from the other {label} frames' "
                           f"{best[1]}x{best[0]}: left out of the master")


def list_night(raw_dir: str | Path, red_dir: str | Path | None, cfg: Config, write: bool = True,
               progress=None) -> Night:
    """Classify every file of ``raw_dir``; write the lists under ``red_dir/lst`` when ``write``.

    Parameters
    ----------
    raw_dir : path
        The night's raw directory (only read).
    red_dir : path or None
        The output root; lists go to ``{red_dir}/lst``.
    cfg : Config
    write : bool
        Write the ``.lst`` files and ``night.ecsv`` (the manual: without step l the
        night is still classified, but the lists are not rewritten).
    progress : callable, optional
        Wraps an iterable to show progress (e.g. tqdm).
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise InputError(f"{raw_dir}: raw directory not found")
    files = scan_files(raw_dir, dangling=True)
    it = progress(files, desc="list") if progress else files
    rows = [classify(p, str(p.relative_to(raw_dir)), cfg) if p.exists() else
            _dangling_row(p, str(p.relative_to(raw_dir))) for p in it]
    reject_duplicates(rows, raw_dir)
    reject_odd_times(rows)
    reject_same_names(rows)
    reject_odd_shapes(rows)
    names = ("file", "kind", "obj", "band", "exptime", "date", "reason")
    table = Table(rows=[[r[n] for n in names] for r in rows], names=names,
                  dtype=(str, str, str, str, float, str, str)) if rows else \
        Table(names=names, dtype=(str, str, str, str, float, str, str))
    table.meta["raw_dir"] = str(raw_dir.resolve())
    night = Night(raw_dir, table)
    for r in night.rejected:
        log.warning("%s: rejected: %s", r["file"], r["reason"])
    others = [str(f) for f in table["file"][table["kind"] == "not FITS"]]
    if others:
        log.info("%s: %d file(s) not FITS by name, not listed: %s", raw_dir, len(others),
                 ", ".join(others[:8]) + (", ..." if len(others) > 8 else ""))
    log.info("%s: %s", raw_dir, night.summary())
    if write and red_dir is not None:
        write_lists(night, Path(red_dir))
    return night


def write_lists(night: Night, red_dir: Path) -> None:
    lst = red_dir / "lst"

    def put(name, paths):
        write_text(lst / name, "".join(f"{p.relative_to(night.raw_dir)}\n" for p in paths))

    if night.bias:
        put("bias.lst", night.bias)
    if night.dark:
        put("dark.lst", night.dark)
    for b in night.flat_bands:
        put(f"flat_{b}.lst", night.flat(b))
    for o, b in night.science_groups():
        put(f"{o}_{b}.lst", night.science(o, b))
    write_table(lst / "night.ecsv", night.table)


def read_night(red_dir: str | Path, raw_dir: str | Path | None = None) -> Night:
    """Night table written by :func:`list_night` (for steps run without ``l``)."""
    t = Table.read(Path(red_dir) / "lst" / "night.ecsv", format="ascii.ecsv")
    return Night(Path(raw_dir or t.meta["raw_dir"]), t)
