"""The sensor's policy (:mod:`qlcp.deployments.readiness`) on its own: listings, marker flags and a clock
given by the test, a stand-in Sun; no thread, no watchdog, no file.  The watcher that feeds it from the
file system is tested end to end in test_sensor.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import qlcp.deployments.readiness as R
from qlcp.deployments.readiness import READY_REASONS, WAIT_REASONS, NightFiles, Readiness

#: the stand-in Sun's day: dark from 60 to 100 s of every 100 s, dawn at each multiple of 100
DAY, DUSK = 100.0, 60.0


class Sky:
    """The :class:`~qlcp.deployments.dawn.Dawn` interface on a 100 s day; raises ``fail`` when given
    (e.g. astropy's error on an aged IERS table)."""

    def __init__(self, fail: Exception | None = None):
        self.fail = fail

    def first_dark(self, arrivals, current):
        if self.fail:
            raise self.fail
        dark = [a for a in arrivals if a % DAY >= DUSK and (current is None or a < current)]
        return min(dark) if dark else current

    def night_over(self, first_dark, newest_arrival):
        if self.fail:
            raise self.fail
        ref = first_dark if first_dark is not None else newest_arrival
        return None if ref is None else (ref // DAY + 1) * DAY


class Clock:
    """The injected clock: the time the test says."""

    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> float:
        self.t += s
        return self.t


def night(**kw) -> NightFiles:
    return NightFiles(path=Path("raw/20240606"), **kw)


def watch(policy: Readiness, n: NightFiles, clock: Clock, listings, *, started_at=0.0, marker=False, every=3.0):
    """Feed ``listings`` one poll apart (``every`` s); the decision after the last one."""
    for found in listings:
        policy.observe(n, found, marker, clock())
        clock.advance(every)
    return policy.decide(n, clock(), started_at=started_at)


def test_update_tracks_new_changed_and_removed_files():
    n = night()
    assert n.update({"a.fits": (10, 5_000_000_000)}, 100.0, use_mtime=False) == [100.0]
    assert n.last_change == 100.0 and n.files["a.fits"].checks == 1
    assert n.update({"a.fits": (10, 5_000_000_000)}, 103.0, use_mtime=False) == []
    assert n.last_change == 100.0 and n.files["a.fits"].checks == 2      # unchanged: no change recorded
    assert n.all_stable(103.0, settle=2.0) and not n.all_stable(101.0, settle=2.0)
    n.update({"a.fits": (20, 6_000_000_000)}, 110.0, use_mtime=False)   # still growing
    f = n.files["a.fits"]
    assert (f.checks, f.since, f.arrival) == (1, 110.0, 100.0) and n.last_change == 110.0
    assert not n.all_stable(200.0, settle=2.0)      # one check of the new size is not enough
    n.update({"b.fits": (1, 1)}, 120.0, use_mtime=False)
    assert list(n.files) == ["b.fits"] and n.last_change == 120.0
    assert n.newest_arrival() == 120.0


def test_update_at_startup_uses_mtimes_never_later_than_now():
    n = night(at_startup=True, last_change=40.0)
    new = n.update({"old.fits": (1, 50 * 10**9), "future.fits": (1, 500 * 10**9)}, 100.0, use_mtime=True)
    assert sorted(new) == [50.0, 100.0]
    assert n.last_change == 100.0                   # the newest arrival
    n2 = night(at_startup=True, last_change=80.0)
    n2.update({"old.fits": (1, 50 * 10**9)}, 100.0, use_mtime=True)
    assert n2.last_change == 80.0                   # a later change recorded before is kept


def test_the_rules_in_their_order():
    asked = []

    class Due:
        def __init__(self, t):
            self.t = t

        def first_dark(self, arrivals, current):
            return current

        def night_over(self, first_dark, newest):
            asked.append(self.t)
            return self.t

    def decide(n, now, dawn=None, quiet=None, started_at=0.0):
        return Readiness(Due(dawn), settle=2.0, quiet=quiet).decide(n, now, started_at=started_at)

    def stable(**kw):
        n = night(**kw)
        n.update({"a.fits": (1, 1)}, 0.0, use_mtime=False)
        n.update({"a.fits": (1, 1)}, 10.0, use_mtime=False)
        return n

    assert decide(night(marker=True), 100.0, dawn=50.0) == R.Decision(False, "empty")    # never ready empty
    growing = night(marker=True)
    growing.update({"a.fits": (1, 1)}, 99.0, use_mtime=False)
    assert decide(growing, 100.0, dawn=50.0) == R.Decision(False, "settling")
    assert asked == []                                                  # the dawn not even asked

    n = stable()
    assert decide(n, 20.0) == R.Decision(False, "waiting")             # no dawn, marker or quiet
    assert decide(n, 20.0, dawn=30.0) == R.Decision(False, "waiting", 30.0)
    assert decide(n, 30.0, dawn=30.0, started_at=25.0) == R.Decision(True, "dawn")
    assert decide(n, 30.0, dawn=30.0, started_at=30.0) == R.Decision(True, "catch-up")   # before the start
    assert decide(n, 24.0, quiet=25.0) == R.Decision(False, "waiting", 25.0)
    assert decide(n, 25.0, quiet=25.0) == R.Decision(True, "quiet")    # 25 s after the last change (0)
    assert decide(n, 20.0, dawn=30.0, quiet=25.0).until == 25.0        # the earlier of the two
    n.marker = True
    assert decide(n, 20.0, dawn=30.0) == R.Decision(True, "marker")
    assert decide(n, 30.0, dawn=30.0) == R.Decision(True, "dawn")      # dawn is reported first
    assert set(READY_REASONS) == {"catch-up", "dawn", "marker", "quiet"}
    assert set(WAIT_REASONS) == {"empty", "settling", "retry", "waiting"}


def test_a_night_is_ready_at_the_dawn_after_its_first_dark_file_and_morning_files_do_not_delay_it():
    clock = Clock(70.0)
    policy = Readiness(Sky(), settle=2.0)
    n = night()
    d = watch(policy, n, clock, [{"a.fits": (5, 1)}, {"a.fits": (9, 2)}, {"a.fits": (9, 2)}])
    assert d == R.Decision(False, "waiting", 100.0) and n.first_dark == 70.0
    clock.t = 99.0
    assert not policy.decide(n, clock(), started_at=0.0).ready
    clock.t = 100.0
    assert policy.decide(n, clock(), started_at=0.0) == R.Decision(True, "dawn")
    # a morning flat arrives (Sun up) before the sensor polled at dawn: the night settles, then goes at once
    clock.t = 100.0
    d = watch(policy, n, clock, [{"a.fits": (9, 2), "flat.fits": (4, 3)}])
    assert d == R.Decision(False, "settling")
    d = watch(policy, n, clock, [{"a.fits": (9, 2), "flat.fits": (4, 3)}])
    assert d == R.Decision(True, "dawn") and n.first_dark == 70.0      # not the next dawn (200)


def test_a_partial_night_copied_by_day_waits_for_the_next_dawn():
    clock = Clock(120.0)                                                # day time: no file in the dark
    policy = Readiness(Sky(), settle=2.0)
    n = night()
    d = watch(policy, n, clock, [{"a.fits": (1, 1)}, {"a.fits": (1, 1)}])
    assert d == R.Decision(False, "waiting", 200.0) and n.first_dark is None
    clock.t = 130.0                                                     # the rest of the night, still by day
    watch(policy, n, clock, [{"a.fits": (1, 1), "b.fits": (1, 1)}, {"a.fits": (1, 1), "b.fits": (1, 1)}])
    assert policy.decide(n, 199.0, started_at=0.0).reason == "waiting"
    assert policy.decide(n, 200.0, started_at=0.0) == R.Decision(True, "dawn")


def test_a_night_found_at_start_up_after_its_dawn_is_a_catch_up():
    policy = Readiness(Sky(), settle=2.0)
    n = night(at_startup=True)
    started = 150.0                                                     # the next day; files of 70 s
    policy.observe(n, {"a.fits": (1, 70 * 10**9)}, False, started, use_mtime=True)
    assert n.first_dark == 70.0 and n.files["a.fits"].arrival == 70.0
    assert policy.decide(n, started, started_at=started).reason == "settling"   # one look is not enough
    policy.observe(n, {"a.fits": (1, 70 * 10**9)}, False, started + 3.0)
    assert policy.decide(n, started + 3.0, started_at=started) == R.Decision(True, "catch-up")


@pytest.mark.parametrize("where", ["first_dark", "night_over"])
def test_a_failing_dawn_rule_leaves_the_marker_and_quiet_rules(where):
    """An aged IERS table under an offline clock made the Sun's altitude raise: the policy reports
    the error and the night waits for its marker or quiet time (never an exception to the watcher)."""
    failed = []
    sky = Sky()
    policy = Readiness(sky, settle=2.0, quiet=50.0, on_dawn_error=lambda n, e: failed.append(str(e)))
    clock = Clock(70.0)
    n = night()
    if where == "first_dark":
        sky.fail = ValueError("IERS_Auto predictive values more than 30 days old")
    watch(policy, n, clock, [{"a.fits": (1, 1)}, {"a.fits": (1, 1)}])
    sky.fail = ValueError("IERS_Auto predictive values more than 30 days old")
    assert policy.decide(n, 110.0, started_at=0.0) == R.Decision(False, "waiting", 120.0)   # no dawn at 100
    assert failed and all("IERS" in f for f in failed)
    assert policy.decide(n, 120.0, started_at=0.0) == R.Decision(True, "quiet")
    n.marker = True
    assert policy.decide(n, 110.0, started_at=0.0) == R.Decision(True, "marker")


def test_a_failed_trigger_is_retried_later_and_later():
    policy = Readiness(Sky(), settle=0.0, backoff=(5.0, 30.0))
    assert [policy.retry_at(a, 1000.0) - 1000.0 for a in range(1, 7)] == [5.0, 10.0, 20.0, 30.0, 30.0, 30.0]
    n = night(marker=True)
    n.update({"a.fits": (1, 1)}, 0.0, use_mtime=False)
    n.update({"a.fits": (1, 1)}, 1.0, use_mtime=False)
    n.next_attempt = policy.retry_at(1, 10.0)
    assert policy.decide(n, 14.0, started_at=0.0) == R.Decision(False, "retry", 15.0)
    assert policy.decide(n, 15.0, started_at=0.0) == R.Decision(True, "marker")


def test_max_age():
    assert not Readiness(Sky()).too_old(0.0, 1e9)                      # no --max-age: every night
    policy = Readiness(Sky(), max_age=10.0)
    assert not policy.too_old(100.0, 110.0) and policy.too_old(100.0, 110.5)


def test_quiet_off_when_not_positive():
    assert Readiness(Sky(), quiet=0).quiet is None and Readiness(Sky(), quiet=-5).quiet is None


def test_the_policy_reads_no_file_clock_or_thread():
    """What keeps it testable as here: it imports nothing that reads files, the clock or runs threads."""
    tree = ast.parse(Path(R.__file__).read_text())
    mods = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    mods |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert mods <= {"__future__", "collections", "dataclasses", "pathlib", "typing"}, mods
