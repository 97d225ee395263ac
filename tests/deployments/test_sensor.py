"""The night sensor: readiness rules, exactly-once triggers, restarts, backoff, real watchdog events.

No Prefect server: a fake trigger records the calls (and can fail like an API
that is down); an injected clock jumps through the night of 2024-06-06 at
Xinglong, where the Sun is below -12 deg from about 12:50 to 19:25 UTC.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import AltAz, EarthLocation, get_sun
from astropy.io import fits
from astropy.time import Time

from qlcp.deployments.sensor import Sensor, add_watch_arguments, read_state, run_watch
from qlcp.core.errors import ConfigError, InputError

XINGLONG = (117.57722, 40.395833, 960.0)
LA_PALMA = (-17.8792, 28.7606, 2326.0)


def utc(*a) -> datetime:
    return datetime(*a, tzinfo=UTC)


AFTERNOON = utc(2024, 6, 6, 6, 0)        # 14:00 local: Sun high
NIGHT = utc(2024, 6, 6, 14, 0)           # 22:00 local: dark
NEXT_MORNING = utc(2024, 6, 7, 2, 0)     # 10:00 local the day after


class Clock:
    """Injected clock: returns an aware datetime (or an astropy Time), moved by the test."""

    def __init__(self, t: datetime, astropy: bool = False):
        self.t = t
        self.astropy = astropy

    def __call__(self):
        return Time(self.t) if self.astropy else self.t

    def advance(self, **kw) -> datetime:
        self.t += timedelta(**kw)
        return self.t


class FakeTrigger:
    """Records calls; raises ConnectionError while ``down`` (an unreachable Prefect API)."""

    def __init__(self, down: int = 0):
        self.calls: list[dict] = []
        self.failures = 0
        self.down = down
        self.clock = None

    def __call__(self, name, *, parameters, timeout, tags, idempotency_key):
        when = self.clock.t if self.clock else None
        if self.down:
            self.down -= 1
            self.failures += 1
            raise ConnectionError("[Errno 111] Connection refused\nsecond line of the message")
        rid = uuid.uuid4()
        self.calls.append({"name": name, "parameters": parameters, "timeout": timeout, "tags": tags,
                           "key": idempotency_key, "when": when, "id": str(rid)})
        return type("FlowRun", (), {"id": rid})()

    @property
    def nights(self) -> list[str]:
        return [c["tags"][1] for c in self.calls]


def fits_bytes(n: int = 16, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    data = np.random.default_rng(seed).integers(0, 1000, (n, n)).astype(np.int16)
    fits.PrimaryHDU(data).writeto(buf)
    return buf.getvalue()


def put(path: Path, data: bytes | None = None, mtime: datetime | None = None) -> Path:
    """Write a file with plain writes (no atomic rename: as a camera or a copy does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(fits_bytes(seed=hash(path.name) % 1000) if data is None else data)
    if mtime is not None:
        os.utime(path, (mtime.timestamp(), mtime.timestamp()))
    return path


@pytest.fixture
def site_cfg(tmp_path) -> Path:
    p = tmp_path / "site.yaml"
    p.write_text("site_lon: {!r}\nsite_lat: {!r}\nsite_ele: {!r}\n".format(*XINGLONG))
    return p


@pytest.fixture
def roots(tmp_path):
    raw, red = tmp_path / "raw", tmp_path / "red"
    raw.mkdir()
    return raw, red


def make(roots, cfg, clock, trigger, **kw) -> Sensor:
    trigger.clock = clock
    kw.setdefault("watch", False)
    kw.setdefault("settle", 0.0)
    s = Sensor(roots[0], roots[1], cfg, clock=clock, trigger=trigger, **kw)
    return s.start()


def marked_night(roots, cfg, clock, trig) -> Sensor:
    """A started sensor (marker DONE) and a night ``n1`` of one file, marked complete."""
    s = make(roots, cfg, clock, trig, marker="DONE")
    put(roots[0] / "n1" / "a.fits")
    (roots[0] / "n1" / "DONE").write_text("")
    return s


def sun_alt(t: datetime, site=XINGLONG) -> float:
    loc = EarthLocation.from_geodetic(site[0] * u.deg, site[1] * u.deg, site[2] * u.m)
    tt = Time(t)
    return float(get_sun(tt).transform_to(AltAz(obstime=tt, location=loc)).alt.deg)


# ------------------------------------------------------------------ dawn
@pytest.mark.parametrize("site", [XINGLONG, LA_PALMA], ids=["xinglong", "la-palma"])
def test_dawn_decision_matches_astropy(tmp_path, roots, site):
    cfg = tmp_path / "site.yaml"
    cfg.write_text("site_lon: {!r}\nsite_lat: {!r}\nsite_ele: {!r}\n".format(*site))
    clock = Clock(utc(2024, 6, 6, 4, 0) if site == XINGLONG else utc(2024, 6, 6, 22, 0))
    trig = FakeTrigger()
    s = make(roots, cfg, clock, trig)
    # files arrive every 20 min for 3 h, starting once the Sun is below -12 deg
    while sun_alt(clock.t, site) > -13:
        clock.advance(minutes=20)
        s.poll_once()
    for i in range(9):
        put(roots[0] / "n1" / f"f{i:03d}.fits")
        s.poll_once()
        clock.advance(minutes=20)
    assert not trig.calls and sun_alt(clock.t, site) < -12
    due = s.dawn_due("n1")
    while not trig.calls:
        s.poll_once()
        clock.advance(minutes=2)
    decided = trig.calls[0]["when"]
    # independent astropy check: above -12 at the decision, below it 10 min before
    assert sun_alt(decided, site) > -12.0
    assert sun_alt(decided - timedelta(minutes=10), site) < -12.0
    assert 0 <= decided.timestamp() - due < 120
    t_due = datetime.fromtimestamp(due, UTC)
    assert sun_alt(t_due - timedelta(seconds=2), site) < -12.0 <= sun_alt(t_due + timedelta(seconds=1), site)
    s.stop()


# --------------------------------------------------------- piece by piece
def test_piecewise_copy_with_duplicate_events_triggers_once_at_dawn(roots, site_cfg, caplog):
    caplog.set_level(logging.INFO, logger="qlcp.sensor")
    raw, red = roots
    clock = Clock(utc(2024, 6, 6, 12, 0))
    trig = FakeTrigger()
    s = make(roots, site_cfg, clock, trig, settle=60.0)
    night = raw / "20240606_85"
    data = fits_bytes(32)
    for i in range(10):                       # 12:00 .. 18:20 UTC, a file every 40 min, in two halves
        p = night / "sci" / f"xo1-{i:04d}V.fits"
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            f.write(data[:2880])
        for _ in range(3):                     # duplicate and burst events
            s.notify(p)
            s.notify(night)
        assert s.poll_once() == []
        clock.advance(minutes=20)
        with open(p, "ab") as f:
            f.write(data[2880:])
        s.notify(p)
        s.notify(p)
        assert s.poll_once() == []
        clock.advance(minutes=20)
    due = s.dawn_due("20240606_85")
    assert due > clock.t.timestamp()
    while clock.t < utc(2024, 6, 6, 21, 0):
        s.poll_once()
        assert bool(trig.calls) == (clock.t.timestamp() >= due)
        clock.advance(minutes=5)
    assert len(trig.calls) == 1
    call = trig.calls[0]
    assert 0 <= call["when"].timestamp() - due < 300
    assert call["name"] == "process-night/process-night" and call["timeout"] == 0
    assert call["tags"] == ["sensor", "20240606_85"]
    assert call["parameters"] == {"raw_dir": str(night), "red_dir": str(red / "20240606_85"),
                                  "config_files": [str(site_cfg)]}
    for _ in range(12):                        # more polls and events after dawn: nothing more
        s.notify(night / "sci" / "xo1-0000V.fits")
        assert s.poll_once() == []
        clock.advance(minutes=30)
    assert len(trig.calls) == 1
    (row,) = s.state()
    assert row["status"] == "triggered" and row["flow_run_id"] == call["id"] and row["reason"] == "dawn"
    assert row["attempts"] == 1 and row["n_files"] == 10
    msgs = [r.getMessage() for r in caplog.records if r.name == "qlcp.sensor"]
    assert sum("new night 20240606_85" in m for m in msgs) == 1
    assert sum("ready (dawn)" in m for m in msgs) == 1
    assert sum("triggered process-night" in m for m in msgs) == 1
    # nothing was written inside RAW_ROOT
    assert sorted(str(p.relative_to(raw)) for p in raw.rglob("*")) == sorted(
        ["20240606_85", "20240606_85/sci"] + [f"20240606_85/sci/xo1-{i:04d}V.fits" for i in range(10)])
    s.stop()


def test_marker_triggers_before_dawn_and_empty_night_never(roots, site_cfg):
    raw, _ = roots
    clock = Clock(NIGHT)
    trig = FakeTrigger()
    s = make(roots, site_cfg, clock, trig, marker="DONE")
    put(raw / "n1" / "a.fits")
    (raw / "n2").mkdir()
    (raw / "n2" / "notes.txt").write_text("clouds")
    (raw / "n2" / "DONE").write_text("")        # marker, but no FITS file: never ready
    for _ in range(3):
        assert s.poll_once() == []
        clock.advance(minutes=10)
    (raw / "n1" / "DONE").write_text("")
    assert s.poll_once() == ["n1"]
    assert sun_alt(trig.calls[0]["when"]) < -12      # before dawn
    while clock.t < NEXT_MORNING:                     # n2 stays untriggered through dawn
        clock.advance(hours=1)
        s.poll_once()
    assert trig.nights == ["n1"]
    rows = {r["name"]: r for r in s.state()}
    assert rows["n1"]["reason"] == "marker" and rows["n2"]["status"] == "pending" and rows["n2"]["n_files"] == 0
    s.stop()


def test_growing_file_not_counted_until_stable(roots, site_cfg):
    raw, _ = roots
    clock = Clock(NIGHT)
    trig = FakeTrigger()
    s = make(roots, site_cfg, clock, trig, marker="DONE", settle=30.0)
    put(raw / "n1" / "a.fits")
    data = fits_bytes(64)
    p = raw / "n1" / "b.fits"
    with open(p, "wb") as f:
        f.write(data[:2880])
    (raw / "n1" / "DONE").write_text("")
    assert s.poll_once() == []
    for chunk in (slice(2880, 5760), slice(5760, None)):   # still growing at the next polls
        clock.advance(seconds=40)
        with open(p, "ab") as f:
            f.write(data[chunk])
        assert s.poll_once() == []
    clock.advance(seconds=10)                   # unchanged, but only 10 s < settle since last change
    assert s.poll_once() == []
    clock.advance(seconds=25)
    assert s.poll_once() == ["n1"]
    assert p.stat().st_size == len(data)
    s.stop()


# ---------------------------------------------------------------- restarts
def test_restart_mid_night_and_after_trigger(roots, site_cfg):
    raw, _ = roots
    clock = Clock(NIGHT)
    trig = FakeTrigger()
    s = make(roots, site_cfg, clock, trig)
    for i in range(3):
        put(raw / "n1" / f"f{i}.fits")
        s.poll_once()
        clock.advance(minutes=30)
    s.stop()                                           # restart in the middle of the night
    s = make(roots, site_cfg, clock, trig)
    for i in range(3, 6):
        put(raw / "n1" / f"f{i}.fits")
        s.poll_once()
        clock.advance(minutes=30)
    assert not trig.calls
    while clock.t < utc(2024, 6, 6, 20, 30):
        s.poll_once()
        clock.advance(minutes=5)
    assert trig.nights == ["n1"]
    first_key = trig.calls[0]["key"]
    s.stop()
    for _ in range(2):                                 # restarts after the trigger: nothing more
        s = make(roots, site_cfg, clock, trig)
        for _ in range(3):
            clock.advance(hours=1)
            assert s.poll_once() == []
        s.stop()
    assert trig.nights == ["n1"] and trig.calls[0]["key"] == first_key
    (row,) = read_state(roots[1] / ".qlcp-sensor.sqlite")
    assert row["status"] == "triggered" and row["attempts"] == 1


def test_catch_up_nights_found_at_start(roots, site_cfg, caplog):
    caplog.set_level(logging.INFO, logger="qlcp.sensor")
    raw, _ = roots
    # two nights copied with their original times (cp -p / rsync -a): last night and the night before
    for i in range(4):
        put(raw / "20240605" / f"a{i}.fits", mtime=utc(2024, 6, 5, 14, 10 * i))
        put(raw / "20240606" / f"b{i}.fits", mtime=utc(2024, 6, 6, 15, 10 * i))
    # a night copied this morning with fresh times (plain cp): waits for the next dawn
    put(raw / "20240607" / "c0.fits", mtime=utc(2024, 6, 7, 1, 0))
    clock = Clock(NEXT_MORNING, astropy=True)
    trig = FakeTrigger()
    trig_clock = Clock(NEXT_MORNING)
    s = Sensor(raw, roots[1], site_cfg, clock=clock, trigger=trig, watch=False, settle=0.0).start()
    trig.clock = trig_clock
    assert sorted(s.poll_once()) == ["20240605", "20240606"]
    assert all(s.poll_once() == [] for _ in range(3))
    rows = {r["name"]: r for r in s.state()}
    assert rows["20240605"]["reason"] == rows["20240606"]["reason"] == "catch-up"
    assert rows["20240607"]["status"] == "pending"
    assert datetime.fromtimestamp(s.dawn_due("20240607"), UTC).date() == utc(2024, 6, 7).date()
    assert s.dawn_due("20240607") > NEXT_MORNING.timestamp()
    assert sum("ready (catch-up)" in r.getMessage() for r in caplog.records) == 2
    s.stop()


# ---------------------------------------------------------------- API down
def test_trigger_failure_backoff_then_one_run(roots, site_cfg, caplog):
    caplog.set_level(logging.INFO, logger="qlcp.sensor")
    clock = Clock(NIGHT)
    trig = FakeTrigger(down=8)
    s = marked_night(roots, site_cfg, clock, trig)
    s.poll_once()                                  # first check of the file
    t0 = clock.advance(seconds=1)
    attempts_at = []
    for sec in range(1400):                     # poll every second for ~23 min
        clock.t = t0 + timedelta(seconds=sec)
        before = trig.failures + len(trig.calls)
        s.poll_once()
        if trig.failures + len(trig.calls) > before:
            attempts_at.append(sec)
        if trig.calls:
            break
    # 5, 10, 20, 40, 80, 160, then capped at 300 s
    assert np.diff(attempts_at).tolist() == [5, 10, 20, 40, 80, 160, 300, 300]
    assert trig.nights == ["n1"] and trig.failures == 8
    warns = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warns) == 8 and all("\n" not in w and "Connection refused" in w for w in warns)
    (row,) = s.state()
    assert row["status"] == "triggered" and row["attempts"] == 9 and row["flow_run_id"] == trig.calls[0]["id"]
    for _ in range(5):
        clock.advance(minutes=10)
        assert s.poll_once() == []
    assert len(trig.calls) == 1
    s.stop()


