"""sd_notify: ``READY=1`` (only once the bus name is owned), ``STATUS=``, ``WATCHDOG=1``, ``RELOADING=1`` and
``STOPPING=1`` arrive on a ``NOTIFY_SOCKET`` the test binds.

Every wait has a deadline; a missing tool fails the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest

from sttd.systemd import Notifier, send_datagram

from .bus import SessionBus, wait_until
from .daemon import command, sttctl, write_config
from .realtime_server import FakeRealtimeServer
from .sound import SoundServer
from .systemd_harness import Daemon, DatagramSink, clean_daemon_env, has_owner, parse_notify, short_dir

# --------------------------------------------------------------------------- sd_notify


def test_ready_status_watchdog_reloading_and_stopping_arrive_on_notify_socket(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    sockets = short_dir("notify")
    notify = DatagramSink(sockets / "notify", parse_notify)
    config = write_config(tmp_path / "config.toml", realtime_server.url)
    env = clean_daemon_env(
        tmp_path, session_bus, pulse_server, realtime_server, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="300000"
    )
    daemon = Daemon([command("sttd"), "--config", str(config)], env, tmp_path / "sttd.log")
    try:
        ready = notify.wait_for(lambda m: "READY" in m, 15, "READY=1")
        # READY=1 means "clients can call it": the name is owned before it is sent.
        assert has_owner(session_bus), "READY=1 arrived before sttd owned its bus name"
        assert notify.values()[0] is ready, f"something came before READY=1: {notify.values()}"
        assert ready == {"READY": "1", "STATUS": "idle"}

        # The watchdog: WATCHDOG_USEC/2 = 150 ms, from the event loop.
        wait_until(lambda: sum("WATCHDOG" in m for m in notify.values()) >= 4, 5, "four WATCHDOG=1")

        # STATUS= follows the dictation state.
        assert sttctl(env, "start").returncode == 0
        notify.wait_for(lambda m: m.get("STATUS") == "listening", 15, "STATUS=listening")
        assert sttctl(env, "stop").returncode == 0
        notify.wait_for(lambda m: m.get("STATUS") == "idle" and "READY" not in m, 15, "STATUS=idle after stop")
        statuses = [m["STATUS"] for m in notify.values() if "STATUS" in m]
        assert statuses.index("connecting") < statuses.index("listening"), statuses

        # SIGHUP: RELOADING=1 (with the MONOTONIC_USEC Type=notify-reload needs), then READY=1 again.
        daemon.signal(signal.SIGHUP)
        reloading = notify.wait_for(lambda m: "RELOADING" in m, 10, "RELOADING=1")
        assert reloading["RELOADING"] == "1"
        assert int(reloading["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        wait_until(lambda: sum("READY" in m for m in notify.values()) == 2, 10, "READY=1 after the reload")

        assert daemon.terminate() == 0, daemon.log
        assert notify.wait_for(lambda m: "STOPPING" in m, 5, "STOPPING=1") == {"STOPPING": "1", "STATUS": "stopping"}
        pids = {pid for pid, _ in notify.items}
        assert pids == {daemon.process.pid}, f"notifications from {pids}, sttd is {daemon.process.pid}"
    finally:
        daemon.close()
        notify.close()
        shutil.rmtree(sockets, ignore_errors=True)


def test_a_reload_with_a_config_nested_too_deep_keeps_the_old_one_and_still_reports_ready(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    sockets = short_dir("notify")
    notify = DatagramSink(sockets / "notify", parse_notify)
    config = write_config(tmp_path / "config.toml", realtime_server.url)
    env = clean_daemon_env(tmp_path, session_bus, pulse_server, realtime_server, NOTIFY_SOCKET=str(notify.path))
    daemon = Daemon([command("sttd"), "--config", str(config)], env, tmp_path / "sttd.log")
    try:
        notify.wait_for(lambda m: "READY" in m, 15, "READY=1")
        good = config.read_text()
        config.write_text(good + "\n[hooks]\ntranscript = " + "[" * 100_000 + "\n")  # tomllib recurses on it
        daemon.signal(signal.SIGHUP)
        notify.wait_for(lambda m: "RELOADING" in m, 10, "RELOADING=1")
        wait_until(lambda: sum("READY" in m for m in notify.values()) == 2, 10, "READY=1 after the refused reload")
        refused = [line for line in daemon.log.splitlines() if "reload refused" in line]
        assert len(refused) == 1 and len(refused[0]) < 400, refused
        assert "Traceback" not in daemon.log and "RecursionError" not in daemon.log
        # The old configuration still works.
        assert sttctl(env, "start").returncode == 0
        notify.wait_for(lambda m: m.get("STATUS") == "listening", 15, "STATUS=listening")
        assert sttctl(env, "stop").returncode == 0
        assert daemon.terminate() == 0, daemon.log
    finally:
        daemon.close()
        notify.close()
        shutil.rmtree(sockets, ignore_errors=True)


def test_the_notifier_is_inert_without_notify_socket_and_keeps_each_message_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    notifier = Notifier()
    assert not notifier.active
    assert notifier.watchdog_interval_s is None  # WATCHDOG_USEC alone starts no watchdog
    notifier.ready("idle")  # a no-op, not an error

    sockets = short_dir("notify")
    sink = DatagramSink(sockets / "notify", parse_notify)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", str(sink.path))
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
        assert Notifier().watchdog_interval_s is None  # the watchdog is another process's
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        notifier = Notifier()
        assert notifier.active and notifier.watchdog_interval_s == 0.5
        # A status (an error message) with a newline cannot smuggle in another assignment.
        notifier.status("error: the service said\nREADY=1")
        assert sink.wait_for(lambda m: True, 5, "the status") == {"STATUS": "error: the service said READY=1"}
    finally:
        sink.close()
        shutil.rmtree(sockets, ignore_errors=True)


def test_without_systemd_python_notifications_are_plain_datagrams() -> None:
    # The fallback sd_notify: to a path, or to an abstract socket ("@name").
    sockets = short_dir("notify")
    sink = DatagramSink(sockets / "notify", parse_notify)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"sttd-test-{uuid.uuid4().hex}"
    abstract.bind("\0" + name)
    abstract.settimeout(5)
    try:
        send_datagram(str(sink.path), "READY=1\nSTATUS=idle")
        assert sink.wait_for(lambda m: True, 5, "a datagram") == {"READY": "1", "STATUS": "idle"}
        send_datagram("@" + name, "WATCHDOG=1")
        assert abstract.recv(100) == b"WATCHDOG=1"
    finally:
        abstract.close()
        sink.close()
        shutil.rmtree(sockets, ignore_errors=True)
