"""The one result shape of a night's reduction, written as ``{red}/summary.json`` by both drivers.

The plain driver and the Prefect flow fill the same :class:`NightSummary`; the
CLI, the Prefect artifacts, ``dawn_sweep`` and the tests read it.  Everything
that depends on *how* the night ran (driver, wall times, task states) is under
``run``; the rest is the same whichever driver reduced the night.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .io import write_json
from .products import product_path


#: a night's outcomes, worst first, with the CLI's exit status of each (documented in the README)
OUTCOMES = {"failed": 1, "no target": 4, "degraded": 3, "ok": 0}


def group_outcome(g: "GroupSummary") -> tuple[str, str]:
    """``(outcome, note)`` of a group: failed (its error), no target (why), else ok."""
    if g.error:
        return "failed", g.error
    if g.stars.get("no_target"):
        return "no target", str(g.stars["no_target"])
    return "ok", ""


def night_outcome(s: "NightSummary") -> str:
    """The night's outcome: the worst of its groups' (failed, no target), else degraded, else ok."""
    found = {g.outcome or group_outcome(g)[0] for g in s.groups} | ({"degraded"} if s.degraded else set())
    return next((o for o in OUTCOMES if o in found), "ok")


def notices(summary: dict) -> list[str]:
    """The lines every end-of-night report shows (the terminal's and the Prefect summary
    artifact's): what the night went without (``DEGRADED: ...``) and which detector quantities
    fell back to a built-in default (``ASSUMED: ...``)."""
    return [f"DEGRADED: {w}" for w in summary.get("degraded") or []] + \
           [f"ASSUMED: {w}" for w in summary.get("assumed") or []]


@dataclass
class GroupSummary:
    """One (object, band) group.

    ``outputs`` maps product kinds (``lightcurve``, ``lc_png``, ``chart``, ``offsets``,
    ``night_catalogue``, ...; see :mod:`qlcp.core.products`) to paths; ``noise`` lists, per
    star and aperture, the scatter achieved and predicted (mag); ``stars`` says how the
    stars were chosen (``source``: given, field, targets or picked; the field reference
    and the stars lost tonight; ``targets``: the configured targets measured; ``no_target``: why
    there is none); ``rejected`` holds ``[file, reason]`` of frames dropped; ``error`` is empty
    unless the group failed; ``outcome`` is ``ok``, ``no target`` (reduced, with the comparisons'
    light curves and the chart, but no target measured: ``note`` says why) or ``failed``;
    ``detector`` holds the gain, read noise, saturation and pixel scale used, each with its source.
    """

    obj: str
    band: str
    frames: int = 0
    corrected: int = 0
    rejected: list = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    noise: list = field(default_factory=list)
    stars: dict = field(default_factory=dict)           #: how the stars were chosen (source, field reference, lost)
    error: str = ""
    outcome: str = ""                                   #: ok, no target, failed (set when the walk ends)
    note: str = ""                                      #: why the outcome is not ok
    #: gain, rdnoise, saturation, pixel_scale -> {"value", "source"} (:func:`qlcp.core.detector.record`)
    detector: dict = field(default_factory=dict)


@dataclass
class NightSummary:
    """A night: what was found, which masters were used, each group's results, which calibration
    it went without (``degraded``), how it ran."""

    night: str
    raw_dir: str
    red_dir: str
    steps: str
    config_hash: str
    listing: str = ""
    rejected: list = field(default_factory=list)        #: [file, reason] of files not used at all
    masters: dict = field(default_factory=dict)         #: kind (bias, dark, flat_{band}) -> choice
    groups: list = field(default_factory=list)          #: GroupSummary
    #: calibrations the night went without, each with why, e.g. "no flat for V: 3 of 3 flats rejected";
    #: the night still reduced, but not as it should be (the CLI's exit status 3)
    degraded: list = field(default_factory=list)
    #: detector quantities that fell back to a built-in default, each with why, e.g. "gain: assumed 1
    #: e-/ADU (...)" (:func:`qlcp.core.detector.assumed_lines`); said, but not degraded
    assumed: list = field(default_factory=list)
    run: dict = field(default_factory=dict)             #: driver, seconds, timings, task states
    #: the night's instrument (``instruments_dir``: a registry; '' without one)
    instrument: str = ""
    #: where each setting given came from, key -> source (a file, ``instrument NAME (file)``, ``argument``)
    settings: dict = field(default_factory=dict)
    #: the night's outcome (:data:`OUTCOMES`): the worst of its groups' and ``degraded``
    outcome: str = ""

    @property
    def failed(self) -> list[GroupSummary]:
        return [g for g in self.groups if g.error]

    @property
    def timings(self) -> dict:
        """Wall seconds per step letter."""
        return self.run.get("timings", {})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NightSummary":
        known = {f.name for f in fields(cls)}
        s = cls(**{k: v for k, v in d.items() if k in known and k != "groups"})
        gk = {f.name for f in fields(GroupSummary)}
        s.groups = [GroupSummary(**{k: v for k, v in g.items() if k in gk}) for g in d.get("groups", [])]
        return s

    def write(self) -> Path:
        return write_json(product_path(self.red_dir, "summary"), self.to_dict())

    @classmethod
    def read(cls, red_dir) -> "NightSummary":
        return cls.from_dict(json.loads(product_path(red_dir, "summary").read_text()))
