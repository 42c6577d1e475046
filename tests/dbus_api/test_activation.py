"""Owning the name: bus activation by ``sttctl start``, and a second ``sttd`` that finds the name taken."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from ..bus import SessionBus, require, wait_until
from ..daemon import Sttd, command, leaks_python, sttctl, write_config
from ..realtime_server import FakeRealtimeServer
from ..sound import SoundServer
from .clients import IFACE, NAME, REPO, Clients, Setup, gvariant

# ---------------------------------------------------------------- activation


def _owner_pid(clients: Clients) -> int:
    """The process owning sttd's name, or 0."""
    done = clients.run(
        require("gdbus"), "call", "--session", "--dest", "org.freedesktop.DBus", "--object-path",
        "/org/freedesktop/DBus", "--method", "org.freedesktop.DBus.GetConnectionUnixProcessID", NAME,
    )  # fmt: skip
    return int(gvariant(done.stdout)[0]) if done.returncode == 0 else 0


def test_sttctl_start_activates_sttd_through_the_bus(
    tmp_path: Path, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    services = tmp_path / "services"
    services.mkdir()
    log = tmp_path / "activated.log"
    config = write_config(tmp_path / "config.toml", realtime_server.url)
    environment = " ".join(
        f"{key}={value}"
        for key, value in {
            "PULSE_SERVER": pulse_server.server,
            "OPENAI_API_KEY": realtime_server.api_key,
            "XDG_STATE_HOME": tmp_path / "state",
            "XDG_CONFIG_HOME": tmp_path / "config",
        }.items()
    )
    exec_line = (
        f"Exec=/bin/sh -c 'exec /usr/bin/env {environment} {command('sttd')} --config {config}"
        f" --log-level DEBUG >{log} 2>&1'"
    )
    shipped = (REPO / "dbus" / f"{IFACE}.service").read_text()
    (services / f"{IFACE}.service").write_text(re.sub(r"(?m)^Exec=.*$", lambda _: exec_line, shipped))

    bus = SessionBus(tmp_path / "bus", service_dir=services)
    env = {**os.environ, **bus.env()}
    for key in ("PULSE_SERVER", "OPENAI_API_KEY"):
        env.pop(key, None)  # sttctl needs neither; the daemon gets them from the Exec= line
    clients = Clients(env)
    pid = 0
    try:
        # Reading state or stopping never brings a daemon up just to say it is idle.
        for args in (("status",), ("stop",), ("send",)):
            done = sttctl(env, *args)
            assert done.returncode == 3, done
            assert "is sttd running?" in done.stderr
        assert NAME in clients.gdbus_bus("ListActivatableNames")[0]
        assert clients.gdbus_bus("NameHasOwner", NAME) == (False,)

        started = sttctl(env, "start")
        assert started.returncode == 0, (started, log.read_text() if log.exists() else "")
        pid = _owner_pid(clients)
        assert pid

        def listening() -> bool:
            state = clients.busctl_get("State")[0]
            assert state in ("connecting", "listening"), (state, log.read_text())
            return bool(state == "listening")

        wait_until(listening, 15, "the activated sttd to listen")
        realtime_server.wait_for_connections(1, timeout=10)
        assert sttctl(env, "stop").returncode == 0
        wait_until(lambda: clients.busctl_get("State") == ["idle"], 15, "State=idle")
    finally:
        pid = pid or _owner_pid(clients)  # a failure above may leave an activated daemon behind
        if pid:
            os.kill(pid, signal.SIGTERM)
            try:
                wait_until(lambda: not Path(f"/proc/{pid}").exists(), 15, "the activated sttd to exit")
            except AssertionError:
                os.kill(pid, signal.SIGKILL)
                raise
        bus.stop()
    text = log.read_text()
    assert "ready on the session bus" in text and "stopped" in text
    assert not leaks_python(text), text


def test_a_second_sttd_exits_at_once_and_the_first_keeps_serving(setup: Setup, sttd: Sttd, clients: Clients) -> None:
    second = Sttd(setup.tmp / "second", setup.env, setup.config)
    assert second.process.wait(15) == 1
    assert f"another sttd already owns {NAME} on this session bus" in second.log
    assert not leaks_python(second.log)
    assert clients.busctl_get("State") == ["idle"]
