"""Inputs only through the unit: a unit holds exactly the fields its block declares, and a runner reads
no product of a kind its stage does not declare (checked on a simulated night, every stage run)."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from qlcp.core import products
from qlcp.core import stages as S
from qlcp.core import walk as W
from qlcp.core.simulate import simulate_small

#: product kinds named with a declared kind: the group's folder holds its corrected frames; reading the
#: offsets (:func:`qlcp.core.offset.read_offsets`) names both files of step o (``offset_paths``), reads the ecsv
_PART_OF = {"group_dir": "corrected", "offsets_txt": "offsets"}


class _StrictUnit(dict):
    """A unit that refuses to give a field its stage does not declare."""

    def __init__(self, data, allowed, owner):
        super().__init__(data)
        self.allowed, self.owner = allowed, owner

    def _check(self, k):
        if k not in self.allowed:
            raise AssertionError(f"stage {self.owner} read unit field {k!r}, which it does not declare")

    def __getitem__(self, k):
        self._check(k)
        return super().__getitem__(k)

    def get(self, k, default=None):
        self._check(k)
        return super().get(k, default)


def _guarded(run, owner: str, allowed_fields, current: list):
    def runner(ctx, u, prev):
        current.append(owner)
        try:
            return run(ctx, _StrictUnit(u, set(allowed_fields), owner), prev)
        finally:
            current.pop()
    return runner


@pytest.fixture
def guarded(monkeypatch):
    """Every runner wrapped (its stage recorded, its unit strict), every unit checked against its block's
    declaration, and every ``product_path`` call of the core recorded with the stage running."""
    current: list[str] = []
    seen: list[tuple[str, str]] = []
    made: list[tuple[str, set, set]] = []
    stages = tuple(dataclasses.replace(s, run=_guarded(s.run, s.name, s.files + s.values, current)) for s in S.STAGES)
    by_name = {s.name: s for s in stages}
    fusions = tuple(f._replace(run=_guarded(f.run, f.name, sum((by_name[n].files + by_name[n].values
                                                                 for n in f.stages), ()), current))
                    if f.run else f for f in S.FUSIONS)
    monkeypatch.setattr(S, "STAGES", stages)
    monkeypatch.setattr(S, "BY_NAME", by_name)
    monkeypatch.setattr(S, "FUSIONS", fusions)

    real_units = W.NightWalk.units

    def units(self, block, chunk=None):
        out = real_units(self, block, chunk)
        made.extend((block.name, set(u), set(block.files + block.values)) for _, u in out)
        return out

    monkeypatch.setattr(W.NightWalk, "units", units)
    real_path = products.product_path

    def product_path(red, kind, *a, **k):
        if current:
            seen.append((current[-1], kind))
        return real_path(red, kind, *a, **k)

    for name, mod in list(sys.modules.items()):
        if name.startswith("qlcp.core") and getattr(mod, "product_path", None) is real_path:
            monkeypatch.setattr(mod, "product_path", product_path)
    return seen, made


def test_units_hold_their_declared_fields_and_runners_read_only_declared_products(tmp_path, guarded):
    from qlcp.core import run
    from qlcp.core.config import load_config

    seen, units = guarded
    sim = simulate_small(tmp_path / "n", n_frames=6, size=128, seed=5, n_bias=3, n_flats=3, thick_cloud=False)
    cfg = load_config([sim.config_path], {"workers": 1, "steps": "lbfiopwkcdgt"})
    s = run(sim.raw_dir, tmp_path / "red", config=cfg)
    assert not s.failed and s.groups[0].outputs["lightcurve"] and s.groups[0].outputs["timing"]

    assert {b for b, _, _ in units} >= {"list", "bias", "flat", "ip", "offsets", "astrometry", "select", "lc", "timing"}
    for block, fields, declared in units:
        assert fields == declared, block
    declared = {s.name: set(s.files) | set(s.writes) for s in S.STAGES}
    for f in S.FUSIONS:
        declared[f.name] = set().union(*(declared[n] for n in f.stages))
    assert {stage for stage, _ in seen} >= {"list", "bias", "ip", "offsets", "astrometry", "select", "differential"}
    undeclared = {(stage, kind) for stage, kind in seen if _PART_OF.get(kind, kind) not in declared[stage]}
    assert not undeclared, f"runners used product kinds their stages do not declare: {sorted(undeclared)}"


def test_the_guard_sees_an_undeclared_read(tmp_path, guarded, monkeypatch):
    """The guard above is not vacuous: a chart runner that finds the light curve by its product path fails it."""
    from qlcp.core.steps import lightcurve as lc_steps

    seen, _ = guarded
    real = lc_steps.graph_step

    def peeking(red, cfg, obj, band, *a):
        lc_steps.product_path(red, "lightcurve", obj, band)
        return real(red, cfg, obj, band, *a)

    monkeypatch.setattr(lc_steps, "graph_step", peeking)
    from qlcp.core import run
    from qlcp.core.config import load_config

    sim = simulate_small(tmp_path / "n", n_frames=4, size=128, seed=5, n_bias=3, n_flats=3, thick_cloud=False)
    run(sim.raw_dir, tmp_path / "red", config=load_config([sim.config_path], {"workers": 1, "steps": "lbfiopkcdg"}))
    assert ("chart", "lightcurve") in seen and "lightcurve" not in S.stage("chart").files
