"""PulseAudio/PipeWire capture and device following.

:class:`Capture` records one source as 24 kHz mono s16le frames of exactly
``chunk_ms``. The server does the resampling. The sound-server connection
belongs to a thread of the capture's own, with its own pulsectl connection:
libpulse and pulsectl are blocking and not thread-safe. While that thread has
nothing to do but stream, it lends its mainloop to the event loop, which then
reads the frames itself (:mod:`sttd.lending`); otherwise what the caller sees
(frames, level, problems, the device name) is handed to the asyncio loop.

The parts: :mod:`sttd.libpulse` (libpulse declarations, connections, the record
stream), :mod:`sttd.capture_worker` (the capture thread) and :mod:`sttd.following`
(which device to record, and following the default source).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pulsectl

from .capture_worker import Outlet, Worker
from .errors import AudioError
from .inbox import Inbox
from .lending import Lender
from .libpulse import BYTES_PER_MS, PA_INVALID_INDEX, SAMPLE_RATE, connect, server_label

log = logging.getLogger(__name__)

__all__ = ["BYTES_PER_MS", "SAMPLE_RATE", "Capture", "SourceInfo", "list_sources"]

_START_TIMEOUT_S = 10.0
_HAND_OFF_S = 0.005
"""How long Start blocks the loop for the capture thread to take its command (it takes ~0.2 ms)."""


@dataclass(frozen=True)
class SourceInfo:
    """A capture source as the sound server names and describes it."""

    name: str
    description: str
    is_default: bool


def list_sources() -> list[SourceInfo]:
    """The capture sources the server offers; monitors of outputs are left out unless one is the default.

    Blocking: call it off the event loop (``asyncio.to_thread``). Uses
    ``PULSE_SERVER`` like any libpulse client; raises AudioError without a server.
    """
    with connect("sttd") as pulse:
        try:
            default = pulse.server_info().default_source_name
            sources = pulse.source_list()
        except (pulsectl.PulseError, pulsectl.PulseDisconnected) as exc:
            raise AudioError(f"cannot list sources on {server_label()}: {exc}") from exc
    return [
        SourceInfo(name=s.name, description=s.description or s.name, is_default=s.name == default)
        for s in sources
        if s.monitor_of_sink == PA_INVALID_INDEX or s.name == default
    ]


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
        self._lender = Lender(loop)
        """While only streaming, the capture thread lends its mainloop here: one wake-up per frame, not two."""
        self._loop_thread = threading.get_ident()
        self._worker: Worker | None = None
        self._inbox: Inbox[tuple[object, list[bytes], float | None]] | None = None
        """Where the current worker's frames come in; made with the worker, closed once it has ended."""
        self._recording = False
        """start() was called and neither pause() nor stop() since."""
        self._generation: object | None = None
        self._starting: asyncio.Future[None] | None = None
        self._source_name = ""

    @property
    def source_name(self) -> str:
        """The device actually being recorded ("" before start and while none is)."""
        return self._source_name

    def begin(self) -> None:
        """Loop thread: ask for recording now, without waiting; :meth:`start` then waits for it.

        Start calls this first thing, so the stream opens while the rest of its
        work goes on. A no-op while recording (or asked to).
        """
        if self._worker is not None and self._recording:
            return
        self._starting = started = self._loop.create_future()
        # A start nobody waits for (cancelled at once, then paused) must not log an unretrieved error.
        started.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._generation = generation = object()
        outlet = self._outlet(generation, started)
        worker = self._worker
        self._recording = True
        if worker is None or not worker.thread.is_alive():
            self._launch(outlet)  # connects first: nothing to gain by waiting here
            return
        asked = worker.record(outlet)
        # The loop thread waits (without the GIL, at most a few ms) until the capture thread has
        # asked the server for the stream. Going on with Start's own work instead would hold
        # the GIL the woken capture thread needs, and delay the stream by up to a millisecond.
        asked.wait(_HAND_OFF_S)

    async def start(self) -> None:
        """Start recording (see :meth:`begin`); returns once the stream records, or raises AudioError.

        Loop thread. A no-op while running. After :meth:`pause` (or :meth:`warm`)
        the capture thread's connection is reused, so only a stream is created.
        Safe to cancel: the capture thread is stopped.
        """
        self.begin()
        started = self._starting
        if started is None:
            return
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                await started
        except TimeoutError:
            await self.stop()
            raise AudioError(f"the sound server did not start recording within {_START_TIMEOUT_S:.0f} s") from None
        except BaseException:
            await self.stop()
            raise

    def warm(self) -> None:
        """Loop thread: connect to the sound server now, without recording, so the next start() is quick.

        The capture thread then sleeps in its poll: no CPU and no wake-ups while idle.
        A no-op when the thread runs already.
        """
        if self._worker is None or not self._worker.thread.is_alive():
            self._launch(None)

    def _launch(self, outlet: Outlet | None) -> Worker:
        if self._worker is not None:
            self._worker.close()
        if self._inbox is not None:
            self._inbox.close()  # the worker it served has ended
        self._inbox = Inbox(self._loop, self._deliver_frames)
        worker = Worker(
            source=self._source,
            chunk_ms=self._chunk_ms,
            client_name=self._client_name,
            outlet=outlet,
            lender=self._lender,
        )
        self._worker = worker
        worker.launch()
        return worker

    async def pause(self) -> None:
        """Stop recording but keep the connection (see :meth:`warm`). Loop thread; idempotent.

        Frames captured before the call are delivered before it returns; none after.
        A start() still waiting fails with AudioError. Safe to cancel: the thread
        parks by itself, and nothing it hands over afterwards is delivered.
        """
        worker = self._worker
        if worker is None or not self._recording:
            return
        if self._starting is not None and not self._starting.done():
            self._starting.set_exception(AudioError("the capture was stopped before it recorded"))
        parked = self._loop.create_future()
        generation = self._generation

        def resolve() -> None:
            if self._inbox is not None:
                self._inbox.drain()  # the frames handed over before the park came first
            if not parked.done():
                parked.set_result(None)

        def done() -> None:  # the capture thread, after its last frame was posted
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(resolve)

        worker.park(done)
        try:
            await parked
        finally:
            if self._generation is generation:
                self._generation, self._starting, self._recording = None, None, False
                self._source_name = ""

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
            if self._inbox is not None and not worker.thread.is_alive():
                self._inbox.drain()  # its last frames, before nothing is delivered any more
            if self._worker is worker:
                self._worker, self._generation, self._starting = None, None, None
                self._source_name, self._recording = "", False
            if not worker.thread.is_alive():
                worker.close()
                if self._worker is None and self._inbox is not None:
                    self._inbox.close()
                    self._inbox = None

    def _outlet(self, generation: object, started: asyncio.Future[None]) -> Outlet:
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

        def frames(batch: list[bytes], peak: float | None) -> None:  # every wake-up that read audio
            inbox = self._inbox  # made before the worker started, closed only once it has ended
            if inbox is None:
                return
            if threading.get_ident() == self._loop_thread:  # read by the loop itself (a lent mainloop)
                inbox.drain()  # what the capture thread handed over before comes first
                self._deliver_frames((generation, batch, peak))
            else:
                inbox.put((generation, batch, peak))

        return Outlet(
            frames=frames,
            metered=self._on_level is not None,
            problem=lambda message: post(self._on_problem, message),
            source=lambda name: post(self._set_source_name, name),
            started=lambda error: post(start_result, error),
        )

    def _deliver_frames(self, item: tuple[object, list[bytes], float | None]) -> None:
        generation, batch, peak = item
        if generation is self._generation:
            on_frame = self._on_frame
            for frame in batch:
                on_frame(frame)
            if peak is not None and self._on_level is not None:
                self._on_level(peak)

    def _deliver(self, generation: object, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        """Loop thread: run a callback from the capture thread unless that capture was stopped since.

        The frames the thread handed over before it posted this go first.
        """
        if self._inbox is not None:
            self._inbox.drain()
        if generation is self._generation:
            callback(*args)

    def _set_source_name(self, name: str) -> None:
        self._source_name = name
        if self._on_source is not None:
            self._on_source(name)
