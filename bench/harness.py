"""The benchmark's instruments: a time-stamping Realtime server, a reference recorder, a D-Bus probe.

Every time here is ``time.monotonic()`` (``CLOCK_MONOTONIC``, one clock for
every process of the machine), except where a ``real`` time is named: bash's
``$EPOCHREALTIME`` in the hook is on ``CLOCK_REALTIME``, so the server notes
both clocks when it sends a transcript.

* :class:`TimedServer` is the test Realtime server (``tests/realtime_server.py``)
  with receive time stamps: when each ``input_audio_buffer.append`` reached
  its handler and which bytes of the session's audio it carried, and when
  each ``...transcription.completed`` left.
* :class:`Reference` records the virtual microphone with ``parec`` at 5 ms
  fragments and time-stamps every read: from it, :class:`Timeline` tells
  when any sample of the microphone's stream entered the microphone.
* :class:`Probe` is ``bench/dbus_probe.py`` in its own process: a D-Bus client
  that calls Start/Stop and time-stamps the signals it receives.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.bus import wait_until
from tests.realtime_server import FakeRealtimeServer

REPO = Path(__file__).resolve().parent.parent
RATE = 24000
BYTES_PER_SAMPLE = 2
COMPLETED = "conversation.item.input_audio_transcription.completed"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# The tests' poll-with-a-deadline (its timeout is also a TimeoutError), at a finer grain.
wait_for = functools.partial(wait_until, interval=0.01)


def sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# --------------------------------------------------------------------------- the server


@dataclass(frozen=True)
class Arrival:
    """One append as the server's handler got it: the session's audio bytes [start, end) arrived at ``t``."""

    t: float
    session: int
    start: int
    end: int


class TimedServer(FakeRealtimeServer):
    """The test Realtime server, with receive and send time stamps (a bench-local subclass)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._arrivals: list[Arrival] = []
        self._completions: dict[str, tuple[float, float]] = {}
        self._handshake_times: list[float] = []

    async def _process_request(self, conn: Any, request: Any) -> Any:
        t = time.monotonic()
        with self._cond:
            self._handshake_times.append(t)
        return await super()._process_request(conn, request)

    async def _on_message(self, s: Any, raw: str | bytes) -> None:
        t = time.monotonic()  # before parsing and validating: when the handler got the message
        before = len(s.audio)
        await super()._on_message(s, raw)
        after = len(s.audio)
        if after > before:
            with self._cond:
                self._arrivals.append(Arrival(t, s.index, before, after))

    async def _send(self, s: Any, event: dict[str, Any]) -> None:
        # Stamped before the send: the time the server spends sending is part of what sttd is timed for,
        # never taken off it (a stamp after the send would hide a slow server write behind it).
        if event.get("type") == COMPLETED:
            stamp = (time.monotonic(), time.time())
            with self._cond:
                self._completions[event["item_id"]] = stamp
        await super()._send(s, event)

    def arrivals(self, session: int) -> list[Arrival]:
        with self._cond:
            return [a for a in self._arrivals if a.session == session]

    def completions(self) -> dict[str, tuple[float, float]]:
        """``item_id`` → (monotonic, real) time the ``completed`` event was sent."""
        with self._cond:
            return dict(self._completions)

    def session_pcm(self, session: int) -> np.ndarray:
        return np.frombuffer(self.audio(session), dtype="<i2")

    def first_arrival(self, session: int) -> float | None:
        found = self.arrivals(session)
        return found[0].t if found else None


# --------------------------------------------------------------------------- the reference recorder


class Timeline:
    """When each sample of the microphone's stream entered it, from time-stamped reads.

    A read at ``t`` that ends at sample ``e`` says sample ``p <= e`` entered at
    or before ``t - (e - p) / RATE``. The microphone is paced by the sound
    server's clock, so the tightest bound over the reads of the next
    ``window_s`` is the estimate: it is late by the fastest delivery seen (about
    a millisecond here), never early.
    """

    def __init__(self, times: np.ndarray, ends: np.ndarray, window_s: float = 0.5) -> None:
        self.times = times
        self.ends = ends
        self.offsets = times - ends / RATE
        self.window = int(window_s * RATE)

    def entered_at(self, position: int) -> float:
        lo = int(np.searchsorted(self.ends, position, side="left"))
        hi = int(np.searchsorted(self.ends, position + self.window, side="right"))
        if lo >= hi:
            return float("nan")
        return float(position / RATE + self.offsets[lo:hi].min())

    def position_at(self, t: float) -> int:
        """The stream position entering the microphone at ``t`` (approximately: for search windows)."""
        j = int(np.searchsorted(self.times, t))
        lo, hi = max(0, j - 100), min(len(self.times), j + 100)
        if lo >= hi:
            lo, hi = max(0, len(self.times) - 100), len(self.times)
        return int((t - self.offsets[lo:hi].min()) * RATE)


