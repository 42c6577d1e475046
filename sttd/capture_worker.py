"""The capture thread: one pulsectl connection, the record stream, reconnects.

The capture thread blocks in libpulse's own poll, in C, without the GIL:
Python runs only for the callbacks (a block of audio, a device event), once
per fragment of ``chunk_ms``. The loop thread interrupts that poll with
``pa_mainloop_wakeup`` to stop, to record or to park.

*Parked*, the thread keeps its connection to the sound server but has no
stream and no subscription: it sleeps in poll with no timeout (no CPU, no
wake-ups), and the next Start only has to create a record stream, which is
what makes the first word whole.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pulsectl

from .errors import AudioError
from .following import SourceFollowing, _PendingMove
from .libpulse import BYTES_PER_MS, RecordStream, connect, mainloop_poll_dispatch, mainloop_prepare, mainloop_wakeup

if TYPE_CHECKING:
    from .lending import Lender

log = logging.getLogger(__name__)

_LEVEL_INTERVAL_S = 0.1


# --- small pure helpers -------------------------------------------------------------------------


class _Chunker:
    """Cuts a byte stream into frames of exactly ``size`` bytes, keeping the remainder."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        if not self._pending and len(data) == self._size:
            return [data]  # the usual case: the server delivers one fragment of exactly a frame
        self._pending += data
        usable = len(self._pending) - len(self._pending) % self._size
        if not usable:
            return []
        block = bytes(self._pending[:usable])
        del self._pending[:usable]
        return [block[i : i + self._size] for i in range(0, usable, self._size)]


# The high byte of each s16le sample, folded so that it grows with the sample's magnitude:
# 0..127 for 0..32767 and for -1..-32768 (one's complement). _BELOW[t] lists the bytes below t.
_MAGNITUDE = bytes(b if b < 128 else 255 - b for b in range(256))
_BELOW = [bytes(b for b in range(256) if _MAGNITUDE[b] < t) for t in range(129)]


def peak_level(data: bytes) -> float:
    """The peak of s16le samples as 0..1, to 1/128 of full scale.

    A meter needs no more, and this runs in C loops only (a bisection of
    ``bytes.translate`` over the samples' high bytes), without numpy, which
    a daemon with the service's voice detection does not otherwise load.
    """
    high = data[1::2]
    low, top = 0, 127  # the largest magnitude class present is in [low, top]
    while low < top:
        mid = (low + top + 1) // 2
        if high.translate(None, _BELOW[mid]):  # some sample's class is at least mid
            low = mid
        else:
            top = mid - 1
    return low / 128


class _LevelMeter:
    """Peak of s16le frames, reported at most once per ``interval`` seconds.

    The frames of an interval are kept (references, no copy) and scanned once
    when the interval is over: one pass per report, not per frame.
    """

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._frames: list[bytes] = []
        self._last = -math.inf

    def feed(self, frame: bytes) -> float | None:
        self._frames.append(frame)
        now = time.monotonic()
        if now - self._last < self._interval:
            return None
        frames, self._frames, self._last = self._frames, [], now
        return peak_level(frames[0] if len(frames) == 1 else b"".join(frames))


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


_Parked = Callable[[], None]


@dataclass(frozen=True)
class Outlet:
    """What the capture thread hands over; each callable is safe to call from any thread."""

    frames: Callable[[list[bytes], float | None], None]
    """Frames in order, handed over together with the level peak when one is due (else None):
    one wake-up of the loop per mainloop wake-up, the level included."""
    metered: bool
    """Whether a level peak is wanted at all."""
    problem: Callable[[str], None]
    source: Callable[[str], None]
    started: Callable[[AudioError | None], None]