def test_pending_failure_survives_restart(roots, site_cfg):
    clock = Clock(NIGHT)
    trig = FakeTrigger(down=100)
    s = marked_night(roots, site_cfg, clock, trig)
    for _ in range(4):
        s.poll_once()
        clock.advance(minutes=1)
    s.stop()
    (row,) = read_state(roots[1] / ".qlcp-sensor.sqlite")
    assert row["status"] == "pending" and row["attempts"] >= 2
    assert row["last_error"].startswith("ConnectionError: [Errno 111]")
    trig.down = 0                                  # the API is back
    s = make(roots, site_cfg, clock, trig, marker="DONE")
    clock.advance(minutes=10)
    s.poll_once()
    clock.advance(minutes=10)
    s.poll_once()
    assert trig.nights == ["n1"]
    s.stop()


# ----------------------------------------------------------------- renames
def test_renamed_directory(roots, site_cfg):
    raw, _ = roots
    clock = Clock(NIGHT)
    trig = FakeTrigger()
    s = make(roots, site_cfg, clock, trig, marker="DONE", pattern=r"^\d{8}_\d+$")
    put(raw / "incoming" / "a.fits")               # not a night name: ignored
    put(raw / "20240606_1" / "a.fits")
    for _ in range(2):
        s.poll_once()
        clock.advance(minutes=5)
    (raw / "20240606_1").rename(raw / "20240606_2")  # renamed before its trigger
    s.poll_once()
    (raw / "incoming").rename(raw / "20240606_3")    # a copy under a temporary name, then renamed
    clock.advance(minutes=5)
    s.poll_once()
    for n in ("20240606_2", "20240606_3"):
        (raw / n / "DONE").write_text("")
    clock.advance(minutes=5)
    got = s.poll_once()
    clock.advance(minutes=5)
    got += s.poll_once()
    assert sorted(got) == sorted(trig.nights) == ["20240606_2", "20240606_3"]
    rows = {r["name"]: r["status"] for r in s.state()}
    assert rows == {"20240606_1": "gone", "20240606_2": "triggered", "20240606_3": "triggered"}
    # a rename after the trigger is a new night name: one more run, under the new name (documented)
    (raw / "20240606_3").rename(raw / "20240606_4")
    for _ in range(3):
        clock.advance(minutes=5)
        s.poll_once()
    assert trig.nights == ["20240606_2", "20240606_3", "20240606_4"]
    s.stop()


