"""Walking the stage graph: the state of a night between blocks, shared by both drivers.

A driver asks :class:`NightWalk` for the blocks to run (:func:`qlcp.core.stages.plan`)
and, for each block, for its units of work (:meth:`NightWalk.units`); it runs
each unit (in turn, or as Prefect tasks) and hands every result or failure back
(:meth:`NightWalk.record`, :meth:`NightWalk.fail`).  The walk builds the
:class:`~qlcp.core.summary.NightSummary`.  So the plain driver and the flow
differ only in how they execute a unit, never in what runs, in which order,
with which inputs.

A unit is a plain dict holding exactly the fields its block declares (files and
values, :meth:`NightWalk.field`), so a Prefect task can key its cache on it; a failed listing stops the
night; a failed bias, dark or flat unit, or one left without usable frames,
takes the calibration policy's next choice (``use_*``, the library, ``alt_*``) or
leaves the night without it, *degraded*: the summary's ``degraded`` says what was
lost and why; a failed group unit fails that group only.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .calibration import choose_master
from .errors import QLCPError
from .field import reference_of_other_night
from .io import read_header, write_json
from .nightname import night_name
from .configview import view
from .products import catalogue_files, corrected_files, group_kinds, product_path
from .runsetup import sources
from .stages import BAND, CHUNK, GROUP, GROUP_PRODUCTS, NIGHT, WALK_KEYS, Block, plan
from .summary import GroupSummary, NightSummary, group_outcome, night_outcome
from .timing import target_coord

log = logging.getLogger("qlcp.walk")


@dataclass
class _Group:
    summary: GroupSummary
    raw: list
    corrected: list = field(default_factory=list)
    coord_file: str | None = None


class NightWalk:
    """The state of one night's reduction while a driver walks the stage graph.

    Parameters
    ----------
    raw, red : Path
        The raw directory (only read) and the output root.
    cfg : Config
    raw_files : list
        ``[path, size, mtime_ns]`` of every raw file (keys the listing's cache).
    driver : str
        ``plain`` or ``prefect``: recorded in the summary's ``run``.
    """

    def __init__(self, raw: Path, red: Path, cfg, raw_files: list, driver: str):
        self.raw, self.red, self.cfg = Path(raw), Path(red), cfg
        self.walk_cfg = view(cfg, (WALK_KEYS, "walk"))
        self.raw_files = raw_files
        self._t0 = time.time_ns()               # products newer than this were written by this run
        self.blocks: list[Block] = plan(cfg.steps)
        self.listing: dict | None = None
        self.masters: dict = {}         #: kind (bias, dark, flat_{band}) -> the choice the night uses
        self.tonight: dict = {}         #: kind -> what tonight's calibration stage made (and its library QC)
        self._masters_written = False
        self.groups: dict[tuple[str, str], _Group] = {}
        self.summary = NightSummary(night=night_name(self.raw, cfg), raw_dir=str(self.raw), red_dir=str(self.red),
                                    steps=cfg.steps, config_hash=cfg.hash(), run={"driver": driver, "timings": {}},
                                    instrument=cfg.instrument or "", settings=sources(cfg))

    # ------------------------------------------------------------ units
    def units(self, block: Block, chunk: int | None = None) -> list[tuple[str, dict]]:
        """``(label, unit)`` of every unit of ``block`` (``chunk``: frames per chunk unit; None: one
        chunk per group)."""
        if block.unit == NIGHT:
            return [(block.label, self._unit(block))]
        if block.unit == BAND:
            return [(f"{block.label}-{b}", self._unit(block, band=b)) for b in self.bands()]
        out = []
        for (o, b), g in self.groups.items():
            if g.summary.error:
                continue
            if block.unit == GROUP:
                out.append((f"{block.label}-{o}-{b}", self._unit(block, o, b, g)))
                continue
            self._write_masters()
            key = "files" if "files" in block.files else "corrected"
            items = self.field(key, o, b, g)
            n = chunk or max(1, len(items))
            for k, i in enumerate(range(0, len(items), n)):
                out.append((f"{block.label}-{o}-{b}-{k}", {**self._unit(block, o, b, g), key: items[i:i + n]}))
        return out

    def _unit(self, block: Block, obj: str | None = None, band: str | None = None, g: _Group | None = None) -> dict:
        """The unit: exactly the fields ``block`` declares, each resolved only when declared."""
        return {k: self.field(k, obj, band, g) for k in block.files + block.values}

    def field(self, name: str, obj: str | None = None, band: str | None = None, g: _Group | None = None):
        """The value of the unit field ``name`` of the night, of ``band`` or of the group ``(obj, band)``: a
        field named after a group product kind (or ``masters``) holds its path; ``bias``, ``dark``, ``flat``
        the master the night uses; the others, the night's raw files and state (:class:`~qlcp.core.stages.Stage`)."""
        L = self.listing or {}
        if name in ("bias", "dark"):
            return self.master(name)
        if name == "flat":
            return self.master("flat", band)
        if name == "pick":                      # the last pick, read only when K reuses it
            return str(product_path(self.red, "pick", obj, band)) if "K" in self.cfg.steps else None
        if name in group_kinds():
            return str(product_path(self.red, name, obj, band))
        if name == "masters":
            return str(product_path(self.red, "masters"))
        match name:
            case "raw_dir":
                return str(self.raw)
            case "raw_files":
                return self.raw_files
            case "bias_files":
                return L.get("bias", [])
            case "dark_files":
                return L.get("dark", [])
            case "flat_files":
                return L.get("flats", {}).get(band, [])
            case "band":
                return band
            case "obj":
                return obj
            case "night":
                return self.summary.night
            case "files":
                return g.raw
            case "coord_file":
                return self._coord_file(g)
            case "corrected":
                return g.corrected
            case "frame_catalogue":
                return catalogue_files(g.corrected)
            case "field_reference":
                return _s(reference_of_other_night(self.red, self.walk_cfg, obj))
            case "target_catalog":
                return self.walk_cfg.target_catalog
        raise QLCPError(f"unit field {name!r}: no stage input of that name (qlcp_core/walk.py NightWalk.field)")

    def _write_masters(self) -> None:
        """``masters.json``: the master of each kind (and band) the night uses, with where it came from
        (the light curve's provenance reads it)."""
        if self._masters_written:
            return
        for b in self.bands():
            self.master("flat", b)
        self.master("bias"), self.master("dark")
        write_json(product_path(self.red, "masters"), self.masters)
        self._masters_written = True

    def _coord_file(self, g: _Group) -> str | None:
        """The group's frame that gives the target coordinate: the first (time order) whose header
        has one, read once per group, so every chunk of the group times its frames alike."""
        if g.coord_file is None and g.raw:
            g.coord_file = g.raw[0]
            for f in g.raw:
                try:
                    if target_coord(read_header(f), self.walk_cfg) is not None:
                        g.coord_file = f
                        break
                except (QLCPError, ValueError):
                    continue
            if g.coord_file != g.raw[0]:
                log.warning("%s %s: %s has no target coordinate (%s/%s): the group's is that of %s",
                            g.summary.obj, g.summary.band, Path(g.raw[0]).name, self.walk_cfg.ra_key,
                            self.walk_cfg.dec_key, Path(g.coord_file).name)
        return g.coord_file

    def bands(self) -> list[str]:
        return sorted({b for _, b in self.groups})

    def master(self, kind: str, band: str | None = None) -> str | None:
        """The master of ``kind`` the night uses: what its stage chose tonight, else (its stage not
        asked for) the calibration policy's choice, made once."""
        key = f"flat_{band}" if kind == "flat" else kind
        if key not in self.masters:
            lib = (self.tonight.get(key) or {}).get("library") or {}
            c = choose_master(self.red, self.walk_cfg, kind, band, self._frame(band),
                              tonight_rejected=lib.get("status") == "rejected").as_dict()
            self.masters[key] = self._with_epoch(c, lib)
        return self.masters[key]["path"]

    def _with_epoch(self, c: dict, lib: dict) -> dict:
        """Tonight's master as the library registered it: its camera's epoch, and, when it started a
        new epoch (a large change against the library: a new camera or set-point), that news."""
        if c.get("library_error"):
            self._degrade(f"calibration library not used: {c['library_error']}")
        if c["source"] != "tonight" or not lib:
            return c
        c = {**c, "epoch": lib.get("epoch"), "camera": lib.get("camera", "")}
        if lib.get("new_epoch"):
            import json

            from .calib_library import _qc_text

            c["epoch_change"] = f"new epoch {lib['new_epoch']} of camera {lib.get('camera')}: tonight's master " \
                                f"differs from the library's ({_qc_text(json.loads(lib.get('qc') or '{}'))}); " \
                                "used for tonight, the earlier epoch's masters are not offered to this night"
            log.warning("%s: %s", c["kind"], c["epoch_change"])
        return c

    def _frame(self, band: str | None) -> dict | None:
        """The night's first science frame (of ``band`` when given) as the calibration library matches it,
        with the epoch of tonight's own masters when the library registered one (the library then
        offers only that epoch's masters)."""
        from .calib_library import frame_info

        files = [g.raw[0] for (_, b), g in sorted(self.groups.items()) if g.raw and (band is None or b == band)]
        if not files:
            return None
        info = frame_info(files[0], self.walk_cfg.date_key, self.walk_cfg.instrument)
        epochs = [lib["epoch"] for r in self.tonight.values() if (lib := r.get("library"))
                  and lib.get("status") == "ok" and lib.get("camera") == info["camera"]]
        if epochs:
            info["epoch"] = max(epochs)
        return info

    # ---------------------------------------------------------- results
    def record(self, block: Block, label: str, unit: dict, res: dict) -> None:
        """Take one unit's result."""
        for letter, s in (res.get("seconds") or {}).items():
            t = self.summary.run["timings"]
            t[letter] = t.get(letter, 0.0) + s
        names = {s.name for s in block.stages}
        if "list" in names:
            self._take_listing(res)
        for kind in ("bias", "dark", "flat"):
            if kind in names and "made" in res:
                self.tonight[f"flat_{res['band']}" if kind == "flat" else kind] = res
                if res.get("library_error"):
                    self._degrade(f"calibration library not used: {res['library_error']}")
                self.summary.rejected += [[_rel(f, self.raw), why] for f, why in res.get("rejected", [])]
        g = self._group_of(unit)
        if g is None:
            return
        g.summary.rejected += [list(r) for r in res.get("rejected", [])]
        for what in res.get("degraded") or []:      # e.g. a group without a sky coordinate (step i)
            self._degrade(what)
        g.summary.rejected += [[Path(s["bf"]).name, s["error"]] for s in res.get("frames", []) if s.get("error")]
        for kind in block.writes:                   # the paths of the group's products, as the runners return them
            if res.get(kind) and isinstance(res[kind], str):
                g.summary.outputs[kind] = res[kind]
        if "noise" in res:
            g.summary.noise = res["noise"]
        if res.get("selection"):
            sel = res["selection"]
            g.summary.stars = {k: sel[k] for k in ("source", "targets", "field_reference", "field_match", "field_error", "lost",
                                                   "ind_tgt", "ind_ref", "ind_chk", "no_target", "targets_missing",
                                                   "targets_missing_why") if k in sel}

    def fail(self, block: Block, label: str, unit: dict, error: str) -> None:
        """Take one unit's failure: a calibration is lost (bias, dark, flat: the night goes on,
        degraded), the night stops (the listing), or its groups fail."""
        step = "".join(s.letter for s in block.stages)
        if block.name in _CALIBRATIONS:
            self._lose(block.name, unit.get("band"), f"step {step} failed: {error}")
            return
        if block.unit == NIGHT:
            raise QLCPError(f"{self.raw}: step {step} failed: {error}")
        for g in self.groups.values():
            if not g.summary.error and (g.summary.band == unit.get("band")) and \
                    (block.unit == BAND or g.summary.obj == unit.get("obj")):
                g.summary.error = f"step {step}: {error}"
                log.error("%s %s: %s", g.summary.obj, g.summary.band, g.summary.error)
                if block.unit == GROUP:
                    self._drop_partial(block, g.summary.obj, g.summary.band)

    def _drop_partial(self, block: Block, obj: str, band: str) -> None:
        """Remove the group products of a failed unit written during this run (e.g. a light curve
        table whose plot then failed): a failed group leaves no new partial product."""
        for kind in (k for s in block.stages for k in s.writes if k in GROUP_PRODUCTS):
            p = product_path(self.red, kind, obj, band)
            with contextlib.suppress(OSError):
                if p.stat().st_mtime_ns >= self._t0:
                    p.unlink()
                    log.warning("%s %s: removed %s, written by the failed step", obj, band, p.name)

    def finish_block(self, block: Block) -> None:
        """After every unit of ``block``: the groups' corrected frames, once frames were written;
        a calibration its stage made none of, said in ``degraded``."""
        if block.unit == CHUNK:
            self._refresh_corrected()
        if block.name in _CALIBRATIONS:
            for band in (self.bands() if block.name == "flat" else [None]):
                self._check_master(block.name, band)

    def _check_master(self, kind: str, band: str | None) -> None:
        """Say in ``degraded`` when the night is left without that calibration (none of tonight's and
        none from ``use_*``, the library or ``alt_*``)."""
        L = self.listing or {}
        files = L.get("flats", {}).get(band, []) if kind == "flat" else L.get(kind, [])
        if kind == "dark" and not files:
            return
        self.master(kind, band)
        c = self.masters[f"flat_{band}" if kind == "flat" else kind]
        if c.get("path") or c.get("source") in ("failed", "not needed"):
            return
        what = f"{kind} for {band}" if band else kind
        plural = "flats" if kind == "flat" else f"{kind} frames"
        why = f"{len(files)} of {len(files)} {plural} rejected" if files else f"no {plural} tonight"
        self._degrade(f"no {what}: {why}")

    def _lose(self, kind: str, band: str | None, why: str) -> None:
        """A failed calibration unit: the night goes on with the policy's next choice (``use_*``, the
        library, ``alt_*``), else without it, degraded."""
        key = f"flat_{band}" if kind == "flat" else kind
        c = choose_master(self.red, self.walk_cfg, kind, band, self._frame(band), tonight_rejected=True).as_dict()
        if c.get("library_error"):
            self._degrade(f"calibration library not used: {c['library_error']}")
        if c["path"]:
            c["why"] = f"tonight's {why}; {c['why'] or c['source']}".strip("; ")
            self.masters[key] = c
            log.warning("%s: %s; using %s %s", key, why, c["source"], c["path"])
            return
        self.masters[key] = {"kind": kind, "band": band, "path": None, "source": "failed", "why": why}
        self._degrade(f"no {kind}{f' for {band}' if band else ''}: {why}")

    def _degrade(self, what: str) -> None:
        if what not in self.summary.degraded:
            self.summary.degraded.append(what)
            log.error("night degraded: %s", what)

    def _drop_corrected(self, g: _Group) -> int:
        """Remove ``g``'s corrected frames but its base frame (the chart's, step w's), once this run
        wrote its light curve; how many.  The frames are products: a later run corrects them again
        from the raw frames and masters, and, since products know their inputs by identity (a new
        file is new input), redoes the frame chain after them: a rerun costs about a first run."""
        from . import offset as off_mod

        o, b = g.summary.obj, g.summary.band
        if g.summary.error or not g.summary.outputs.get("lightcurve"):
            return 0
        try:
            base = Path(off_mod.read_offsets(self.red, o, b).meta["base_bf"]).name
        except (QLCPError, OSError, KeyError, ValueError) as e:
            log.warning("%s %s: corrected frames kept (keep_corrected: false), no base frame known: %s", o, b, e)
            return 0
        n, size = 0, 0
        for f in corrected_files(self.red, o, b, g.raw):
            if Path(f).name == base:
                continue
            try:
                size += Path(f).stat().st_size
                Path(f).unlink()
                n += 1
            except FileNotFoundError:
                continue
        if n:
            log.info("%s %s: %d corrected frames removed (keep_corrected: false; %.0f MB), base frame %s kept",
                     o, b, n, size / 2**20, base)
        return n

    def _refresh_corrected(self) -> None:
        for (o, b), g in self.groups.items():
            g.corrected = corrected_files(self.red, o, b, g.raw)
            g.summary.corrected = len(g.corrected)

    def _group_of(self, unit: dict) -> _Group | None:
        return self.groups.get((unit.get("obj"), unit.get("band")))

    def _take_listing(self, res: dict) -> None:
        self.listing = res
        self.summary.listing = res["summary"]
        self.summary.rejected = [list(r) for r in res["rejected"]]
        self._instrument_rejections()
        for o, b, files in res["groups"]:
            self.groups[(str(o), str(b))] = _Group(GroupSummary(str(o), str(b), frames=len(files)), list(files))
        if not res["groups"] and not res["bias"] and not res["flats"]:
            raise QLCPError(f"{self.raw}: no usable FITS frames in this night ({res['summary']})")
        if not res["groups"]:
            log.warning("%s: no science frames%s", self.raw, " for the requested obj/band"
                        if self.walk_cfg.obj or self.walk_cfg.band else "")
        self._refresh_corrected()               # frames corrected by an earlier run (steps without i)

    def _instrument_rejections(self) -> None:
        """Frames of no instrument, two, or another than the night's (a registry configured): not
        reduced, and the night says so in ``degraded``."""
        from .instruments import instrument_problem

        bad = [r for r in self.summary.rejected if instrument_problem(str(r[1]))]
        if bad:
            self._degrade(f"{len(bad)} frame(s) not reduced, not of the night's instrument "
                          f"({self.cfg.instrument or 'none chosen'}); the first, {bad[0][0]}: {bad[0][1]}")

    def finish(self) -> NightSummary:
        """The summary after the walk, with the groups and the masters used (and, with
        ``keep_corrected: false``, the corrected frames of every group whose light curve this run
        wrote removed, its base frame kept)."""
        self._detectors()                       # before keep_corrected: false removes the frames
        if not self.walk_cfg.keep_corrected:
            removed = {f"{o} {b}": n for (o, b), g in self.groups.items() if (n := self._drop_corrected(g))}
            if removed:
                self.summary.run["corrected_removed"] = removed
        self.summary.masters = dict(self.masters)
        self.summary.groups = [g.summary for g in self.groups.values()]
        for g in self.summary.groups:
            g.outcome, g.note = group_outcome(g)
            if g.outcome == "no target":
                log.warning("%s %s: no target: %s", g.obj, g.band, g.note)
        self.summary.outcome = night_outcome(self.summary)
        return self.summary

    def _detectors(self) -> None:
        """Each group's detector record (what its corrected frames and WCS product say was used) and
        the night's ``assumed`` lines, each logged as a warning."""
        from . import detector

        for (o, b), g in self.groups.items():
            g.summary.detector = _detector_record(g.corrected, product_path(self.red, "wcs", o, b))
        self.summary.assumed = detector.assumed_lines({f"{o} {b}": g.summary.detector
                                                       for (o, b), g in self.groups.items()})
        for line in self.summary.assumed:
            log.warning("%s", line)

    def check(self) -> None:
        """Raise when every group failed (both drivers call it after writing ``summary.json``)."""
        failed = self.summary.failed
        if self.groups and len(failed) == len(self.groups):
            raise QLCPError(f"{self.raw}: every group failed; first: {failed[0].error}")


#: the calibration blocks: a failure loses that calibration, not the night
_CALIBRATIONS = ("bias", "dark", "flat")


def _detector_record(corrected: list, wcs: Path) -> dict:
    """:func:`qlcp.core.detector.record` of the first readable of a group's ``corrected`` frames and
    its WCS product ``wcs`` (when written); {} without a corrected frame."""
    from .detector import record

    for f in corrected:
        try:
            h = read_header(f)
        except QLCPError:
            continue
        w = None
        if wcs.is_file():
            from astropy.io import fits

            with contextlib.suppress(OSError, ValueError):     # unreadable: no pixel scale from it
                w = fits.getheader(wcs)
        return record(h, w)
    return {}


def _s(p) -> str | None:
    return None if p is None else str(p)


def _rel(f, raw: Path) -> str:
    """A raw file as the listing names it: relative to the raw directory."""
    try:
        return str(Path(f).relative_to(raw))
    except ValueError:
        return str(f)
