"""A private session bus for tests, and a deadline-bound wait helper."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

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


def require(binary: str) -> str:
    """The path of a binary the tests need; a missing one fails the test (CI must not skip)."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed; run the README's test command, which installs it")
    return path


class SessionBus:
    """``dbus-daemon --session`` on a socket in a temporary directory."""

    def __init__(self, directory: Path, service_dir: Path | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "bus.conf"
        services = f"<servicedir>{service_dir}</servicedir>" if service_dir else ""
        config.write_text(
            '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"'
            ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">'
            "<busconfig><type>session</type>"
            f"<listen>unix:dir={directory}</listen>{services}"
            '<policy context="default"><allow send_destination="*" eavesdrop="true"/>'
            '<allow eavesdrop="true"/><allow own="*"/></policy></busconfig>'
        )
        self.process = subprocess.Popen(
            [require("dbus-daemon"), f"--config-file={config}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.address = self.process.stdout.readline().strip()
        if not self.address:
            self.process.kill()
            raise AssertionError("dbus-daemon did not print its address")

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