def test_quiet_rule(roots, site_cfg):
    raw, _ = roots
    clock = Clock(NIGHT)
    trig = FakeTrigger()
    s = make(roots, site_cfg, clock, trig, quiet=600)
    put(raw / "n1" / "a.fits")
    s.poll_once()
    clock.advance(minutes=8)
    put(raw / "n1" / "b.fits")                     # new file: the quiet time starts again
    s.poll_once()
    clock.advance(minutes=8)
    assert s.poll_once() == []
    clock.advance(minutes=3)
    assert s.poll_once() == ["n1"]
    assert s.state()[0]["reason"] == "quiet"
    s.stop()


# ------------------------------------------------------ real watchdog events
def test_polling_observer_real_events(tmp_path, roots, site_cfg):
    raw, _ = roots
    trig = FakeTrigger()
    s = Sensor(raw, roots[1], site_cfg, trigger=trig, marker="DONE", polling=True, polling_timeout=0.1,
               settle=0.1, rescan=3600.0)          # real clock; no periodic rescans: only events wake it
    s.start()
    stop = threading.Event()
    th = threading.Thread(target=s.run_forever, args=(stop,), kwargs={"interval": 60.0}, daemon=True)
    th.start()
    try:
        time.sleep(0.3)
        staging = tmp_path / "staging" / "night_a"    # a complete night moved in
        put(staging / "a1.fits")
        (staging / "DONE").write_text("")
        staging.rename(raw / "night_a")
        (raw / "night_b").mkdir()                      # a night written in place, file by file
        time.sleep(0.5)
        for i in range(3):
            put(raw / "night_b" / f"b{i}.fits")
        (raw / "night_b" / "DONE").write_text("")
        t0 = time.monotonic()
        while len(trig.calls) < 2 and time.monotonic() - t0 < 8:
            time.sleep(0.05)
        assert sorted(trig.nights) == ["night_a", "night_b"]
        put(raw / "night_b" / "late.fits")             # after the trigger: ignored
        time.sleep(0.5)
    finally:
        stop.set()
        th.join(timeout=5)
        s.stop()
    assert not th.is_alive()
    assert sorted(trig.nights) == ["night_a", "night_b"]


