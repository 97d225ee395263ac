"""What every stage runner gets, and how a block's units run (:func:`run_block`)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..configview import view
from ..errors import MissingInputError


@dataclass
class RunContext:
    """What every stage runner gets besides its unit: the output root, the stage's config view,
    a progress factory, whether to return the fingerprints of the frames written (for content
    caches), and ``log(letters)``: a context manager logging to each step's file."""

    red: str
    cfg: Any
    progress: Any = None
    fingerprints: bool = False
    log: Callable = field(default=lambda letters: contextlib.nullcontext())


def declared_input(u: dict, prev: dict, kind: str):
    """The declared input ``kind`` of a stage: its unit's field, or, when an earlier stage of the
    same block writes it (so the block's unit does not hold it), that stage's result."""
    if kind in u:
        return u[kind]
    for res in prev.values():
        if kind in res:
            return res[kind]
    raise MissingInputError(f"no {kind} for this stage (neither in its unit nor made earlier in its block)")


def preload_plotting(cfg) -> None:
    """Import matplotlib and the plotting module in a background thread when the run will
    plot (steps d, g): ~0.6 s that then overlaps the frame-level steps, where this process
    mostly waits for its workers, instead of delaying the light curve at the end."""
    if any(s in cfg.steps for s in "dg"):
        import importlib
        import threading

        threading.Thread(target=importlib.import_module, args=(f"{__package__.rpartition('.')[0]}.plotting",),
                         name="qlcp-preload-plotting", daemon=True).start()


def run_block(block, cfg, ctx: RunContext, unit: dict) -> dict:
    """Run one unit of a :class:`~qlcp.core.stages.Block`: its fused runner, or its stages in
    turn, each with its own config view and step log.  Returns the merged results, with
    ``seconds`` per step letter (for a fused block, split as its workers spent them)."""
    if block.run is not None:
        ctx = replace(ctx, cfg=view(cfg, block))
        t0 = time.perf_counter()
        with ctx.log("".join(s.letter for s in block.stages)):
            res = block.run(ctx, unit, {})
        busy = res.pop("busy", None) or {s.letter: 1.0 for s in block.stages}
        wall, total = time.perf_counter() - t0, sum(busy.values()) or 1.0
        return {**res, "seconds": {k: wall * v / total for k, v in busy.items()}}
    out: dict = {"outputs": [], "seconds": {}}
    prev: dict = {}
    for s in block.stages:
        t0 = time.perf_counter()
        with ctx.log(s.letter):
            prev[s.name] = res = s.run(replace(ctx, cfg=view(cfg, s)), unit, prev)
        out["seconds"][s.letter] = out["seconds"].get(s.letter, 0.0) + time.perf_counter() - t0
        out["outputs"] += res.get("outputs", [])
        out.update({k: v for k, v in res.items() if k != "outputs"})
    return out


def as_path(v) -> Path | None:
    """A path field of a unit (None or empty: no file)."""
    return Path(v) if v else None
