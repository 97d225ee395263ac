"""Deployment definitions: schedules in the site's local time, parameters, time zones."""

import pytest
import yaml

from qlcp.deployments.serve import build_deployments, site_timezone, timezone_label
from qlcp.flows.batch import find_nights, in_range
from qlcp.core.errors import ConfigError


def test_site_timezone(tmp_path):
    f = tmp_path / "site.yaml"
    f.write_text(yaml.safe_dump({"site_tz": 8}))
    assert site_timezone([str(f)]) == "Etc/GMT-8"          # IANA sign is inverted: UTC+8
    f.write_text(yaml.safe_dump({"site_tz": -7}))
    assert site_timezone([str(f)]) == "Etc/GMT+7"
    f.write_text(yaml.safe_dump({"site_tz": 5.5}))
    assert site_timezone([str(f)]) == "UTC"
    assert site_timezone([str(f)], "America/Phoenix") == "America/Phoenix"
    f.write_text("site_tz: America/New_York\n")         # an IANA name in the config: schedules follow its DST
    assert site_timezone([str(f)]) == "America/New_York"
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        site_timezone([], "Mars/Olympus")


def test_timezone_label_is_the_offset_the_operator_gave():
    """Schedules are printed with the site's offset, not POSIX's inverted Etc/GMT sign."""
    assert timezone_label("Etc/GMT+7") == "UTC-7" and timezone_label("Etc/GMT-8") == "UTC+8"
    assert timezone_label("Etc/GMT-14") == "UTC+14"
    assert timezone_label("America/Phoenix") == "America/Phoenix" and timezone_label("UTC") == "UTC"


def test_serve_prints_the_schedules_in_the_operators_offset(tmp_path, monkeypatch, capsys):
    """``qlcp serve`` for a UTC-7 site (site_tz: -7) prints ``UTC-7``, never ``Etc/GMT+7``."""
    import argparse

    import prefect

    from qlcp.deployments import serve as serve_mod

    (tmp_path / "raw").mkdir()
    cfg = tmp_path / "site.yaml"
    cfg.write_text("site_tz: -7\n")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.setattr(prefect, "serve", lambda *deps, **kw: None)
    ap = argparse.ArgumentParser()
    serve_mod.add_serve_arguments(ap)
    assert serve_mod.run_serve(ap.parse_args([str(tmp_path / "raw"), str(tmp_path / "red"), "--config",
                                              str(cfg)])) == 0
    out = capsys.readouterr().out
    assert "(0 12 * * * UTC-7)" in out and "(0 7 * * * UTC-7)" in out and "Etc/GMT" not in out, out


def test_three_deployments_with_local_schedules(tmp_path):
    (tmp_path / "raw").mkdir()
    deps = build_deployments(str(tmp_path / "raw"), str(tmp_path / "red"), [], "Etc/GMT-8")
    by = {d.name: d for d in deps}
    assert set(by) == {"process-night", "reprocess", "dawn-sweep", "campaign"}
    assert by["campaign"].parameters["red_root"] == str((tmp_path / "red").resolve())
    assert not by["process-night"].schedules
    cron = by["reprocess"].schedules[0].schedule
    assert cron.cron == "0 12 * * *" and cron.timezone == "Etc/GMT-8"
    assert by["dawn-sweep"].parameters["raw_root"] == str((tmp_path / "raw").resolve())


def test_find_nights_by_pattern_and_date(tmp_path):
    for n in ("20240605_85", "20240606_85", "20240701_85", "notes", ".hidden"):
        (tmp_path / n).mkdir()
    (tmp_path / "file.txt").write_text("x")
    names = [p.split("/")[-1] for p in find_nights(str(tmp_path), r"_85$", "2024-06-06", "20240630")]
    assert names == ["20240606_85"]
    assert len(find_nights(str(tmp_path))) == 4
    assert in_range("notes", None, None) and not in_range("notes", "20240101", None)
