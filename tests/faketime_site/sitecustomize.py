"""Loaded (as ``sitecustomize``, from PYTHONPATH) by the Python processes tests run under libfaketime.

The tests fake the wall clock only (``FAKETIME_DONT_FAKE_MONOTONIC=1``): with a faked monotonic clock
libfaketime 0.9.10 makes every timed lock wait (``threading.Event.wait``, ``queue.get(timeout=...)``)
wait for the real time to catch up, i.e. forever.  With it, ``time.sleep`` fails with EINVAL
(CPython sleeps with ``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)``, whose deadline libfaketime
shifts): sleep with ``select`` instead, which it leaves alone.  Nothing here runs without FAKETIME.
"""

import os

if os.environ.get("FAKETIME") and os.environ.get("LD_PRELOAD", "").find("faketime") >= 0:
    import select
    import time

    def _sleep(seconds: float) -> None:
        if seconds > 0:
            select.select([], [], [], seconds)
        elif seconds < 0:
            raise ValueError("sleep length must be non-negative")

    time.sleep = _sleep
