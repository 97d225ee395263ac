"""Step o over a group: every frame aligned on the base image (:func:`compute_offsets`), and the offsets files.

The base resolved (and replaced when the frames share too little of its field), every frame
searched around the base then around its neighbours' offset (drift and jumps), the similarity
pass for frames a shift does not fit, and the table written to and read from
``{red}/offset_{obj}_{band}.ecsv`` (:func:`write_offsets`, :func:`read_offsets`).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
from astropy.table import Table

from ..correct import corrected_detector
from ..errors import ConfigError, InputError
from ..io import FITS_SUFFIXES, raw_stem, read_header, read_image, write_table
from ..products import product_path
from .detection import detect_stars
from .matching import (MATCH_TOL, MIN_MATCH, OffsetResult, REFIT_MIN, SCALE_TOL, _better, _fail, _poor,
                       _refine_similarity, find_offset, find_similarity, refine_turn, verify_transform, with_shared)
from .transforms import CONVENTION, MATRIX_COLUMNS, _as_xy, base_to_frame, overlap, rotation_deg, scale_of, transform_of

log = logging.getLogger("qlcp.offset")


METHOD = ("step p's transform from the base, checked on the catalogue's stars, else: "
          "sep stars (winpos) + 2-D pair-difference vote (+qmatch.offset1d candidate) "
          "+ one-to-one nearest match, 3-sigma-clipped mean; search box at the base, "
          "else at the previous good frame's offset; frames failing it or pairing < 40 % of their stars: "
          "similarity transform (astroalign asterisms, refined by least squares on every star)")


# ------------------------------------------------------------- whole night
def _bf_key(path) -> str:
    """``.../UYUMa-0003I.bf.fits`` or ``UYUMa-0003I.fit`` -> ``UYUMa-0003I``."""
    name = Path(str(path)).name
    s = raw_stem(name) if name.lower().endswith(FITS_SUFFIXES) else name
    return s[:-3] if s.endswith(".bf") else s


def _resolve_base(spec, files: list[Path]) -> tuple[int | None, Path]:
    """Index into ``files`` (None for a file outside the list) and path of the base image.

    An int is an index from 0 (negative from the end).  A bare file name is
    matched by raw stem against the list (``X.fit``, ``X.bf.fits`` and ``X``
    all name frame ``X``).  A path with a directory is that file, unless it is
    one of the list's files; a path that does not exist falls back to the
    name match.  A string of digits not naming a file is an index.
    """
    n = len(files)
    if spec is None:
        spec = 0
    if isinstance(spec, bool):
        raise ConfigError(f"base_img {spec!r}: expected an index or a file name")
    if isinstance(spec, (int, np.integer)):
        i = int(spec)
        if not -n <= i < n:
            raise ConfigError(f"base_img {i}: out of range, there are {n} frames (index from 0)")
        return i % n, files[i]
    spec = str(spec).strip()
    p = Path(spec)
    bare = p.name == spec
    if not bare:
        try:
            rp = p.resolve()
            for i, f in enumerate(files):
                if f.resolve() == rp:
                    return i, f
        except OSError:
            pass
        if p.is_file():
            return None, p
    key = _bf_key(spec)
    for i, f in enumerate(files):
        if _bf_key(f) == key:
            return i, f
    if p.is_file():
        return None, p
    if spec.lstrip("-").isdigit():
        return _resolve_base(int(spec), files)
    raise InputError(f"base_img {spec!r}: not a frame of this list and no such file")


def _saturation(cfg, hdr) -> float:
    """Saturation of a corrected frame, in its own ADU (:func:`qlcp.core.correct.corrected_detector`)."""
    return corrected_detector(hdr, cfg)[2]


def _stars(data, hdr, cfg):
    x, y, f = detect_stars(data, saturation=_saturation(cfg, hdr),
                           minarea=int(getattr(cfg, "detect_minarea", 5)))
    return np.column_stack([x, y]), f


def _jd(hdr) -> float:
    try:
        v = float(hdr["JD"])
        return v if math.isfinite(v) else math.nan
    except (KeyError, TypeError, ValueError):
        return math.nan


def _rawfile(hdr, path) -> str:
    v = hdr.get("RAWFILE") if hdr is not None else None
    return str(v).strip() if v not in (None, "") else _bf_key(path)


def _check_same_camera(base_path, base_data_shape, base_hdr, first: Path) -> None:
    try:
        hdr = read_header(first)
    except InputError:
        return
    shape = (hdr.get("NAXIS2"), hdr.get("NAXIS1"))
    if None not in shape and tuple(shape) != tuple(base_data_shape):
        raise InputError(f"base_img {base_path}: image is {base_data_shape[1]}x{base_data_shape[0]}, "
                         f"tonight's frames are {shape[1]}x{shape[0]}: not the same telescope "
                         "(or not a corrected frame)")
    for key in ("TELESCOP", "INSTRUME"):
        a, b = base_hdr.get(key), hdr.get(key)
        if a and b and str(a).strip() != str(b).strip():
            raise InputError(f"base_img {base_path}: {key} {a!r} differs from tonight's {b!r}")


def _serial_map(fn, items):
    return [fn(x) for x in items]


def _load_stars(path: Path, cfg, star_lists=None):
    """(xy, flux, header) of a frame: from ``star_lists`` when it gives them, else from the image."""
    got = star_lists(path) if star_lists else None
    if got is not None:
        return got
    data, hdr = read_image(path)
    xy, fl = _stars(data, hdr, cfg)
    return xy, fl, hdr


def _centred_chunk(args) -> list[tuple]:
    """Offsets of a chunk of frames in the search box centred on the base position.

    One job of the parallel phase of :func:`compute_offsets`:
    ``[(rawfile, jd, OffsetResult, n_stars), ...]`` (``n_stars`` -1: unreadable).
    """
    files, bxy, bfl, max_dis, cfg, star_lists, base_name, turn = args
    out = []
    for f in files:
        f = Path(f)
        try:
            fxy, ffl, hdr = _load_stars(f, cfg, star_lists)
        except InputError as e:
            out.append((_rawfile(None, f), math.nan, _fail(f"unreadable: {e}"), -1))
            continue
        res = _given_transform(hdr, base_name, bxy, fxy)
        if res is None or not res.ok or (res.kind != "shift" and not turn):     # turn False: shifts only
            res = _searched(bxy, bfl, fxy, ffl, max_dis, (0.0, 0.0), turn)
        out.append((_rawfile(hdr, f), _jd(hdr), res, len(fxy)))
    return out


def _searched(bxy, bfl, fxy, ffl, max_dis: float, prior, turn: bool = True) -> OffsetResult:
    """A frame's shift searched around ``prior`` (:func:`find_offset`), refined as a similarity when the
    field turns (:func:`refine_turn`; not when ``turn`` is False: shifts only), with its stars inside both
    fields counted (:func:`with_shared`)."""
    res = find_offset(bxy, bfl, fxy, ffl, max_dis, tuple(prior))
    return with_shared(refine_turn(res, bxy, fxy) if turn else res, bxy, fxy)


def _given_transform(hdr, base_name: str, bxy, fxy) -> OffsetResult | None:
    """Step p's transform of a frame (its catalogue's header, :func:`transform_of`),
    checked, when step p tracked it from this very base (``PHOTREF``); None without one."""
    if hdr is None or not base_name or str(hdr.get("PHOTREF", "")).strip() != base_name:
        return None
    m = transform_of(hdr)
    if m is None:
        return None
    res = verify_transform(m, bxy, fxy)
    if not res.ok:
        log.debug("step p's transform of %s not used: %s", hdr.get("RAWFILE", "a frame"), res.reason)
    return res


def compute_offsets(bf_files, cfg, base_img=None, star_lists=None, map_fn=None, *,
                    similarity: bool = True) -> Table:
    """Transforms (shift, or rotation, scale and shift) of corrected frames against the base image.

    Parameters
    ----------
    bf_files : list of Path
        Corrected frames (``*.bf.fits``), in time order.
    cfg : Config
        Uses ``offset_max_dis``, ``base_img``, ``saturation``, ``detect_minarea``.
    base_img : int or str, optional
        Overrides ``cfg.base_img``: an index from 0 into ``bf_files``, or a file
        name (matched by raw stem against the list) or path (a frame from
        another night of the same telescope).
    star_lists : callable(path) -> (xy, flux, header) or None, optional
        Star lists already measured (the photometry catalogues): used instead
        of reading and searching the image when it returns a list.  Module
        level (picklable) when ``map_fn`` runs jobs in other processes.
    map_fn : callable(fn, items) -> list, optional
        Map for the per-frame phases, e.g. a process pool's; default serial.
        The result does not depend on it.
    similarity : bool
        Try a similarity transform (:func:`find_similarity`) on the frames the
        shift search fails or matches poorly (default); False: shifts only.

    Returns
    -------
    astropy.table.Table
        One row per frame in the given order: file, bf, jd, dx, dy, n_matched,
        ok, reason, align (``shift``, ``similarity``, ``base``; ``none`` when not
        ok), rot_deg, scale, m00 m01 m02 m10 m11 m12 (the transform base pixel ->
        frame pixel, 0-based; NaN when not ok; :func:`base_to_frame`).  ``dx, dy``
        are the translation ``m02, m12`` (the offset of a frame that is not
        turned).  Meta: base, base_bf, base_index, base_nstars, method,
        max_dis, convention, n_ok, n_similarity.

    Raises
    ------
    InputError
        No frames; an unknown base, or a named one unusable (a default base that
        cannot serve is replaced by the frame with most stars).
    ConfigError
        A base index out of range.

    Notes
    -----
    Phases: a search around the base position (:func:`_centred_offsets`), a chain
    out from the base (:func:`_chain_offsets`), similarities where shifts fail
    (:func:`_similarity_pass`).
    """
    files = [Path(f) for f in bf_files]
    if not files:
        raise InputError("offset: no corrected frames to align")
    max_dis = float(getattr(cfg, "offset_max_dis", 250.0))
    spec = getattr(cfg, "base_img", 0) if base_img is None else base_img
    bidx, bpath = _resolve_base(spec, files)
    counts: list = []                       # stars per frame, counted once, when a base must be replaced
    try:
        base = _base_stars(bidx, bpath, files, cfg, star_lists)
    except InputError as e:                 # the default base (the first frame) cannot serve: the best frame
        if bidx != 0:                       # a base the operator named is theirs: the error says why
            raise
        bidx, bpath = _replacement_base(files, bidx, cfg, star_lists, counts, e)
        base = _base_stars(bidx, bpath, files, cfg, star_lists)

    t0 = time.perf_counter()
    mapper = map_fn or _serial_map
    run = (bidx, bpath, base, *_align_all(files, bidx, base, max_dis, cfg, star_lists, mapper, similarity))
    bidx, bpath, base, frames, _ = _retry_base(run, files, max_dis, cfg, star_lists, mapper, similarity, counts)
    return _finish_table(files, bidx, bpath, base, frames, max_dis, time.perf_counter() - t0)


def _finish_table(files, bidx, bpath, base, frames, max_dis: float, dt: float) -> Table:
    """The offsets table with its meta; the frames that could not be aligned logged."""
    bxy, bfl, bhdr = base
    for f, (_, _, res, _) in zip(files, frames):
        if not res.ok:
            log.warning("%s: no offset: %s", f.name, res.reason)
    tab = _offsets_table(files, bidx, frames)
    n_given = sum(1 for r in frames if r[2].ok and r[2].given)
    n_sim = int(np.sum(tab["align"] == "similarity"))       # searched here (the pass), or step p's
    tab.meta.update(base=_rawfile(bhdr, bpath), base_bf=str(bpath), base_index=bidx, base_nstars=len(bxy),
                    method=METHOD, max_dis=max_dis, convention=CONVENTION, n_ok=int(np.sum(tab["ok"])),
                    n_similarity=n_sim)
    n = len(files)
    log.info("offsets: %d of %d frames ok, %d by similarity, %d step p's transforms checked (%.3f s/frame)",
             tab.meta["n_ok"], n, n_sim, n_given, dt / max(n, 1))
    return tab


def _offsets_table(files: list[Path], bidx: int | None, frames: list[list]) -> Table:
    """The offsets table from the per-frame ``[name, jd, OffsetResult, n_stars]`` (see :func:`compute_offsets`)."""
    rows = []
    for i, (name, jd, res, _) in enumerate(frames):
        mat = res.matrix() if res.ok else np.full((2, 3), np.nan)
        align = "base" if i == bidx else (res.kind if res.ok else "none")
        rot, sc = (rotation_deg(mat), scale_of(mat)) if res.ok else (math.nan, math.nan)
        rows.append((name, str(files[i]), jd, res.dx, res.dy, res.n_matched, res.ok, res.reason, align, rot, sc,
                     *mat.ravel()))
    names = ("file", "bf", "jd", "dx", "dy", "n_matched", "ok", "reason", "align", "rot_deg", "scale",
             *MATRIX_COLUMNS)
    tab = Table(rows=rows, names=names, dtype=(str, str, float, float, float, int, bool, str, str, *[float] * 8))
    for c in ("dx", "dy", "m02", "m12"):
        tab[c].unit = "pix"
    tab["rot_deg"].unit = "deg"
    return tab


def _similarity_chunk(args) -> list[OffsetResult]:
    """Similarity matches of a chunk of frames (one job of :func:`_similarity_pass`)."""
    files, bxy, bfl, cfg, star_lists = args
    out = []
    for f in files:
        try:
            fxy, ffl, _ = _load_stars(Path(f), cfg, star_lists)
        except InputError as e:
            out.append(_fail(f"unreadable: {e}", kind="similarity"))
            continue
        out.append(find_similarity(bxy, bfl, fxy, ffl))
    return out


#: a base whose field the group's frames share less than this fraction of (median over the aligned
#: frames, :func:`overlap`) is replaced by the group's best frame when that aligns as many frames
MIN_BASE_OVERLAP = 0.5


def _image_shape(path: Path) -> tuple[int, int]:
    """(ny, nx) of an image from its header; (0, 0) when unreadable."""
    try:
        hdr = read_header(path)
        return int(hdr.get("NAXIS2", 0) or 0), int(hdr.get("NAXIS1", 0) or 0)
    except (InputError, OSError, ValueError, TypeError):
        return 0, 0


def _median_overlap(frames: list[list], bidx: int | None, shape) -> float:
    """Median :func:`overlap` of the aligned frames but the base (1 without any)."""
    ov = [overlap(r[2].matrix(), shape) for i, r in enumerate(frames) if r[2].ok and i != bidx]
    return float(np.median(ov)) if ov else 1.0


def _similarity_pass(files: list[Path], bidx: int | None, bxy, bfl, frames: list[list], cfg, star_lists,
                     map_fn) -> int:
    """Match the poorly aligned frames as similarities, in place; returns how many were replaced.

    Each poorly aligned frame is matched by :func:`find_similarity` (in
    parallel through ``map_fn``); where that is no better than its shift
    (:func:`_better`), a walk in time order tries the shift search again with
    the base stars turned as the last frame aligned by a similarity
    (:func:`_rotated_shift`: sparse frames through clouds after a flip).  A
    similarity must keep the field's centre within ``offset_max_dis`` of the
    base, the previous aligned frame or the next frame aligned by a shift
    (:func:`_reach`).  When all fail, the reason names each.
    """
    todo = [i for i, (_, _, res, ns) in enumerate(frames) if i != bidx and not res.given and _poor(res, ns, len(bxy))]
    if not todo:
        return 0
    size = max(1, -(-len(todo) // 16))
    jobs = [todo[k:k + size] for k in range(0, len(todo), size)]
    parts = map_fn(_similarity_chunk, [([str(files[i]) for i in job], bxy, bfl, cfg, star_lists) for job in jobs])
    sims = dict(zip((i for job in jobs for i in job), (r for part in parts for r in part)))
    max_dis = float(getattr(cfg, "offset_max_dis", 250.0))
    centre = bxy.mean(axis=0)
    nxt = _next_shift_centres(frames, centre)
    last, last_sim, n_sim = np.zeros(2), None, 0
    for i, (_, _, res, _) in enumerate(frames):
        sim = sims.get(i)
        if sim is not None:
            near = [np.zeros(2), last] + ([nxt[i]] if nxt[i] is not None else [])
            sim = _reach(sim, centre, near, max_dis)
            if not _better(sim, res, bxy) and last_sim is not None:
                again = _reach(_rotated_shift(files[i], bxy, bfl, last_sim, cfg, star_lists, max_dis), centre, near,
                               max_dis)
                sim = again if _better(again, res, bxy) or not sim.ok else sim
            if _better(sim, res, bxy):
                frames[i][2] = res = sim
                n_sim += 1
            elif not res.ok:
                frames[i][2] = res = _fail(f"{res.reason}; {sim.reason}", max(res.n_matched, sim.n_matched))
        if res.ok:
            last = _centre_shift(res, centre)
            last_sim = res if res.kind == "similarity" else last_sim
    return n_sim


def _reach(sim: OffsetResult, centre: np.ndarray, near: list, max_dis: float) -> OffsetResult:
    """``sim``, or a failure when it moves the field's centre further than ``max_dis`` (per axis) from
    every one of the centre shifts ``near``."""
    c = _centre_shift(sim, centre)
    if sim.ok and not any((np.abs(c - p) <= max_dis + MATCH_TOL).all() for p in near):
        return _fail(f"similarity: the field's centre moves ({c[0]:.1f}, {c[1]:.1f}) px, beyond offset_max_dis "
                     f"of the base and the neighbouring frames", sim.n_matched, "similarity")
    return sim


def _rotated_shift(f: Path, bxy, bfl, ref: OffsetResult, cfg, star_lists, max_dis: float) -> OffsetResult:
    """The shift search (:func:`find_offset`) against the base stars turned and scaled as in ``ref`` (the
    last frame aligned by a similarity), around its translation; refined as a similarity when at least
    ``REFIT_MIN`` stars pair.  For frames too sparse for asterisms (clouds after a meridian flip)."""
    try:
        fxy, ffl, _ = _load_stars(f, cfg, star_lists)
    except InputError as e:
        return _fail(f"unreadable: {e}", kind="similarity")
    lin = ref.matrix()[:, :2]
    r = find_offset(bxy @ lin.T, bfl, fxy, ffl, max_dis, (ref.dx, ref.dy))
    if not r.ok:
        return _fail(f"similarity: {r.reason} (base turned as the previous frame)", r.n_matched, "similarity")
    mat, n, rms = np.column_stack([lin, [r.dx, r.dy]]), r.n_matched, r.rms
    if n >= REFIT_MIN:
        mat2, n2, rms2 = _refine_similarity(_as_xy(fxy, "frame_xy"), bxy, mat, MATCH_TOL)
        if n2 >= n and abs(scale_of(mat2) - 1.0) <= SCALE_TOL:
            mat, n, rms = mat2, n2, rms2
    return OffsetResult(float(mat[0, 2]), float(mat[1, 2]), int(n), True,
                        f"ok (similarity: rotation {rotation_deg(mat):.3f} deg, shift searched with the base turned "
                        f"as the previous frame)", float(rms), tuple(float(v) for v in mat.ravel()), "similarity")


def _centre_shift(res: OffsetResult, centre: np.ndarray) -> np.ndarray:
    """Where a frame's transform puts the base stars' centroid, minus the centroid (a shift: dx, dy)."""
    return base_to_frame(res.matrix(), centre[None, :])[0] - centre


def _next_shift_centres(frames: list[list], centre: np.ndarray) -> list:
    """For every frame, :func:`_centre_shift` of the next frame aligned by a shift (None at the end)."""
    out, nxt = [None] * len(frames), None
    for i in range(len(frames) - 1, -1, -1):
        out[i] = nxt
        res = frames[i][2]
        if res.ok and res.kind == "shift":
            nxt = _centre_shift(res, centre)
    return out


def _align_all(files: list[Path], bidx: int | None, base: tuple, max_dis: float, cfg, star_lists, mapper,
               similarity: bool) -> tuple[list, int]:
    """The three phases of :func:`compute_offsets` against ``base`` (xy, flux, header):
    ``([name, jd, OffsetResult, n_stars] per frame, frames matched by similarity)``."""
    bxy, bfl, bhdr = base
    centred = _centred_offsets(files, bidx, bxy, bfl, max_dis, cfg, star_lists, mapper, similarity)
    frames = _chain_offsets(files, bidx, bxy, bfl, bhdr, centred, max_dis, cfg, star_lists, similarity)
    n_sim = _similarity_pass(files, bidx, bxy, bfl, frames, cfg, star_lists, mapper) if similarity else 0
    return frames, n_sim


def _retry_base(run: tuple, files: list[Path], max_dis: float, cfg, star_lists, mapper, similarity: bool,
                counts: list) -> tuple:
    """``run`` (bidx, bpath, base, frames, n_sim) again with the group's best frame as base when
    fewer than half the frames align with its base (a base pointed elsewhere), or when the frames
    share less than :data:`MIN_BASE_OVERLAP` of its field (a base pointed a few hundred px off: the
    stars the pick and the light curves can use are those of the base's field); the run that aligns
    more frames wins, and of two that align as many, the one whose field the frames share more."""
    bidx, bpath, _, frames, _ = run
    n, n_good = len(files), sum(r[2].ok for r in frames)
    shape = _image_shape(bpath)
    ov = _median_overlap(frames, bidx, shape) if min(shape) > 0 else 1.0
    if bidx != 0 or n <= 2 or (n_good >= 0.5 * n and ov >= MIN_BASE_OVERLAP):  # only the default base
        return run
    why = InputError(f"{bpath.name}: only {n_good} of {n} frames align with it" if n_good < 0.5 * n else
                     f"{bpath.name}: the frames share {ov:.0%} of its field (median)")
    alt = _replacement_base(files, bidx, cfg, star_lists, counts, why, required=False)
    if alt is None:
        return run
    abase = _base_stars(alt[0], alt[1], files, cfg, star_lists)
    again = (*alt, abase, *_align_all(files, alt[0], abase, max_dis, cfg, star_lists, mapper, similarity))
    a_good = sum(r[2].ok for r in again[3])
    if a_good > n_good or (a_good == n_good and min(shape) > 0
                           and _median_overlap(again[3], alt[0], shape) > ov):
        return again
    log.warning("%s: kept as base: %s aligns no more frames", bpath.name, alt[1].name)
    return run


def _star_count(path: Path, cfg, star_lists) -> int:
    """Good stars of a frame (its catalogue's alignment stars, else a search of the image); -1 unreadable."""
    try:
        return len(_load_stars(path, cfg, star_lists)[0])
    except (InputError, OSError, ValueError):
        return -1


def _replacement_base(files: list[Path], bidx: int | None, cfg, star_lists, counts: list, why: Exception,
                      required: bool = True) -> tuple[int, Path] | None:
    """The group's frame with the most good stars, to replace base ``bidx`` that cannot serve
    (``why``); logged.  ``counts`` caches the star counts.  None (or ``why`` raised, when
    ``required``) when the base is outside the list or no other frame has enough stars."""
    if bidx is not None and not counts:
        counts.extend(_star_count(f, cfg, star_lists) for f in files)
    ranked = sorted((i for i in range(len(counts)) if i != bidx), key=lambda i: (-counts[i], i))
    if bidx is None or not ranked or counts[ranked[0]] < MIN_MATCH:
        if required:
            raise why
        return None
    best = ranked[0]
    log.warning("base image replaced: %s; using %s (%d stars, the most of the group)", why, files[best].name,
                counts[best])
    return best, files[best]


def _base_stars(bidx: int | None, bpath: Path, files: list[Path], cfg, star_lists=None):
    """Stars of the base image: (xy, flux, header).

    A base outside the list (``bidx`` None) is read and searched, after
    checking it comes from the same camera as ``files[0]``; a base in the
    list is loaded as any frame (:func:`_load_stars`).

    Raises
    ------
    InputError
        Fewer than ``MIN_MATCH`` stars, or another camera.
    """
    if bidx is None:
        bdata, bhdr = read_image(bpath)
        _check_same_camera(bpath, bdata.shape, bhdr, files[0])
        bxy, bfl = _stars(bdata, bhdr, cfg)
        del bdata
    else:
        bxy, bfl, bhdr = _load_stars(bpath, cfg, star_lists)
    if len(bxy) < MIN_MATCH:
        raise InputError(f"{bpath}: base image has {len(bxy)} usable star(s), need {MIN_MATCH}; "
                         "choose another with base_img")
    log.info("base image %s: %d stars", bpath.name, len(bxy))
    return bxy, bfl, bhdr


def _centred_offsets(files: list[Path], bidx: int | None, bxy, bfl, max_dis: float, cfg, star_lists,
                     map_fn, turn: bool = True) -> dict:
    """Every frame but the base, searched around the base position, in 16 jobs through ``map_fn``
    (``turn``: shifts refined as similarities, :func:`_searched`; step p's transforms checked instead).

    Returns
    -------
    dict
        Frame index -> ``(rawfile, jd, OffsetResult, n_stars)`` (:func:`_centred_chunk`).
    """
    others = [i for i in range(len(files)) if i != bidx]
    size = max(1, -(-len(others) // 16))            # 16 jobs: balanced over the workers
    jobs = [others[k:k + size] for k in range(0, len(others), size)]
    base_name = files[bidx].name if bidx is not None else ""
    parts = map_fn(_centred_chunk, [([str(files[i]) for i in job], bxy, bfl, max_dis, cfg, star_lists, base_name,
                                     turn) for job in jobs])
    return {i: r for job, part in zip(jobs, parts) for i, r in zip(job, part)}


def _chain_offsets(files: list[Path], bidx: int | None, bxy, bfl, bhdr, centred: dict, max_dis: float, cfg,
                   star_lists, similarity: bool = True) -> list[tuple]:
    """Walk outwards from the base keeping the last good offset as the prior.

    The chain runs base..last, then base-1..first (the prior restarting at
    0), or first..last for a base outside the list.  A frame's base-centred
    result stands when it is good and within ``max_dis`` of the prior, as a
    search centred on the prior would find the same match; otherwise a frame
    with enough stars is searched again around the prior, and the
    base-centred result is the fallback (a telescope re-pointed back to the
    start).

    Returns
    -------
    list of list
        Per frame, in the given order: ``[rawfile, jd, OffsetResult, n_stars]`` (``n_stars``: of
        its star list; -1 unreadable).
    """
    n = len(files)
    order = list(range(n)) if bidx is None else list(range(bidx, n)) + list(range(bidx - 1, -1, -1))
    rows: list[list | None] = [None] * n
    prior = np.zeros(2)
    for i in order:
        f = files[i]
        if bidx is not None and i == bidx - 1:
            prior = np.zeros(2)  # the backward chain starts again at the base
        if i == bidx:
            name, jd, nstars = _rawfile(bhdr, f), _jd(bhdr), len(bxy)
            res = OffsetResult(0.0, 0.0, len(bxy), True, "ok (base image)", 0.0)
        else:
            name, jd, res, nstars = centred[i]
            near = res.ok and (res.given or (np.abs(np.array([res.dx, res.dy]) - prior) <= max_dis).all())
            if nstars >= MIN_MATCH and prior.any() and not near:
                fxy, ffl, _ = _load_stars(f, cfg, star_lists)
                again = _searched(bxy, bfl, fxy, ffl, max_dis, prior, similarity)
                if again.ok or not res.ok:
                    res = again
        if res.ok:
            prior = np.array([res.dx, res.dy])
        rows[i] = [name, jd, res, nstars]
    return rows


# ------------------------------------------------------------------ output
def offset_paths(red_dir, obj: str, band: str) -> tuple[Path, Path]:
    """``{red}/offset_{obj}_{band}.ecsv`` and ``.txt``."""
    return product_path(red_dir, "offsets", obj, band), product_path(red_dir, "offsets_txt", obj, band)


def write_offsets(table: Table, red_dir, obj: str, band: str) -> tuple[Path, Path]:
    """Write the offset table as ECSV (machine-readable) and aligned text, atomically."""
    ecsv, txt = offset_paths(red_dir, obj, band)
    from ..columns import describe

    write_table(ecsv, describe(table, "offsets"))
    t = table.copy(copy_data=True)
    t.meta.clear()
    if "bf" in t.colnames:
        t.remove_column("bf")
    for c, fmt in (("jd", ".6f"), ("dx", ".3f"), ("dy", ".3f"), ("rot_deg", ".4f"), ("scale", ".6f"),
                   *((m, ".6f" if m[2] != "2" else ".3f") for m in MATRIX_COLUMNS)):
        if c in t.colnames:
            t[c].format = fmt
    write_table(txt, t)
    return ecsv, txt


def read_offsets(red_dir, obj: str, band: str) -> Table:
    """Read ``{red}/offset_{obj}_{band}.ecsv`` back (raises InputError when missing)."""
    ecsv, _ = offset_paths(red_dir, obj, band)
    if not ecsv.is_file():
        raise InputError(f"{ecsv}: offset table not found (run step o)")
    return Table.read(ecsv, format="ascii.ecsv")
