"""Step c: the night's catalogue of the chosen stars, one row per frame.

For every frame, each star of ``starxy`` (base-image coordinates) is looked
for where the frame's transform of step o puts it
(:func:`qlcp.core.offset.base_to_frame`: ``starxy + (dx, dy)`` for a shift;
rotated, e.g. by 180 deg after a meridian flip, for a similarity) among the
sources of that frame's catalogue (``{rawstem}.cat.fits`` of step p).  Matching is
conservative: a star takes a source only when the match is unambiguous, and a
star that is not there is masked (NaN values and the :data:`FLAG_MISSING`
bit), never replaced by a neighbour:

1. first pass within ``match_max_dis``, mutual nearest neighbours: the source
   nearest to the predicted position, and only if no other star's predicted
   position is nearer to that source;
2. the median residual (source - prediction) of the matched stars corrects
   the frame's offset (sub-pixel refinement);
3. final pass, same rule, within a radius tightened to what the residuals
   allow (``max(2 px, 0.75 FWHM, 5 x residual scatter)``, at most
   ``match_max_dis``), so a missing star's neighbour a few pixels away is not
   taken for it.

Products: ``{red}/cata_{obj}_{band}.fits`` (:func:`write_catalogue`, read back
with :func:`read_catalogue`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from scipy.spatial import cKDTree

from .columns import describe, fits_column_cards
from .errors import InputError
from .io import atomic_path, raw_stem, read_table_fast
from .offset import as_matrix, base_to_frame
from .products import CAT_SUFFIX, product_path

log = logging.getLogger("qlcp.catalogue")

#: bits of the per-frame catalogue ``Flags`` column (step p)
FLAG_BORDER = 1
FLAG_SATURATED = 2
FLAG_BLENDED = 4
FLAG_INVALID = 8
#: added here: the star was not found in that frame (its values are NaN)
FLAG_MISSING = 256



# --------------------------------------------------------------------- matching
def _mutual_nearest(pred: np.ndarray, src: np.ndarray, radius: float,
                    tree: cKDTree | None = None) -> np.ndarray:
    """Index of the source of each predicted position, -1 when none or ambiguous.

    A source is taken for star k when it is the source nearest to k's
    prediction within ``radius`` and k's prediction is the nearest of all
    predictions to that source.
    """
    n = len(pred)
    out = np.full(n, -1, dtype=int)
    if n == 0 or len(src) == 0:
        return out
    tree = cKDTree(src) if tree is None else tree
    d, j = tree.query(pred, k=1, distance_upper_bound=radius)
    hit = np.flatnonzero(np.isfinite(d))
    if hit.size == 0:
        return out
    if n > 1:
        _, back = cKDTree(pred).query(src[j[hit]], k=1)
        # a tie (two predictions equally near) keeps the source for neither only
        # if the other one is strictly nearer
        d_back = np.hypot(*(src[j[hit]] - pred[back]).T)
        keep = (back == hit) | (d_back >= d[hit])
        hit = hit[keep]
    out[hit] = j[hit]
    return out


def match_stars(pred_xy: np.ndarray, src_xy: np.ndarray, max_dis: float,
                fwhm: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Match predicted star positions to the sources of one frame.

    Parameters
    ----------
    pred_xy : array (n_star, 2)
        Predicted positions (base position through the frame's transform).
    src_xy : array (n_src, 2)
        Positions of the frame's sources.
    max_dis : float
        Largest match distance, px (``match_max_dis``).
    fwhm : float, optional
        Frame FWHM, px; sets the smallest final radius.

    Returns
    -------
    idx : int array (n_star,)
        Source index of each star, -1 when missing.
    shift : array (2,)
        Median residual (source - prediction) applied before the final match.
    """
    pred_xy = np.asarray(pred_xy, dtype=float).reshape(-1, 2)
    src_xy = np.asarray(src_xy, dtype=float).reshape(-1, 2)
    good = np.all(np.isfinite(src_xy), axis=1)
    src_ix = np.flatnonzero(good)
    src = src_xy[good]
    shift = np.zeros(2)
    if len(src) == 0 or len(pred_xy) == 0:
        return np.full(len(pred_xy), -1, dtype=int), shift
    tree = cKDTree(src)
    idx = _mutual_nearest(pred_xy, src, max_dis, tree)
    m = idx >= 0
    if not m.any():
        return idx, shift
    res = src[idx[m]] - pred_xy[m]
    shift = np.median(res, axis=0)
    scatter = 0.0
    if m.sum() >= 3:
        scatter = 1.4826 * np.median(np.hypot(*(res - shift).T))
    fw = fwhm if fwhm is not None and np.isfinite(fwhm) else 0.0
    radius = min(max_dis, max(2.0, 0.75 * fw, 5.0 * scatter))
    idx = _mutual_nearest(pred_xy + shift, src, radius, tree)
    out = np.where(idx >= 0, src_ix[np.clip(idx, 0, None)], -1)
    return out, shift


