"""Step p's files: one corrected frame's catalogue (``{rawstem}.cat.fits``), and a group's reference.

:func:`photometry_file` measures a frame in full (:func:`qlcp.core.photometry.measurement.measure`)
or tracked from its group's reference (:func:`qlcp.core.photometry.forced.measure_tracked`) and
writes its catalogue; :func:`reference_of` makes the group's :class:`~qlcp.core.photometry.forced.StarSet`
from the reference frame, writing that frame's catalogue on the way.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..columns import fits_column_cards
from ..correct import corrected_detector
from ..errors import InputError
from ..io import raw_stem, read_header, read_image, write_table_fast
from . import forced as forced_mod
from .measurement import measure
from .pixels import COPY_KEYS

log = logging.getLogger("qlcp.photometry")


# --------------------------------------------------------------------- file
def catalogue_path(bf_path, out_path) -> Path:
    """``out_path`` itself when it ends in .fits, else ``out_path/{rawstem}.cat.fits``."""
    out = Path(out_path)
    if out.name.lower().endswith(".fits"):
        return out
    stem = raw_stem(bf_path)
    return out / f"{stem.removesuffix('.bf')}.cat.fits"


def photometry_file(bf_path, out_path, cfg, aper=None, key: str | None = None, data=None, stars=None,
                    sources_out: dict | None = None) -> dict:
    """Photometry of one corrected frame into ``{rawstem}.cat.fits`` (and ``.cat.png``).

    Parameters
    ----------
    bf_path : str or Path
        Corrected frame ``{rawstem}.bf.fits``.
    out_path : str or Path
        The catalogue file (``*.fits``), or the directory to put
        ``{rawstem}.cat.fits`` in.
    cfg : Config
        Detector values (:func:`qlcp.core.correct.corrected_detector`: gain and
        read noise from the config, else the header; saturation from the frame's
        SATURATE, in corrected ADU, else the config), photometry settings,
        ``draw_phot``, ``draw_phot_err``.
    aper : list of float, optional
        Apertures instead of ``cfg.aper``.
    key : str, optional
        Provenance key written as ``QLCPKEY``.
    data : ndarray, optional
        The frame's pixels when already in memory (as step i just wrote them);
        only the header is then read from ``bf_path``.
    stars : qlcp.core.photometry.forced.StarSet, optional
        Measure only these stars, tracked from their reference frame
        (:func:`qlcp.core.photometry.forced.measure_tracked`; ``cfg.offset_max_dis``); when the
        frame does not align, its ``max(len(stars), pick_star_n)`` brightest sources.
    sources_out : dict, optional
        Receives the measured ``table``, ``stats`` and ``sources`` (:func:`measure`).

    Returns
    -------
    dict
        The frame stats of :func:`measure` plus ``file`` (the catalogue path).

    Notes
    -----
    The catalogue header carries JD, MJD, HJD, BJD, AIRMASS, ALT, AZ, EXPTIME,
    RAWFILE, DATE-OBS and the filter/object keywords of the frame (when
    present), BFFILE, PHOTMODE (``full``: every source detected; ``tracked``: the
    reference PHOTREF's stars), the measured FWHM, SKY, SKYRMS, NSTARS, the SKYIN/SKYOUT
    annulus, the GAIN, RDNOISE, SATURATE used, and NAPER with APER0 ..
    APER{n-1}, the radii in px of the ``Flux`` vector elements (NaN values are
    left out: FITS headers cannot hold them).
    """
    if data is None:
        data, hdr = read_image(bf_path)
    else:
        hdr = read_header(bf_path)
    gain, rdnoise, saturation = corrected_detector(hdr, cfg)
    res = None
    if stars is not None:
        res = forced_mod.measure_tracked(data, cfg, gain, rdnoise, saturation, stars, aper=aper,
                                         max_dis=cfg.offset_max_dis)
    if res is None:     # not tracked (the reference, or a frame that does not align): in full, crowding capped
        cap = None if stars is None else max(len(stars), cfg.pick_star_n)
        res = measure(data, cfg, gain, rdnoise, saturation, aper=aper, max_sources=cap, sources_out=sources_out)
    tab, stats = res
    if sources_out is not None:
        sources_out.update(table=tab, stats=dict(stats))
    tab.meta.setdefault("PHOTMODE", "full")

    meta = {}
    for card in COPY_KEYS + (cfg.filter_key, cfg.object_key):
        if card in hdr and card not in meta:
            meta[card] = hdr[card]
    meta["BFFILE"] = Path(bf_path).name
    if key:
        meta["QLCPKEY"] = key          # settings+inputs key (qlcp.core.provenance)
    for mkey, val in tab.meta.items():
        if mkey == "APER":
            meta["NAPER"] = len(val)
            for i, r in enumerate(val):     # APER0 .. APER{n-1}: index of the Flux vector
                if np.isfinite(r):
                    meta[f"APER{i}"] = r
        elif not isinstance(val, float) or np.isfinite(val):   # FITS headers hold no NaN
            meta[mkey] = val
    meta.update(fits_column_cards(tab, "frame_catalogue"))    # TUNITn, TCOMMn: units, descriptions
    tab.meta = meta
    cat = catalogue_path(bf_path, out_path)
    write_table_fast(cat, tab)
    if cfg.draw_phot:
        tab.meta["APER"] = stats["APER"]
        from ..plotting import plot_frame_sources

        plot_frame_sources(data, tab, cat.with_name(cat.name[: -len(".fits")] + ".png"), cfg.draw_phot_err,
                           title=cat.name[: -len(".cat.fits")])
    log.debug("%s: %d sources, FWHM %.2f px, sky %.1f", cat.name, stats["NSTARS"], stats["FWHM"], stats["SKY"])
    return {**stats, "file": str(cat)}


def reference_of(bf: str | Path, cfg, obj: str = "", aper=None, write=None) -> forced_mod.StarSet | None:
    """The :class:`~qlcp.core.photometry.forced.StarSet` of a group from its reference frame ``bf`` (a corrected frame);
    None, with a warning, when it cannot serve (then every frame is measured in full).

    ``write``: ``(catalogue path, provenance key)``: also write the reference's catalogue (step p's
    product for that frame, :func:`photometry_file`), whose stats then go in
    ``StarSet.made``: the frame is measured once."""

    given = forced_mod.given_positions(cfg, obj)
    cand = forced_mod.needs_candidates(cfg, given)
    given = np.vstack([given, forced_mod.target_positions(bf, cfg, obj)])
    try:
        if write is not None:
            box: dict = {}
            made = photometry_file(bf, write[0], cfg, aper=aper, key=write[1], sources_out=box)
            stars = forced_mod.choose(box["table"], box["stats"], box.get("sources"), str(bf), cfg.pick_star_n,
                                      given, cand)
            stars.made = made
            return stars
        data, hdr = read_image(bf)
        gain, rdnoise, saturation = corrected_detector(hdr, cfg)
        return forced_mod.star_set(data, cfg, gain, rdnoise, saturation, str(bf), cfg.pick_star_n, given,
                                   aper=aper, candidates=cand)
    except (InputError, OSError, ValueError) as e:
        log.warning("%s: cannot be the photometry reference (%s): every frame measured in full", Path(bf).name, e)
        return None
