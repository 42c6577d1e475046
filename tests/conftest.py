"""Fixtures: real components, each in a throwaway directory.

In CI (``CI=true``) a skipped test fails the run: a missing component must
never pass silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .bus import SessionBus, session_bus
from .daemon import Sttd, running_sttd
from .realtime_server import FakeRealtimeServer, realtime_server
from .sound import SoundServer, pipewire_server, pulse_server

__all__ = ["pipewire_server", "pulse_server", "realtime_server", "session_bus"]


@pytest.fixture
def sttd(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> Iterator[Sttd]:
    """The installed sttd, configured for the test Realtime server, ready on the test bus (killed afterwards)."""
    with running_sttd(tmp_path, session_bus, pulse_server, realtime_server) as daemon:
        yield daemon


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if os.environ.get("CI") and skipped:
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; in CI a skip is a failure", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
