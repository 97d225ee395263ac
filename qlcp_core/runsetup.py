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
    stage graph; no site is a warning, said by :func:`for_night` when an instrument registry may
    bring the site)."""
    cfg = load_config(ini_file, {k: v for k, v in params.items() if v is not None}, checks=(config_problem,))
    if not cfg.instruments_dir:
        check_site(cfg)
    else:
        from .instruments import registry

        registry(cfg.instruments_dir)           # a bad instrument file: one line, before any work
    return cfg


def for_night(cfg: Config, raw: Path) -> Config:
    """``cfg`` for the night in ``raw``: with an instrument registry (``instruments_dir``), the
    night's instrument chosen from its frames' headers (or the one ``instrument`` names) and its
    settings layered in: arguments > night config files (every file after the first) > instrument >
    site config (the first file) > built-in defaults.  Without a registry, ``cfg`` itself."""
    if not cfg.instruments_dir:
        return cfg
    from .config import load_layers
    from .instruments import choose, header_date, registry
    from .listing import night_headers

    reg = registry(cfg.instruments_dir)
    layers = cfg._layers or [("config", cfg.plain(only_set=True))]
    layers = [(w, {k: v for k, v in d.items() if w != _CHOSEN or k != "instrument"}) for w, d in layers
              if not w.startswith("instrument ")]      # a config already made for a night: chosen again
    if cfg.instrument and cfg._sources.get("instrument") != _CHOSEN:
        inst, why = reg.get(cfg.instrument), f"named by {cfg._sources.get('instrument', 'the config')}"
    else:
        verdicts = [reg.match(h, header_date(h, cfg.date_key)) for _, h in night_headers(raw)]
        inst, why = choose(verdicts)
    if inst is None:
        log.warning("%s: no instrument for this night (%s): its frames are not reduced", raw, why)
        out = load_layers(layers, (config_problem,))
    else:
        log.info("%s: instrument %s (%s; %s)", raw, inst.name, inst.file, why)
        at = 1 if layers and layers[0][0] not in ("argument", "config") else 0
        out = load_layers([*layers[:at], (f"instrument {inst.name} ({inst.file})", inst.layer()),
                           (_CHOSEN, {"instrument": inst.name}), *layers[at:]], (config_problem,))
    check_site(out)
    return out


#: the source of ``instrument`` when the run chose it from the headers
_CHOSEN = "chosen from the headers"


def sources(cfg: Config) -> dict:
    """Where every value given came from, key -> source (a key not named: the built-in default)."""
    return dict(sorted(cfg._sources.items()))


def write_effective_config(red: Path, cfg: Config) -> Path:
    """``{red}/config.yaml``: every key's effective value, each given one after a comment naming its
    source (a key without one is the built-in default)."""
    src, out = cfg._sources, []
    for line in cfg.to_yaml().splitlines(keepends=True):
        key = line.split(":", 1)[0] if line[:1].isalpha() else None
        if key in src:
            out.append(f"# {key} from {src[key]}\n")
        out.append(line)
    return write_text(red / "config.yaml", "# effective configuration of the last run (QLCP); keys without a "
                                           "source comment are built-in defaults\n" + "".join(out))
