"""The night's and the campaigns' artifacts in the Prefect UI: the night report (markdown), per-frame
quality and event tables, light-curve and campaign images (linked, not stored in Prefect's database),
the calibration masters of the night, and the night's progress bar.  Keys are stable per
night/object/band (or target), so reruns add versions rather than clutter.  The flows
(:mod:`qlcp.flows.night`, :mod:`qlcp.flows.campaign`) call these with their results; nothing here
runs a task."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import re
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
from prefect import get_run_logger
from prefect.artifacts import (
    create_image_artifact,
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from qlcp.core.columns import artifact_columns
from qlcp.core.summary import notices
from qlcp.core.walk import NightWalk
from qlcp.flows.guard import in_run_thread

log = logging.getLogger("qlcp.flows")


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes only."""
    s = "-".join(str(p) for p in parts if p)
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", s.lower())).strip("-")[:120]


class NightProgress:
    """The night's progress artifact: a unit per frame and frame step (``ip``: two).

    Advanced when a chunk task ends and, while a task runs in this process, by its
    worker jobs (:meth:`partial`, at most every :data:`EVERY` seconds); the value
    sent never goes back (the groups' tasks run at once, from several threads).
    The API calls are made by a thread of their own, with the flow run's context:
    a call (10-50 ms against a busy server) never holds up the flow or a task, and
    values that arrive while one is under way are sent as one, the latest."""

    EVERY = 2.0

    def __init__(self, night: str):
        self.night, self.units, self.done_ = night, 1, 0
        self.parts: dict[str, float] = {}
        self.shown, self.sent = 0.0, 0.0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: float | None = None          # the latest value not yet sent
        self._closing = False
        self._thread: threading.Thread | None = None

    def start(self, walk: NightWalk) -> None:
        n = sum(len(g.raw) for g in walk.groups.values())
        self.units = max(1, n * sum(len(b.stages) for b in walk.blocks if b.unit == "chunk"))
        self._thread = in_run_thread("qlcp-progress", self._sender)

    def partial(self, label: str, units: float) -> None:
        """``units`` more of task ``label`` done (from the task's thread)."""
        with self._lock:
            self.parts[label] = self.parts.get(label, 0.0) + units
            if time.monotonic() - self.shown >= self.EVERY:
                self.shown = time.monotonic()
                self._send(self._value())

    def advance(self, n: int, label: str = "") -> None:
        """Task ``label`` ended with ``n`` units."""
        with self._lock:
            self.parts.pop(label, None)
            self.done_ += n
            self._send(self._value())

    def done(self) -> None:
        """100 %, sent before this returns (at most 30 s)."""
        with self._lock:
            self._send(100.0)
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(30)

    def _value(self) -> float:
        return min(100.0, 100.0 * (self.done_ + sum(self.parts.values())) / self.units)

    def _send(self, value: float) -> None:
        """Queue ``value`` for the sender (the caller holds the lock)."""
        if value > self.sent:
            self.sent = self._pending = value
            self._wake.notify()

    def _sender(self) -> None:
        try:
            aid = create_progress_artifact(progress=0.0, key=artifact_key("night", self.night, "progress"),
                                           description=f"frames of {self.night} processed (steps i and p)")
        except Exception as e:  # a progress bar is for the UI: never fail a night for it
            log.warning("could not create the progress artifact: %s", e)
            aid = None
        while True:
            with self._wake:
                while self._pending is None and not self._closing:
                    self._wake.wait()
                value, self._pending = self._pending, None
                last = self._closing
            if value is not None and aid is not None:
                try:
                    update_progress_artifact(artifact_id=aid, progress=value)
                except Exception as e:
                    log.warning("could not update the progress artifact: %s", e)
            if last:
                return


def _frame_table(red: Path, g: dict) -> list[dict]:
    """Per-frame quality rows of one group: time, airmass, FWHM, sky, stars, offset, ok."""
    from astropy.table import Table

    rows = []
    lc_path = g["outputs"].get("lightcurve")
    off_path = Path(g["outputs"].get("offsets", ""))
    off = Table.read(off_path, format="ascii.ecsv") if off_path.is_file() else None
    lc = Table.read(lc_path, format="ascii.ecsv") if lc_path and Path(lc_path).is_file() else None
    offs = {r["file"]: r for r in off} if off is not None else {}
    if lc is not None:
        for r in lc:
            o = offs.get(r["file"])
            rows.append({"file": str(r["file"]), "bjd_tdb": round(float(r["bjd_tdb"]), 6),
                         "airmass": round(float(r["airmass"]), 4), "fwhm": round(float(r["fwhm"]), 2),
                         "sky": round(float(r["sky"]), 1),
                         "stars": int(o["n_matched"]) if o is not None else None,
                         "rot_deg": round(float(o["rot_deg"]), 2) if o is not None and "rot_deg" in o.colnames
                         else None,
                         "dx": round(float(o["dx"]), 2) if o is not None and np.isfinite(o["dx"]) else None,
                         "dy": round(float(o["dy"]), 2) if o is not None and np.isfinite(o["dy"]) else None,
                         "ok": bool(r["ok"])})
    elif off is not None:
        for o in off:
            rows.append({"file": str(o["file"]), "jd": float(o["jd"]), "stars": int(o["n_matched"]),
                         "dx": float(o["dx"]) if np.isfinite(o["dx"]) else None,
                         "dy": float(o["dy"]) if np.isfinite(o["dy"]) else None, "ok": bool(o["ok"])})
    return rows