# ------------------------------------------------------------------- reading
def cat_stem(path: str | Path) -> str:
    """Raw file stem of a per-frame catalogue path (``x/UYUMa-0003I.cat.fits`` -> ``UYUMa-0003I``)."""
    name = Path(path).name
    return name[: -len(CAT_SUFFIX)] if name.endswith(CAT_SUFFIX) else raw_stem(name)


_STRUCTURAL = re.compile(r"^(XTENSION|BITPIX|NAXIS\d*|PCOUNT|GCOUNT|TFIELDS|T(TYPE|FORM|DIM|UNIT|NULL)\d+|"
                         r"COMMENT|HISTORY|)$")


class FrameCatalogue:
    """One frame's catalogue as plain arrays: ``cat["X"]``, ``cat.colnames``, ``cat.meta``
    (the header cards), ``len(cat)``.  Lighter than an astropy Table, which costs
    more to build than reading the file does (steps c and k read every frame's)."""

    def __init__(self, columns: dict, meta: dict):
        self._cols = columns
        self.colnames = list(columns)
        self.meta = meta

    def __len__(self) -> int:
        return len(next(iter(self._cols.values()))) if self._cols else 0

    def __getitem__(self, name: str):
        return self._cols[name]


def read_frame_catalogue(path: str | Path) -> FrameCatalogue:
    """Read one per-frame catalogue of step p, with a one-line error if unusable."""
    try:
        try:
            arr, hdr = read_table_fast(path)          # ~10x faster for our own catalogues
            t = FrameCatalogue({n: arr[n] for n in arr.dtype.names},
                               {k: hdr[k] for k in hdr if not _STRUCTURAL.match(k)})
        except ValueError:
            tab = Table.read(path)
            t = FrameCatalogue({n: np.asarray(tab[n]) for n in tab.colnames}, dict(tab.meta))
    except FileNotFoundError:
        raise InputError(f"{path}: catalogue not found") from None
    except Exception as e:
        raise InputError(f"{path}: unreadable catalogue ({type(e).__name__}: {e})") from None
    for c in ("X", "Y"):
        if c not in t.colnames:
            raise InputError(f"{path}: catalogue has no column {c!r}")
    return t


def _col2d(t: FrameCatalogue, name: str, n_aper: int) -> np.ndarray:
    """A per-aperture column as (n_src, n_aper) float; NaN when absent."""
    if name not in t.colnames:
        return np.full((len(t), n_aper), np.nan)
    a = np.asarray(t[name], dtype=float).reshape(len(t), -1)
    if a.shape[1] != n_aper:
        raise InputError(f"catalogue column {name} has {a.shape[1]} apertures, expected {n_aper}")
    return a


def _col1d(t: FrameCatalogue, name: str, dtype=float, fill=np.nan) -> np.ndarray:
    if name not in t.colnames:
        return np.full(len(t), fill, dtype=dtype)
    return np.asarray(t[name], dtype=dtype).reshape(len(t))


def _meta_float(meta, key: str) -> float:
    v = meta.get(key, meta.get(key.lower()))
    try:
        return float(v)
    except (TypeError, ValueError):
        return np.nan


def _aper_radii(meta, n_aper: int) -> np.ndarray:
    return np.array([_meta_float(meta, f"APER{j}") for j in range(n_aper)])


def _n_aper_of(t: FrameCatalogue) -> int:
    for c in ("Flux", "Mag"):
        if c in t.colnames:
            return int(np.asarray(t[c]).reshape(len(t), -1).shape[1]) if len(t) else int(np.prod(t[c].shape[1:]) or 1)
    n = 0
    while f"APER{n}" in t.meta:
        n += 1
    return max(n, 1)


