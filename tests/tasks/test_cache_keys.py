"""Task cache keys (qlcp.tasks.common.cache_key): they change exactly when a declared input changes."""

from __future__ import annotations

import os
import types

import pytest

from qlcp.core.config import Config
from qlcp.core.stages import FREE_KEYS, plan
from qlcp.tasks.common import cache_key
from qlcp.tasks.steps import TASKS, task_for


@pytest.fixture(autouse=True)
def _results(tmp_path, monkeypatch):
    monkeypatch.setenv("QLCP_RESULTS", str(tmp_path / "results"))


def _key(block, cfg: Config, unit: dict, red) -> str:
    ctx = types.SimpleNamespace(task=types.SimpleNamespace(name=block.task_name))
    return cache_key(ctx, {"red_dir": str(red), "cfg": cfg.plain(only_set=True), "block": block.name, "unit": unit})


def _files(tmp_path, n=3):
    out = []
    for i in range(n):
        p = tmp_path / f"f{i}.fit"
        p.write_bytes(bytes([i]) * 2880)
        out.append(str(p))
    return out


def test_every_planned_block_has_a_task():
    for steps in ("lbfiopkcdg", "lbfi", "p", "o", "d", "g", "kc", "K"):
        for b in plan(steps):
            assert task_for(b) is TASKS[b.task_name]


def test_correct_key_follows_declared_keys_files_and_values(tmp_path):
    block = plan("lbfi")[-1]
    assert block.name == "correct"
    files = _files(tmp_path)
    unit = {"files": files, "bias": None, "flat": None, "dark": None, "coord_file": files[0], "obj": "X",
            "band": "V"}
    cfg = Config(steps="lbfi")
    k0 = _key(block, cfg, unit, tmp_path)
    assert _key(block, cfg, dict(unit), tmp_path) == k0
    # the keys of the old hand-kept list's blind spot: the detector values
    for change in ({"saturation": 50000.0}, {"gain": 1.7}, {"rdnoise": 9.0}, {"site_lat": 10.0}, {"border_cut": 4}):
        assert _key(block, Config(steps="lbfi", **change), unit, tmp_path) != k0, change
    # settings the correction does not read leave the key alone
    for same in ({"aper": [7.0]}, {"pick_ref_n": 3}, {"workers": 1}, {"detect_thresh": 5.0}):
        assert _key(block, Config(steps="lbfi", **same), unit, tmp_path) == k0, same
    # a raw frame by its identity, as the plain driver's provenance keys know it: touched, it is new
    # input (the same bytes under a new mtime); rewritten, its size tells even with the old mtime put back
    os.utime(files[1], ns=(1, 1))
    k1 = _key(block, cfg, unit, tmp_path)
    assert k1 != k0
    with open(files[1], "r+b") as f:
        f.write(b"\x07" * 3000)
    os.utime(files[1], ns=(1, 1))
    assert _key(block, cfg, unit, tmp_path) not in (k0, k1)
    # the group's coordinate frame is a raw frame too (here one outside this chunk): known by identity
    coord = tmp_path / "coord.fit"
    coord.write_bytes(b"c" * 2880)
    k3 = _key(block, cfg, {**unit, "coord_file": str(coord)}, tmp_path)
    os.utime(coord, ns=(3, 3))
    assert _key(block, cfg, {**unit, "coord_file": str(coord)}, tmp_path) != k3
    # a master (any input QLCP made) by its content, not its time stamp
    master = tmp_path / "flat.fits"
    master.write_bytes(b"m" * 2880)
    k2 = _key(block, cfg, {**unit, "flat": str(master)}, tmp_path)
    os.utime(master, ns=(5, 5))
    assert _key(block, cfg, {**unit, "flat": str(master)}, tmp_path) == k2
    master.write_bytes(b"n" * 2880)
    assert _key(block, cfg, {**unit, "flat": str(master)}, tmp_path) != k2
    # a declared value
    assert _key(block, cfg, {**unit, "band": "R"}, tmp_path) != _key(block, cfg, unit, tmp_path)


