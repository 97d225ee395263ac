"""Where every product of a night lives: one function names them all.

Every stage writes under the night's output root ``red`` only.  The stage
graph (:mod:`qlcp.core.stages`) declares which product *kinds* a stage reads
and writes; :func:`product_path` turns a kind into a path.  Nothing else in
the code formats a product's file name.

========================  ==================================  ==============
kind                      path under ``red``                  needs
========================  ==================================  ==============
``config``                ``config.yaml``
``summary``               ``summary.json``
``night_list``            ``lst/night.ecsv``
``masters``               ``masters.json``                    (the masters the night uses, and why)
``log``                   ``log/{step}.log``                  step
``bias``                  ``bias.fits``
``dark``                  ``dark.fits``
``flat``                  ``flat_{band}.fits``                band
``group_dir``             ``{obj}_{band}/``                   obj, band
``corrected``             ``{obj}_{band}/{stem}.bf.fits``     obj, band, frame (raw)
``frame_catalogue``       ``{obj}_{band}/{stem}.cat.fits``    frame (corrected)
``offsets``               ``offset_{obj}_{band}.ecsv``        obj, band
``offsets_txt``           ``offset_{obj}_{band}.txt``         obj, band
``wcs``                   ``wcs_{obj}_{band}.fits``           obj, band
``pick``                  ``pick_{obj}_{band}.ecsv``          obj, band
``selection``             ``select_{obj}_{band}.json``        obj, band
``night_catalogue``       ``cata_{obj}_{band}.fits``          obj, band
``lightcurve``            ``lc_{obj}_{band}.ecsv``            obj, band
``stars``                 ``stars_{obj}_{band}.ecsv``         obj, band
``lc_png``, ``lc_pdf``    ``lc_{obj}_{band}.png`` / ``.pdf``  obj, band
``chart``                 ``chart_{obj}_{band}.png``          obj, band
``numbered_chart``        ``chart_numbered_{obj}_{band}.png``  obj, band (step w, a target not placed)
``numbered_chart_txt``    ``chart_numbered_{obj}_{band}.txt``  obj, band (its numbered stars' positions)
``timing``                ``timing_{obj}_{band}.ecsv``        obj, band (step t: event times)
``timing_png``            ``timing_{obj}_{band}.png``         obj, band
========================  ==================================  ==============

Campaign products live under the output root of all nights (``red`` is then
``RED_ROOT``), per target ``{obj}`` (a file-safe target name):

========================  ==================================================  ==========
``campaign_dir``          ``campaign/{obj}/``                                 obj
``campaign_lc``           ``campaign/{obj}/lc_{obj}_{band}.ecsv`` (``.png``)  obj, band
``campaign_lc_png``
``oc``, ``oc_png``        ``campaign/{obj}/oc_{obj}.ecsv`` / ``.png``         obj
``ephemeris``             ``campaign/{obj}/ephemeris_{obj}.yaml``             obj
``period``                ``campaign/{obj}/period_{obj}_{band}.ecsv``         obj, band
``period_png``            ``campaign/{obj}/period_{obj}_{band}.png``          obj, band
========================  ==================================================  ==========
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import QLCPError
from .io import raw_stem

#: suffixes of per-frame products, after the raw file's stem
BF_SUFFIX = ".bf.fits"
CAT_SUFFIX = ".cat.fits"

_GROUP = {"offsets": "offset_{}_{}.ecsv", "offsets_txt": "offset_{}_{}.txt", "wcs": "wcs_{}_{}.fits",
          "pick": "pick_{}_{}.ecsv", "selection": "select_{}_{}.json",
          "night_catalogue": "cata_{}_{}.fits", "lightcurve": "lc_{}_{}.ecsv", "stars": "stars_{}_{}.ecsv",
          "lc_png": "lc_{}_{}.png", "lc_pdf": "lc_{}_{}.pdf", "chart": "chart_{}_{}.png",
          "numbered_chart": "chart_numbered_{}_{}.png", "numbered_chart_txt": "chart_numbered_{}_{}.txt",
          "timing": "timing_{}_{}.ecsv", "timing_png": "timing_{}_{}.png"}
_CAMPAIGN = {"campaign_lc": "lc_{0}_{1}.ecsv", "campaign_lc_png": "lc_{0}_{1}.png", "oc": "oc_{0}.ecsv",
             "oc_png": "oc_{0}.png", "ephemeris": "ephemeris_{0}.yaml", "period": "period_{0}_{1}.ecsv",
             "period_png": "period_{0}_{1}.png"}
_NIGHT = {"config": "config.yaml", "summary": "summary.json", "night_list": "lst/night.ecsv", "masters": "masters.json",
          "bias": "bias.fits", "dark": "dark.fits"}

#: every product kind :func:`product_path` knows
KINDS = (frozenset(_GROUP) | frozenset(_NIGHT) | frozenset(_CAMPAIGN)
         | {"log", "flat", "group_dir", "corrected", "frame_catalogue", "campaign_dir"})


def group_kinds() -> frozenset:
    """The kinds of a group's products with one file each (``{obj}_{band}`` in their name)."""
    return frozenset(_GROUP)


