"""Where captured audio goes: the running session, or the pre-roll ring while idle.

Without pre-roll (the default) the microphone is opened by Start and closed
by Stop, so an idle daemon records nothing and does no audio work. With
``[audio] preroll_ms`` above 0 the stream stays open while idle and the last
``preroll_ms`` of audio wait in memory (never sent anywhere) so that the
first word said together with Start is whole.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable

from . import audio
from .config import AudioConfig

logger = logging.getLogger(__name__)

FrameSink = Callable[[bytes], None]
HOLD_S = 120
"""How much audio Start keeps while the session is still being set up (a slow engine start)."""


class Microphone:
    """Owns the :class:`~sttd.audio.Capture` and routes its frames. Runs on the event loop."""

    def __init__(
        self,
        config: AudioConfig,
        *,
        on_problem: Callable[[str], None],
        on_level: Callable[[float], None],
        on_source: Callable[[str], None],
    ) -> None:
        self._config = config
        self._on_problem = on_problem
        self._on_level = on_level
        self._on_source = on_source
        self._capture: audio.Capture | None = None
        self._sink: FrameSink | None = None
        self._ring: deque[bytes] = deque(maxlen=self._ring_frames(config))
        self._held: deque[bytes] = deque()
        self._opening = asyncio.Lock()  # Start and the pre-roll may both open it
        self._detached = True

    @staticmethod
    def _ring_frames(config: AudioConfig) -> int:
        return math.ceil(config.preroll_ms / config.chunk_ms) if config.preroll_ms else 0

    @property
    def keeps_open(self) -> bool:
        return self._config.preroll_ms > 0

    @property
    def source_name(self) -> str:
        return self._capture.source_name if self._capture is not None else ""

    def warm(self) -> None:
        """Connect to the sound server now, recording nothing, so that Start only has to open a stream.

        Event loop only. Idle costs nothing: the capture thread sleeps in its poll.
        """
        if self._capture is None:
            self._capture = self._new_capture()
        self._capture.warm()

    def begin(self) -> None:
        """Ask for recording now, without waiting: Start's other work then overlaps the stream's opening.

        Event loop only. :meth:`open` waits for it (and reports its failure). A
        no-op while another open is under way: that one's ``open()`` does it.
        """
        if self._opening.locked():
            return
        if self._capture is None:
            self._capture = self._new_capture()
        self._capture.begin()

    async def open(self) -> None:
        """Start recording if not already; raises :class:`~sttd.errors.AudioError`. Safe to cancel."""
        async with self._opening:
            if self._capture is None:
                self._capture = self._new_capture()
            try:
                await self._capture.start()  # a no-op while recording
            except BaseException:
                self._capture = None  # start() stopped its thread
                raise

    def _new_capture(self) -> audio.Capture:
        return audio.Capture(
            source=self._config.source,
            chunk_ms=self._config.chunk_ms,
            loop=asyncio.get_running_loop(),
            on_frame=self._frame,
            on_problem=self._on_problem,
            on_level=self._on_level,
            on_source=self._on_source,
        )

    def hold(self) -> None:
        """Keep every frame from now on until :meth:`attach`: Start has begun, the session is not ready.

        The pre-roll moves into the held frames here, so it is sent first and
        the ring only ever holds audio from before a Start.
        """
        self._held = deque(self._ring, maxlen=self._ring_frames(self._config) + HOLD_S * 1000 // self._config.chunk_ms)
        self._ring.clear()
        self._sink = self._held.append
        self._detached = False

    def attach(self, sink: FrameSink) -> None:
        """Send what was held to ``sink``, then every new frame, unless Stop already detached us."""
        while self._held:
            sink(self._held.popleft())
        if not self._detached:
            self._sink = sink

    async def detach(self) -> None:
        """Stop sending frames to the session; every frame captured until now has been delivered.

        Closes the stream unless pre-roll keeps it open.
        """
        if not self.keeps_open:
            await self.pause()  # delivers every frame captured before it returns
        # Stopped before the session existed? What was held waits for attach();
        # nothing captured from now on belongs to this dictation.
        self._sink = None
        self._detached = True

    async def pause(self) -> None:
        """Close the stream but keep the connection to the sound server (see :meth:`warm`)."""
        async with self._opening:
            if self._capture is not None:
                await self._capture.pause()

    async def close(self) -> None:
        async with self._opening:  # an open in progress finishes first, then is closed
            capture, self._capture = self._capture, None
            if capture is not None:
                await capture.stop()

    async def reconfigure(self, config: AudioConfig) -> None:
        """Take a new ``[audio]`` section; reopens the stream only when idle and the source changed."""
        changed = (config.source, config.chunk_ms) != (self._config.source, self._config.chunk_ms)
        self._config = config
        self._ring = deque(self._ring, maxlen=self._ring_frames(config))
        if self._sink is None and changed:
            await self.close()
            if self.keeps_open:
                await self.open()
            else:
                self.warm()

    def _frame(self, pcm: bytes) -> None:
        if self._sink is not None:
            self._sink(pcm)
        elif self._ring.maxlen:
            self._ring.append(pcm)