# ---------------------------------------------------------------- CLI, guards
def test_cli_arguments_and_run_watch(roots, site_cfg):
    raw, red = roots
    ap = add_watch_arguments(argparse.ArgumentParser(prog="qlcp watch"))
    a = ap.parse_args([str(raw), str(red), "--config", str(site_cfg), "--marker", "DONE", "--quiet", "900",
                       "--sun-altitude", "-10", "--polling", "--pattern", "^2024", "--state", str(red / "s.db")])
    assert (a.marker, a.quiet, a.sun_altitude, a.polling, a.pattern) == ("DONE", 900.0, -10.0, True, "^2024")
    assert a.deployment == "process-night/process-night" and a.config == [str(site_cfg)]
    d = ap.parse_args([str(raw), str(red)])
    assert (d.marker, d.quiet, d.sun_altitude, d.polling, d.state) == (None, None, -12.0, False, None)
    # run_watch: catch-up at start, then stopped (as SIGTERM would)
    put(raw / "20240601" / "x.fits", mtime=utc(2024, 6, 1, 15, 0))
    stop = threading.Event()
    trig = FakeTrigger()
    trig.clock = Clock(NIGHT)

    def stopping_trigger(*args, **kw):
        stop.set()
        return trig(*args, **kw)

    a.polling = False
    assert run_watch(a, trigger=stopping_trigger, stop_event=stop, interval=0.05, settle=0.0) == 0
    assert trig.nights == ["20240601"]
    assert [r["status"] for r in read_state(red / "s.db")] == ["triggered"]