def summary_markdown(summary: dict, cfg) -> str:
    """The night report shown in the Prefect UI."""
    out = [f"# Night {summary['night']}", "",
           f"* raw: `{summary['raw_dir']}`  \n* outputs: `{summary['red_dir']}`",
           f"* files: {summary['listing']}",
           f"* config hash `{summary['config_hash']}`, steps `{cfg.steps}`, apertures {cfg.aper} px",
           f"* finished {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC in {summary['run']['seconds']} s",
           "* masters: " + (", ".join(f"{k} `{Path(m['path']).name if m['path'] else 'none'}` ({m['source']})"
                                      for k, m in sorted(summary["masters"].items())) or "none"),
           f"* outcome: **{summary.get('outcome') or 'ok'}**"]
    out += [f"* {line}" for line in notices(summary)]
    out += [f"* {g['obj']} {g['band']}: **no target**: {g.get('note', '')}" for g in summary["groups"]
            if g.get("outcome") == "no target"]
    out += [""]
    states = ", ".join(f"{name}: " + "/".join(f"{n} {s}" for s, n in sorted(c.items()))
                       for name, c in sorted(summary["run"]["task_states"].items()))
    out += [f"**Tasks** — {states}", ""]
    out += ["## Targets", "", "| object | band | frames | corrected | light curve | star | aperture | "
            "achieved (mmag) | predicted (mmag) | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for g in summary["groups"]:
        note = g["error"] or ("no target" if g.get("outcome") == "no target" else "")
        names = (g.get("stars") or {}).get("targets") or []
        noise = g.get("noise") or [{}]
        for n in noise:
            star = n.get("label") or f"{n.get('role', '')} {n.get('k', '')}".strip()
            if n.get("role") == "target" and isinstance(n.get("k"), int) and n["k"] < len(names):
                star += f" {names[n['k']]}"         # the configured name (XO-1), not only T0
            ach = f"{1e3 * n['achieved']:.2f}" if n.get("achieved") is not None else ""
            pre = f"{1e3 * n['predicted']:.2f}" if n.get("predicted") is not None else ""
            flag = "NOISY (clouds or systematics?)" if n.get("noisy") else ""
            if n.get("error_model") == "scaled":
                flag = (flag + "; " if flag else "") + f"errors scaled x{n.get('error_scale', float('nan')):.2f} " \
                                                       f"(gain {n.get('gain_source', 'assumed')})"
            out.append(f"| {g['obj']} | {g['band']} | {g['frames']} | {g.get('corrected', '')} | "
                       f"`{Path(g['outputs']['lightcurve']).name if g['outputs'].get('lightcurve') else '-'}` | {star} | {n.get('aperture', '')} | "
                       f"{ach} | {pre} | {note or flag} |")
    out += ["", "## Rejected files", ""]
    if summary["rejected"]:
        out += ["| file | reason |", "|---|---|"] + [f"| {f} | {why} |" for f, why in summary["rejected"]]
    else:
        out.append("none")
    return "\n".join(out) + "\n"


def publish_calibration_library(red: Path, cfg, summary: dict) -> None:
    """The library masters this night registered or used, with their QC, as the table artifact
    ``night-<night>-calib``.  Not the whole library: it grows by a few masters every night, and a
    nightly report of all of it would cost more each night (``qlcp calib list`` shows it all)."""
    import sqlite3

    from qlcp.core import calib_library as L

    lib = L.library_dir(red, cfg)
    used = [m["path"] for m in summary["masters"].values() if m.get("path")]
    try:
        found, total = L.entries_of_night(lib, Path(red).name, used)
    except (L.LibraryError, sqlite3.Error, OSError) as e:   # the summary's degraded says it: no second failure
        get_run_logger().warning("calibration library not reported: %s", e)
        return
    changes = [m["epoch_change"] for m in summary["masters"].values() if m.get("epoch_change")]
    rows = [{"id": e.id, "kind": e.kind, "band": e.band or "", "night": e.night, "date": e.date_start[:10],
             "shape": f"{e.nx}x{e.ny}", "binning": e.binning, "camera": e.camera, "epoch": e.epoch,
             "frames": e.n_frames, "status": e.status, "qc": e.qc or ""} for e in found]
    if rows:
        create_table_artifact(table=rows, key=artifact_key("night", summary["night"], "calib"),
                              description=f"library masters night {summary['night']} registered or used "
                                          f"({total} in {lib}: qlcp calib list)"
                                          + "".join(f". NEW EPOCH: {c}" for c in changes))


def publish_artifacts(summary: dict, red: Path, cfg) -> None:
    night = summary["night"]
    if cfg.calib_library:
        publish_calibration_library(red, cfg, summary)
    create_markdown_artifact(markdown=summary_markdown(summary, cfg), key=artifact_key("night", night, "summary"),
                             description=f"QLCP summary of night {night}")
    for g in summary["groups"]:
        rows = _frame_table(red, g)
        if rows:
            create_table_artifact(table=rows, key=artifact_key("night", night, g["obj"], g["band"], "frames"),
                                  description=f"per-frame quality, {g['obj']} {g['band']}. Columns: "
                                              + artifact_columns())
        publish_image(g["outputs"].get("lc_png"), Path(red).parent, cfg.results_url,
                      artifact_key("night", night, g["obj"], g["band"], "lc"), f"light curve {g['obj']} {g['band']}")
        events = _event_rows(g["outputs"].get("timing"))
        if events:
            create_table_artifact(table=events, key=artifact_key("night", night, g["obj"], g["band"], "events"),
                                  description=f"events timed, {g['obj']} {g['band']}: BJD_TDB, error (s), "
                                              "status; O-C is in the target's campaign artifacts")


def publish_image(path, root: Path, results_url: str | None, key: str, description: str) -> None:
    """An image product in the UI, without the image in Prefect's database: an image artifact at
    ``results_url`` + its path under ``root`` (the output root a web server serves); without
    ``results_url`` a link artifact to its file:// path (the UI shows the path; browsers do not load
    file:// images into an http page); ``results_url: embed``: the PNG as a data URI, as before
    (~0.2 MB a night in the artifact and again in its key's latest version, for years)."""
    if not path or not Path(path).is_file():
        return
    path = Path(path).resolve()
    description = f"{description} ({path})"
    if results_url == "embed":
        uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        create_image_artifact(image_url=uri, key=key, description=description)
    elif results_url:
        try:
            rel = path.relative_to(Path(root).resolve()).as_posix()
        except ValueError:                    # not under the served root: the file's path is all there is
            create_link_artifact(link=path.as_uri(), link_text=path.name, key=key, description=description)
            return
        create_image_artifact(image_url=results_url.rstrip("/") + "/" + urllib.parse.quote(rel), key=key,
                              description=description)
    else:
        create_link_artifact(link=path.as_uri(), link_text=path.name, key=key, description=description)


def _event_rows(path) -> list[dict]:
    """The night's timing table as artifact rows: target, method, status, time ± error, depth."""
    from astropy.table import Table

    if not path or not Path(path).is_file():
        return []
    t = Table.read(path, format="ascii.ecsv")
    rows = []
    for r in t:
        time = float(r["time_bjd_tdb"])
        rows.append({"target": str(r["target"]), "kind": str(r["kind"]), "method": str(r["method"]),
                     "status": str(r["status"]), "reason": str(r["reason"]) if "reason" in t.colnames else "",
                     "time_bjd_tdb": round(time, 6) if np.isfinite(time) else None,
                     "error_s": round(float(r["time_err_d"]) * 86400, 1) if np.isfinite(r["time_err_d"]) else None,
                     "depth": round(float(r["depth"]), 4)
                     if np.isfinite(r["depth"]) else None})
    for st in t.meta.get("targets") or []:
        name = str(st.get("target", ""))
        if st.get("status") != "full" and not any(x["target"] == name for x in rows):
            rows.append({"target": name, "kind": "", "method": "", "status": st.get("status", "none"),
                         "reason": st.get("reason", ""), "time_bjd_tdb": None, "error_s": None, "depth": None})
    return rows


def publish_campaign(target: str, res: dict, red_root: str, results_url: str | None = None) -> None:
    """Per target: the O-C diagram, the campaign light curve and the period search as images (linked,
    :func:`publish_image`), the ephemeris as markdown; keys ``campaign-{target}-...``
    (stable: reruns add versions)."""
    for kind, what in (("oc_png", "O-C"), ("period_png", "period search")):
        publish_image(res.get(kind), Path(red_root), results_url,
                      artifact_key("campaign", target, kind.replace("_png", "")), f"{target}: {what}")
    for kind, path in sorted(res.items()):
        if kind.startswith("campaign_lc_png"):
            publish_image(path, Path(red_root), results_url,
                          artifact_key("campaign", target, "lc", kind[len("campaign_lc_png"):]),
                          f"{target}: multi-night light curve")
    eph = res.get("ephemeris")
    if eph and Path(eph).is_file():
        create_markdown_artifact(markdown=f"# Ephemeris of {target}\n\n```yaml\n{Path(eph).read_text()}```\n",
                                 key=artifact_key("campaign", target, "ephemeris"),
                                 description=f"refined linear ephemeris of {target}")
