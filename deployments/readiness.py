"""Is this night ready, and why: the sensor's policy, apart from the watching.

Everything here takes observations and returns answers: a night's FITS listings (relative path ->
size, mtime_ns, as :func:`qlcp.deployments.scanner.list_fits` reads them), whether its marker exists,
the time now (Unix s, from the caller's clock) and the settings.  No thread, no watchdog, no file
system, no wall clock: :class:`~qlcp.deployments.sensor.Sensor` (the watcher) reads the files and the
clock, keeps the state database and triggers; it asks :class:`Readiness` what to do.

Files
    A file's *signature* is its (size, mtime_ns).  :class:`NightFiles` keeps what was seen of a night
    from one listing to the next: each file's signature, when that signature was first seen, how many
    listings saw it and when the night received the file (its *arrival*: when first seen, or its mtime,
    never later than now, for files present when the sensor started).  A file is *stable* once two
    listings at least ``settle`` seconds apart saw the same signature.

Readiness (:meth:`Readiness.decide`)
    A night is ready when it holds at least one file, all of them stable, it is not waiting for a
    trigger's retry, and one of: its dawn has passed (``dawn``, or ``catch-up`` when that dawn came
    before the sensor started), the marker exists (``marker``), or ``quiet`` seconds passed without a
    change (``quiet``).  The dawn is the first one after the night's earliest arrival in the dark (or,
    none in the dark, after its newest arrival: a night copied by day waits for the next dawn), as the
    sensor's :class:`~qlcp.deployments.dawn.Dawn` computes it.  When the dawn cannot be computed (e.g.
    an aged IERS table under an offline clock) the error goes to ``on_dawn_error`` and the night waits
    for its marker or quiet time instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

#: why a ready night is ready
READY_REASONS = ("catch-up", "dawn", "marker", "quiet")
#: why a night is not ready (yet)
WAIT_REASONS = ("empty", "settling", "retry", "waiting")

Signature = tuple[int, int]     # size, mtime_ns


@dataclass
class SeenFile:
    """One data file as seen by successive listings."""

    sig: Signature          # size, mtime_ns
    since: float            # clock time this signature was first seen
    checks: int             # listings that saw this signature
    arrival: float          # when the night received the file

    def stable(self, now: float, settle: float) -> bool:
        """Unchanged at two listings at least ``settle`` seconds apart."""
        return self.checks >= 2 and now - self.since >= settle


@dataclass(kw_only=True)
class NightFiles:
    """What successive listings saw of one night's data files, and what the policy derived from them."""

    path: Path
    at_startup: bool = False                # present when the sensor started (mtime = arrival)
    files: dict[str, SeenFile] = field(default_factory=dict)
    last_change: float | None = None        # clock time of the newest change to the files
    marker: bool = False                    # the completion marker exists
    first_dark: float | None = None         # earliest file arrival in the dark
    next_attempt: float | None = None       # a failed trigger is retried from then on

    def update(self, found: dict[str, Signature], now: float, *, use_mtime: bool) -> list[float]:
        """Fold one listing in; returns the arrival times of the new files.

        ``use_mtime``: the night's first listing at start-up, where a file's
        arrival is its mtime (at most ``now``) and the last change the newest
        arrival (or the last change recorded before, if later).
        """
        changed = False
        new_arrivals = []
        for rel, sig in found.items():
            f = self.files.get(rel)
            if f is None:
                arrival = min(sig[1] / 1e9, now) if use_mtime else now
                self.files[rel] = SeenFile(sig=sig, since=now, checks=1, arrival=arrival)
                new_arrivals.append(arrival)
                changed = True
            elif f.sig != sig:
                f.sig, f.since, f.checks = sig, now, 1
                changed = True
            else:
                f.checks += 1
        for rel in set(self.files) - found.keys():
            del self.files[rel]
            changed = True
        if changed:
            if use_mtime:
                newest = max((f.arrival for f in self.files.values()), default=now)
                self.last_change = max(self.last_change or -float("inf"), newest)
            else:
                self.last_change = now
        return new_arrivals

    def all_stable(self, now: float, settle: float) -> bool:
        return all(f.stable(now, settle) for f in self.files.values())

    def newest_arrival(self) -> float | None:
        return max((f.arrival for f in self.files.values()), default=None)


