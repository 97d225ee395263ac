"""A stage that writes one product is written in three places: its declaration (``stages.py``), its
runner (a module of ``steps/``) and its product's name (``products.py``).  Proved on a temporary copy
of the source tree: a toy stage added there runs in the plain driver and writes its product."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from qlcp.core.simulate import simulate_small
from tests.installed_copy import installed_copy

#: 1. the declaration, after the last stage of STAGES (and its runner imported beside the others)
DECLARATION = '''
    Stage("z", "toy", GROUP, ("lightcurve",), ("obj", "band"), ("toy",), (), run=run_toy,
          doc="count the light curve's frames"),
'''
#: 2. the runner
RUNNER = '''"""Stage z: the number of frames of a group's light curve (a toy)."""

from astropy.table import Table

from ..io import write_text
from ..products import product_path


def run_toy(ctx, u, prev):
    path = product_path(ctx.red, "toy", u["obj"], u["band"])
    write_text(path, f"{u['obj']} {u['band']}: {len(Table.read(u['lightcurve'], format='ascii.ecsv'))} frames\\n")
    return {"toy": str(path), "outputs": [str(path)]}
'''
#: 3. the product's name
PRODUCT = '"toy": "toy_{}_{}.txt", '


def _add_toy_stage(core: Path) -> list[Path]:
    stages = core / "stages.py"
    text = stages.read_text()
    anchor = 'doc="finding chart of the base frame with the chosen stars"),\n'
    assert text.count(anchor) == 1 and text.count("from .steps.timing import run_timing\n") == 1
    text = text.replace(anchor, anchor + DECLARATION.lstrip("\n"))
    stages.write_text(text.replace("from .steps.timing import run_timing\n",
                                   "from .steps.timing import run_timing\nfrom .steps.toy import run_toy\n"))
    (core / "steps" / "toy.py").write_text(RUNNER)
    products = core / "products.py"
    text = products.read_text()
    assert text.count("_GROUP = {") == 1
    products.write_text(text.replace("_GROUP = {", "_GROUP = {" + PRODUCT))
    return [stages, core / "steps" / "toy.py", products]


RUN = '''
import json, sys
from qlcp.core import run
from qlcp.core.config import load_config
s = run(sys.argv[1], sys.argv[2], config=load_config([sys.argv[3]], {"workers": 1, "steps": "lbfiopkcdz"}))
print(json.dumps({"outputs": s.groups[0].outputs, "failed": [g.error for g in s.failed]}))
'''


def test_a_toy_stage_is_three_edits(tmp_path):
    env = installed_copy(tmp_path / "inst")
    site = tmp_path / "inst" / "site"
    core = site / "qlcp" / "core"
    before = {p.relative_to(tmp_path / "inst"): p.read_bytes() for p in site.rglob("*.py")}
    edited = _add_toy_stage(core)
    after = {p.relative_to(tmp_path / "inst"): p.read_bytes() for p in site.rglob("*.py")}
    changed = {p for p in after if before.get(p) != after[p]}
    assert changed == {p.relative_to(tmp_path / "inst") for p in edited}          # nothing else touched

    sim = simulate_small(tmp_path / "n", n_frames=5, size=128, seed=5, n_bias=3, n_flats=3, thick_cloud=False)
    red = tmp_path / "red"
    out = subprocess.run([sys.executable, "-c", RUN, str(sim.raw_dir), str(red), str(sim.config_path)], env=env,
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert not res["failed"]
    toy = red / "toy_SIMV_V.txt"
    assert res["outputs"]["toy"] == str(toy)                # the summary knows the product from its declaration
    assert toy.read_text() == "SIMV V: 5 frames\n"
    assert (red / "log" / "z.log").is_file()                # its step log, from its letter
