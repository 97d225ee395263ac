"""``qlcp instruments``: the operator's view of the instrument registry (list, check).

The registry is ``--dir DIR``, else the site config's ``instruments_dir`` (``--config FILE``), else
the built-in examples (``builtin``).  A bad instrument file is one line and exit status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_instruments_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("list", "check"),
                   help="list the instruments; check which instrument every frame of RAW_DIR matches, and why")
    p.add_argument("raw", nargs="?", metavar="RAW_DIR", help="a night's raw directory (check)")
    p.add_argument("--dir", default=None, metavar="DIR",
                   help="the registry (default: instruments_dir of --config, else the built-in examples)")
    p.add_argument("--config", action="append", metavar="FILE", help="site config (its instruments_dir)")


def _registry(a):
    from qlcp.core.config import load_config
    from qlcp.core.instruments import BUILTIN, registry

    cfg = load_config(a.config) if a.config else None
    return registry(a.dir or (cfg.instruments_dir if cfg else None) or BUILTIN), cfg


def cmd_instruments(a) -> int:
    from qlcp.core.errors import InputError

    reg, cfg = _registry(a)
    if a.action == "list":
        print(f"registry: {reg.where} ({len(reg.instruments)} instrument(s))")
        for i in reg.instruments:
            rules = [f"{k}={v!r}" for k, v in i.match.header.items()]
            rules += [f"size {' or '.join(f'{x}x{y}' for x, y in i.match.size)}"] if i.match.size else []
            rules += [f"binning {i.match.binning[0]},{i.match.binning[1]}"] if i.match.binning else []
            print(f"{i.name}{' (' + ', '.join(i.aliases) + ')' if i.aliases else ''}: "
                  f"{' '.join(rules) or 'any frame'}; in use {i.validity()}; "
                  f"settings: {', '.join(i.settings) or 'none'}; {i.file}")
        return 0
    if not a.raw:
        raise InputError("instruments check: give RAW_DIR, a night's raw directory")
    from collections import Counter

    from qlcp.core.instruments import choose, header_date
    from qlcp.core.listing import night_headers

    raw = Path(a.raw)
    if not raw.is_dir():
        raise InputError(f"{raw}: raw directory not found")
    date_key = cfg.date_key if cfg else "DATE-OBS"
    verdicts = []
    for rel, hdr in night_headers(raw):
        v = reg.match(hdr, header_date(hdr, date_key))
        verdicts.append(v)
        print(f"{rel}: {v.name or '-'}: {v.reason}")
    inst, why = choose(verdicts)
    counts = Counter(v.name or v.reason.split(":")[0] for v in verdicts)
    print(f"{raw}: {', '.join(f'{n}: {c}' for n, c in sorted(counts.items()))}; night's instrument: "
          f"{inst.name if inst else 'none'} ({why})")
    return 0