class DawnRule(Protocol):
    """What the policy asks of the Sun (:class:`qlcp.deployments.dawn.Dawn`, or a test's stand-in)."""

    def first_dark(self, arrivals: Iterable[float], current: float | None) -> float | None: ...

    def night_over(self, first_dark: float | None, newest_arrival: float | None) -> float | None: ...


@dataclass(frozen=True)
class Decision:
    """Whether a night is ready now and why: ``reason`` is one of :data:`READY_REASONS` when ``ready``,
    else one of :data:`WAIT_REASONS`; ``until`` is when a waiting night is due, if known (its dawn,
    quiet time or retry)."""

    ready: bool
    reason: str
    until: float | None = None


class Readiness:
    """The sensor's policy: when a night is ready, when a failed trigger is retried, which nights are
    too old to follow.

    Parameters
    ----------
    dawn : DawnRule
        When the night is over by the Sun (see :class:`~qlcp.deployments.dawn.Dawn`).
    settle : float
        A file is stable when unchanged at two listings at least this many seconds apart.
    quiet : float, optional
        Seconds without change after which a night is ready (None: off).
    backoff : (float, float)
        First retry delay and the largest one (s) after a failed trigger.
    max_age : float, optional
        Seconds: a new night whose newest file is older is not followed (None: every night is).
    on_dawn_error : callable, optional
        ``on_dawn_error(night, exception)`` when the dawn rule raised (the night then waits for its
        marker or quiet time).
    """

    def __init__(self, dawn: DawnRule, *, settle: float = 2.0, quiet: float | None = None,
                 backoff: tuple[float, float] = (5.0, 300.0), max_age: float | None = None,
                 on_dawn_error: Callable[[NightFiles, BaseException], None] | None = None):
        self.dawn = dawn
        self.settle = float(settle)
        self.quiet = quiet if quiet is not None and quiet > 0 else None
        self.backoff = (float(backoff[0]), float(backoff[1]))
        self.max_age = max_age
        self.on_dawn_error = on_dawn_error or (lambda night, e: None)

    def observe(self, night: NightFiles, found: dict[str, Signature], marker: bool, now: float, *,
                use_mtime: bool = False) -> None:
        """Fold a listing of the night's files (and whether its marker exists) in, at time ``now``."""
        new_arrivals = night.update(found, now, use_mtime=use_mtime)
        night.marker = marker
        try:
            night.first_dark = self.dawn.first_dark(new_arrivals, night.first_dark)
        except Exception as e:  # noqa: BLE001 - the dawn rule must not stop the sensor (issue 24, R3)
            self.on_dawn_error(night, e)

    def dawn_due(self, night: NightFiles) -> float | None:
        """When the night is over by the dawn rule (None: it holds no file, no dawn follows, or the
        rule failed)."""
        try:
            return self.dawn.night_over(night.first_dark, night.newest_arrival())
        except Exception as e:  # noqa: BLE001 - no dawn: the marker and quiet rules still apply
            self.on_dawn_error(night, e)
            return None

    def decide(self, night: NightFiles, now: float, *, started_at: float) -> Decision:
        """Is ``night`` ready at ``now`` (the sensor started at ``started_at``), and why.

        The dawn is only computed once the night holds files, all stable; a dawn at or before
        ``started_at`` is a ``catch-up``; dawn is reported before marker, marker before quiet.
        """
        if night.next_attempt is not None and now < night.next_attempt:
            return Decision(False, "retry", night.next_attempt)
        if not night.files:
            return Decision(False, "empty")
        if not night.all_stable(now, self.settle):
            return Decision(False, "settling")
        due = self.dawn_due(night)
        if due is not None and now >= due:
            return Decision(True, "catch-up" if due <= started_at else "dawn")
        if night.marker:
            return Decision(True, "marker")
        quiet_at = night.last_change + self.quiet if self.quiet and night.last_change is not None else None
        if quiet_at is not None and now >= quiet_at:
            return Decision(True, "quiet")
        return Decision(False, "waiting", min((t for t in (due, quiet_at) if t is not None), default=None))

    def retry_at(self, attempt: int, now: float) -> float:
        """When a trigger that failed at its ``attempt``-th try (1, 2, ...) at ``now`` is tried again:
        the first delay, doubled each attempt, at most the largest."""
        return now + min(self.backoff[1], self.backoff[0] * 2.0 ** (attempt - 1))

    def too_old(self, newest: float, now: float) -> bool:
        """Whether a night whose newest file (or, empty, directory) changed at ``newest`` is past
        ``max_age`` at ``now``."""
        return self.max_age is not None and now - newest > self.max_age
