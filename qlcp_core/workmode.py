"""Work modes: what a step does when an output exists or an input is missing.

Same names, meanings and default as QLCP v2024.6::

    mode = workmode(workmode.EXIST_APPEND + workmode.MISS_SKIP)   # the default

* ``EXIST_SKIP``   keep existing outputs, log a warning
* ``EXIST_OVER``   overwrite existing outputs
* ``EXIST_APPEND`` per-frame outputs that exist are kept (like SKIP); aggregate
  products (catalogues, light curves) are rewritten (like OVER)
* ``EXIST_ERROR``  an existing output is an error
* ``MISS_SKIP``    a missing input is logged and skipped; a missing input of an
  aggregate product skips the whole step
* ``MISS_ERROR``   a missing input is an error
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from .errors import ConfigError, MissingInputError, OutputExistsError

log = logging.getLogger("qlcp")


class workmode:  # noqa: N801  (lower-case name kept from the original API)
    """Bit set of one EXIST_* and one MISS_* choice."""

    EXIST_SKIP = 0x01
    EXIST_OVER = 0x02
    EXIST_APPEND = 0x04
    EXIST_ERROR = 0x08
    MISS_SKIP = 0x10
    MISS_ERROR = 0x20

    _EXIST = ("EXIST_SKIP", "EXIST_OVER", "EXIST_APPEND", "EXIST_ERROR")
    _MISS = ("MISS_SKIP", "MISS_ERROR")

    def __init__(self, mode: "int | workmode | str | Iterable[str] | None" = None):
        if mode is None:
            mode = self.EXIST_APPEND + self.MISS_SKIP
        elif isinstance(mode, workmode):
            mode = mode.value
        elif isinstance(mode, str):
            mode = self._from_names([m for m in mode.replace("+", ",").replace("|", ",").split(",")])
        elif not isinstance(mode, int):
            mode = self._from_names(list(mode))
        exist = [n for n in self._EXIST if mode & getattr(self, n)]
        miss = [n for n in self._MISS if mode & getattr(self, n)]
        if len(exist) > 1 or len(miss) > 1 or mode & ~0x3F:
            raise ConfigError(f"mode: incompatible or unknown work mode bits {mode:#x} ({exist + miss})")
        # absent halves take the defaults
        self.exist = exist[0] if exist else "EXIST_APPEND"
        self.miss = miss[0] if miss else "MISS_SKIP"

    @classmethod
    def _from_names(cls, names: list) -> int:
        value = 0
        for raw in names:
            name = str(raw).strip().upper()
            if not name:
                continue
            if name.startswith("WORKMODE."):
                name = name[len("WORKMODE."):]
            if name not in cls._EXIST + cls._MISS:
                raise ConfigError(
                    f"mode: unknown work mode {raw!r}; use {', '.join(cls._EXIST + cls._MISS)}")
            value |= getattr(cls, name)
        return value

    @property
    def value(self) -> int:
        return getattr(self, self.exist) | getattr(self, self.miss)

    @property
    def names(self) -> list[str]:
        return [self.exist, self.miss]

    def __int__(self) -> int:
        return self.value

    def __eq__(self, other) -> bool:
        try:
            return self.value == workmode(other).value
        except ConfigError:
            return NotImplemented

    def __hash__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"workmode({' + '.join('workmode.' + n for n in self.names)})"

    # ------------------------------------------------------------ decisions
    def should_write(self, path: str | Path, aggregate: bool = False, current: bool = True) -> bool:
        """Decide whether a step (re)writes ``path``.

        ``current`` says whether an existing product was made from the same
        settings and inputs (see :mod:`qlcp.core.provenance`); under
        EXIST_APPEND a stale product is redone.  Returns True to (re)compute,
        False to keep the existing file.  Raises :class:`OutputExistsError`
        for EXIST_ERROR.
        """
        path = Path(path)
        if not path.exists():
            return True
        if self.exist == "EXIST_OVER" or (self.exist == "EXIST_APPEND" and (aggregate or not current)):
            if self.exist == "EXIST_APPEND" and not aggregate:
                log.debug("%s is stale (other settings or inputs): redone", path)
            return True
        if self.exist == "EXIST_ERROR":
            raise OutputExistsError(f"{path}: output exists and mode is EXIST_ERROR")
        if self.exist == "EXIST_SKIP":
            log.warning("%s exists, skipped (EXIST_SKIP)", path)
        else:
            log.debug("%s exists, kept (EXIST_APPEND)", path)
        return False

    def missing(self, what: str) -> None:
        """Report a missing input: warn (MISS_SKIP) or raise (MISS_ERROR)."""
        if self.miss == "MISS_ERROR":
            raise MissingInputError(f"{what}: missing and mode is MISS_ERROR")
        log.warning("%s: missing, skipped (MISS_SKIP)", what)
