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
