"""Running sttd and sttctl as a user does: installed console scripts, as subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .bus import SessionBus, wait_until

if TYPE_CHECKING:
    from .realtime_server import FakeRealtimeServer
    from .sound import SoundServer

BIN = Path(sys.executable).parent
API_KEY = "sk-test-0123456789abcdefSECRET"


def leaks_python(text: str) -> bool:
    """Whether ``text`` (a log, a client's output) shows a Python traceback or source location."""
    return "Traceback" in text or 'File "' in text or '.py", line' in text


def command(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{path} is missing: install the package (pip install -e '.[test]')"
    return str(path)


def write_config(path: Path, url: str, extra: str = "", api_key_file: Path | None = None) -> Path:
    key_line = f'api_key_file = "{api_key_file}"\n' if api_key_file else ""
    path.write_text(f'[realtime]\nurl = "{url}"\n{key_line}{extra}\n', encoding="utf-8")
    return path


def daemon_env(bus: SessionBus, sound: SoundServer, service: FakeRealtimeServer) -> dict[str, str]:
    """What sttd needs to reach the test's bus, sound server and Realtime service."""
    return {**bus.env(), "PULSE_SERVER": sound.server, "OPENAI_API_KEY": service.api_key}


@contextlib.contextmanager
def running_sttd(
    tmp: Path, bus: SessionBus, sound: SoundServer, service: FakeRealtimeServer, extra_config: str = ""
) -> Iterator[Sttd]:
    """sttd configured for ``service`` (plus ``extra_config``), ready on ``bus``; killed afterwards."""
    config = write_config(tmp / "config.toml", service.url, extra=extra_config)
    daemon = Sttd(tmp, daemon_env(bus, sound, service), config)
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.kill()


def sttctl(env: dict[str, str], *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run the installed ``sttctl`` with ``env``."""
    return subprocess.run(
        [command("sttctl"), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


class Sttd:
    """One ``sttd`` process with its own config, state directory and log."""

    def __init__(self, tmp: Path, env: dict[str, str], config: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp / "sttd.log"
        self.env = {
            **os.environ,
            "XDG_CONFIG_HOME": str(tmp / "config"),
            "XDG_STATE_HOME": str(tmp / "state"),
            "OPENAI_API_KEY": API_KEY,
            **env,
        }
        self.env.pop("NOTIFY_SOCKET", None)
        self.env.pop("JOURNAL_STREAM", None)
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [command("sttd"), "--config", str(config), "--log-level", "DEBUG", *extra_args],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ctl(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return sttctl(self.env, *args, timeout=timeout)

    def wait_ready(self, timeout: float = 15) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"sttd exited with {self.process.returncode}:\n{self.log}")
            return self.ctl("status").returncode == 0

        wait_until(ready, timeout, "sttd to own its bus name", interval=0.1)

    def status(self) -> dict[str, Any]:
        result = self.ctl("status", "--json")
        assert result.returncode == 0, result.stderr
        status: dict[str, Any] = json.loads(result.stdout)
        return status

    def wait_state(self, state: str, timeout: float = 15) -> None:
        wait_until(lambda: self.status()["state"] == state, timeout, f"State={state}", interval=0.05)

    def terminate(self, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


class Listener:
    """``sttctl listen --json`` in the background: a real D-Bus client collecting events."""

    def __init__(self, sttd: Sttd) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.arrived: list[tuple[float, dict[str, Any]]] = []
        """Every event with the monotonic time sttctl printed it."""
        self.process = subprocess.Popen(
            [command("sttctl"), "listen", "--json"], env=sttd.env, stdout=subprocess.PIPE, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        # The first line is the state, printed once the subscription is live.
        self.wait_for(lambda e: e["type"] == "properties", 15, "sttctl listen to subscribe")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = json.loads(line)
            self.arrived.append((time.monotonic(), event))
            self.events.put(event)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for event in self.seen:
            if predicate(event):
                return event
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; saw {self.seen}")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(event)
            if predicate(event):
                return event

    def finals(self) -> list[str]:
        self.drain()
        return [e["text"] for e in self.seen if e["type"] == "transcript" and e["final"]]

    def drain(self) -> None:
        while True:
            try:
                self.seen.append(self.events.get_nowait())
            except queue.Empty:
                return

    def close(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