class Worker(SourceFollowing):
    """Records, follows devices and reconnects, on a thread of its own.

    Every method except :meth:`launch`, :meth:`record`, :meth:`park`,
    :meth:`request_stop`, :meth:`join` and :meth:`close` runs on that thread.
    The pulsectl connection is created, used and closed there only.
    ``outlet=None`` launches it parked (connected, not recording). With a
    ``lender``, the thread lends its mainloop to the event loop while it only
    streams (:mod:`sttd.lending`): the callbacks then run on the loop thread
    while this one is blocked.
    """

    def __init__(
        self, *, source: str, chunk_ms: int, client_name: str, outlet: Outlet | None, lender: Lender | None = None
    ) -> None:
        self._lender = lender
        self.thread = threading.Thread(target=self._run, name="sttd-capture", daemon=True)
        self._source = source
        self._client_name = client_name
        self._fragment_bytes = chunk_ms * BYTES_PER_MS
        self._chunker = _Chunker(self._fragment_bytes)
        self._ready: list[bytes] = []
        """Frames read in the current dispatch, not handed over yet."""
        self._meter = _LevelMeter(_LEVEL_INTERVAL_S)
        self._out: Outlet = outlet or _NOWHERE
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        """Guards the commands below and the mainloop pointer the loop thread wakes up."""
        self._want: Outlet | None = outlet
        self._on_parked: _Parked | None = None
        self._commanded = outlet is not None
        self._asked: threading.Event | None = None
        """Set once the stream the last record() asked for was requested of the server."""
        self._woken: Any = None
        self._recording = False
        self._subscribed = False
        self._pulse: Any = None
        self._stream: RecordStream | None = None
        self._dirty = False
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

    def record(self, outlet: Outlet) -> threading.Event:
        """Any thread: open a record stream (again) and hand what it records to ``outlet``.

        The event returned is set once the capture thread has asked the server
        for the stream (or failed to).
        """
        asked = threading.Event()
        with self._lock:
            self._want, self._on_parked, self._commanded, self._asked = outlet, None, True, asked
        self._wake()
        return asked

    def park(self, on_parked: _Parked) -> None:
        """Any thread: close the stream but stay connected; ``on_parked`` runs (on the capture thread) once closed.

        Everything recorded before has been handed over when it runs. If the
        thread ends first (server lost, stopped), it runs then.
        """
        with self._lock:
            self._want, self._on_parked, self._commanded = None, on_parked, True
        self._wake()

    def request_stop(self) -> None:
        """Any thread: ask the capture thread to finish; returns at once."""
        self._stopping.set()
        self._wake()

    def close(self) -> None:
        """After join(): nothing left to release (kept for the caller's symmetry)."""

    def _wake(self) -> None:
        with self._lock:
            if self._woken is not None:
                mainloop_wakeup(self._woken)

    # -- the capture thread --

    def _run(self) -> None:
        """The thread's body: connect, record and follow; reconnect after a loss; until stopped."""
        backoff = _Backoff()
        try:
            while not self._stopping.is_set():
                try:
                    self._serve(backoff)
                except (AudioError, pulsectl.PulseError, pulsectl.PulseDisconnected) as exc:
                    if not self._recording and not self._commanded:
                        # Parked: nobody needs the connection now; the next Start connects afresh.
                        log.info("sound server connection ended while idle: %s", str(exc) or type(exc).__name__)
                        return
                    if not self._started:
                        self._want_out().started(exc if isinstance(exc, AudioError) else AudioError(str(exc)))
                        return
                    log.warning("sound server lost: %s", str(exc) or type(exc).__name__)
                    self._set_problem("lost the sound server; reconnecting")
                    self._stopping.wait(backoff.next())
                except Exception as exc:
                    log.exception("capture failed")
                    if not self._started:
                        self._want_out().started(AudioError(f"capture failed: {exc}"))
                        return
                    self._set_problem(f"capture failed: {exc}; retrying")
                    self._stopping.wait(backoff.next())
        finally:
            with self._lock:
                on_parked, self._on_parked = self._on_parked, None
            if on_parked is not None:
                on_parked()

    def _want_out(self) -> Outlet:
        """The outlet of the recording asked for (the current one once it is taken)."""
        with self._lock:
            return self._want if self._commanded and self._want is not None else self._out

    def _serve(self, backoff: _Backoff) -> None:
        """One connection's lifetime: returns when stopping, raises when the server is lost."""
        with connect(self._client_name) as pulse:
            backoff.reset()
            self._pulse = pulse
            pulse.event_callback_set(self._on_event)
            with self._lock:
                self._woken = pulse
            self._subscribed = False
            try:
                if self._recording:  # reconnected while recording
                    self._open_stream(self._source)
                    self._dirty = True
                while not self._stopping.is_set():
                    self._take_command()
                    self._subscribe(self._recording)
                    if self._dirty and self._recording:
                        self._reconcile()
                    elif not self._recording:
                        self._dirty = False  # parked: there is nothing to bring in line
                    self._listen(self._next_deadline() if self._recording else None)
            finally:
                with self._lock:
                    self._woken = None
                self._close_stream()
                self._hand_over()
                self._pulse = None

    def _subscribe(self, wanted: bool) -> None:
        """Device events only while recording: other programs' streams must not wake a parked sttd."""
        if wanted != self._subscribed:
            self._pulse.event_mask_set(*(("server", "source", "source_output") if wanted else ("null",)))
            self._subscribed = wanted

    def _take_command(self) -> None:
        """Start or end recording as the loop thread asked."""
        with self._lock:
            if not self._commanded:
                return
            want, on_parked, self._commanded, self._on_parked = self._want, self._on_parked, False, None
            asked, self._asked = self._asked, None
        if want is not None:
            try:
                if not self._recording:
                    self._out, self._recording, self._started = want, True, False
                    self._problem, self._chunker = "", _Chunker(self._fragment_bytes)
                    # The stream first, before any query: the server picks the default source itself,
                    # and every round trip before it would be audio lost at Start.
                    self._open_stream(self._source)
                    self._dirty = True
            finally:
                if asked is not None:
                    asked.set()
            return
        if self._recording:
            self._close_stream()
            self._hand_over()  # the last frames go out before the park is confirmed
            self._recording, self._started, self._out = False, False, _NOWHERE
            self._subscribe(False)  # before the confirmation: from then on nothing wakes the thread
        if on_parked is not None:
            on_parked()

    def _listen(self, deadline: float | None) -> None:
        """Block in the mainloop until an event, a stream change, a command, the deadline or a stop needs us."""
        pulse = self._pulse
        if deadline is None and self._may_lend() and self._lender is not None and self._lender.lend(pulse, self):
            self._hand_over()
            if not pulse.connected:
                raise pulsectl.PulseDisconnected()
            return
        while True:
            self._hand_over()
            timeout_us = -1 if deadline is None else max(1000, int((deadline - time.monotonic()) * 1e6))
            if not mainloop_prepare(pulse, timeout_us):
                break
            # A wake-up between the checks below and the poll is kept by the mainloop's pipe;
            # prepare() empties that pipe, so the checks come after it.
            if self._dirty or self._commanded or self._stopping.is_set():
                mainloop_wakeup(pulse)  # the poll must run once (the loop's states), and return at once
                mainloop_poll_dispatch(pulse)
                self._hand_over()
                break
            if not mainloop_poll_dispatch(pulse):
                break
            if not pulse.connected:
                raise pulsectl.PulseDisconnected()
            if deadline is not None and time.monotonic() >= deadline:
                self._dirty = True
        if not pulse.connected:
            raise pulsectl.PulseDisconnected()

    def _may_lend(self) -> bool:
        """Only streaming is left to do: the event loop may read the stream until something else comes up."""
        stream = self._stream
        return self._recording and self._started and stream is not None and stream.ready and not self.needs_thread()

    def needs_thread(self) -> bool:
        """Borrower: whether the mainloop must come back to this thread (any thread; a few flag reads)."""
        return self._dirty or self._commanded or self._stopping.is_set() or not self._pulse.connected

    def dispatched(self) -> None:
        """Borrower: the loop thread ran the mainloop; hand over what it read, from there."""
        self._hand_over()

    def _next_deadline(self) -> float | None:
        """When the state needs another look without any event: a stream to reopen, a move to check."""
        now = time.monotonic()
        deadlines = [self._move.check_at] if self._move is not None else []
        if self._stream is None and self._reopen_after > now:
            deadlines.append(self._reopen_after)
        return min((d for d in deadlines if d > now), default=None)

    def _on_event(self, event: Any) -> None:
        """Subscription callback (inside the mainloop dispatch): note that the devices need a look."""
        if event.facility == "source_output" and (self._stream is None or event.index != self._stream.index):
            return
        self._dirty = True

    def _on_stream_change(self) -> None:
        self._dirty = True

    def _on_data(self, data: bytes) -> None:
        # Inside the dispatch: keep the frames, and hand them over once the dispatch is done (_hand_over).
        self._ready += self._chunker.feed(data)

    def _hand_over(self) -> None:
        """Post what the last dispatch read, right before the thread blocks again.

        Waking the loop thread is the last thing done holding the GIL, so the
        loop thread finds it free instead of waking up only to wait for it.
        """
        ready, out = self._ready, self._out
        if not ready:
            return
        self._ready = []
        peak = None
        if out.metered:
            meter = self._meter
            for frame in ready:
                peak = meter.feed(frame) if peak is None else peak
        out.frames(ready, peak)


def _ignore(*_args: Any) -> None:
    pass


_NOWHERE = Outlet(frames=_ignore, metered=False, problem=_ignore, source=_ignore, started=_ignore)
"""Where a parked worker's hand-overs go: nobody is listening."""