def _offset_lookup(offsets: Table | None) -> dict[str, dict]:
    """raw stem -> {file, jd, dx, dy, mat, ok} from the offsets table of step o.

    ``mat`` is the transform base pixel -> frame pixel (:func:`qlcp.core.offset.as_matrix`: the
    ``m00..m12`` columns, or the shift ``dx, dy`` of a table written before them); positions are
    mapped with :func:`qlcp.core.offset.base_to_frame` and ``frame_to_base``.
    """
    out: dict[str, dict] = {}
    if offsets is None:
        return out
    for name in ("file", "dx", "dy"):
        if name not in offsets.colnames:
            raise InputError(f"offsets table has no column {name!r}")
    has_ok = "ok" in offsets.colnames
    for row in offsets:
        dx, dy = float(row["dx"]), float(row["dy"])
        mat = as_matrix(row)
        ok = bool(row["ok"]) if has_ok else True
        ok = ok and bool(np.all(np.isfinite(mat)))
        jd = float(row["jd"]) if "jd" in offsets.colnames else np.nan
        out[raw_stem(str(row["file"]))] = dict(file=str(row["file"]), jd=jd, dx=dx, dy=dy, mat=mat, ok=ok)
    return out


# ------------------------------------------------------------------- building
_TIME_KEYS = (("jd", "JD"), ("mjd", "MJD"), ("hjd", "HJD"), ("bjd_tdb", "BJD"), ("airmass", "AIRMASS"),
              ("exptime", "EXPTIME"), ("fwhm", "FWHM"), ("sky", "SKY"))
#: per-star columns of the night catalogue, in table order; the last four have one element per aperture
_STAR_COLUMNS = ("x", "y", "mag", "err", "flux", "ferr", "mag_auto", "err_auto", "flags", "peak", "sky_local")
_APER_COLUMNS = ("mag", "err", "flux", "ferr")


def _night_frames(cat_files, offs: dict) -> tuple[list[str], dict[str, Path]]:
    """The night's frames: the raw stems of the offsets table, then those of catalogue files not in it.

    Returns
    -------
    stems : list of str
        One per frame, offsets-table order first.
    cat_by_stem : dict
        raw stem -> catalogue path (the last one given for a stem).
    """
    cat_by_stem: dict[str, Path] = {}
    for p in cat_files:
        cat_by_stem[cat_stem(p)] = Path(p)
    return list(offs) + [s for s in cat_by_stem if s not in offs], cat_by_stem


def _aperture_count(stems, cat_by_stem: dict, default: int) -> int:
    """Number of apertures of the first readable frame catalogue (in ``stems`` order), else ``default``."""
    for s in stems:
        p = cat_by_stem.get(s)
        if p is not None and p.is_file():
            try:
                return _n_aper_of(read_frame_catalogue(p))
            except InputError:
                continue
    return default


@dataclass
class _NightColumns:
    """The night catalogue's columns while its frames are read (rows in frame order, not yet sorted).

    Attributes
    ----------
    files : ndarray of object
        Frame file names.
    scalars : dict
        ``_TIME_KEYS`` column -> (nf,) float.
    ok : ndarray (nf,) of bool
        The frame was matched.
    dx, dy : ndarray (nf,)
        Refined offsets, px.
    n_found : ndarray (nf,) of int
    aper_r : ndarray (nf, n_aper)
        Aperture radii of each frame, px.
    stars : dict
        ``_STAR_COLUMNS`` name -> (nf, ns) or (nf, ns, n_aper) array; NaN and
        ``flags`` :data:`FLAG_MISSING` until a star is found.
    gains, rdnoises : list of float
        GAIN and RDNOISE of the frame catalogues that have them.
    """

    files: np.ndarray
    scalars: dict
    ok: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    n_found: np.ndarray
    aper_r: np.ndarray
    stars: dict
    gains: list = field(default_factory=list)
    rdnoises: list = field(default_factory=list)

    @classmethod
    def empty(cls, files, ns: int, n_aper: int) -> _NightColumns:
        """Columns for ``len(files)`` frames and ``ns`` stars, every star missing."""
        nf = len(files)
        stars = {}
        for name in _STAR_COLUMNS:
            if name == "flags":
                stars[name] = np.full((nf, ns), FLAG_MISSING, dtype=np.int32)
            else:
                stars[name] = np.full((nf, ns, n_aper) if name in _APER_COLUMNS else (nf, ns), np.nan)
        return cls(files=np.array(files, dtype=object), scalars={k: np.full(nf, np.nan) for k, _ in _TIME_KEYS},
                   ok=np.zeros(nf, dtype=bool), dx=np.full(nf, np.nan), dy=np.full(nf, np.nan),
                   n_found=np.zeros(nf, dtype=int), aper_r=np.full((nf, n_aper), np.nan), stars=stars)