class Reference:
    """``parec`` on the microphone at 5 ms fragments; every read time-stamped on arrival."""

    def __init__(self, env: dict[str, str], source: str = "mic", latency_ms: int = 5) -> None:
        self._proc = subprocess.Popen(
            [
                "parec",
                "-d",
                source,
                f"--latency-msec={latency_ms}",
                "--raw",
                "--format=s16le",
                f"--rate={RATE}",
                "--channels=1",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._data = bytearray()
        self._times: list[float] = []
        self._ends: list[int] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, name="bench-reference", daemon=True)
        self._thread.start()
        wait_for(lambda: self.position > RATE // 10, 10, "the reference recorder to record")

    def _read(self) -> None:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            t = time.monotonic()
            if not chunk:
                return
            with self._lock:
                self._data += chunk
                self._times.append(t)
                self._ends.append(len(self._data) // BYTES_PER_SAMPLE)

    @property
    def position(self) -> int:
        """Samples recorded so far."""
        with self._lock:
            return len(self._data) // BYTES_PER_SAMPLE

    def samples(self, start: int = 0, end: int | None = None) -> np.ndarray:
        with self._lock:
            stop = len(self._data) // BYTES_PER_SAMPLE if end is None else end
            return np.frombuffer(bytes(self._data[start * 2 : stop * 2]), dtype="<i2")

    def timeline(self) -> Timeline:
        with self._lock:
            return Timeline(np.asarray(self._times), np.asarray(self._ends, dtype=np.float64))

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._thread.join(5)


# --------------------------------------------------------------------------- the D-Bus probe


class Probe:
    """``python -m bench.dbus_probe``: calls methods and time-stamps signals, in its own process."""

    def __init__(self, env: dict[str, str]) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.dbus_probe"],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self.lags: list[float] = []
        """From writing a method name to the probe until the probe sends the call (seconds)."""
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="bench-probe", daemon=True)
        self._thread.start()
        self.wait(lambda e: e["kind"] == "ready", 15, "the D-Bus probe to subscribe")

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._cond:
                self.events.append(json.loads(line))
                self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def wait(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str, since: int = 0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events[since:]:
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._proc.poll() is not None:
                    raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}")
                self._cond.wait(remaining)

    def since(self, mark: int, kind: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events[mark:] if e["kind"] == kind]

    def call(self, method: str, timeout: float = 15) -> dict[str, Any]:
        """Call a method of sttd; returns the probe's record (``t_sent``, ``t_reply``); raises on a D-Bus error."""
        mark = self.mark()
        assert self._proc.stdin is not None
        written = time.monotonic()
        self._proc.stdin.write(method + "\n")
        self._proc.stdin.flush()
        record = self.wait(lambda e: e["kind"] == "call" and e["method"] == method, timeout, method, mark)
        self.lags.append(record["t_sent"] - written)
        if record["error"]:
            raise RuntimeError(f"{method} failed: {record['error']}")
        return record

    @property
    def lag(self) -> float:
        """The median :attr:`lags` so far (0 before any call)."""
        return float(np.median(self.lags)) if self.lags else 0.0

    def wait_state(self, value: str, timeout: float, since: int) -> dict[str, Any]:
        return self.wait(lambda e: e["kind"] == "state" and e["value"] == value, timeout, f"State={value}", since)

    def close(self) -> None:
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._thread.join(5)


# --------------------------------------------------------------------------- processes


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _tasks(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (every thread, dead ones included), 1/CLK_TCK resolution."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return float("nan")
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_ns(pid: int, main_only: bool = False) -> int:
    """CPU time of the living threads (or the main thread) of a process in ns (schedstat: finer than CLK_TCK)."""
    total = 0
    for tid in [str(pid)] if main_only else _tasks(pid):
        text = _read(f"/proc/{pid}/task/{tid}/schedstat")
        if text:
            total += int(text.split()[0])
    return total


def wakeups(pid: int) -> int:
    """Context switches of the living threads: how often the process was scheduled."""
    total = 0
    for tid in _tasks(pid):
        for line in _read(f"/proc/{pid}/task/{tid}/status").splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def memory_kb(pid: int) -> dict[str, int]:
    """``VmHWM`` (peak resident set) and ``VmRSS`` in kB."""
    found = {}
    for line in _read(f"/proc/{pid}/status").splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            found[key] = int(value.split()[0])
    return found


def children(pid: int) -> list[int]:
    kids: list[int] = []
    for tid in _tasks(pid):
        kids += [int(k) for k in _read(f"/proc/{pid}/task/{tid}/children").split()]
    return kids


def stop_group(proc: subprocess.Popen[Any], sig: int = signal.SIGINT, timeout: float = 10) -> None:
    """Signal the process group a process leads (it was started with start_new_session); kill it at the deadline.

    Nothing is signalled once the leader has been reaped: its group id may belong to someone else by then.
    """
    if proc.returncode is not None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def play(env: dict[str, str], wav: Path, device: str = "spk") -> tuple[subprocess.Popen[bytes], float]:
    """Start ``paplay`` (paced in real time by the sound server); returns it and the launch time."""
    t = time.monotonic()
    return subprocess.Popen(["paplay", "-d", device, str(wav)], env=env, stderr=subprocess.DEVNULL), t


def finish(player: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        player.wait(timeout)
    except subprocess.TimeoutExpired:
        player.kill()
        player.wait(5)
