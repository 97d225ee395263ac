"""Prefect test harness: one temporary Prefect database for the whole session."""

from __future__ import annotations

import os
import tempfile

import pytest

_HOME = tempfile.mkdtemp(prefix="qlcp-prefect-test-")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ["QLCP_RESULTS"] = os.path.join(_HOME, "results")


@pytest.fixture(scope="session")
def prefect_db():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