def _read_frame(s: str, p: Path | None) -> FrameCatalogue | None:
    """Frame ``s``'s catalogue at ``p``, or None (with a warning) when missing or unreadable."""
    if p is None or not p.is_file():
        log.warning(f"{s}: no catalogue, frame not used")
        return None
    try:
        return read_frame_catalogue(p)
    except InputError as e:
        log.warning(f"{e}; frame not used")
        return None


def _store_header(cols: _NightColumns, f: int, t: FrameCatalogue, has_offset: bool, n_aper: int) -> None:
    """Frame ``f``'s header values into ``cols``: times etc. (a header JD only when finite), RAWFILE
    (when the frame is not in the offsets table), GAIN, RDNOISE and the aperture radii."""
    meta = t.meta
    if "RAWFILE" in meta and not has_offset:
        cols.files[f] = str(meta["RAWFILE"])
    for k, key in _TIME_KEYS:
        v = _meta_float(meta, key)
        if np.isfinite(v) or k != "jd":
            cols.scalars[k][f] = v
    for lst, key in ((cols.gains, "GAIN"), (cols.rdnoises, "RDNOISE")):
        v = _meta_float(meta, key)
        if np.isfinite(v):
            lst.append(v)
    cols.aper_r[f] = _aper_radii(meta, n_aper)


def _source_columns(t: FrameCatalogue, n_aper: int) -> dict[str, np.ndarray]:
    """A frame catalogue's per-source values under the night catalogue's names (``_STAR_COLUMNS``).

    Raises
    ------
    InputError
        A per-aperture column has another number of apertures than ``n_aper``.
    """
    out = {"flux": _col2d(t, "Flux", n_aper), "ferr": _col2d(t, "FErr", n_aper),
           "mag": _col2d(t, "Mag", n_aper), "err": _col2d(t, "Err", n_aper)}
    out.update(x=_col1d(t, "X"), y=_col1d(t, "Y"), mag_auto=_col1d(t, "MagAUTO"), err_auto=_col1d(t, "ErrAUTO"),
               peak=_col1d(t, "Peak"), sky_local=_col1d(t, "Sky"),
               flags=_col1d(t, "Flags", dtype=np.int64, fill=0).astype(np.int32))
    return out


def _match_frame(cols: _NightColumns, f: int, src: dict, starxy: np.ndarray, offset: dict,
                 max_dis: float) -> int:
    """Match the stars to frame ``f``'s sources and store what is found; returns the number found.

    Parameters
    ----------
    cols : _NightColumns
        Filled in row ``f``: ``ok``, refined ``dx``/``dy``, ``n_found`` and the star columns.
    src : dict
        :func:`_source_columns` of the frame.
    starxy : array (ns, 2)
        Base-image positions.
    offset : dict
        The frame's entry of :func:`_offset_lookup` (its transform ``mat``; ``dx``, ``dy``).
    max_dis : float
        ``match_max_dis``, px.
    """
    xy = np.column_stack([src["x"], src["y"]])
    pred = base_to_frame(offset, starxy)
    idx, shift = match_stars(pred, xy, max_dis, cols.scalars["fwhm"][f])
    hit = np.flatnonzero(idx >= 0)
    j = idx[hit]
    cols.ok[f] = True
    cols.dx[f], cols.dy[f] = offset["dx"] + shift[0], offset["dy"] + shift[1]
    cols.n_found[f] = hit.size
    for name in _STAR_COLUMNS:
        cols.stars[name][f, hit] = src[name][j]
    return hit.size