def test_guards(tmp_path, roots, site_cfg):
    raw, red = roots
    with pytest.raises(InputError, match="inside RAW_ROOT"):
        Sensor(raw, raw / "red", site_cfg, watch=False)
    with pytest.raises(InputError, match="inside RAW_ROOT"):
        Sensor(raw, red, site_cfg, state_path=raw / "s.sqlite", watch=False)
    with pytest.raises(InputError, match="not a directory"):
        Sensor(tmp_path / "nope", red, site_cfg)
    with pytest.raises(ConfigError, match="pattern"):
        Sensor(raw, red, site_cfg, pattern="([")
    bad = tmp_path / "bad.yaml"
    bad.write_text("site_lat: 123\n")
    with pytest.raises(ConfigError, match="site_lat"):
        Sensor(raw, red, bad)
    s = Sensor(raw, red, site_cfg, watch=False).start()
    with pytest.raises(InputError, match="another qlcp watch"):
        Sensor(raw, red, site_cfg, watch=False).start()
    s.stop()
    Sensor(raw, red, site_cfg, watch=False).start().stop()     # lock released


def test_sigterm_stops_run_watch(roots, site_cfg):
    raw, red = roots
    a = add_watch_arguments(argparse.ArgumentParser()).parse_args([str(raw), str(red), "--config", str(site_cfg)])
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.4, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    t0 = time.monotonic()
    try:
        assert run_watch(a, trigger=FakeTrigger(), interval=0.1) == 0
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 3
    assert signal.getsignal(signal.SIGTERM) == before           # handler restored
    assert (red / ".qlcp-sensor.sqlite").is_file() and not any(p.name.startswith(".") for p in raw.iterdir())


