"""Units and descriptions of every column of QLCP's output tables.

One place says what each column of each product means, so that a table read
back (``astropy.table.Table.read``) or opened in TOPCAT carries its units and a
one-line description: ECSV stores both in its header; FITS tables get
``TUNITn`` and ``TCOMMn`` cards.  A unit of ``""`` means *dimensionless*
(counts, flags, names, ratios): every column has one, so a missing unit is
always a mistake.

Star identifiers (one numbering everywhere): a chosen star is named by its
role letter and its rank in that role, ``T0``, ``T1`` (targets, the light
curve's ``mag_t{k}_*``), ``C0`` (checks, ``mag_c{k}_*``), ``R0``, ``R1``
(comparisons), ``X0`` (rejected comparisons); the stars table's ``label``
column, the finding chart, the light-curve panels and the summary's noise rows
all use it.  ``index`` is the star's position in ``starxy`` (the catalogue).
"""

from __future__ import annotations

import re

#: time, position and photometric units (astropy unit strings, FITS-compatible)
PIX, DAY, MAG, DEG, ADU, NONE = "pix", "d", "mag", "deg", "adu", ""

#: (unit, description) per column name, per table kind; a description holds at most 68 characters
#: (one FITS card)
SPECS: dict[str, dict[str, tuple[str, str]]] = {
    "offsets": {
        "file": (NONE, "raw frame file name"),
        "bf": (NONE, "corrected frame (path)"),
        "jd": (DAY, "Julian date (UTC) of mid-exposure"),
        "dx": (PIX, "x shift: frame x of the origin of the base frame (= m02)"),
        "dy": (PIX, "y shift: frame y of the origin of the base frame (= m12)"),
        "n_matched": (NONE, "stars paired with the base frame"),
        "ok": (NONE, "true when the frame is aligned"),
        "reason": (NONE, "why the frame is not aligned (empty when ok)"),
        "align": (NONE, "alignment: base, shift or similarity"),
        "rot_deg": (DEG, "rotation of the frame against the base frame"),
        "scale": (NONE, "scale of the frame against the base frame"),
        "m00": (NONE, "transform base pixel -> frame pixel, matrix element 0,0"),
        "m01": (NONE, "transform base pixel -> frame pixel, matrix element 0,1"),
        "m02": (PIX, "transform base pixel -> frame pixel, x translation"),
        "m10": (NONE, "transform base pixel -> frame pixel, matrix element 1,0"),
        "m11": (NONE, "transform base pixel -> frame pixel, matrix element 1,1"),
        "m12": (PIX, "transform base pixel -> frame pixel, y translation"),
    },
    "pick": {
        "cand": (NONE, "candidate number (row)"),
        "x": (PIX, "x in the base frame (0-based)"),
        "y": (PIX, "y in the base frame (0-based)"),
        "mag": (MAG, "median instrumental magnitude (25 - 2.5 log10 ADU)"),
        "std": (MAG, "frame-to-frame standard deviation of the magnitude"),
        "range": (MAG, "largest minus smallest magnitude over the night"),
        "missing": (NONE, "fraction of frames without a measurement"),
        "saturated": (NONE, "true when saturated in any frame"),
        "n_frames": (NONE, "frames with a measurement"),
        "role": (NONE, "target, comparison, check or empty"),
        "star": (NONE, "index in starxy of the chosen star (-1: not chosen)"),
        "reason": (NONE, "why this role (or why not chosen)"),
    },
    "stars": {
        "index": (NONE, "index of the star in starxy (the night catalogue)"),
        "label": (NONE, "star name in plots, chart, summary: T0, C0, R0, X0"),
        "x": (PIX, "x in the base frame (0-based)"),
        "y": (PIX, "y in the base frame (0-based)"),
        "role": (NONE, "target, comparison, check, rejected or unused"),
        "source": (NONE, "how the stars were chosen (given, picked, field ...)"),
        "weight": (NONE, "weight in the comparison ensemble, per aperture"),
        "scatter": (MAG, "frame-to-frame scatter against the ensemble, per aperture"),
        "reason": (NONE, "why a comparison was rejected"),
        "ra": (DEG, "right ascension (ICRS) from the WCS of the base frame"),
        "dec": (DEG, "declination (ICRS) from the WCS of the base frame"),
    },
    "lightcurve": {
        "file": (NONE, "raw frame file name"),
        "jd": (DAY, "Julian date (UTC) of mid-exposure"),
        "bjd_tdb": (DAY, "barycentric Julian date (TDB) of mid-exposure"),
        "hjd": (DAY, "heliocentric Julian date (UTC) of mid-exposure"),
        "airmass": (NONE, "airmass at mid-exposure"),
        "fwhm": (PIX, "median FWHM of the stars of the frame"),
        "sky": (ADU, "median sky level of the frame, per pixel"),
        "ok": (NONE, "true when the frame is usable"),
    },
    "night_catalogue": {
        "file": (NONE, "raw frame file name"),
        "jd": (DAY, "Julian date (UTC) of mid-exposure"),
        "mjd": (DAY, "modified Julian date (UTC) of mid-exposure"),
        "hjd": (DAY, "heliocentric Julian date (UTC) of mid-exposure"),
        "bjd_tdb": (DAY, "barycentric Julian date (TDB) of mid-exposure"),
        "airmass": (NONE, "airmass at mid-exposure"),
        "exptime": ("s", "exposure time"),
        "fwhm": (PIX, "median FWHM of the stars of the frame"),
        "sky": (ADU, "median sky level of the frame, per pixel"),
        "ok": (NONE, "true when the frame is usable"),
        "dx": (PIX, "x shift of the frame against the base frame"),
        "dy": (PIX, "y shift of the frame against the base frame"),
        "n_found": (NONE, "chosen stars found in the frame"),
        "aper_r": (PIX, "aperture radii used in the frame"),
        "x": (PIX, "x of each star in the frame (0-based)"),
        "y": (PIX, "y of each star in the frame (0-based)"),
        "mag": (MAG, "instrumental magnitude per star and aperture"),
        "err": (MAG, "magnitude error per star and aperture"),
        "flux": (ADU, "sky-subtracted flux per star and aperture"),
        "ferr": (ADU, "flux error per star and aperture (CCD equation)"),
        "mag_auto": (MAG, "AUTO (Kron) instrumental magnitude per star"),
        "err_auto": (MAG, "AUTO magnitude error per star"),
        "flags": (NONE, "photometry flags per star (bit mask, photometry.py)"),
        "peak": (ADU, "peak pixel above the background per star"),
        "sky_local": (ADU, "local sky per pixel from the annulus per star"),
        "index": (NONE, "index of the star in starxy"),
    },
    "frame_catalogue": {
        "X": (PIX, "x centroid (windowed, 0-based)"),
        "Y": (PIX, "y centroid (windowed, 0-based)"),
        "Elong": (NONE, "elongation a/b"),
        "FWHM": (PIX, "FWHM of the source (2 x half-light radius)"),
        "FluxAUTO": (ADU, "AUTO (Kron) flux"),
        "FErrAUTO": (ADU, "AUTO flux error"),
        "MagAUTO": (MAG, "AUTO instrumental magnitude (25 - 2.5 log10 ADU)"),
        "ErrAUTO": (MAG, "AUTO magnitude error"),
        "Flux": (ADU, "sky-subtracted aperture flux, per aperture (APERj)"),
        "FErr": (ADU, "aperture flux error (CCD equation), per aperture"),
        "Mag": (MAG, "aperture instrumental magnitude, per aperture"),
        "Err": (MAG, "aperture magnitude error, per aperture"),
        "Sky": (ADU, "local sky per pixel (clipped annulus mean)"),
        "Peak": (ADU, "peak pixel above the background"),
        "Flags": (NONE, "photometry flags (bit mask, see photometry.py)"),
    },
    "frames_artifact": {
        "file": (NONE, "raw frame file name"),
        "bjd_tdb": (DAY, "barycentric Julian date (TDB) of mid-exposure"),
        "jd": (DAY, "Julian date (UTC) of mid-exposure"),
        "airmass": (NONE, "airmass at mid-exposure"),
        "fwhm": (PIX, "median FWHM of the stars of the frame"),
        "sky": (ADU, "median sky level, per pixel"),
        "stars": (NONE, "stars paired with the base frame"),
        "dx": (PIX, "x shift against the base frame"),
        "dy": (PIX, "y shift against the base frame"),
        "rot_deg": (DEG, "rotation of the frame against the base frame (180: after a meridian flip)"),
        "ok": (NONE, "true when the frame is usable"),
    },
}

