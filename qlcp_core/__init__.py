"""QLCP core: the science of the Quick Light Curve Pipeline, as plain functions.

One module per stage (``listing``, ``bias``, ``flat``, ``correct``, ``offset``,
``photometry``, ``pick``, ``catalogue``, ``differential``, ``plotting``), the
typed configuration (``config``), work modes (``workmode``) and the night
simulator (``simulate``).  Nothing here imports Prefect: the orchestration
lives in the ``tasks`` and ``flows`` packages.

    >>> from qlcp.core import run, workmode
    >>> run("raw/20240606_85", "red/20240606_85", steps="lbfi")   # doctest: +SKIP
"""

from ._version import __version__
from .runtime import configure_run
from .workmode import workmode

# Importing QLCP changes no process-wide setting (astropy's IERS configuration, the
# umask, sep's buffers): a run makes those it needs with ``configure_run()`` at its start.


def run(raw_dir, red_dir, steps=None, **kwargs):
    """Reduce one night; see :func:`qlcp.core.pipeline.run`."""
    from .pipeline import run as _run

    return _run(raw_dir, red_dir, steps=steps, **kwargs)


__all__ = ["run", "configure_run", "workmode", "__version__"]