def shared_dir(red, configured: str | None, env: str, name: str) -> Path:
    """A directory shared by the nights under one output root (the field references, the calibration
    library): ``configured`` (the config's), else ``$env``, else ``{red}/../{name}``."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    return Path(red).resolve().parent / name


def frame_stem(path: str | Path) -> str:
    """A frame's name without its FITS suffix(es) and without ``.bf``: the stem its products share."""
    stem = raw_stem(path)
    return stem[:-3] if stem.endswith(".bf") else stem


def product_path(red: str | Path | None, kind: str, obj: str | None = None, band: str | None = None,
                 frame: str | Path | None = None, step: str | None = None) -> Path:
    """The path of a product of kind ``kind`` under the output root ``red``.

    Parameters
    ----------
    red : str or Path
        The night's output root.
    kind : str
        One of :data:`KINDS` (table in the module docstring).
    obj, band : str, optional
        The (object, band) group, for per-group products; ``band`` alone for ``flat``.
    frame : str or Path, optional
        The raw frame (``corrected``) or the corrected frame (``frame_catalogue``).
    step : str, optional
        The step letter, for ``log``.

    Raises
    ------
    QLCPError
        Unknown kind, or a part the kind needs is missing (a programming error).
    """
    if kind == "frame_catalogue" and frame is not None:       # beside its corrected frame, wherever that is
        return Path(frame).parent / f"{frame_stem(frame)}{CAT_SUFFIX}"
    red = Path(red)
    if kind in _NIGHT:
        return red / _NIGHT[kind]
    if kind == "log" and step:
        return red / "log" / f"{step}.log"
    if kind == "flat" and band:
        return red / f"flat_{band}.fits"
    if obj is not None and (kind == "campaign_dir" or kind in _CAMPAIGN):
        if kind == "campaign_dir":
            return red / "campaign" / obj
        if band is not None or "{1}" not in _CAMPAIGN[kind]:
            return red / "campaign" / obj / _CAMPAIGN[kind].format(obj, band)
    if obj is not None and band is not None:
        if kind in _GROUP:
            return red / _GROUP[kind].format(obj, band)
        if kind == "group_dir":
            return red / f"{obj}_{band}"
        if kind == "corrected" and frame is not None:
            return red / f"{obj}_{band}" / f"{raw_stem(frame)}{BF_SUFFIX}"
    raise QLCPError(f"product {kind!r}: unknown kind or missing obj/band/frame/step")


def cat_path(bf: str | Path) -> Path:
    """The photometry catalogue (``frame_catalogue``) of a corrected frame."""
    return product_path(None, "frame_catalogue", frame=bf)


def corrected_files(red, obj: str, band: str, raw_files=None) -> list[str]:
    """The group's corrected frames: those of ``raw_files`` that exist, else all on disk, sorted."""
    if raw_files is not None:
        return [str(p) for p in (product_path(red, "corrected", obj, band, frame=f) for f in raw_files) if p.is_file()]
    return sorted(str(p) for p in product_path(red, "group_dir", obj, band).glob(f"*{BF_SUFFIX}"))


def catalogue_files(bf_files) -> list[str]:
    """The photometry catalogues of ``bf_files`` that exist."""
    return [str(cat_path(b)) for b in bf_files if cat_path(b).is_file()]
