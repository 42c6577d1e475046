"""The capture thread: one pulsectl connection, the record stream, reconnects.

The capture thread blocks in the libpulse mainloop poll. pulsectl drives the
mainloop; :meth:`Worker._poll` is its poll function, which also watches a
socket that :meth:`Worker.request_stop` writes to, so stopping never waits for audio
or for a timeout.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pulsectl

from .errors import AudioError
from .following import SourceFollowing, _PendingMove
from .libpulse import BYTES_PER_MS, RecordStream, connect, poll_fds

log = logging.getLogger(__name__)

_LEVEL_INTERVAL_S = 0.1


# --- small pure helpers -------------------------------------------------------------------------


class _Chunker:
    """Cuts a byte stream into frames of exactly ``size`` bytes, keeping the remainder."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._pending += data
        usable = len(self._pending) - len(self._pending) % self._size
        if not usable:
            return []
        block = bytes(self._pending[:usable])
        del self._pending[:usable]
        return [block[i : i + self._size] for i in range(0, usable, self._size)]


class _LevelMeter:
    """Peak of s16le frames, reported at most once per ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._peak = 0
        self._last = -math.inf

    def feed(self, frame: bytes) -> float | None:
        samples = np.frombuffer(frame, dtype="<i2")
        self._peak = max(self._peak, int(samples.max()), -int(samples.min()))
        now = time.monotonic()
        if now - self._last < self._interval:
            return None
        peak, self._peak, self._last = self._peak, 0, now
        return min(1.0, peak / 32768)


class _Backoff:
    """Delays that double from ``first`` up to ``cap`` seconds."""

    def __init__(self, first: float = 0.1, cap: float = 2.0) -> None:
        self._first, self._cap, self._failures = first, cap, 0

    def next(self) -> float:
        delay = min(self._cap, self._first * 2.0**self._failures)
        self._failures += 1
        return delay

    def reset(self) -> None:
        self._failures = 0


@dataclass(frozen=True)
class Outlet:
    """What the capture thread hands over; each callable is safe to call from any thread."""

    frame: Callable[[bytes], None]
    level: Callable[[float], None] | None
    problem: Callable[[str], None]
    source: Callable[[str], None]
    started: Callable[[AudioError | None], None]


class Worker(SourceFollowing):
    """Records, follows devices and reconnects, on a thread of its own.

    Every method except :meth:`launch`, :meth:`request_stop`, :meth:`join` and
    :meth:`close` runs on that thread. The pulsectl connection is created,
    used and closed there only.
    """

    def __init__(self, *, source: str, chunk_ms: int, client_name: str, outlet: Outlet) -> None:
        self.thread = threading.Thread(target=self._run, name="sttd-capture", daemon=True)
        self._source = source
        self._client_name = client_name
        self._fragment_bytes = chunk_ms * BYTES_PER_MS
        self._chunker = _Chunker(self._fragment_bytes)
        self._meter = _LevelMeter(_LEVEL_INTERVAL_S)
        self._out = outlet
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._pulse: Any = None
        self._stream: RecordStream | None = None
        self._dirty = False
        self._listening = False
        self._reopen_after = 0.0  # monotonic time before which no new stream is opened
        self._stream_backoff = _Backoff()
        self._followed_default = ""
        self._move: _PendingMove | None = None
        self._started = False
        self._device = ""
        self._problem = ""

    # -- called from the loop thread --

    def launch(self) -> None:
        self.thread.start()

    def join(self) -> None:
        """Blocks until the capture thread has ended."""
        self.thread.join()

    def request_stop(self) -> None:
        """Any thread: ask the capture thread to finish; returns at once."""
        self._stopping.set()
        with contextlib.suppress(OSError):  # already closed, or a wake-up is pending anyway
            self._wake_w.send(b"\0")

    def close(self) -> None:
        """After join(): release the wake-up sockets (idempotent)."""
        self._wake_r.close()
        self._wake_w.close()

    # -- the capture thread --

    def _run(self) -> None:
        """The thread's body: connect, record and follow; reconnect after a loss; until stopped."""
        backoff = _Backoff()
        while not self._stopping.is_set():
            try:
                self._serve(backoff)
            except (AudioError, pulsectl.PulseError, pulsectl.PulseDisconnected) as exc:
                if not self._started:
                    self._out.started(exc if isinstance(exc, AudioError) else AudioError(str(exc)))
                    return
                log.warning("sound server lost: %s", str(exc) or type(exc).__name__)
                self._set_problem("lost the sound server; reconnecting")
                self._stopping.wait(backoff.next())
            except Exception as exc:
                log.exception("capture failed")
                if not self._started:
                    self._out.started(AudioError(f"capture failed: {exc}"))
                    return
                self._set_problem(f"capture failed: {exc}; retrying")
                self._stopping.wait(backoff.next())

    def _serve(self, backoff: _Backoff) -> None:
        """One connection's lifetime: returns when stopping, raises when the server is lost."""
        with connect(self._client_name, self._poll) as pulse:
            backoff.reset()
            self._pulse = pulse
            try:
                pulse.event_mask_set("server", "source", "source_output")
                pulse.event_callback_set(self._on_event)
                self._dirty = True
                while not self._stopping.is_set():
                    if self._dirty:
                        self._reconcile()
                    self._listen(self._next_deadline())
            finally:
                self._close_stream()
                self._pulse = None

    def _listen(self, deadline: float | None) -> None:
        """Block in the mainloop until an event, a stream change, the deadline or a stop needs us."""
        timeout = None if deadline is None else max(0.001, deadline - time.monotonic())  # 0: "forever" to pulsectl
        self._listening = True
        try:
            self._pulse.event_listen(timeout)
        finally:
            self._listening = False
        if deadline is not None and time.monotonic() >= deadline:
            self._dirty = True

    def _next_deadline(self) -> float | None:
        """When the state needs another look without any event: a stream to reopen, a move to check."""
        now = time.monotonic()
        deadlines = [self._move.check_at] if self._move is not None else []
        if self._stream is None and self._reopen_after > now:
            deadlines.append(self._reopen_after)
        return min((d for d in deadlines if d > now), default=None)

    def _poll(self, fds: list[Any], timeout: float) -> int:
        """pulsectl's poll function: while listening, also wake up for a stop or pending work."""
        if not self._listening:
            return poll_fds(fds, timeout)
        interrupt = self._dirty or self._stopping.is_set()
        count = poll_fds(fds, 0 if interrupt else timeout, self._wake_r)
        if interrupt or self._stopping.is_set():
            self._drain_wake()
            self._pulse.event_listen_stop()
        return count

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):  # BlockingIOError once empty
            while self._wake_r.recv(64):
                pass

    def _on_event(self, event: Any) -> None:
        """Subscription callback (inside the mainloop dispatch): note that the devices need a look."""
        if event.facility == "source_output" and (self._stream is None or event.index != self._stream.index):
            return
        self._dirty = True

    def _on_stream_change(self) -> None:
        self._dirty = True

    def _on_data(self, data: bytes) -> None:
        for frame in self._chunker.feed(data):
            self._out.frame(frame)
            if self._out.level is not None and (peak := self._meter.feed(frame)) is not None:
                self._out.level(peak)
