"""What both drivers do before they walk a night: the run's config (files and arguments, checked; no
site configured is a warning) and its effective copy in the output directory.  The plain driver
(:mod:`qlcp.core.pipeline`) and the Prefect flow (:mod:`qlcp.flows.night`) take them from here; so
does the command line.  (The identities of the night's raw files that key its listing:
:func:`qlcp.core.listing.raw_identities`.)"""

from __future__ import annotations

import logging
from pathlib import Path

from .config import Config, load_config
from .io import write_text
from .stages import config_problem

log = logging.getLogger("qlcp.runsetup")

_SITE_WARNED: set = set()


def check_site(cfg: Config) -> None:
    """Warn (once per process) when no site is configured: the default (Xinglong) is then used for
    airmass, altitude and BJD."""
    if {"site_lat", "site_lon"} & cfg.model_fields_set or "site" in _SITE_WARNED:
        return
    _SITE_WARNED.add("site")
    log.warning("no site configured (site_lat, site_lon, site_ele, site_tz): the default, Xinglong "
                "(%.4f N, %.4f E, %g m), is used for airmass and BJD; see examples/site.yaml",
                cfg.site_lat, cfg.site_lon, cfg.site_ele)


def make_config(ini_file=None, **params) -> Config:
    """Config from files (``ini_file``) and call arguments; ``None`` arguments are 'not given'
    (checked before any work: :func:`~qlcp.core.config.load_config`, the step letters against the
    stage graph; no site is a warning)."""
    cfg = load_config(ini_file, {k: v for k, v in params.items() if v is not None}, checks=(config_problem,))
    check_site(cfg)
    return cfg


def write_effective_config(red: Path, cfg: Config) -> Path:
    return write_text(red / "config.yaml", "# effective configuration of the last run (QLCP)\n" + cfg.to_yaml())