_LC_STAR = re.compile(r"^(mag|err)_([tcr])(\d+)_a(\d+)$")


def spec(kind: str, name: str) -> tuple[str, str] | None:
    """``(unit, description)`` of column ``name`` of table ``kind``, None when unknown."""
    s = SPECS[kind].get(name)
    if s is not None or kind != "lightcurve":
        return s
    m = _LC_STAR.match(name)
    if m is None:
        return None
    what, role, k, j = m.groups()
    star = f"{role.upper()}{k}"
    text = "differential magnitude (star minus ensemble)" if what == "mag" else "error of the differential magnitude"
    if role == "r":
        text += " of the other comparisons (a night without target)"
    return MAG, f"{star}: {text}, aperture {j}"


def describe(table, kind: str):
    """Set ``unit`` and ``description`` of every known column of ``table`` (in place); return it.

    Units are astropy unit strings; ``""`` (dimensionless) for counts, flags, ratios and
    names alike, so a column without a unit is always a mistake.  Unknown columns are
    left as they are (the tests require every written column to be known).
    """
    for name in table.colnames:
        s = spec(kind, name)
        if s is not None:
            table[name].unit, table[name].description = s
    return table


def fits_column_cards(table, kind: str) -> dict[str, str]:
    """``TUNITn`` / ``TCOMMn`` header cards (n from 1, in column order) of ``table`` of ``kind``."""
    cards = {}
    for i, name in enumerate(table.colnames, 1):
        s = spec(kind, name)
        if s is not None:
            cards[f"TUNIT{i}"], cards[f"TCOMM{i}"] = s
    return cards


def artifact_columns(kind: str = "frames_artifact") -> str:
    """A markdown line naming each column of a table artifact with its unit."""
    return "; ".join(f"`{n}` {d}" + (f" ({u})" if u else "") for n, (u, d) in SPECS[kind].items())
