"""Step d's files (:func:`write_lightcurve`): ``lc_{obj}_{band}.ecsv``, ``stars_{obj}_{band}.ecsv`` and the
original's text files ``cali_{obj}_AP{aper}/...txt``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from astropy.table import Table

from ..columns import describe
from ..io import write_table, write_text
from ..products import product_path
from .error_model import apply_error_model

log = logging.getLogger("qlcp.differential")


# ------------------------------------------------------------------ writing
def _aper_label(a: float) -> str:
    return f"{a:g}"


def _refs_label(refs: list[int]) -> str:
    """Comparison indexes joined by '-'; long lists shortened to first-last and count."""
    s = "-".join(str(i) for i in refs)
    if len(s) > 40:
        s = f"{refs[0]}-{refs[-1]}n{len(refs)}"
    return s or "none"


def _plain(v):
    """numpy scalars/arrays inside meta -> plain Python (for YAML/ECSV)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    if isinstance(v, np.generic):
        return v.item()
    return v


def write_lightcurve(lc: Table, stars: Table, red_dir: str | Path, obj: str, band: str,
                     provenance: dict | None = None, gain_source: str | None = None) -> list[Path]:
    """Write the light curve, the star table and the original's text files, atomically.

    Files: ``{red}/lc_{obj}_{band}.ecsv`` (``provenance`` in its meta),
    ``{red}/stars_{obj}_{band}.ecsv``, and per aperture ``j`` with configured
    radius ``a``: ``{red}/cali_{obj}_AP{a}/{obj}_{band}_vc{k}_{refs}.txt``
    (target k) and ``..._chk{k}_{refs}.txt`` (check k), columns ``bjd mag
    err`` (BJD_TDB; JD UTC when no BJD is known, said in the header), rows
    of usable frames with a finite magnitude only.  ``refs`` is the used
    comparison indexes joined by '-'.

    A light curve whose error model is not settled yet (:func:`differential` did not
    know the gain source) is settled first, in place, from ``gain_source`` (the
    ``GAINSRC`` of the group's corrected frames, :func:`corrected_gain_source`;
    None: unknown), by :func:`apply_error_model`.

    Returns
    -------
    list of Path
        Every file written.
    """
    red = Path(red_dir)
    out = []
    if not lc.meta.get("error_model"):
        apply_error_model(lc, gain_source or "unknown")
    lc = Table(lc, copy=True)
    lc.meta = _plain(dict(lc.meta))
    lc.meta["provenance"] = _plain(dict(provenance or {}))
    lc.meta.update(obj=obj, band=band)
    p = product_path(red, "lightcurve", obj, band)
    write_table(p, describe(lc, "lightcurve"))
    out.append(p)
    st = Table(stars, copy=True)
    st.meta = _plain(dict(st.meta))
    st.meta.update(obj=obj, band=band)
    p = product_path(red, "stars", obj, band)
    write_table(p, describe(st, "stars"))
    out.append(p)

    refs = _refs_label(list(lc.meta.get("ind_ref", [])))
    t = np.asarray(lc["bjd_tdb"], dtype=float)
    tname = "bjd_tdb"
    if not np.isfinite(t).any():
        t, tname = np.asarray(lc["jd"], dtype=float), "jd_utc"
    ok = np.asarray(lc["ok"], dtype=bool)
    apertures = lc.meta.get("apertures", [])
    for j in range(len(apertures)):
        d = red / f"cali_{obj}_AP{_aper_label(apertures[j])}"
        for letter, stem in (("t", "vc"), ("c", "chk"), ("r", "ref")):
            k = 0
            while f"mag_{letter}{k}_a{j}" in lc.colnames:
                mg = np.asarray(lc[f"mag_{letter}{k}_a{j}"], dtype=float)
                er = np.asarray(lc[f"err_{letter}{k}_a{j}"], dtype=float)
                use = ok & np.isfinite(mg) & np.isfinite(t)
                who = {"t": "target", "c": "check", "r": "comparison"}[letter]
                lines = [f"# {tname} mag err   ({obj} {band} {who} {k}, aperture {apertures[j]:g}, comparisons {refs})"]
                lines += [f"{t[f]:.7f} {mg[f]:8.5f} {er[f]:7.5f}" for f in np.flatnonzero(use)]
                p = d / f"{obj}_{band}_{stem}{k}_{refs}.txt"
                write_text(p, "\n".join(lines) + "\n")
                out.append(p)
                k += 1
    log.debug(f"wrote light curves of {obj} {band}: {len(out)} files")
    return out
