"""libpulse, declared with its real C signatures, and connections to the sound server.

pulsectl declares ``pa_stream_peek`` with a ``c_int*`` size (it is ``size_t*``)
and lacks most stream calls, so the record stream is driven through the
libpulse declarations here, on the context of a pulsectl connection.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
import select
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pulsectl

from .errors import AudioError

log = logging.getLogger(__name__)


SAMPLE_RATE = 24000
BYTES_PER_MS = SAMPLE_RATE * 2 // 1000

CONNECT_TIMEOUT_S = 3.0
PA_INVALID_INDEX = 0xFFFFFFFF

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


_pa_mainloop_prepare = _declare("pa_mainloop_prepare", _int, _vp, _int)
_pa_mainloop_poll = _declare("pa_mainloop_poll", _int, _vp)
_pa_mainloop_dispatch = _declare("pa_mainloop_dispatch", _int, _vp)
_pa_mainloop_wakeup = _declare("pa_mainloop_wakeup", None, _vp)
_pa_mainloop_set_poll_func = _declare("pa_mainloop_set_poll_func", None, _vp, _vp, _vp)


def mainloop_prepare(pulse: Any, timeout_us: int) -> bool:
    """First step of one mainloop iteration (-1: no timeout); False once the loop quit."""
    return int(_pa_mainloop_prepare(pulse._loop, timeout_us)) >= 0


def mainloop_poll_dispatch(pulse: Any) -> bool:
    """Poll (in C, without the GIL) and dispatch the callbacks; False on error or quit."""
    return int(_pa_mainloop_poll(pulse._loop)) >= 0 and int(_pa_mainloop_dispatch(pulse._loop)) >= 0


pa_mainloop_iterate = _declare("pa_mainloop_iterate", _int, _vp, _int, _vp)
"""The raw ctypes function (mainloop, block, retval): one whole iteration in one call, for the hot path."""


def set_poll_func(pulse: Any, func: Any) -> None:
    """Make a ctypes ``pa_poll_func`` the mainloop's poll, or (None) libpulse's own ``poll`` in C."""
    _pa_mainloop_set_poll_func(pulse._loop, ctypes.cast(func, ctypes.c_void_p) if func is not None else None, None)


def mainloop_wakeup(pulse: Any) -> None:
    """Any thread: make the mainloop's poll (current or next) return."""
    _pa_mainloop_wakeup(pulse._loop)


def pa_error(pulse: Any) -> str:
    """The last error of a pulsectl connection's context, in libpulse's words."""
    message: bytes | None = _pa_strerror(_pa_context_errno(pulse._ctx))
    return message.decode(errors="replace") if message else "unknown error"


# --- connections --------------------------------------------------------------------------------


def server_label() -> str:
    return os.environ.get("PULSE_SERVER") or "the default sound server"


PollFunc = Callable[[list[Any], float], int]


@contextmanager
def connect(client_name: str, poll: PollFunc | None = None) -> Iterator[Any]:
    """A pulsectl connection that never autospawns a server; raises AudioError when there is none.

    ``poll`` (default: a plain poll) becomes the connection's mainloop poll function.
    """
    pulse = pulsectl.Pulse(client_name, connect=False)
    inner = poll or poll_fds
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
            pulse.connect(autospawn=False, timeout=CONNECT_TIMEOUT_S)
        except pulsectl.PulseError as exc:
            raise AudioError(f"cannot connect to {server_label()}: {pa_error(pulse)}") from exc
        connecting = False
        # From here libpulse polls in C: no Python runs per wake-up but the callbacks.
        set_poll_func(pulse, None)
        yield pulse
    finally:
        pulse.close()


def _log_poll_error(*exc_info: Any) -> None:
    log.error("sound server poll failed", exc_info=exc_info)


def poll_fds(fds: list[Any], timeout: float, extra: socket.socket | None = None) -> int:
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


# --- the record stream --------------------------------------------------------------------------


class RecordStream:
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
            raise AudioError(f"cannot create a record stream: {pa_error(pulse)}")
        self._ptr = ptr
        self._on_data = on_data
        self._peek_data, self._peek_size = ctypes.c_void_p(), ctypes.c_size_t()
        self._peek_data_ref, self._peek_size_ref = ctypes.byref(self._peek_data), ctypes.byref(self._peek_size)
        # ctypes callbacks must outlive the stream's use of them: keep them on self.
        self._read_cb = _READ_CB(self._on_read)
        self._notify_cb = _NOTIFY_CB(lambda _stream, _userdata: on_change())
        _pa_stream_set_read_callback(ptr, self._read_cb, None)
        for setter in (_pa_stream_set_state_callback, _pa_stream_set_moved_callback, _pa_stream_set_suspended_callback):
            setter(ptr, self._notify_cb, None)
        self._connect(pulse, device, fragment_bytes)

    def _connect(self, pulse: Any, device: str | None, fragment_bytes: int) -> None:
        unset = PA_INVALID_INDEX
        attr = _BufferAttr(maxlength=unset, tlength=unset, prebuf=unset, minreq=unset, fragsize=fragment_bytes)
        # A named source is never silently swapped for another: the server must not move it.
        flags = _PA_STREAM_ADJUST_LATENCY | (_PA_STREAM_DONT_MOVE if device else 0)
        name = device.encode() if device else None
        if _pa_stream_connect_record(self._ptr, name, ctypes.byref(attr), flags) < 0:
            error = pa_error(pulse)
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

    def _on_read(self, _stream: int | None, nbytes: int, _userdata: int | None) -> None:
        # nbytes is what is readable now: usually one fragment, one peek (a peek to find nothing
        # left would be one more ctypes call per frame). The ctypes out-arguments are made once.
        data, size, peek, drop, ptr = self._peek_data, self._peek_size, _pa_stream_peek, _pa_stream_drop, self._ptr
        try:
            while nbytes > 0 and peek(ptr, self._peek_data_ref, self._peek_size_ref) == 0 and size.value:
                nbytes -= size.value
                chunk = ctypes.string_at(data.value, size.value) if data.value else bytes(size.value)
                drop(ptr)
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
