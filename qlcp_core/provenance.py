"""Provenance keys: which settings and inputs made a product.

Each per-frame product (corrected frame, catalogue) carries ``QLCPKEY`` in its
header: a hash of the step's settings (the keys its stage declares in
:mod:`qlcp.core.stages`), the fingerprint of the code the stage runs
(``Stage.code``: a fix in photometry changes the keys of photometry's products,
not of the corrected frames) and the identity (name, size, mtime) of its inputs.  Under
the default EXIST_APPEND mode an existing product is kept only when its key
matches: changing ``aper`` or a master flat redoes what depends on it, where
the original would silently keep stale files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ._version import __version__
from .config import Config
from .configview import FREE_KEYS, ConfigView


def file_identity(path: str | Path | None) -> list:
    """(name, size, mtime_ns) of a file, or None: cheap, changes when the file is rewritten."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return [str(path), None, None]
    return [Path(path).name, st.st_size, st.st_mtime_ns]


def step_key(cfg: ConfigView | Config, step: str, *inputs) -> str:
    """Hash of the settings of stage ``step``, the fingerprint of its code and the identity of ``inputs``.

    The settings are the keys ``step`` declares and the code is the stage's
    (``Stage.code``: its runner's module and the ``qlcp.core`` modules that imports),
    as the stage's :class:`ConfigView`, which the drivers build from the stage graph,
    carries them.  A plain :class:`Config` (a call outside the graph) hashes every
    setting but the run-only ones, and the version for the code."""
    if isinstance(cfg, ConfigView):
        keys, code = cfg.declared(step)
    else:
        keys, code = sorted(set(Config.model_fields) - FREE_KEYS), __version__
    payload = {
        "code": code,
        "step": step,
        "cfg": cfg.subset(keys),
        "in": [file_identity(p) for p in inputs],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fits_key(path: str | Path) -> str | None:
    """``QLCPKEY`` of an existing FITS product (in the primary header, or in the first
    extension's for tables); None when absent or unreadable.  Reads headers only."""
    from .io import _header_end, parse_header_fast

    try:
        with open(path, "rb") as f:
            buf = f.read(64 * 2880)
        end = _header_end(buf, 0)
        prim = parse_header_fast(buf[:end])
        if "QLCPKEY" in prim:
            return str(prim["QLCPKEY"])
        if prim.get("NAXIS", 0) == 0 and prim.get("EXTEND"):
            ext = parse_header_fast(buf[end:_header_end(buf, end)])
            if "QLCPKEY" in ext:
                return str(ext["QLCPKEY"])
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return None
