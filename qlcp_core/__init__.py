"""QLCP core: the science of the Quick Light Curve Pipeline, as plain functions.

One module per stage (``listing``, ``bias``, ``flat``, ``correct``, ``offset``,
``photometry``, ``pick``, ``catalogue``, ``differential``, ``plotting``), the
typed configuration (``config``), work modes (``workmode``) and the night
simulator (``simulate``).  Nothing here imports Prefect: the orchestration
lives in the ``tasks`` and ``flows`` packages.

    >>> from qlcp.core import run, workmode
    >>> run("raw/20240606_85", "red/20240606_85", steps="lbfi")   # doctest: +SKIP
"""

from astropy.utils import iers as _iers

from ._version import __version__
from .workmode import workmode

# No network at run time: use the IERS tables shipped with astropy-iers-data,
# never download (a stale table only degrades UT1-UTC, irrelevant at our 0.1 s).
_iers.conf.auto_download = False
_iers.conf.auto_max_age = None
_iers.conf.iers_degraded_accuracy = "warn"


def run(raw_dir, red_dir, steps=None, **kwargs):
    """Reduce one night; see :func:`qlcp.core.pipeline.run`."""
    from .pipeline import run as _run

    return _run(raw_dir, red_dir, steps=steps, **kwargs)


__all__ = ["run", "workmode", "__version__"]
