"""A stage's view of the configuration: the keys it declared, and nothing else.

The stage graph (:mod:`qlcp.core.stages`) declares the configuration keys each
stage reads; its runner (:mod:`qlcp.core.steps`) gets a :class:`ConfigView` that
raises :class:`UndeclaredConfigKey` on any other, so cache and provenance keys,
built from the declarations, cannot miss a setting that changes the output.
This module imports no stage and no runner: the runners use it, and the graph
imports the runners.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import Config
from .errors import QLCPError

#: settings that change how a stage runs, never what it writes: readable by every stage, in no cache key
#: unless a stage declares one (``select`` declares ``steps``: ``K`` reuses the last pick, ``k`` forces one)
FREE_KEYS = frozenset({"steps", "workers", "file_log", "scr_log", "mode", "combine_mem_mb"})


class UndeclaredConfigKey(QLCPError):
    """A stage read a configuration key its declaration does not list (a programming error)."""


@dataclass
class ConfigView:
    """A stage's read-only view of the :class:`~qlcp.core.config.Config`: reading a key the
    stage did not declare raises :class:`UndeclaredConfigKey`, so cache keys and provenance,
    which are built from the declarations, cannot miss a setting that changes the output."""

    cfg: Config
    keys: frozenset = field(default_factory=frozenset)
    owner: str = ""
    #: (declared keys, code fingerprint) of each stage the view serves, by stage name (a fused block
    #: serves several): what :func:`qlcp.core.provenance.step_key` hashes for a product of that stage
    stages: dict = field(default_factory=dict)

    def _check(self, name: str) -> None:
        if name in Config.model_fields and name not in self.keys and name not in FREE_KEYS:
            raise UndeclaredConfigKey(f"stage {self.owner!r} reads config key {name!r}, which it does not "
                                      f"declare (qlcp_core/stages.py)")

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("cfg", "keys", "owner", "stages"):
            raise AttributeError(name)
        self._check(name)
        return getattr(self.cfg, name)

    def for_object(self, name: str, obj: str):
        self._check(name)
        return self.cfg.for_object(name, obj)

    def flat_for(self, which: str, band: str):
        self._check(which)
        return self.cfg.flat_for(which, band)

    def subset(self, keys) -> dict:
        for k in keys:
            self._check(k)
        return self.cfg.subset(keys)

    def hash(self, keys=None) -> str:
        """Hash of ``keys`` (default: the declared keys, i.e. what this stage's output depends on)."""
        keys = sorted(self.keys) if keys is None else list(keys)
        for k in keys:
            self._check(k)
        return self.cfg.hash(keys)

    def plain(self, only_set: bool = False) -> dict:
        return {k: v for k, v in self.cfg.plain(only_set).items() if k in self.keys or k in FREE_KEYS}

    @property
    def pick_forced(self) -> bool:
        return self.cfg.pick_forced

    def declared(self, stage: str) -> tuple[tuple[str, ...], str]:
        """(the configuration keys stage ``stage`` declares, the fingerprint of its code), for a stage
        this view serves."""
        try:
            keys, code = self.stages[stage]
            return tuple(sorted(keys)), code
        except KeyError:
            raise UndeclaredConfigKey(f"view {self.owner!r} serves no stage {stage!r}") from None


def view(cfg: Config | ConfigView, block_or_stage) -> ConfigView:
    """The view of ``cfg`` for a :class:`~qlcp.core.stages.Stage` or :class:`~qlcp.core.stages.Block`
    (anything with ``name`` and ``keys``), or for a tuple ``(keys, owner)``."""
    base = cfg.cfg if isinstance(cfg, ConfigView) else cfg
    if isinstance(block_or_stage, tuple):
        keys, owner = block_or_stage
        return ConfigView(base, frozenset(keys), owner)
    stages = getattr(block_or_stage, "stages", (block_or_stage,))
    return ConfigView(base, frozenset(block_or_stage.keys), block_or_stage.name,
                      {s.name: (frozenset(s.keys), s.code) for s in stages})
