"""The generated parts of ``docs/``: the stage graph and the configuration reference.

Each generated part sits in a Markdown file between two markers, ``<!-- NAME:start (command) -->``
and ``<!-- NAME:end -->``, with hand-written text around it:

* ``stage-graph`` in ``docs/design.md``: :func:`qlcp.core.stages.markdown_table`, the stage
  declarations as a table;
* ``config-reference`` in ``docs/configuration.md``: :func:`config_markdown`, every field of
  :class:`qlcp.core.config.Config` (key, type, default, description), grouped.

``python -m qlcp.core.docgen [REPO]`` rewrites both from the code (``REPO`` defaults to the current
directory); ``--check`` only says which are out of date (exit status 1).  ``tests/core/test_docs.py``
fails when a committed file is not what the code generates.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic_core import PydanticUndefined

from .config import Config
from .stages import markdown_table

#: sections of the configuration reference: (title, keys in the order shown); a field in none of
#: them is listed under "Other settings" at the end, so a new key appears before it is placed
CONFIG_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Run parameters", ("steps", "obj", "band", "use_bias", "alt_bias", "use_flat", "alt_flat", "use_dark",
                        "alt_coord", "base_img", "aper", "starxy", "ind_tgt", "ind_ref", "ind_chk", "mode")),
    ("Running", ("workers", "file_log", "scr_log", "keep_corrected", "results_url")),
    ("Instruments", ("instruments_dir", "instrument", "calibrations")),
    ("Site and telescope", ("site_lon", "site_lat", "site_ele", "site_tz", "site_timezone", "tel_diameter",
                            "scint_cy")),
    ("File names and header keywords", ("patterns", "date_key", "time_key", "time_ref", "exptime_key",
                                        "filter_key", "object_key", "imagetyp_key", "ra_key", "dec_key")),
    ("Detector", ("gain", "rdnoise", "saturation")),
    ("Calibration (steps b, f, i)", ("combine_sigma", "combine_mem_mb", "flat_limit_low", "flat_limit_high",
                                     "border_cut")),
    ("Calibration library", ("calib_library", "calib_dir", "calib_max_age_days", "calib_prefer_earlier",
                             "calib_qc_bias_level", "calib_qc_bias_structure", "calib_qc_flat_gradient",
                             "calib_qc_flat_structure")),
    ("Photometry (step p)", ("frame_catalogues", "detect_thresh", "detect_minarea", "sky_annulus",
                             "phot_back_mesh", "phot_deblend_nthresh", "draw_phot", "draw_phot_err")),
    ("Alignment (step o)", ("offset_max_dis", "match_max_dis")),
    ("Astrometry (step w)", ("astrometry_index", "pixel_scale", "solve_timeout", "solve_blind_timeout")),
    ("Targets and field references", ("targets", "target_catalog", "field_dir", "refresh_field",
                                      "pick_cmp_dmag")),
    ("Star choice (step k) and differential photometry (step d)",
     ("pick_err_max", "pick_bad_max", "pick_var_std", "pick_var_rad", "pick_ref_n", "pick_ref_std",
      "pick_ref_dif", "pick_star_n", "pick_var_n", "pick_chk_n", "ref_var_k")),
    ("Event timing (step t)", ("timing_aperture", "timing_baseline", "timing_min_points", "timing_snr_min",
                               "timing_clip", "timing_n_boot", "timing_seed", "timing_prayer_bead", "timing_ld",
                               "timing_period", "timing_duration", "timing_window")),
    ("Campaigns", ("campaign_method", "campaign_min_period", "campaign_max_period", "campaign_min_nights")),
)

#: defaults that depend on the machine or the environment, or that read better in words
DEFAULT_TEXT = {
    "mode": "`[EXIST_APPEND, MISS_SKIP]`",
    "file_log": "`DEBUG`",
    "scr_log": "`INFO`",
    "patterns": "the manual's three (`config.DEFAULT_PATTERNS`)",
    "astrometry_index": "`[/usr/share/astrometry]` when it exists, else `[]`",
    "results_url": "`$QLCP_RESULTS_URL`, else –",
}

_BOUNDS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}


def _cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell (pipes escaped, no line breaks)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _type(field) -> str:
    """The field's type as written in Python, with its bounds (``float > 0``)."""
    ann = field.annotation
    text = ann.__name__ if isinstance(ann, type) else re.sub(r"\btyping\.", "", str(ann))
    text = text.replace("Any", "any")
    bounds = [f"{sym} {getattr(m, attr)}" for m in field.metadata for attr, sym in _BOUNDS.items()
              if hasattr(m, attr)]
    return text + (" " + ", ".join(bounds) if bounds else "")


def _default(name: str, field) -> str:
    if name in DEFAULT_TEXT:
        return DEFAULT_TEXT[name]
    value = field.default if field.default is not PydanticUndefined else field.default_factory()
    if value is None:
        return "–"
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, bool):
        value = str(value).lower()
    return f"`{value}`"


def config_markdown() -> str:
    """Every field of :class:`~qlcp.core.config.Config` as Markdown tables, one per group."""
    fields = Config.model_fields
    placed = [k for _, keys in CONFIG_GROUPS for k in keys if k in fields]
    groups = [(title, [k for k in keys if k in fields]) for title, keys in CONFIG_GROUPS]
    rest = [k for k in fields if k not in placed]
    if rest:
        groups.append(("Other settings", rest))
    out = []
    for title, keys in groups:
        out += [f"### {title}", "", "| key | type | default | description |", "|---|---|---|---|"]
        out += [f"| `{k}` | {_cell(_type(fields[k]))} | {_cell(_default(k, fields[k]))} | "
                f"{_cell(fields[k].description or '')} |" for k in keys]
        out.append("")
    return "\n".join(out)


#: generated part -> (file under the repository, function that makes it)
GENERATED = {
    "stage-graph": ("docs/design.md", markdown_table),
    "config-reference": ("docs/configuration.md", config_markdown),
}


def _markers(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- {name}:start[^\n]*-->\n).*?(<!-- {name}:end -->)", re.S)


def generated_text(name: str, text: str) -> str:
    """``text`` with the part between the ``name`` markers replaced by what the code generates now."""
    pattern = _markers(name)
    if not pattern.search(text):
        raise ValueError(f"no '<!-- {name}:start ... -->' ... '<!-- {name}:end -->' markers")
    make = GENERATED[name][1]
    return pattern.sub(lambda m: m.group(1) + make().rstrip("\n") + "\n" + m.group(2), text, count=1)


def update(repo: str | Path = ".", check: bool = False) -> list[str]:
    """Bring every generated part under ``repo`` up to date (``check``: only compare).

    Returns the files that were (``check``: would be) changed.
    """
    changed = []
    for name, (rel, _) in GENERATED.items():
        path = Path(repo) / rel
        text = path.read_text()
        new = generated_text(name, text)
        if new != text:
            changed.append(rel)
            if not check:
                path.write_text(new)
    return changed


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m qlcp.core.docgen", description=__doc__.split("\n\n")[0])
    p.add_argument("repo", nargs="?", default=".", help="the repository's root (default: here)")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when a part is out of date")
    a = p.parse_args(argv)
    changed = update(a.repo, check=a.check)
    for rel in changed:
        print(f"{rel}: {'out of date' if a.check else 'updated'}")
    if not changed:
        print("docs/ generated parts are current")
    return 1 if (a.check and changed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
