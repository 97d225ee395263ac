"""``qlcp calib``: finds the service's library (RED_ROOT, $RED_ROOT, the site config's calib_dir), shows
night names whole and levels with their units."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from qlcp.core import calib_library as L
from qlcp.core.config import Config
from qlcp.deployments.cli import main

NIGHT = "20240606-dome-2-after-maintenance"


@pytest.fixture
def red_root(tmp_path, monkeypatch):
    """RED_ROOT with the service's library RED_ROOT/calib holding a bias (ADU) and a dark (ADU/s)."""
    monkeypatch.delenv("QLCP_CALIB_DIR", raising=False)
    monkeypatch.delenv("RED_ROOT", raising=False)
    root, src = tmp_path / "red", tmp_path / "src"
    src.mkdir()
    frames = []
    for i in range(3):
        p = src / f"in{i}.fits"
        fits.PrimaryHDU(np.zeros((32, 32), np.float32),
                        fits.Header({"DATE-OBS": f"2024-06-06T20:00:0{i}", "EXPTIME": 60.0})).writeto(p)
        frames.append(p)
    for kind, level in (("bias", 1361.5), ("dark", 0.0123)):
        m = src / f"{kind}.fits"
        fits.PrimaryHDU(np.full((32, 32), level, np.float32)).writeto(m)
        L.register(root / "calib", m, kind, None, frames, NIGHT, Config())
    monkeypatch.chdir(tmp_path)                 # no ./calib here
    return root


def _listed(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


def test_list_finds_the_library_of_red_root_and_shows_names_and_units(red_root, capsys):
    out = _listed(capsys, ["calib", "list", str(red_root)])
    assert str(red_root / "calib") in out and NIGHT in out
    bias = next(ln for ln in out.splitlines() if " bias " in ln)
    dark = next(ln for ln in out.splitlines() if " dark " in ln)
    assert "1362 ADU" in bias and "0.0123 ADU/s" in dark


def test_list_finds_the_library_from_env_red_root_and_the_site_config(red_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RED_ROOT", str(red_root))
    assert NIGHT in _listed(capsys, ["calib", "list"])
    monkeypatch.delenv("RED_ROOT")
    site = tmp_path / "site.yaml"
    site.write_text(f"calib_dir: {red_root / 'calib'}\n")
    assert NIGHT in _listed(capsys, ["calib", "list", "--config", str(site)])
    e = L.entries(red_root / "calib", "dark")[0]
    assert main(["calib", "reject", str(e.id), str(red_root)]) == 0
    assert L.entries(red_root / "calib", "dark")[0].status == "rejected"


def test_list_without_a_library_says_where_it_looked(red_root, capsys):
    capsys.readouterr()
    assert main(["calib", "list"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no calibration library" in err and "RED_ROOT" in err
