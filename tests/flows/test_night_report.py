"""The night's two reports, the terminal's (``qlcp run``, either driver) and the Prefect summary
artifact, show the same ``DEGRADED`` and ``ASSUMED`` lines."""

from __future__ import annotations

import contextlib
import io

import yaml

from qlcp.core import run
from qlcp.core.config import load_config
from qlcp.core.simulate import simulate_small
from tests.conftest import strip_cards


def test_terminal_and_artifact_show_the_same_degraded_and_assumed_lines(tmp_path):
    from qlcp.deployments.cli import _print_summary
    from qlcp.flows.artifacts import summary_markdown

    sim = simulate_small(tmp_path / "night", n_frames=2, size=128, seed=33, n_bias=0)
    strip_cards(sim.raw_dir, "RDNOISE", "SATURATE")
    base = {k: v for k, v in yaml.safe_load(sim.config_path.read_text()).items() if k not in ("rdnoise", "saturation")}
    cfg = load_config([], {**base, "steps": "lbfi", "workers": 1})
    summary = run(sim.raw_dir, tmp_path / "red", config=cfg).to_dict()
    summary["run"]["task_states"] = {}
    lines = [f"DEGRADED: {w}" for w in summary["degraded"]] + [f"ASSUMED: {w}" for w in summary["assumed"]]
    assert summary["degraded"] == ["no bias: no bias frames tonight"]
    # no bias pairs to measure the read noise, no SATURATE: both assumed; the gain set in the config
    assert [a.split(":")[0] for a in summary["assumed"]] == ["read noise", "saturation"]
    assert summary["groups"][0]["detector"]["gain"]["source"] == "config"
    out = io.StringIO()          # not capsys: Prefect's console handler would keep its stream, closed after the test
    with contextlib.redirect_stdout(out):
        _print_summary(summary, 1.0)
    shown = [ln.strip() for ln in out.getvalue().splitlines() if ln.strip().startswith(("DEGRADED", "ASSUMED"))]
    md = [ln[2:] for ln in summary_markdown(summary, cfg).splitlines() if ln.startswith(("* DEGRADED", "* ASSUMED"))]
    assert shown == md == lines
