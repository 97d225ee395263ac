"""Work modes: the manual's names, default and decisions."""

import pytest

from qlcp.core.errors import ConfigError, MissingInputError, OutputExistsError
from qlcp.core.workmode import workmode


def test_default_and_composition():
    assert workmode().names == ["EXIST_APPEND", "MISS_SKIP"]
    m = workmode(workmode.EXIST_OVER + workmode.MISS_ERROR)
    assert m.names == ["EXIST_OVER", "MISS_ERROR"]
    assert workmode(["EXIST_OVER", "MISS_ERROR"]) == m == workmode("workmode.EXIST_OVER + workmode.MISS_ERROR")
    assert workmode(workmode.EXIST_SKIP).miss == "MISS_SKIP"


def test_incompatible_and_unknown():
    with pytest.raises(ConfigError):
        workmode(workmode.EXIST_OVER + workmode.EXIST_SKIP)
    with pytest.raises(ConfigError, match="EXIST_NEVER"):
        workmode(["EXIST_NEVER"])


def test_decisions(tmp_path):
    p = tmp_path / "x.fits"
    assert workmode(workmode.EXIST_SKIP).should_write(p)          # absent: always write
    p.write_text("x")
    assert not workmode(workmode.EXIST_SKIP).should_write(p)
    assert workmode(workmode.EXIST_OVER).should_write(p)
    assert not workmode(workmode.EXIST_APPEND).should_write(p)               # per-frame: keep
    assert workmode(workmode.EXIST_APPEND).should_write(p, aggregate=True)   # aggregate: rewrite
    with pytest.raises(OutputExistsError, match="x.fits"):
        workmode(workmode.EXIST_ERROR).should_write(p)
    workmode(workmode.MISS_SKIP).missing("bias")
    with pytest.raises(MissingInputError, match="bias"):
        workmode(workmode.MISS_ERROR).missing("bias")
