"""Prefect tasks: one per QLCP step, each a thin wrapper of :mod:`qlcp_core.steps`.

No science here.  Every task is cached on the content of the files it reads,
the step's settings and the code version (:mod:`tasks.common`), retried on
transient I/O errors only, and logs through Prefect (the core's ``qlcp``
loggers are bridged to the run logs).  Parameters and results are plain
JSON values (paths as strings), serialised as JSON, never pickled.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from qlcp_core import steps as core
from qlcp_core.listing import list_night

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


@task(name="correct", **task_options("i", file_params=("files", "bias", "flat", "dark"),
                                     value_params=("obj", "band")))
def correct_task(red_dir: str, cfg: dict, obj: str, band: str, files: list[str], bias: str | None,
                 flat: str | None, dark: str | None) -> dict:
    """Step i on a chunk of frames of one group."""
    with task_log(red_dir, "i", config_of(cfg)):
        res = core.correct_step(red_dir, config_of(cfg), obj, band, files, bias, flat, dark, fingerprints=True)
    register_fingerprints(res.pop("fingerprints", {}))
    return res


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


@task(name="select-stars", **task_options("k", file_params=("cat_files", "offsets"),
                                          value_params=("obj", "band", "steps", "starxy")))
def select_task(red_dir: str, cfg: dict, obj: str, band: str, cat_files: list[str], offsets: str,
                steps: str = "", starxy=None) -> dict:
    """Step k (pick), K (reuse the last pick) or the given star list."""
    with task_log(red_dir, "k", config_of(cfg)):
        sel = core.selection_for(red_dir, config_of(cfg), obj, band, cat_files, offsets)
    picked = str(Path(red_dir) / f"pick_{obj}_{band}.ecsv")
    return {**sel, "outputs": [picked] if sel["source"] == "picked" else []}


@task(name="catalogue", **task_options("c", file_params=("cat_files", "offsets"),
                                       value_params=("obj", "band", "selection")))
def catalogue_task(red_dir: str, cfg: dict, obj: str, band: str, cat_files: list[str], offsets: str,
                   selection: dict) -> dict:
    sel = {k: v for k, v in selection.items() if k != "outputs"}
    with task_log(red_dir, "c", config_of(cfg)):
        path = core.catalogue_step(red_dir, config_of(cfg), obj, band, cat_files, offsets, sel)
    return {"path": path, "outputs": [path]}


@task(name="differential", **task_options("d", file_params=("cata",), value_params=("obj", "band", "night")))
def differential_task(red_dir: str, cfg: dict, obj: str, band: str, cata: str, night: str = "") -> dict:
    with task_log(red_dir, "d", config_of(cfg)):
        res = core.differential_step(red_dir, config_of(cfg), obj, band, cata, night)
    return {**res, "outputs": [res["lc"], res["stars"], res["png"]]}


@task(name="chart", **task_options("g", file_params=("stars", "offsets"), value_params=("obj", "band")))
def graph_task(red_dir: str, cfg: dict, obj: str, band: str, stars: str, offsets: str) -> dict:
    with task_log(red_dir, "g", config_of(cfg)):
        path = core.graph_step(red_dir, config_of(cfg), obj, band)
    return {"path": path, "outputs": [path]}
