"""Fixtures: real components, each in a throwaway directory.

In CI (``CI=true``) a skipped test fails the run: a missing component must
never pass silently.
"""

from __future__ import annotations

import os

import pytest

from .bus import session_bus
from .realtime_server import realtime_server
from .sound import pipewire_server, pulse_server

__all__ = ["pipewire_server", "pulse_server", "realtime_server", "session_bus"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if os.environ.get("CI") and skipped:
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; in CI a skip is a failure", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
