"""Field references across nights (qlcp.core.field, qlcp.core.selection): the second night of a field
uses the first night's stars in their roles, with no positions given."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from qlcp.core import run
from qlcp.core.config import load_config
from qlcp.core.simulate import simulate_small

SHIFT = (23, -17)          # the second night's pointing offset, px, on top of a 180-degree turn


def _turned_night(src_raw, dst_raw, size: int):
    """The same frames as a night whose field is turned 180 degrees on the detector and shifted."""
    dst_raw.mkdir(parents=True)
    for p in sorted(src_raw.iterdir()):
        with fits.open(p) as h:
            data = np.rot90(h[0].data.astype(np.float32), 2)
            if "sci" in p.name.lower() or h[0].header.get("IMAGETYP", "").lower().startswith(("light", "sci")):
                data = np.roll(data, SHIFT[::-1], axis=(0, 1))
            fits.PrimaryHDU(data, h[0].header).writeto(dst_raw / p.name)


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory):
    root = tmp_path_factory.mktemp("field")
    sim = simulate_small(root / "sim", n_frames=10, size=256, seed=13, thick_cloud=False)
    _turned_night(sim.raw_dir, root / "raw2", 256)
    fields = root / "fields"
    cfg = load_config([sim.config_path], {"workers": 1, "field_dir": str(fields), "starxy": None})
    first = run(sim.raw_dir, root / "red1", config=cfg)
    second = run(root / "raw2", root / "red2", config=cfg)
    return sim, root, first, second


def test_first_night_writes_the_reference(two_nights):
    sim, root, first, _ = two_nights
    st = first.groups[0].stars
    assert st["source"] == "picked" and st["field_reference"] == str(root / "fields" / "SIMV.ecsv")
    ref = Table.read(st["field_reference"], format="ascii.ecsv")
    assert list(ref["role"][:1]) == ["target"] and np.sum(ref["role"] == "comparison") >= 2
    assert len(ref) >= 8 and np.sum(ref["role"] == "field") >= 3      # pattern stars for nights without a WCS


def test_second_night_uses_it_through_the_turned_pattern(two_nights):
    sim, root, first, second = two_nights
    st = second.groups[0].stars
    assert st["source"] == "field" and st["field_match"] == "pattern" and not st["lost"]
    a = json.loads((root / "red1" / "select_SIMV_V.json").read_text())
    b = json.loads((root / "red2" / "select_SIMV_V.json").read_text())
    assert [len(a[k]) for k in ("ind_tgt", "ind_ref", "ind_chk")] == [len(b[k]) for k in ("ind_tgt", "ind_ref",
                                                                                           "ind_chk")]
    # each star of the first night, turned and shifted, is the same star of the second
    n = 256
    for ka in ("ind_tgt", "ind_ref", "ind_chk"):
        xa = np.array([a["starxy"][i] for i in a[ka]])
        xb = np.array([b["starxy"][i] for i in b[ka]])
        want = np.column_stack([(n - 1 - xa[:, 0] + SHIFT[0]) % n, (n - 1 - xa[:, 1] + SHIFT[1]) % n])
        assert np.allclose(np.sort(want, axis=0), np.sort(xb, axis=0), atol=1.5), ka
    lc = Table.read(second.groups[0].outputs["lightcurve"], format="ascii.ecsv")
    assert np.sum(np.isfinite(lc["mag_t0_a0"])) >= 9


def test_a_reference_of_another_field_is_not_used(two_nights, tmp_path):
    sim, root, _, _ = two_nights
    other = simulate_small(tmp_path / "other", n_frames=6, size=256, seed=99, thick_cloud=False)
    cfg = load_config([other.config_path], {"workers": 1, "field_dir": str(root / "fields"), "starxy": None})
    s = run(other.raw_dir, tmp_path / "red", config=cfg)
    st = s.groups[0].stars
    assert st["source"] == "picked" and "field_error" in st and not s.groups[0].error


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """Two simulated nights of one field: the second pointed ~50 px away and flipped 180 degrees halfway."""
    root = tmp_path_factory.mktemp("campaign")
    n1 = simulate_small(root / "n1", n_frames=24, size=512, seed=31, thick_cloud=False, detector_seed=5)
    n2 = simulate_small(root / "n2", n_frames=24, size=512, seed=32, thick_cloud=False, detector_seed=5,
                        field_of=str(n1.out_dir),
                        pointing=(42.0, -28.0), flip_at=0.5)
    s = n1.stars
    ids = [0, *n1.constant_ids]
    xy = [[float(s["x"][s["id"] == i][0]), float(s["y"][s["id"] == i][0])] for i in ids]
    fields = root / "fields"
    first = run(n1.raw_dir, root / "red" / "n1", config=load_config([n1.config_path], {
        "workers": 2, "field_dir": str(fields), "starxy": xy, "ind_tgt": [0], "ind_ref": list(range(1, len(xy) - 1)),
        "ind_chk": [len(xy) - 1]}))
    second = run(n2.raw_dir, root / "red" / "n2", config=load_config([n2.config_path], {
        "workers": 2, "field_dir": str(fields), "starxy": None}))
    return n1, n2, first, second


def test_second_night_of_a_flipped_campaign_uses_the_first_nights_stars(campaign):
    n1, n2, first, second = campaign
    st = second.groups[0].stars
    assert first.groups[0].stars["source"] == "given"
    assert st["source"] == "field" and st["field_match"] == "pattern" and not st["lost"]
    sel = json.loads((Path(second.red_dir) / "select_SIMV_V.json").read_text())
    s2 = n2.stars
    truth_xy = {int(i): (float(x), float(y)) for i, x, y in zip(s2["id"], s2["x"], s2["y"])}
    roles = {"ind_tgt": [0], "ind_ref": n1.constant_ids[:-1], "ind_chk": n1.constant_ids[-1:]}
    for key, ids in roles.items():                         # the same stars, where they are tonight
        got = np.array([sel["starxy"][i] for i in sel[key]])
        want = np.array([truth_xy[i] for i in ids])
        assert len(got) == len(want), key
        for w in want:
            assert np.min(np.hypot(*(got - w).T)) < 1.5, (key, w)


def test_second_nights_target_follows_the_truth(campaign):
    n1, n2, first, second = campaign
    lc = Table.read(second.groups[0].outputs["lightcurve"], format="ascii.ecsv")
    ok = np.asarray(lc["ok"], bool)
    assert ok.mean() >= 0.95                                  # the flip costs no frames
    truth = -2.5 * np.log10(np.asarray(n2.frames["target_rel_flux"], float))
    m = np.asarray(lc["mag_t0_a0"], float)
    good = ok & np.isfinite(m)
    resid = (m - truth)[good]
    resid -= np.median(resid)
    pred = next(n["predicted"] for n in lc.meta["noise"] if n["role"] == "target" and n["aperture"] == 0)
    assert np.std(resid) < 1.5 * pred, (np.std(resid), pred)