def test_night_moved_away_while_down_is_gone_then_back(roots, site_cfg):
    raw, _ = roots
    clock = Clock(NIGHT)
    trig = FakeTrigger()
    s = make(roots, site_cfg, clock, trig)
    put(raw / "n1" / "a.fits")
    s.poll_once()
    s.stop()
    (raw / "n1").rename(raw.parent / "n1-away")
    s = make(roots, site_cfg, clock, trig)
    assert [(r["name"], r["status"]) for r in s.state()] == [("n1", "gone")]
    (raw.parent / "n1-away").rename(raw / "n1")
    clock.advance(minutes=1)
    s.poll_once()
    assert [(r["name"], r["status"]) for r in s.state()] == [("n1", "pending")]
    while clock.t < utc(2024, 6, 6, 20, 0):       # first dark arrival kept: triggered at this dawn
        clock.advance(minutes=10)
        s.poll_once()
    assert trig.nights == ["n1"] and s.state()[0]["reason"] == "dawn"
    s.stop()


def test_max_age_skips_old_nights_until_they_change(roots, site_cfg, caplog):
    """--max-age: a sensor started on a root of old nights reduces only the recent ones; an old
    night is judged again when a file is added to it."""
    caplog.set_level(logging.INFO, logger="qlcp.sensor")
    raw, _ = roots
    for i in range(3):
        put(raw / "20230101" / f"o{i}.fits", mtime=utc(2023, 1, 1, 14, 10 * i))      # a year and a half old
        put(raw / "20240605" / f"a{i}.fits", mtime=utc(2024, 6, 5, 14, 10 * i))      # last night
    (raw / "20220101").mkdir()                                                      # old and empty
    os.utime(raw / "20220101", (utc(2022, 1, 1).timestamp(),) * 2)
    clock = Clock(NEXT_MORNING, astropy=True)
    trig = FakeTrigger()
    s = Sensor(raw, roots[1], site_cfg, clock=clock, trigger=trig, watch=False, settle=0.0, max_age=7).start()
    trig.clock = Clock(NEXT_MORNING)
    assert s.poll_once() == ["20240605"]
    assert all(s.poll_once() == [] for _ in range(3))
    assert sorted(r["name"] for r in s.state()) == ["20240605"]          # old nights are not even recorded
    said = [r.getMessage() for r in caplog.records if "--max-age" in r.getMessage()]
    assert len(said) == 1 and "2 night(s)" in said[0] and "20230101" in said[0]
    # a file lands in the old night: it is a night being written now, so it is registered
    put(raw / "20230101" / "late.fits", mtime=NEXT_MORNING)
    s.poll_once()
    assert "20230101" in {r["name"] for r in s.state()}
    s.stop()
    with pytest.raises(ConfigError, match="--max-age"):
        Sensor(raw, roots[1], site_cfg, watch=False, max_age=0)
    args = add_watch_arguments(argparse.ArgumentParser()).parse_args([str(raw), str(roots[1]), "--max-age", "3"])
    assert args.max_age == 3.0


