"""Session-wide checks of the whole suite: the log scan (``log_scan.py``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

import log_scan

_collector = log_scan.LogCollector()


@pytest.fixture(scope="session", autouse=True)
def collected_logs() -> Iterator[None]:
    """Every log record of the session at INFO and above is kept for the scan."""
    root = logging.getLogger()
    level = root.level
    root.addHandler(_collector)
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    yield
    root.removeHandler(_collector)
    root.setLevel(level)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    found = log_scan.leaks(_collector)
    if found:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", "log scan: prompt text or a secret in log lines", red=True)
            for line in found[:50]:
                reporter.write_line(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
