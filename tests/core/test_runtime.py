"""Importing qlcp.core changes no process-wide setting; a run makes those it needs with one call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_PROBE = textwrap.dedent("""
    import importlib, json, os, pkgutil, sys, warnings
    warnings.simplefilter("ignore")

    def umask_now():                      # read without setting it
        for line in open("/proc/self/status"):
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)

    import sep
    from astropy.utils import iers

    os.umask(0o027)                       # a caller's own settings, none of them QLCP's
    iers.conf.auto_download = True
    iers.conf.auto_max_age = 30.0
    iers.conf.iers_degraded_accuracy = "error"
    sep.set_extract_pixstack(1000)
    sep.set_sub_object_limit(16)

    def state():
        return {"umask": umask_now(), "auto_download": iers.conf.auto_download,
                "auto_max_age": iers.conf.auto_max_age, "degraded": iers.conf.iers_degraded_accuracy,
                "pixstack": sep.get_extract_pixstack(), "sub_objects": sep.get_sub_object_limit()}

    before = state()
    umask_calls = []
    _umask = os.umask
    os.umask = lambda m: (umask_calls.append(m), _umask(m))[1]
    import qlcp.core
    mods = sorted(m.name for m in pkgutil.iter_modules(qlcp.core.__path__, "qlcp.core.")
                  if m.name != "qlcp.core._preload")        # the pool's worker start-up script
    for m in mods:
        importlib.import_module(m)
    after_import = state()
    calls_at_import = list(umask_calls)

    # library use of the science (no run): astropy's own IERS handling, no QLCP cache
    import numpy as np
    from astropy.coordinates import SkyCoord
    from astropy.time import Time
    from qlcp.core import timing
    from qlcp.core.config import Config
    from qlcp.core.io import write_text
    with iers.conf.set_temp("auto_download", False):   # this probe must not download either
        timing.frame_times(Time(["2024-06-06T14:00:00"]), np.array([60.0]), SkyCoord(250.0, 30.0, unit="deg"),
                           Config())
    write_text(os.path.join(os.environ["OUT"], "product.txt"), "x")
    after_use = state()
    source_before_run = timing.iers_source
    cache_before_run = sorted(os.listdir(os.environ["QLCP_CACHE_DIR"])) if os.path.isdir(os.environ["QLCP_CACHE_DIR"]) else []

    try:
        from qlcp.core.runtime import configure_run
        configure_run()
        after_run = state()
    except Exception as e:
        after_run = repr(e)
    print(json.dumps({"mods": mods, "before": before, "after_import": after_import, "after_use": after_use,
                      "after_run": after_run, "umask_calls": calls_at_import,
                      "mode": os.stat(os.path.join(os.environ["OUT"], "product.txt")).st_mode & 0o777,
                      "source_before_run": source_before_run, "cache_before_run": cache_before_run}))
""")


def _run(code: str, tmp_path, **env) -> dict:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(REPO), **env))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_import_changes_no_process_setting_and_configure_run_makes_the_runs(tmp_path):
    cache = tmp_path / "cache"
    res = _run(_PROBE, tmp_path, QLCP_CACHE_DIR=str(cache), OUT=str(tmp_path))
    assert "qlcp.core.pipeline" in res["mods"] and "qlcp.core.parallel" in res["mods"] and len(res["mods"]) > 20
    before = res["before"]
    assert before == {"umask": 0o027, "auto_download": True, "auto_max_age": 30.0, "degraded": "error",
                      "pixstack": 1000, "sub_objects": 16}
    assert res["after_import"] == before, "importing qlcp.core changed a process-wide setting"
    assert res["umask_calls"] == [], "importing qlcp.core set the umask (even if only for a moment)"
    assert res["after_use"] == before
    assert res["mode"] == 0o640                                  # products follow the caller's umask
    assert res["source_before_run"] is None and res["cache_before_run"] == []   # no IERS cache unless a run
    run = res["after_run"]
    assert isinstance(run, dict), run
    assert run["auto_download"] is False and run["auto_max_age"] is None and run["degraded"] == "warn"
    assert run["umask"] == 0o027
    from qlcp.core.runtime import SEP_MIN_PIXSTACK, SEP_MIN_SUB_OBJECTS

    assert run["pixstack"] == SEP_MIN_PIXSTACK and run["sub_objects"] == SEP_MIN_SUB_OBJECTS


def _settings(_=None) -> dict:
    """This process's run settings (a pool job, so module-level)."""
    import sep
    from astropy.utils import iers

    from qlcp.core import timing

    return {"auto_download": iers.conf.auto_download, "sub_objects": sep.get_sub_object_limit(),
            "cache_on": getattr(timing, "_iers_cache_on", None), "pid": os.getpid()}


