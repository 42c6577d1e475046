"""The capture thread lends its libpulse mainloop to the event loop while it only streams.

Why: at 20 ms frames a thread wake-up is most of what streaming costs (cold
caches, and a VM charges every switch), and the loop thread has to wake for
each frame anyway to send it. Reading the record stream on the capture thread
and handing each frame over cost two wake-ups per frame, on two threads.
While nothing but audio is coming in (the stream records, no device event, no
command), the capture thread therefore blocks and lends its mainloop: the
event loop watches libpulse's file descriptors in its own selector and runs
the mainloop's iterations itself, so a frame is read and sent in one wake-up.

Whatever needs the capture thread's slow, blocking logic (a device event, a
stream state change, a command, a stop, the connection lost) makes the loop
give the mainloop back at the end of that iteration; the capture thread
handles it with its synchronous pulsectl calls as before, and lends again
once it only streams. The mainloop is never used by two threads at once: the
lender is blocked from the moment it lends until it is given the mainloop back.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from typing import Any, Protocol

from .libpulse import pa_mainloop_iterate, set_poll_func

log = logging.getLogger(__name__)

_POLLIN, _POLLPRI, _POLLOUT = 0x1, 0x2, 0x4
_MAX_ITERATIONS = 16
"""Iterations per wake-up before the loop lets other work run (a mainloop with work due at once)."""


class _PollFd(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short)]


_POLLFD_SIZE = ctypes.sizeof(_PollFd)
_POLL_FUNC = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_PollFd), ctypes.c_ulong, ctypes.c_int, ctypes.c_void_p)
_libc_poll = ctypes.CDLL(None, use_errno=True).poll
_libc_poll.restype, _libc_poll.argtypes = ctypes.c_int, [ctypes.POINTER(_PollFd), ctypes.c_ulong, ctypes.c_int]


class Borrower(Protocol):
    """The capture worker as the loop sees it while it holds the mainloop."""

    def dispatched(self) -> None:
        """After the iterations of one wake-up: hand over the frames they read."""

    def needs_thread(self) -> bool:
        """Whether the capture thread must take the mainloop back (an event, a command, a loss)."""


class Lender:
    """Runs a lent libpulse mainloop on the event loop; one lending at a time.

    :meth:`lend` is called on the capture thread; everything else runs on the
    loop thread.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pulse: Any = None
        self._borrower: Borrower | None = None
        self._returned: threading.Event | None = None
        self._watched: dict[int, int] = {}
        self._fds: tuple[tuple[int, int], ...] = ()
        self._raw_fds = b""
        self._watched_fds: tuple[tuple[int, int], ...] | None = None
        self._polled = False
        self._ready = 0
        self._mainloop: Any = None
        self._timeout_ms = -1
        self._timer: asyncio.TimerHandle | None = None
        self._poll_func = _POLL_FUNC(self._poll)  # kept alive for as long as libpulse may call it

    def lend(self, pulse: Any, borrower: Borrower) -> bool:
        """Capture thread: let the loop run ``pulse``'s mainloop until the borrower needs the thread.

        Blocks until the mainloop is given back. False (at once) when the loop
        cannot take it (closed); the caller then polls itself.
        """
        returned = threading.Event()
        try:
            self._loop.call_soon_threadsafe(self._take, pulse, borrower, returned)
        except RuntimeError:
            return False
        while not returned.wait(1.0):
            if self._loop.is_closed():  # nobody drives the mainloop any more: it is ours again
                set_poll_func(pulse, None)
                break
        return True

    # -- the loop thread --

    def _take(self, pulse: Any, borrower: Borrower, returned: threading.Event) -> None:
        self._pulse, self._borrower, self._returned = pulse, borrower, returned
        self._mainloop, self._watched_fds = pulse._loop, None
        set_poll_func(pulse, self._poll_func)
        log.debug("streaming on the event loop")
        self._run()

    def _run(self) -> None:
        """One wake-up: the mainloop's iterations until it waits, then watch or give back."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        borrower = self._borrower
        if borrower is None:
            return  # given back since this was scheduled
        iterate, mainloop, ok = pa_mainloop_iterate, self._mainloop, True
        for _ in range(_MAX_ITERATIONS):
            # A blocking iteration, but our poll function never waits: it gets the true timeout.
            self._polled = False
            if iterate(mainloop, 1, None) < 0:
                ok = False
                break
            # Done once a poll found nothing ready and no timer due. A poll that did not run at
            # all means libpulse ran its deferred work instead, and more may have become due.
            if self._polled and not self._ready and self._timeout_ms != 0:
                break
        borrower.dispatched()
        if not ok or borrower.needs_thread():
            self._give_back()
        elif self._fds is not self._watched_fds or self._timeout_ms >= 0:
            self._watch()

    def _poll(self, fds: Any, count: int, timeout_ms: int, _userdata: Any) -> int:
        # libpulse's poll, called inside mainloop_poll: note what it waits for, then look without waiting.
        # libpulse clears the revents it dispatched, so the bytes are mostly the same from one call to
        # the next; when they differ (a new descriptor, or an old revents) the set is simply read again.
        raw = ctypes.string_at(fds, count * _POLLFD_SIZE)
        if raw != self._raw_fds:
            self._raw_fds = raw
            self._fds = tuple((fds[i].fd, fds[i].events) for i in range(count))
        self._ready = ready = int(_libc_poll(fds, count, 0))
        self._timeout_ms, self._polled = timeout_ms, True
        return ready

    def _watch(self) -> None:
        """Watch what the mainloop waits for, in the loop's selector (unchanged sets are left alone)."""
        wanted: dict[int, int] = {}
        for fd, events in self._fds:
            wanted[fd] = wanted.get(fd, 0) | events
        if wanted != self._watched:
            self._unwatch()
            for fd, events in wanted.items():
                if events & (_POLLIN | _POLLPRI):
                    self._loop.add_reader(fd, self._run)
                if events & _POLLOUT:
                    self._loop.add_writer(fd, self._run)
            self._watched = wanted
        self._watched_fds = self._fds
        if self._timeout_ms == 0:
            self._timer = self._loop.call_later(0, self._run)
        elif self._timeout_ms > 0:
            self._timer = self._loop.call_later(self._timeout_ms / 1000, self._run)

    def _unwatch(self) -> None:
        self._watched_fds = None
        for fd in self._watched:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        self._watched = {}

    def _give_back(self) -> None:
        self._unwatch()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        set_poll_func(self._pulse, None)  # libpulse's own poll again, in C, for the capture thread
        returned, self._returned = self._returned, None
        self._pulse, self._borrower = None, None
        log.debug("streaming back on the capture thread")
        if returned is not None:
            returned.set()