# ------------------------------------------ a clock years past astropy's bundled tables
def test_sensor_under_a_clock_years_past_the_tables(roots, site_cfg, monkeypatch):
    """Astropy with its own defaults (predictions refused once 30 days old) and its clock 3 years
    ahead, the sensor's clock too, a night already waiting from two days before: the sensor starts
    (``qlcp up`` exited with 'internal error: ValueError' here) and triggers it once (catch-up),
    then a night copied in the dark once at its dawn, as astropy computes it; no download tried
    (issue 24, R3)."""
    from astropy.utils import iers

    tried = []
    ahead = Time.now() + 3 * 365.25 * u.day
    monkeypatch.setattr(Time, "now", classmethod(lambda cls: ahead.copy()))
    monkeypatch.setattr(iers.iers, "download_file", lambda *a, **k: tried.append(a) or (_ for _ in ()).throw(
        OSError("no network")))
    raw, _ = roots
    t0 = ahead.to_datetime(timezone=UTC)
    put(raw / "n1" / "a.fits", mtime=t0 - timedelta(days=2))
    clock = Clock(t0)
    trig = FakeTrigger()
    with iers.conf.set_temp("auto_download", True), iers.conf.set_temp("auto_max_age", 30.0), \
            iers.conf.set_temp("iers_degraded_accuracy", "error"):
        s = make(roots, site_cfg, clock, trig)
        try:
            assert s.poll_once() == ["n1"] and s.state()[0]["reason"] == "catch-up"
            while sun_alt(clock.t) > -13:            # into the night, 3 years ahead
                clock.advance(minutes=20)
                assert s.poll_once() == []
            put(raw / "n2" / "b.fits")
            s.poll_once()
            clock.advance(minutes=1)
            s.poll_once()
            due = s.dawn_due("n2")
            assert due is not None and 0 < due - clock.t.timestamp() < 86400
            got = []
            while not got:
                clock.advance(minutes=5)
                got = s.poll_once()
            assert got == ["n2"] and {r["name"]: r["reason"] for r in s.state()}["n2"] == "dawn"
            decided = trig.calls[-1]["when"]
            with iers.conf.set_temp("auto_max_age", None):
                assert sun_alt(decided) > -12.0 > sun_alt(decided - timedelta(minutes=10))
        finally:
            s.stop()
    assert trig.nights == ["n1", "n2"] and not tried


def test_a_failing_dawn_rule_never_stops_the_sensor(roots, site_cfg, caplog):
    """Whatever makes the Sun's altitude fail (it was an aged IERS table: R3), the sensor starts with
    a night waiting, logs it once per night, and the marker rule still triggers the night."""
    caplog.set_level(logging.INFO, logger="qlcp.sensor")
    raw, _ = roots
    put(raw / "n1" / "a.fits", mtime=NIGHT - timedelta(minutes=30))
    clock = Clock(NIGHT)
    trig = FakeTrigger()
    trig.clock = clock
    s = Sensor(raw, roots[1], site_cfg, clock=clock, trigger=trig, watch=False, settle=0.0, marker="DONE")

    def broken(*a, **k):
        raise ValueError("interpolating from IERS_Auto using predictive values that are more\nthan 30 days old")

    s.dawn.sun_altitude = broken
    s.start()
    try:
        for _ in range(3):
            clock.advance(minutes=5)
            assert s.poll_once() == []
        (raw / "n1" / "DONE").write_text("")
        clock.advance(minutes=1)
        assert s.poll_once() == ["n1"] and s.state()[0]["reason"] == "marker"
    finally:
        s.stop()
    failed = [r for r in caplog.records if "the dawn rule failed" in r.getMessage()]
    assert len(failed) == 1 and "n1" in failed[0].getMessage() and "\n" not in failed[0].getMessage()
    assert not any("poll failed" in r.getMessage() for r in caplog.records)