def _night_table(cols: _NightColumns, starxy: np.ndarray, cfg, base_file: str | None, n_aper: int) -> Table:
    """The night catalogue: rows sorted by JD (frames without one last), meta (see :func:`build_catalogue`)."""
    nf = len(cols.files)
    order = np.argsort(np.where(np.isfinite(cols.scalars["jd"]), cols.scalars["jd"], np.inf), kind="stable")
    tab = Table()
    tab["file"] = np.array([str(v) for v in cols.files[order]], dtype=str) if nf else np.array([], dtype=str)
    for k, _ in _TIME_KEYS:
        tab[k] = cols.scalars[k][order]
    tab["ok"] = cols.ok[order]
    tab["dx"] = cols.dx[order]
    tab["dy"] = cols.dy[order]
    tab["n_found"] = cols.n_found[order]
    tab["aper_r"] = cols.aper_r[order]
    for name in _STAR_COLUMNS:
        tab[name] = cols.stars[name][order]
    tab.meta["starxy"] = [[float(a), float(b)] for a, b in starxy]
    tab.meta["apertures"] = [float(a) for a in cfg.aper]
    tab.meta["base_file"] = base_file or ""
    tab.meta["n_star"] = len(starxy)
    tab.meta["n_aper"] = n_aper
    tab.meta["match_max_dis"] = float(cfg.match_max_dis)
    if cols.gains:
        tab.meta["gain"] = float(np.median(cols.gains))
    if cols.rdnoises:
        tab.meta["rdnoise"] = float(np.median(cols.rdnoises))
    return tab


def build_catalogue(cat_files: Sequence[str | Path], offsets_table: Table | None,
                    starxy: Sequence[Sequence[float]], cfg, *, base_file: str | None = None) -> Table:
    """Collect the chosen stars from every frame's catalogue.

    Parameters
    ----------
    cat_files : list of paths
        Per-frame catalogues ``{rawstem}.cat.fits``; paths that do not exist
        give frames with ``ok`` False (when the offsets table names them).
    offsets_table : Table
        Offsets of step o: columns ``file``, ``jd``, ``dx``, ``dy``, ``ok`` and the
        transform ``m00..m12`` (absent: a shift).  A frame is matched to its
        offset by raw file stem.
    starxy : list of (x, y)
        Star positions in the base image, 0-based.
    cfg : Config
        Uses ``match_max_dis`` and ``aper``.
    base_file : str, optional
        Name of the base image, recorded in the meta.

    Returns
    -------
    Table
        One row per frame in time order.  Columns ``file, jd, mjd, hjd,
        bjd_tdb, airmass, exptime, fwhm, sky, ok, dx, dy, n_found`` (``dx``,
        ``dy``: refined offset), ``aper_r`` (n_aper radii used, px), and per
        star ``x, y, mag_auto, err_auto, flags, peak, sky_local`` (n_star) and
        ``mag, err, flux, ferr`` (n_star, n_aper).  Missing stars have NaN
        values and ``flags & FLAG_MISSING``.  Meta: ``starxy``,
        ``apertures`` (configured), ``base_file``, ``n_star``, ``n_aper``,
        ``gain``/``rdnoise`` when the frame catalogues carry them.
    """
    starxy_a = np.asarray(starxy, dtype=float).reshape(-1, 2)
    if not np.all(np.isfinite(starxy_a)):
        raise InputError("starxy: star positions must be finite numbers")
    ns = len(starxy_a)
    offs = _offset_lookup(offsets_table)
    stems, cat_by_stem = _night_frames(cat_files, offs)
    n_aper = _aperture_count(stems, cat_by_stem, len(cfg.aper))
    cols = _NightColumns.empty([offs[s]["file"] if s in offs else s for s in stems], ns, n_aper)

    for f, s in enumerate(stems):
        o = offs.get(s)
        if o is not None:
            cols.scalars["jd"][f] = o["jd"]
        t = _read_frame(s, cat_by_stem.get(s))
        if t is None:
            continue
        _store_header(cols, f, t, o is not None, n_aper)
        if o is None:
            log.warning(f"{s}: no offset, frame not used")
            continue
        if not o["ok"]:
            log.warning(f"{s}: offset not determined, frame not used")
            continue
        try:
            src = _source_columns(t, n_aper)
        except InputError as e:
            log.warning(f"{cat_by_stem[s]}: {e}; frame not used")
            continue
        found = _match_frame(cols, f, src, starxy_a, o, cfg.match_max_dis)
        if found < ns:
            log.debug(f"{s}: {ns - found} of {ns} stars not found")

    tab = _night_table(cols, starxy_a, cfg, base_file, n_aper)
    n_ok = int(cols.ok.sum())
    frac = cols.n_found[cols.ok].sum() / max(1, n_ok * ns)
    log.info(f"catalogue: {len(stems)} frames ({n_ok} usable), {ns} stars, {100 * frac:.1f}% found")
    return tab


