"""Prefect tasks: one per QLCP step, each a thin wrapper of :mod:`qlcp.core.steps`.

No science here.  Every task is cached on the content of the files it reads,
the step's settings and the code version (:mod:`qlcp.tasks.common`), retried on
transient I/O errors only, and logs through Prefect (the core's ``qlcp``
loggers are bridged to the run logs).  Parameters and results are plain
JSON values (paths as strings), serialised as JSON, never pickled.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from qlcp.core import steps as core
from qlcp.core.listing import list_night

from .common import config_of, register_fingerprints, task_log, task_options


@task(name="list-night", **task_options("l", value_params=("raw_dir", "raw_files")))
def list_task(raw_dir: str, red_dir: str, cfg: dict, raw_files: list) -> dict:
    """Step l: classify the night.

    ``raw_files`` — [path, size, mtime_ns] of every file — only keys the cache (the
    directory is rescanned): the listing reads names and headers, so their identity
    suffices here; every later step keys on the content of the frames it reads.
    """
    c = config_of(cfg)
    with task_log(red_dir, "l", c):
        night = list_night(raw_dir, red_dir, c, write="l" in c.steps)
    groups = night.science_groups(c.obj, c.band)
    return {
        "summary": night.summary(),
        "bias": [str(p) for p in night.bias],
        "dark": [str(p) for p in night.dark],
        "flats": {b: [str(p) for p in night.flat(b)] for b in sorted({b for _, b in groups})},
        "groups": [[o, b, [str(p) for p in night.science(o, b)]] for o, b in groups],
        "rejected": [[str(r["file"]), str(r["reason"])] for r in night.rejected],
        "outputs": [str(Path(red_dir) / "lst" / "night.ecsv")] if "l" in c.steps else [],
    }


@task(name="bias", **task_options("b", file_params=("files",)))
def bias_task(red_dir: str, cfg: dict, files: list[str]) -> dict:
    with task_log(red_dir, "b", config_of(cfg)):
        path = core.bias_step(red_dir, config_of(cfg), files)
    return {"path": path, "outputs": [path] if path else []}


@task(name="dark", **task_options("b", file_params=("files", "bias")))
def dark_task(red_dir: str, cfg: dict, files: list[str], bias: str | None) -> dict:
    with task_log(red_dir, "b", config_of(cfg)):
        path = core.dark_step(red_dir, config_of(cfg), files, bias)
    return {"path": path, "outputs": [path] if path else []}


@task(name="flat", **task_options("f", file_params=("files", "bias", "dark"), value_params=("band",)))
def flat_task(red_dir: str, cfg: dict, band: str, files: list[str], bias: str | None, dark: str | None) -> dict:
    with task_log(red_dir, "f", config_of(cfg)):
        path = core.flat_step(red_dir, config_of(cfg), band, files, bias, dark)
    return {"path": path, "outputs": [path] if path else []}


@task(name="correct", **task_options("i", file_params=("files", "bias", "flat", "dark", "coord_file"),
                                     value_params=("obj", "band")))
def correct_task(red_dir: str, cfg: dict, obj: str, band: str, files: list[str], bias: str | None,
                 flat: str | None, dark: str | None, coord_file: str | None = None) -> dict:
    """Step i on a chunk of frames of one group (``coord_file``: the group's first frame, whose
    header gives the target coordinate for every chunk)."""
    with task_log(red_dir, "i", config_of(cfg)):
        res = core.correct_step(red_dir, config_of(cfg), obj, band, files, bias, flat, dark, fingerprints=True,
                                coord_file=coord_file)
    register_fingerprints(res.pop("fingerprints", {}))
    return res


@task(name="correct-photometry", **task_options("ip", file_params=("files", "bias", "flat", "dark", "coord_file"),
                                                value_params=("obj", "band")))
def correct_photometry_task(red_dir: str, cfg: dict, obj: str, band: str, files: list[str], bias: str | None,
                            flat: str | None, dark: str | None, coord_file: str | None = None) -> dict:
    """Steps i and p on a chunk of frames of one group, in one pass (when both run): each
    frame is measured as soon as it is corrected.  ``coord_file`` as for ``correct``."""
    with task_log(red_dir, "ip", config_of(cfg)):
        res, stats, _ = core.correct_photometry_step(red_dir, config_of(cfg), obj, band, files, bias, flat, dark,
                                                     fingerprints=True, coord_file=coord_file)
    register_fingerprints({**res.pop("fingerprints", {}),
                           **{s["file"]: s.pop("fingerprint") for s in stats if s.get("fingerprint")}})
    return {**res, "frames": stats, "cats": [s["file"] for s in stats if s.get("file")]}


@task(name="offsets", **task_options("o", file_params=("bf_files", "cat_files"), value_params=("obj", "band")))
def offset_task(red_dir: str, cfg: dict, obj: str, band: str, bf_files: list[str],
                cat_files: list[str] | None = None) -> dict:
    """Step o; ``cat_files`` (the catalogues step o reads its star lists from) only key the cache."""
    with task_log(red_dir, "o", config_of(cfg)):
        path = core.offset_step(red_dir, config_of(cfg), obj, band, bf_files)
    return {"path": path, "outputs": [path]}


@task(name="photometry", **task_options("p", file_params=("bf_files",)))
def photometry_task(red_dir: str, cfg: dict, bf_files: list[str]) -> dict:
    """Step p on a chunk of corrected frames."""
    with task_log(red_dir, "p", config_of(cfg)):
        stats = core.photometry_step(red_dir, config_of(cfg), bf_files, fingerprints=True)
    register_fingerprints({s["file"]: s.pop("fingerprint") for s in stats if s.get("fingerprint")})
    return {"frames": stats, "outputs": [s["file"] for s in stats if s.get("file")]}


@task(name="lightcurve", **task_options("kcdg", file_params=("cat_files", "offsets", "inputs"),
                                        value_params=("obj", "band", "night")))
def lightcurve_task(red_dir: str, cfg: dict, obj: str, band: str, cat_files: list[str], offsets: str,
                    night: str = "", inputs: list[str] | None = None) -> dict:
    """Steps k/K, c, d and g of one group, in order, as one task.

    They are quick and strictly serial, so one task saves three rounds of
    orchestration per group; each step still logs to its own file.  ``inputs``
    names products of earlier runs that a step reads when its producer is not
    requested (the catalogue for ``d`` without ``c``, the star list for ``g``
    without ``d``): they key the cache by content like the other inputs.
    """
    c = config_of(cfg)
    out: dict = {"outputs": []}
    sel = None
    if any(s in c.steps for s in "kKc"):
        with task_log(red_dir, "k", c):
            sel = core.selection_for(red_dir, c, obj, band, cat_files, offsets)
        out["selection"] = sel
    if "c" in c.steps:
        with task_log(red_dir, "c", c):
            out["cata"] = core.catalogue_step(red_dir, c, obj, band, cat_files, offsets, sel)
        out["outputs"].append(out["cata"])
    if "d" in c.steps:
        with task_log(red_dir, "d", c):
            res = core.differential_step(red_dir, c, obj, band, str(core.catalogue_path(red_dir, obj, band)), night)
        out.update(lc=res["lc"], stars=res["stars"], png=res["png"], noise=res["noise"])
        out["outputs"] += [res["lc"], res["stars"], res["png"]]
    if "g" in c.steps:
        with task_log(red_dir, "g", c):
            out["chart"] = core.graph_step(red_dir, c, obj, band)
        out["outputs"].append(out["chart"])
    return out