def test_pool_workers_configure_their_run(tmp_path):
    """The worker initialiser (here through a fork server: the caller runs a thread) makes the
    run's settings in each worker, even when the calling process never made them."""
    code = textwrap.dedent("""
        import json, threading, time
        import sep
        from astropy.utils import iers
        iers.conf.auto_download = True
        sep.set_sub_object_limit(16)
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        from qlcp.core import parallel
        from tests.core.test_runtime import _settings
        print(json.dumps({"method": parallel.start_method(), "parent": _settings(),
                          "workers": parallel.pmap(_settings, [0, 1, 2, 3], workers=2)}))
    """)
    res = _run(code, tmp_path, QLCP_CACHE_DIR=str(tmp_path / "cache"))
    assert res["method"] == "forkserver"
    assert res["parent"]["auto_download"] is True and res["parent"]["sub_objects"] == 16
    assert not res["parent"]["cache_on"]
    for w in res["workers"]:
        assert w["pid"] != res["parent"]["pid"]
        assert w["auto_download"] is False and w["sub_objects"] >= 1024 and w["cache_on"], w


def test_plain_driver_configures_its_run(tmp_path):
    """``qlcp.core.run`` makes the run's settings where it starts (the IERS cache itself: test_timing)."""
    code = textwrap.dedent("""
        import json, os
        import sep
        from astropy.utils import iers
        iers.conf.auto_download = True
        sep.set_sub_object_limit(16)
        from qlcp.core import run
        from qlcp.core.simulate import simulate_small
        from tests.core.test_runtime import _settings
        sim = simulate_small(os.path.join(os.environ["OUT"], "n"), n_frames=3, size=96, seed=7, n_bias=3,
                             n_flats=3, thick_cloud=False)
        before = _settings()
        run(sim.raw_dir, os.path.join(os.environ["OUT"], "red"), steps="lbfip", ini_file=[sim.config_path],
            workers=1, scr_log="WARNING")
        print(json.dumps({"before": before, "after": _settings()}))
    """)
    res = _run(code, tmp_path, QLCP_CACHE_DIR=str(tmp_path / "cache"), OUT=str(tmp_path))
    assert res["before"]["auto_download"] is True and not res["before"]["cache_on"]
    a = res["after"]
    assert a["auto_download"] is False and a["sub_objects"] >= 1024 and a["cache_on"], a


# --------------------------------------------------------- time, offline, whatever the date
_FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1",
                  "/usr/lib64/faketime/libfaketime.so.1", "/usr/local/lib/faketime/libfaketime.so.1")


def faketime_env(offset: str = "+1000d", base: dict | None = None) -> dict:
    """An environment whose processes see the wall clock ``offset`` ahead (libfaketime: the time calls
    and file times; the monotonic clock left alone, see ``tests/faketime_site/sitecustomize.py``), the
    flag of an earlier warning removed; skips the test when libfaketime is absent (Debian: apt-get
    install faketime libfaketime)."""
    lib = next((p for p in _FAKETIME_LIBS if os.path.isfile(p)), None)
    if lib is None:
        import pytest

        pytest.skip("libfaketime not installed (apt-get install faketime libfaketime)")
    from qlcp.core.runtime import ANNOUNCED_ENV

    env = {k: v for k, v in (base or os.environ).items() if k != ANNOUNCED_ENV}
    site = str(REPO / "tests" / "faketime_site")
    env.update(LD_PRELOAD=lib, FAKETIME=offset, FAKETIME_DONT_FAKE_MONOTONIC="1",
               PYTHONPATH=os.pathsep.join([site] + [p for p in [env.get("PYTHONPATH")] if p]))
    return env


_AGED = textwrap.dedent("""
    import json, logging, os, subprocess, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    import numpy as np
    import astropy.units as u
    from astropy.coordinates import AltAz, EarthLocation, SkyCoord, get_sun
    from astropy.time import Time
    from astropy.utils import iers

    tried = []
    def no_download(*a, **k):
        tried.append(str(a))
        raise OSError("no network")
    iers.iers.download_file = no_download          # astropy's defaults otherwise: download, refuse at 30 d

    from qlcp.core import timing
    from qlcp.core.config import Config
    from qlcp.core.runtime import offline_time
    first, again = offline_time(), offline_time()
    now = Time.now()
    site = EarthLocation.from_geodetic(117.58 * u.deg, 40.40 * u.deg, 960 * u.m)
    sun = get_sun(now).transform_to(AltAz(obstime=now, location=site)).alt.deg
    r = timing.frame_times(now + np.arange(3) * u.min, 60.0, SkyCoord(250.0, 30.0, unit="deg"),
                           Config(site_lon=117.58, site_lat=40.40, site_ele=960))
    ut1 = (now.ut1 - now.utc).sec
    child = subprocess.run([sys.executable, "-c", "import logging, sys; logging.basicConfig(level=logging.INFO, "
                            "format='%(levelname)s %(name)s: %(message)s'); "
                            "from qlcp.core.runtime import offline_time; offline_time()"],
                           capture_output=True, text=True)
    print(json.dumps({"year": now.datetime.year, "stale": first.stale, "age": first.iers_age_days,
                      "leap_expired": first.leap_expired, "again": again, "sun": float(sun), "ut1": ut1,
                      "bjd_ok": bool(np.all(np.isfinite(r["BJD"]))), "tried": tried,
                      "child": child.stderr, "child_rc": child.returncode}))
""")


