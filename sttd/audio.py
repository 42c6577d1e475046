"""PulseAudio/PipeWire capture and device following.

:class:`Capture` records one source as 24 kHz mono s16le frames of exactly
``chunk_ms``. The server does the resampling. All sound-server work happens on
a thread of the capture's own, with its own pulsectl connection: libpulse and
pulsectl are blocking and not thread-safe. Everything the caller sees (frames,
level, problems, the device name) is handed to the asyncio loop with
``call_soon_threadsafe``.

The capture thread blocks in the libpulse mainloop poll. pulsectl drives the
mainloop; :meth:`_Worker._poll` is its poll function, which also watches a
socket that :meth:`Capture.stop` writes to, so stopping never waits for audio
or for a timeout.

pulsectl declares ``pa_stream_peek`` with a ``c_int*`` size (it is ``size_t*``)
and lacks most stream calls, so the record stream is driven through the
libpulse declarations below, on the context of the pulsectl connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import math
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pulsectl

from .errors import AudioError

log = logging.getLogger(__name__)

SAMPLE_RATE = 24000
BYTES_PER_MS = SAMPLE_RATE * 2 // 1000

_CONNECT_TIMEOUT_S = 3.0
_START_TIMEOUT_S = 10.0
_LEVEL_INTERVAL_S = 0.1
_MOVE_CHECK_S = 1.0
_MOVE_ATTEMPTS = 3
_PA_INVALID_INDEX = 0xFFFFFFFF


@dataclass(frozen=True)
class SourceInfo:
    """A capture source as the sound server names and describes it."""

    name: str
    description: str
    is_default: bool


# --- libpulse stream calls, with their real C signatures ---------------------------------------

_PA_SAMPLE_S16LE = 3
_PA_STREAM_READY, _PA_STREAM_FAILED, _PA_STREAM_TERMINATED = 2, 3, 4
_PA_STREAM_DONT_MOVE = 0x0200
_PA_STREAM_ADJUST_LATENCY = 0x2000


class _SampleSpec(ctypes.Structure):
    _fields_ = [("format", ctypes.c_int), ("rate", ctypes.c_uint32), ("channels", ctypes.c_uint8)]


class _BufferAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("maxlength", "tlength", "prebuf", "minreq", "fragsize")]


_READ_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
_NOTIFY_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)

_libpulse = ctypes.CDLL(ctypes.util.find_library("pulse") or "libpulse.so.0")


def _declare(name: str, restype: Any, *argtypes: Any) -> Any:
    # A CDLL instance of our own: pulsectl's (differing) declarations stay untouched.
    func = getattr(_libpulse, name)
    func.restype, func.argtypes = restype, list(argtypes)
    return func


_vp, _int = ctypes.c_void_p, ctypes.c_int
_pa_strerror = _declare("pa_strerror", ctypes.c_char_p, _int)
_pa_context_errno = _declare("pa_context_errno", _int, _vp)
_pa_stream_new = _declare("pa_stream_new", _vp, _vp, ctypes.c_char_p, ctypes.POINTER(_SampleSpec), _vp)
_pa_stream_set_read_callback = _declare("pa_stream_set_read_callback", None, _vp, _READ_CB, _vp)
_pa_stream_set_state_callback = _declare("pa_stream_set_state_callback", None, _vp, _NOTIFY_CB, _vp)
_pa_stream_set_moved_callback = _declare("pa_stream_set_moved_callback", None, _vp, _NOTIFY_CB, _vp)
_pa_stream_set_suspended_callback = _declare("pa_stream_set_suspended_callback", None, _vp, _NOTIFY_CB, _vp)
_pa_stream_connect_record = _declare(
    "pa_stream_connect_record", _int, _vp, ctypes.c_char_p, ctypes.POINTER(_BufferAttr), _int
)
_pa_stream_peek = _declare(
    "pa_stream_peek", _int, _vp, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t)
)
_pa_stream_drop = _declare("pa_stream_drop", _int, _vp)
_pa_stream_get_state = _declare("pa_stream_get_state", _int, _vp)
_pa_stream_get_index = _declare("pa_stream_get_index", ctypes.c_uint32, _vp)
_pa_stream_get_device_name = _declare("pa_stream_get_device_name", ctypes.c_char_p, _vp)
_pa_stream_is_suspended = _declare("pa_stream_is_suspended", _int, _vp)
_pa_stream_disconnect = _declare("pa_stream_disconnect", _int, _vp)
_pa_stream_unref = _declare("pa_stream_unref", None, _vp)


def _pa_error(pulse: Any) -> str:
    """The last error of a pulsectl connection's context, in libpulse's words."""
    message: bytes | None = _pa_strerror(_pa_context_errno(pulse._ctx))
    return message.decode(errors="replace") if message else "unknown error"


# --- connections --------------------------------------------------------------------------------


def _server_label() -> str:
    return os.environ.get("PULSE_SERVER") or "the default sound server"


_PollFunc = Callable[[list[Any], float], int]


@contextmanager
def _connect(client_name: str, poll: _PollFunc | None = None) -> Iterator[Any]:
    """A pulsectl connection that never autospawns a server; raises AudioError when there is none.

    ``poll`` (default: a plain poll) becomes the connection's mainloop poll function.
    """
    pulse = pulsectl.Pulse(client_name, connect=False)
    inner = poll or _poll_fds
    connecting = True

    def poll_func(fds: list[Any], timeout: float) -> int:
        # pulsectl's connect(timeout=...) polls until the deadline even once connected: end it early.
        if connecting and pulse.connected is not None:
            pulse.event_listen_stop()
            timeout = 0
        return inner(fds, timeout)

    try:
        pulse.set_poll_func(poll_func, _log_poll_error)
        try:
            pulse.connect(autospawn=False, timeout=_CONNECT_TIMEOUT_S)
        except pulsectl.PulseError as exc:
            raise AudioError(f"cannot connect to {_server_label()}: {_pa_error(pulse)}") from exc
        connecting = False
        yield pulse
    finally:
        pulse.close()


def _log_poll_error(*exc_info: Any) -> None:
    log.error("sound server poll failed", exc_info=exc_info)


def _poll_fds(fds: list[Any], timeout: float, extra: socket.socket | None = None) -> int:
    """Poll libpulse's pollfd structs (and ``extra`` for reading); fill in their revents.

    ``timeout`` is in seconds, negative for none. Returns how many pollfds are ready,
    plus one when ``extra`` is.
    """
    wanted: dict[int, int] = {}
    for pfd in fds:
        wanted[pfd.fd] = wanted.get(pfd.fd, 0) | pfd.events
    poller = select.poll()
    for fd, events in wanted.items():
        poller.register(fd, events)
    if extra is not None:
        poller.register(extra, select.POLLIN)
    ready = dict(poller.poll(-1 if timeout < 0 else math.ceil(timeout * 1000)))
    count = 0
    for pfd in fds:
        pfd.revents = ready.get(pfd.fd, 0) & (pfd.events | select.POLLERR | select.POLLHUP | select.POLLNVAL)
        count += bool(pfd.revents)
    if extra is not None and extra.fileno() in ready:
        count += 1
    return count


def list_sources() -> list[SourceInfo]:
    """The capture sources the server offers; monitors of outputs are left out unless one is the default.

    Blocking: call it off the event loop (``asyncio.to_thread``). Uses
    ``PULSE_SERVER`` like any libpulse client; raises AudioError without a server.
    """
    with _connect("sttd") as pulse:
        try:
            default = pulse.server_info().default_source_name
            sources = pulse.source_list()
        except (pulsectl.PulseError, pulsectl.PulseDisconnected) as exc:
            raise AudioError(f"cannot list sources on {_server_label()}: {exc}") from exc
    return [
        SourceInfo(name=s.name, description=s.description or s.name, is_default=s.name == default)
        for s in sources
        if s.monitor_of_sink == _PA_INVALID_INDEX or s.name == default
    ]


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


# --- the record stream --------------------------------------------------------------------------


class _RecordStream:
    """One libpulse record stream on a pulsectl connection. Capture thread only.

    ``on_data`` gets whatever the server delivered (holes as silence);
    ``on_change`` is called on any state change, move or suspension.
    """

    def __init__(
        self,
        pulse: Any,
        *,
        device: str | None,
        fragment_bytes: int,
        on_data: Callable[[bytes], None],
        on_change: Callable[[], None],
    ) -> None:
        spec = _SampleSpec(format=_PA_SAMPLE_S16LE, rate=SAMPLE_RATE, channels=1)
        ptr: int | None = _pa_stream_new(pulse._ctx, b"sttd capture", ctypes.byref(spec), None)
        if not ptr:
            raise AudioError(f"cannot create a record stream: {_pa_error(pulse)}")
        self._ptr = ptr
        self._on_data = on_data
        # ctypes callbacks must outlive the stream's use of them: keep them on self.
        self._read_cb = _READ_CB(self._on_read)
        self._notify_cb = _NOTIFY_CB(lambda _stream, _userdata: on_change())
        _pa_stream_set_read_callback(ptr, self._read_cb, None)
        for setter in (_pa_stream_set_state_callback, _pa_stream_set_moved_callback, _pa_stream_set_suspended_callback):
            setter(ptr, self._notify_cb, None)
        self._connect(pulse, device, fragment_bytes)

    def _connect(self, pulse: Any, device: str | None, fragment_bytes: int) -> None:
        unset = _PA_INVALID_INDEX
        attr = _BufferAttr(maxlength=unset, tlength=unset, prebuf=unset, minreq=unset, fragsize=fragment_bytes)
        # A named source is never silently swapped for another: the server must not move it.
        flags = _PA_STREAM_ADJUST_LATENCY | (_PA_STREAM_DONT_MOVE if device else 0)
        name = device.encode() if device else None
        if _pa_stream_connect_record(self._ptr, name, ctypes.byref(attr), flags) < 0:
            error = _pa_error(pulse)
            self.close()
            raise AudioError(f"cannot record from {device or 'the default source'}: {error}")

    @property
    def state(self) -> int:
        return int(_pa_stream_get_state(self._ptr))

    @property
    def failed(self) -> bool:
        return self.state in (_PA_STREAM_FAILED, _PA_STREAM_TERMINATED)

    @property
    def ready(self) -> bool:
        return self.state == _PA_STREAM_READY

    @property
    def index(self) -> int:
        return int(_pa_stream_get_index(self._ptr))

    @property
    def device_name(self) -> str:
        name: bytes | None = _pa_stream_get_device_name(self._ptr)
        return name.decode(errors="replace") if name else ""

    @property
    def suspended(self) -> bool:
        return int(_pa_stream_is_suspended(self._ptr)) > 0

    def _on_read(self, _stream: int | None, _nbytes: int, _userdata: int | None) -> None:
        data, size = ctypes.c_void_p(), ctypes.c_size_t()
        try:
            while _pa_stream_peek(self._ptr, ctypes.byref(data), ctypes.byref(size)) == 0 and size.value:
                chunk = ctypes.string_at(data.value, size.value) if data.value else bytes(size.value)
                _pa_stream_drop(self._ptr)
                self._on_data(chunk)
        except Exception:
            log.exception("reading the record stream failed")

    def close(self) -> None:
        """Disconnect and release the stream; no callback runs afterwards."""
        if not self._ptr:
            return
        _pa_stream_set_read_callback(self._ptr, _READ_CB(), None)  # a prototype called bare is NULL
        for setter in (_pa_stream_set_state_callback, _pa_stream_set_moved_callback, _pa_stream_set_suspended_callback):
            setter(self._ptr, _NOTIFY_CB(), None)
        if not self.failed:
            _pa_stream_disconnect(self._ptr)
        _pa_stream_unref(self._ptr)
        self._ptr = 0


# --- the capture thread -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outlet:
    """What the capture thread hands over; each callable is safe to call from any thread."""

    frame: Callable[[bytes], None]
    level: Callable[[float], None] | None
    problem: Callable[[str], None]
    source: Callable[[str], None]
    started: Callable[[AudioError | None], None]


@dataclass(frozen=True)
class _PendingMove:
    """A move of the stream asked of the server, to be checked at ``check_at``."""

    target: str
    check_at: float
    attempts: int


class _Worker:
    """Records, follows devices and reconnects, on a thread of its own.

    Every method except :meth:`launch`, :meth:`request_stop`, :meth:`join` and
    :meth:`close` runs on that thread. The pulsectl connection is created,
    used and closed there only.
    """

    def __init__(self, *, source: str, chunk_ms: int, client_name: str, outlet: _Outlet) -> None:
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
        self._stream: _RecordStream | None = None
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
        with _connect(self._client_name, self._poll) as pulse:
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
            return _poll_fds(fds, timeout)
        interrupt = self._dirty or self._stopping.is_set()
        count = _poll_fds(fds, 0 if interrupt else timeout, self._wake_r)
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

    # -- following the device --

    def _reconcile(self) -> None:
        """Bring the stream in line with the wanted source; runs pulsectl calls, so never in a callback."""
        self._dirty = False
        self._reap_failed_stream()
        target = self._find_target()
        stream = self._stream
        # Without a default for a moment (it was just removed), a stream that still records is kept.
        if stream is not None and stream.ready and (target is not None or not self._source):
            self._follow(target)
        elif target is None:
            self._close_stream()
            self._report_missing()
        elif stream is None and time.monotonic() >= self._reopen_after:
            self._open_stream(target.name)

    def _find_target(self) -> Any:
        """The source we should be recording (pulsectl source info), or None when it does not exist."""
        return self._source_info(self._source or self._pulse.server_info().default_source_name)

    def _source_info(self, name: str) -> Any:
        if not name:
            return None
        try:
            return self._pulse.get_source_by_name(name)
        except pulsectl.PulseIndexError:
            return None

    def _report_missing(self) -> None:
        missing = f"source '{self._source}' is not available" if self._source else "no audio source is available"
        if not self._started:
            raise AudioError(missing)
        self._set_problem(f"{missing}; waiting for {'it' if self._source else 'one'}")

    def _reap_failed_stream(self) -> None:
        if self._stream is None or not self._stream.failed:
            return
        error = _pa_error(self._pulse)
        if not self._started:
            raise AudioError(f"cannot record from {self._source or 'the default source'}: {error}")
        log.warning("record stream from %s ended: %s", self._device or "the source", error)
        self._close_stream()
        self._reopen_after = time.monotonic() + self._stream_backoff.next()

    def _open_stream(self, name: str) -> None:
        log.debug("opening a record stream on %s", self._source or f"the default source ({name})")
        self._followed_default, self._move = "", None
        try:
            self._stream = _RecordStream(
                self._pulse,
                device=self._source or None,
                fragment_bytes=self._fragment_bytes,
                on_data=self._on_data,
                on_change=self._on_stream_change,
            )
        except AudioError as exc:
            if not self._started:
                raise
            log.warning("%s", exc)
            self._reopen_after = time.monotonic() + self._stream_backoff.next()

    def _follow(self, target: Any) -> None:
        """The stream records: follow a changed default, then report where it records and how well."""
        assert self._stream is not None
        device = self._stream.device_name
        if not self._source and target is not None and self._moving(device, target):
            return  # the moved callback (or the move check) brings us back here
        self._stream_backoff.reset()
        self._set_device(device)
        if not self._started:
            self._started = True
            self._out.started(None)
        recorded = target if target is not None and device == target.name else self._source_info(device)
        self._set_problem(self._health(recorded))

    def _moving(self, device: str, target: Any) -> bool:
        """Move the stream when the default changed; True while that move is under way.

        Only a change of the default moves the stream: a move made by the user in a
        mixer in between is respected. A move the server acknowledged but did not
        carry out (PipeWire under load) is asked for again, a few times.
        """
        if target.name != self._followed_default:
            self._followed_default, self._move = target.name, None
            return device != target.name and self._request_move(target, attempt=1)
        move = self._move
        if move is None or device == move.target:
            self._move = None
            return False
        if time.monotonic() < move.check_at:
            return True
        if move.attempts < _MOVE_ATTEMPTS:
            return self._request_move(target, attempt=move.attempts + 1)
        log.warning("the sound server did not move the capture to %s; recording from %s", target.name, device)
        self._move = None
        return False

    def _request_move(self, target: Any, attempt: int) -> bool:
        assert self._stream is not None
        log.info("moving capture from %s to the default source %s", self._stream.device_name, target.name)
        try:
            self._pulse.source_output_move(self._stream.index, target.index)
        except pulsectl.PulseOperationFailed as exc:
            log.warning("cannot move capture to %s: %s", target.name, exc)
            self._move = None
            return False
        self._move = _PendingMove(target.name, time.monotonic() + _MOVE_CHECK_S, attempt)
        return True

    def _health(self, recorded: Any) -> str:
        """What keeps the recorded source from giving sound, or ""."""
        assert self._stream is not None
        if recorded is not None and recorded.mute:
            return f"source '{recorded.name}' is muted"
        if self._stream.suspended:
            return f"source '{self._stream.device_name}' is suspended"
        try:
            if self._pulse.source_output_info(self._stream.index).mute:
                return "the sttd recording stream is muted"
        except pulsectl.PulseIndexError:
            pass
        return ""

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._move = None
        if not self._stopping.is_set():
            self._set_device("")

    def _set_device(self, device: str) -> None:
        if device != self._device:
            if device:
                log.info("recording from %s", device)
            self._device = device
            self._out.source(device)

    def _set_problem(self, message: str) -> None:
        if message != self._problem:
            if message:
                log.warning("capture: %s", message)
            elif self._problem:
                log.info("capture: recovered from: %s", self._problem)
            self._problem = message
            self._out.problem(message)


# --- the public face, on the event loop ---------------------------------------------------------


class Capture:
    """Records one source as 24 kHz mono s16le frames of chunk_ms, on a thread of its own.

    ``source=""`` follows the default source. The public methods run on the
    event loop thread; every callback is called on that thread too:
    ``on_frame`` with exact ``chunk_ms`` frames in order, ``on_problem`` with a
    human message ("" once the problem is gone), ``on_level`` with the peak
    (0..1, at most 10 times a second), ``on_source`` with the device now being
    recorded ("" while none is).
    """

    def __init__(
        self,
        *,
        source: str,
        chunk_ms: int,
        loop: asyncio.AbstractEventLoop,
        on_frame: Callable[[bytes], None],
        on_problem: Callable[[str], None] | None = None,
        on_level: Callable[[float], None] | None = None,
        on_source: Callable[[str], None] | None = None,
        client_name: str = "sttd",
    ) -> None:
        if chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be positive, not {chunk_ms}")
        self._source = source
        self._chunk_ms = chunk_ms
        self._loop = loop
        self._on_frame = on_frame
        self._on_problem = on_problem
        self._on_level = on_level
        self._on_source = on_source
        self._client_name = client_name
        self._worker: _Worker | None = None
        self._generation: object | None = None
        self._starting: asyncio.Future[None] | None = None
        self._source_name = ""

    @property
    def source_name(self) -> str:
        """The device actually being recorded ("" before start and while none is)."""
        return self._source_name

    async def start(self) -> None:
        """Start recording; returns once the stream records, or raises AudioError.

        Loop thread. A no-op while running. Safe to cancel: the capture thread is stopped.
        """
        if self._worker is not None:
            return
        self._starting = started = self._loop.create_future()
        self._generation = generation = object()
        worker = _Worker(
            source=self._source,
            chunk_ms=self._chunk_ms,
            client_name=self._client_name,
            outlet=self._outlet(generation, started),
        )
        self._worker = worker
        worker.launch()
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                await started
        except TimeoutError:
            await self.stop()
            raise AudioError(f"the sound server did not start recording within {_START_TIMEOUT_S:.0f} s") from None
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the stream and join the capture thread. Loop thread; idempotent.

        Frames captured before the call are delivered before it returns; none after.
        A start() still waiting fails with AudioError. Cancelling stop() leaves the
        thread stopping by itself.
        """
        worker = self._worker
        if worker is None:
            return
        if self._starting is not None and not self._starting.done():
            self._starting.set_exception(AudioError("the capture was stopped before it recorded"))
        worker.request_stop()
        try:
            await asyncio.to_thread(worker.join)
        finally:
            if self._worker is worker:
                self._worker, self._generation, self._starting = None, None, None
                self._source_name = ""
            if not worker.thread.is_alive():
                worker.close()

    def _outlet(self, generation: object, started: asyncio.Future[None]) -> _Outlet:
        """Thread-safe hand-over functions for the worker of ``generation``."""

        def post(callback: Callable[..., None] | None, *args: Any) -> None:
            if callback is None:
                return
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
                self._loop.call_soon_threadsafe(self._deliver, generation, callback, args)

        def start_result(error: AudioError | None) -> None:
            if started.done():
                return
            if error is None:
                started.set_result(None)
            else:
                started.set_exception(error)

        return _Outlet(
            frame=lambda frame: post(self._on_frame, frame),
            level=(lambda peak: post(self._on_level, peak)) if self._on_level else None,
            problem=lambda message: post(self._on_problem, message),
            source=lambda name: post(self._set_source_name, name),
            started=lambda error: post(start_result, error),
        )

    def _deliver(self, generation: object, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        """Loop thread: run a callback from the capture thread unless that capture was stopped since."""
        if generation is self._generation:
            callback(*args)

    def _set_source_name(self, name: str) -> None:
        self._source_name = name
        if self._on_source is not None:
            self._on_source(name)
