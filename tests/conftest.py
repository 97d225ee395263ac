"""Shared fixtures: paths to the optional real data, small FITS writers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("QLCP_SHARED_DATA", REPO.parent / "shared" / "data"))
XO1 = SHARED_DATA / "xo1_arcsat_20250601"


@pytest.fixture
def xo1_dir() -> Path:
    """The real ARCSAT XO-1 night (skips when ../shared/data is absent)."""
    if not (XO1 / "README.md").is_file():
        pytest.skip("real data ../shared/data/xo1_arcsat_20250601 not present")
    return XO1


def write_frame(path: Path, data=None, shape=(32, 32), bzero=True, **cards) -> Path:
    """A small FITS frame with header ``cards`` (unsigned 16-bit like cameras when ``bzero``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = np.full(shape, 1000.0)
    hdu = fits.PrimaryHDU(np.asarray(data, dtype=np.float32))
    if bzero:
        hdu = fits.PrimaryHDU(np.clip(np.round(data), 0, 65535).astype(np.uint16))
    for k, v in cards.items():
        hdu.header[k.replace("_", "-")] = v
    hdu.writeto(path, overwrite=True)
    return path


def strip_cards(raw_dir: Path, *keys: str) -> None:
    """Remove the header cards ``keys`` from every raw frame (``*.fit``) of ``raw_dir``, as real
    nights lack them (e.g. a simulated night without GAIN, RDNOISE, SATURATE)."""
    for f in Path(raw_dir).glob("*.fit"):
        with fits.open(f, mode="update") as h:
            for k in keys:
                h[0].header.remove(k, ignore_missing=True)


@pytest.fixture(autouse=True)
def _qlcp_logger_restored():
    """Each test starts with the ``qlcp`` logger as the one before it found it: a flow run
    bridges it to Prefect (``qlcp.tasks.common.bridge_logging``: its own handler, no propagation)
    for the rest of the process, which would hide later tests' records from ``caplog``."""
    import logging

    lg = logging.getLogger("qlcp")
    saved = (list(lg.handlers), lg.propagate, lg.level)
    yield
    lg.handlers[:], lg.propagate = saved[0], saved[1]
    lg.setLevel(saved[2])


@pytest.fixture(autouse=True, scope="module")
def _own_field_dir(tmp_path_factory):
    """Each test module its own field references and calibration library (``$QLCP_FIELD_DIR``,
    ``$QLCP_CALIB_DIR``): reductions in sibling temporary directories would otherwise share
    ``{red}/../fields`` and ``{red}/../calib`` across unrelated tests."""
    old = {k: os.environ.get(k) for k in ("QLCP_FIELD_DIR", "QLCP_CALIB_DIR")}
    os.environ["QLCP_FIELD_DIR"] = str(tmp_path_factory.mktemp("fields"))
    os.environ["QLCP_CALIB_DIR"] = str(tmp_path_factory.mktemp("calib"))
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