def test_offline_time_under_a_clock_1000_days_ahead(tmp_path):
    """A process 1000 days past the bundled tables (libfaketime): astropy with its own defaults
    would raise 'IERS_Auto using predictive values that are more than 30 days old' or try to
    download; after offline_time, the Sun's altitude, UT1 and a frame's BJD are computed, nothing
    is downloaded, and stderr holds exactly one warning (no astropy or ERFA warning); a process it
    starts says the same at INFO."""
    r = subprocess.run([sys.executable, "-c", _AGED], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env=faketime_env("+1000d", dict(os.environ, PYTHONPATH=str(REPO),
                                                       QLCP_CACHE_DIR=str(tmp_path / "cache"))))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["year"] >= 2029 and res["stale"] and res["age"] > 1000 and res["leap_expired"]
    assert res["again"] is None and res["tried"] == [] and res["bjd_ok"]
    assert -90 <= res["sun"] <= 90 and abs(res["ut1"]) < 0.9
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    warned = [ln for ln in lines if "warn" in ln.lower()]
    assert len(warned) == 1 and warned[0].startswith("WARNING qlcp.time: time tables out of date"), lines
    assert "days old" in warned[0] and "leap-second list expired" in warned[0] and "qlcp update-tables" in warned[0]
    assert "Traceback" not in r.stderr
    assert res["child_rc"] == 0 and res["child"].startswith("INFO qlcp.time: time tables out of date"), res["child"]


def test_table_status_counts_on_the_injected_clock(tmp_path, monkeypatch):
    """Out of date when the IERS-A predictions are more than STALE_DAYS old or the leap-second
    list has expired, on the clock given; the message says by how much it matters."""
    from astropy.time import Time

    from qlcp.core.runtime import STALE_DAYS, table_status

    monkeypatch.setenv("QLCP_CACHE_DIR", str(tmp_path / "cache"))
    pred = Time(table_status(0.0).predicted_from).unix
    fresh = table_status(pred + 10 * 86400)
    assert not fresh.stale and abs(fresh.iers_age_days - 10) < 1.01 and not fresh.leap_expired
    month = table_status(pred + (STALE_DAYS + 2) * 86400)
    assert month.stale and not month.leap_expired and "leap" not in month.message().split(". ")[0]
    aged = table_status(pred + 1000 * 86400)
    assert aged.stale and aged.leap_expired and "1000 days old" in aged.message()
    assert "< 0.004 deg" in aged.message() and "\n" not in aged.message()


_STATUS = ("import json; from qlcp.core.runtime import offline_time; s = offline_time(); "
           "print(json.dumps({'leap': s.leap_expires, 'iers': s.iers_source}))")


def test_update_tables_installs_fresh_tables_and_refuses_junk(tmp_path):
    """``qlcp update-tables``: a leap-second list that expires later and an IERS-A table are
    parsed, copied into the cache and used by later processes; junk and an older list are
    refused with one line and exit 2, and change nothing."""
    from astropy.utils import iers

    env = dict(os.environ, PYTHONPATH=str(REPO), QLCP_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("QLCP_TABLES_WARNED", None)

    def qlcp(*args):
        return subprocess.run([sys.executable, "-m", "qlcp.deployments.cli", *args], capture_output=True,
                              text=True, timeout=300, cwd=tmp_path, env=env)

    bundled = Path(iers.IERS_LEAP_SECOND_FILE).read_text()
    assert "File expires on 28 June 2027" in bundled or "File expires on" in bundled
    fresh = tmp_path / "Leap_Second.dat"
    import re

    fresh.write_text(re.sub(r"File expires on .*", "File expires on 28 June 2031", bundled))
    older = tmp_path / "old-leap.dat"
    older.write_text(re.sub(r"File expires on .*", "File expires on 28 June 2019", bundled))
    junk = tmp_path / "finals2000A.all"
    junk.write_text("<html>404 Not Found</html>\n")

    for bad, why in ((junk, "neither an IERS-A table"), (older, "before the one in use"),
                     (tmp_path / "missing.dat", "no such file")):
        r = qlcp("update-tables", str(bad))
        assert r.returncode == 2, r.stderr
        err = [ln for ln in r.stderr.splitlines() if ln.startswith("qlcp: error")]
        assert len(err) == 1 and str(bad) in err[0] and why in err[0], r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "cache" / "Leap_Second.dat").exists()

    r = qlcp("update-tables", str(fresh), iers.IERS_A_FILE)
    assert r.returncode == 0, r.stderr
    assert "leap seconds (expires 2031-06-28)" in r.stdout and "IERS-A (measured to" in r.stdout, r.stdout
    assert (tmp_path / "cache" / "Leap_Second.dat").read_text() == fresh.read_text()
    s = subprocess.run([sys.executable, "-c", _STATUS], capture_output=True, text=True, timeout=300, env=env)
    assert s.returncode == 0, s.stderr
    res = json.loads(s.stdout.strip().splitlines()[-1])
    assert res["leap"] == "2031-06-28" and res["iers"] == str(tmp_path / "cache" / "finals2000A.all")
