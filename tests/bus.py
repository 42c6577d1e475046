"""A private session bus for tests, a raw D-Bus peer, and a deadline-bound wait helper."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from dbus_next import Message

T = TypeVar("T")


class WaitTimeout(AssertionError, TimeoutError):
    """A wait reached its deadline: a test failure, and a TimeoutError to code that expects one (the bench)."""


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


async def wait_until_async(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """:func:`wait_until` for asyncio tests: the loop keeps running while it polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.1f} s waiting for {what}")
        await asyncio.sleep(interval)


def require(binary: str) -> str:
    """The path of a binary the tests need; a missing one fails the test (CI must not skip)."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed; run the README's test command, which installs it")
    return path


class SessionBus:
    """``dbus-daemon --session`` on a socket in a temporary directory.

    With ``socket_path`` it listens there, so that a bus started again on
    the same path (:meth:`restart`) is the same address to its clients.
    """

    def __init__(self, directory: Path, service_dir: Path | None = None, socket_path: Path | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._directory, self._service_dir, self._socket_path = directory, service_dir, socket_path
        self.process = self._start()
        assert self.process.stdout is not None
        self.address = self.process.stdout.readline().strip()
        if not self.address:
            self.process.kill()
            raise AssertionError("dbus-daemon did not print its address")

    def _start(self) -> subprocess.Popen[str]:
        directory, service_dir = self._directory, self._service_dir
        config = directory / "bus.conf"
        services = f"<servicedir>{service_dir}</servicedir>" if service_dir else ""
        listen = f"unix:path={self._socket_path}" if self._socket_path else f"unix:dir={directory}"
        config.write_text(
            '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"'
            ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">'
            "<busconfig><type>session</type>"
            f"<listen>{listen}</listen>{services}"
            '<policy context="default"><allow send_destination="*" eavesdrop="true"/>'
            '<allow eavesdrop="true"/><allow own="*"/></policy></busconfig>'
        )
        return subprocess.Popen(
            [require("dbus-daemon"), f"--config-file={config}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            text=True,
        )

    def restart(self) -> None:
        """Kill the bus (every client loses its connection) and start a new one on the same socket."""
        assert self._socket_path is not None, "a restartable bus needs socket_path"
        self.process.kill()
        self.process.wait()
        self._socket_path.unlink(missing_ok=True)
        self.process = self._start()
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip(), "the restarted dbus-daemon did not print its address"

    def pause(self) -> None:
        """Stop the bus process (SIGSTOP): it reads and writes nothing until :meth:`resume`."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def env(self) -> dict[str, str]:
        return {"DBUS_SESSION_BUS_ADDRESS": self.address}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def session_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SessionBus]:
    """A private session bus; DBUS_SESSION_BUS_ADDRESS points at it for the test."""
    bus = SessionBus(tmp_path / "bus")
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", bus.address)
    yield bus
    bus.stop()


def busctl(bus: SessionBus, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real ``busctl --user`` against the private bus."""
    env = {**os.environ, **bus.env()}
    return subprocess.run(
        [require("busctl"), "--user", *args], env=env, capture_output=True, text=True, timeout=20, check=check
    )


class RawPeer:
    """A D-Bus client on a bare socket: SASL EXTERNAL, ``Hello``, then whatever the test writes.

    It never reads after ``Hello`` unless asked, which is what a hung or
    hostile client looks like to the bus and to sttd.
    """

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(_socket_address(address))
        self.sock.sendall(b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode() + b"\r\n")
        reply = self._line()
        assert reply.startswith(b"OK "), reply
        self.sock.sendall(b"BEGIN\r\n")
        self._serial = 0
        self.send([Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                           interface="org.freedesktop.DBus", member="Hello")])  # fmt: skip

    def _line(self) -> bytes:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = self.sock.recv(1)
            assert chunk, "the bus closed the connection during authentication"
            data += chunk
        return data

    def send(self, messages: Iterable[Message]) -> int:
        """Write ``messages`` (numbered here); how many bytes that was."""
        data = bytearray()
        for message in messages:
            self._serial += 1
            message.serial = self._serial
            data += message._marshall()
        self.sock.sendall(data)
        return len(data)

    def close(self) -> None:
        self.sock.close()


def _socket_address(address: str) -> str:
    """The socket of a ``unix:path=...`` or ``unix:abstract=...`` D-Bus address."""
    for part in address.split(";"):
        transport, _, options = part.partition(":")
        fields = dict(option.split("=", 1) for option in options.split(",") if "=" in option)
        if transport == "unix" and "path" in fields:
            return fields["path"]
        if transport == "unix" and "abstract" in fields:
            return "\0" + fields["abstract"]
    raise AssertionError(f"no unix socket in the bus address {address!r}")
