"""Fixtures of the D-Bus surface tests: the installed ``sttd`` on a private bus, its clients and a monitor.

Each test gets its own bus, PulseAudio and fake Realtime service (function scope), so
these fixtures cost nothing more for being shared by several files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..bus import SessionBus
from ..daemon import Sttd, daemon_env, leaks_python, write_config
from ..realtime_server import FakeRealtimeServer
from ..sound import SoundServer
from .clients import Clients, Monitor, Setup


@pytest.fixture
def setup(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> Setup:
    config = write_config(tmp_path / "config.toml", realtime_server.url)
    env = daemon_env(session_bus, pulse_server, realtime_server)
    return Setup(tmp_path, session_bus, pulse_server, realtime_server, config, env)


@pytest.fixture
def sttd(setup: Setup) -> Iterator[Sttd]:
    daemon = setup.daemon()
    try:
        yield daemon
    finally:
        daemon.kill()
    assert not leaks_python(daemon.log), daemon.log


@pytest.fixture
def clients(sttd: Sttd) -> Clients:
    return Clients(sttd.env)


@pytest.fixture
def monitor(clients: Clients) -> Iterator[Monitor]:
    mon = Monitor(clients.env)
    try:
        yield mon
    finally:
        mon.close()