# ------------------------------------------------------------------- writing
def catalogue_path(red_dir: str | Path, obj: str, band: str) -> Path:
    """``{red}/cata_{obj}_{band}.fits``."""
    return product_path(red_dir, "night_catalogue", obj, band)


def write_catalogue(table: Table, path: str | Path) -> Path:
    """Write the night catalogue atomically as FITS.

    HDU 1 ``FRAMES``: the table; header keys ``NSTAR``, ``NAPER``,
    ``APERj`` (configured apertures), ``BASEFILE``, ``MATCHDIS``.
    HDU 2 ``STARS``: ``index, x, y`` of ``starxy``.  :func:`read_catalogue`
    restores the meta.
    """
    path = Path(path)
    t = describe(Table(table, copy=False), "night_catalogue")
    t.meta = {}
    hdu = fits.table_to_hdu(t)
    hdu.name = "FRAMES"
    h = hdu.header
    _column_comments(h, t, "night_catalogue")
    meta = table.meta
    h["NSTAR"] = int(meta.get("n_star", len(meta.get("starxy", []))))
    h["NAPER"] = int(meta.get("n_aper", len(meta.get("apertures", []))))
    for j, a in enumerate(meta.get("apertures", [])):
        h[f"APER{j}"] = (float(a), "configured aperture (px; <0: x FWHM)")
    h["BASEFILE"] = str(meta.get("base_file", ""))
    if "match_max_dis" in meta:
        h["MATCHDIS"] = float(meta["match_max_dis"])
    for key, mk in (("GAIN", "gain"), ("RDNOISE", "rdnoise")):
        if mk in meta:
            h[key] = float(meta[mk])
    extra = {k: v for k, v in meta.items()
             if k not in ("starxy", "apertures", "base_file", "n_star", "n_aper", "match_max_dis", "gain", "rdnoise")}
    if extra:
        h["QLCPMETA"] = json.dumps(extra, default=str)
    sxy = np.asarray(meta.get("starxy", []), dtype=float).reshape(-1, 2)
    stars = describe(Table({"index": np.arange(len(sxy)), "x": sxy[:, 0], "y": sxy[:, 1]}), "stars")
    shdu = fits.table_to_hdu(stars)
    shdu.name = "STARS"
    _column_comments(shdu.header, stars, "stars")
    with atomic_path(path) as tmp:
        fits.HDUList([fits.PrimaryHDU(), hdu, shdu]).writeto(tmp, overwrite=True)
    log.debug(f"wrote {path}")
    return path


def _column_comments(header, table: Table, kind: str) -> None:
    """``TCOMMn`` cards (column descriptions; ``TUNITn`` come from the columns' units)."""
    for key, val in fits_column_cards(table, kind).items():
        if key.startswith("TCOMM"):
            header[key] = val


def read_catalogue(path: str | Path) -> Table:
    """Read a night catalogue written by :func:`write_catalogue` (meta restored)."""
    try:
        t = Table.read(path, hdu="FRAMES")
        stars = Table.read(path, hdu="STARS")
    except FileNotFoundError:
        raise InputError(f"{path}: catalogue not found") from None
    except Exception as e:
        raise InputError(f"{path}: unreadable night catalogue ({type(e).__name__}: {e})") from None
    h = t.meta
    meta = {}
    if "QLCPMETA" in h:
        meta.update(json.loads(h["QLCPMETA"]))
    n_aper = int(h.get("NAPER", 0))
    meta["starxy"] = [[float(a), float(b)] for a, b in zip(stars["x"], stars["y"])]
    meta["apertures"] = [float(h[f"APER{j}"]) for j in range(n_aper) if f"APER{j}" in h]
    meta["base_file"] = str(h.get("BASEFILE", ""))
    meta["n_star"] = int(h.get("NSTAR", len(stars)))
    meta["n_aper"] = n_aper
    if "MATCHDIS" in h:
        meta["match_max_dis"] = float(h["MATCHDIS"])
    if "GAIN" in h:
        meta["gain"] = float(h["GAIN"])
    if "RDNOISE" in h:
        meta["rdnoise"] = float(h["RDNOISE"])
    t.meta = meta
    if "ok" in t.colnames:
        t["ok"] = np.asarray(t["ok"], dtype=bool)
    return t
