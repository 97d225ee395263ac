"""The qlcp command: one clear line and exit 2 on bad input; a working run."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from qlcp.core._version import __version__
from qlcp.core.simulate import simulate_small


def qlcp(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "qlcp.deployments.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def _one_error_line(r, *words):
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("qlcp: error:")]
    assert len(lines) == 1 and r.stderr.rstrip().endswith(lines[0]), r.stderr   # log lines may precede it
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0]


def test_version():
    r = qlcp("--version")
    assert r.returncode == 0 and __version__ in r.stdout


def test_bad_path_bad_config_empty_night(tmp_path):
    _one_error_line(qlcp("run", tmp_path / "nope", tmp_path / "red", "--no-prefect"), "nope", "not found")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"flat_limit_low": 9e4}))
    (tmp_path / "raw").mkdir()
    _one_error_line(qlcp("run", tmp_path / "raw", tmp_path / "red", "--config", cfg, "--no-prefect"),
                    "bad.yaml", "flat_limit_low")
    _one_error_line(qlcp("run", tmp_path / "raw", tmp_path / "red", "--set", "aper=[0]", "--no-prefect"), "aper")
    (tmp_path / "raw" / "notes.txt").write_text("clouds all night")
    _one_error_line(qlcp("run", tmp_path / "raw", tmp_path / "red", "--no-prefect"), "no usable FITS")


def test_run_no_prefect_writes_light_curve(tmp_path):
    sim = simulate_small(tmp_path / "n", n_frames=6, size=160, seed=41, n_bias=3, n_flats=3, thick_cloud=False)
    r = qlcp("run", sim.raw_dir, tmp_path / "red", "--config", sim.config_path, "--no-prefect", "--set", "aper=[4,6]")
    assert r.returncode == 0, r.stderr
    assert "SIMV V: 6 frames, 6 corrected - ok" in r.stdout
    assert (tmp_path / "red" / "lc_SIMV_V.ecsv").is_file()
    eff = yaml.safe_load((tmp_path / "red" / "config.yaml").read_text())
    assert eff["aper"] == [4.0, 6.0] and eff["gain"] == 1.5


@pytest.mark.parametrize("cmd", ["watch", "serve", "up"])
def test_service_commands_document_their_interface(cmd):
    r = qlcp(cmd, "--help")
    assert r.returncode == 0
    for flag in {"watch": ["--marker", "--quiet", "--sun-altitude", "--polling", "--config"],
                 "serve": ["--config", "--timezone", "--reprocess-cron"],
                 "up": ["--port", "--marker"]}[cmd]:
        assert flag in r.stdout


def test_deploy_needs_a_server(tmp_path):
    """Without PREFECT_API_URL the deployment would go to a temporary server and vanish: refused."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "ph")
    r = subprocess.run([sys.executable, "-m", "qlcp.deployments.cli", "deploy", "--pool", "p"], capture_output=True,
                       text=True, env=env, timeout=120)
    _one_error_line(r, "PREFECT_API_URL")


def test_simulate_writes_a_dated_night_directory(tmp_path):
    r = qlcp("simulate", tmp_path / "out", "--frames", "2", "--size", "96")
    assert r.returncode == 0, r.stderr
    night = tmp_path / "out" / "raw" / "20240606"
    assert f"raw night: {tmp_path / 'out' / 'raw' / '20240606'}" in r.stdout
    assert sorted(p.name for p in night.glob("SIMV-*.fit")) == ["SIMV-0001V.fit", "SIMV-0002V.fit"]
    assert [p.name for p in (tmp_path / "out" / "raw").iterdir()] == ["20240606"]