def test_free_keys_never_key_a_cache_unless_declared(tmp_path):
    block = plan("p")[-1]
    unit = {"corrected": _files(tmp_path, 1)}
    k0 = _key(block, Config(steps="p"), unit, tmp_path)
    assert _key(block, Config(steps="p", workers=1, mode=["EXIST_OVER", "MISS_SKIP"]), unit, tmp_path) == k0
    assert "steps" in FREE_KEYS
    select = next(b for b in plan("kcd") if b.name == "select")
    assert "steps" in select.keys           # K (reuse the pick) and k (pick) differ
    u = {"frame_catalogue": unit["corrected"], "offsets": unit["corrected"][0], "obj": "X", "band": "V",
         "night": "n"}
    assert _key(select, Config(steps="kcd"), u, tmp_path) != _key(select, Config(steps="Kcd"), u, tmp_path)


def test_a_product_written_from_known_inputs_is_fingerprinted_by_its_provenance_until_it_changes(tmp_path):
    """Workers register ``drv:<provenance key>`` for the frames and catalogues they write (no sha256
    of 4 MB frames); a file changed afterwards (size or mtime) is hashed by content again."""
    import hashlib

    from qlcp.core.io import fingerprint_record
    from qlcp.tasks.common import _fingerprints, register_fingerprints

    p = tmp_path / "x.bf.fits"
    p.write_bytes(b"a" * 2880)
    rec = fingerprint_record(p, derived="0123456789abcdef")
    assert rec[2] == "drv:0123456789abcdef" and rec[0] == 2880
    assert fingerprint_record(p)[2] == hashlib.sha256(b"a" * 2880).hexdigest()
    register_fingerprints({str(p): rec})
    assert _fingerprints([str(p)])[0][1] == "drv:0123456789abcdef"
    p.write_bytes(b"b" * 2880)                         # rewritten by someone else: same size, new mtime
    os.utime(p, ns=(rec[1] + 10**9, rec[1] + 10**9))
    assert _fingerprints([str(p)])[0][1] == hashlib.sha256(b"b" * 2880).hexdigest()


def test_a_frame_task_reports_its_worker_jobs_to_the_flow_progress(tmp_path):
    from qlcp.tasks.common import set_progress_hook, task_progress, unit_key

    block = plan("lbfip")[-1]
    assert block.unit == "chunk" and len(block.stages) == 2
    unit = {"files": [f"f{i}" for i in range(10)]}
    assert task_progress(str(tmp_path), block, unit) is None          # no hook: nothing reported
    got = []
    set_progress_hook(str(tmp_path), lambda key, units: got.append((key, units)))
    try:
        wrap = task_progress(str(tmp_path), block, unit)
        assert list(wrap(iter("abcd"), desc="x", total=4)) == list("abcd")
        assert {k for k, _ in got} == {unit_key(block.name, unit)}
        assert sum(u for _, u in got) == pytest.approx(20.0)           # 10 frames x 2 stages
        assert task_progress(str(tmp_path), plan("o")[-1], unit) is None   # not a frame block
    finally:
        set_progress_hook(str(tmp_path), None)
    assert task_progress(str(tmp_path), block, unit) is None


def test_keys_change_with_the_code_of_the_block_and_only_its_code(tmp_path, monkeypatch):
    """A changed source (here: photometry's, as the memo sees it) changes the cache key of a block
    exactly when photometry is in the code its runners import (qlcp.core.codehash)."""
    from qlcp.core import codehash

    cfg = Config(steps="lbfiop")
    files = _files(tmp_path)
    units = {"bias": {"bias_files": files},
             "ip": {"files": files, "bias": None, "flat": None, "dark": None, "coord_file": files[0], "obj": "X",
                    "band": "V"}}
    blocks = {b.name: b for b in plan(cfg.steps) if b.name in units}
    codehash.clear()
    before = {n: _key(b, cfg, units[n], tmp_path) for n, b in blocks.items()}
    real = codehash._module.__wrapped__

    def edited(name, package):
        sha, deps = real(name, package)
        return ("edited" if name == "qlcp.core.photometry" else sha), deps

    monkeypatch.setattr(codehash, "_module", codehash.functools.lru_cache(maxsize=None)(edited))
    for f in (codehash.closure, codehash.code_fingerprint):
        f.cache_clear()
    try:
        for n, b in blocks.items():
            uses = "qlcp.core.photometry" in codehash.closure(b.modules)
            assert (_key(b, cfg, units[n], tmp_path) != before[n]) == uses, n
        assert _key(blocks["ip"], cfg, units["ip"], tmp_path) != before["ip"]
    finally:
        monkeypatch.undo()
        codehash.clear()
