"""A real :class:`RealtimeSession` with the real core behind it, as the daemon wires them, for session tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from sttd import core
from sttd import protocol as p
from sttd.credentials import ApiKey, CredentialSource
from sttd.realtime import RealtimeSession, SessionOptions

from .bus import wait_until_async
from .realtime_server import FakeRealtimeServer

RATE = p.SAMPLE_RATE
FRAME = RATE * 40 // 1000  # 40 ms frames, as sttd sends them


class Harness:
    """A session with the real core listening, as the daemon wires them."""

    def __init__(self, server: FakeRealtimeServer, *, token: bool = False, **options: Any) -> None:
        triggers = core.Triggers(r"\bsend\b", r"\bpurge\b")
        self.core = core.Dictation(enabled=True, language="", triggers=triggers)
        self.core.start()
        self.outputs: list[core.Output] = []
        self.timed: list[tuple[float, core.Output]] = []
        """Each output with the monotonic time it came out."""
        settings = options.pop("settings", p.SessionSettings(model="gpt-4o-mini-transcribe"))
        opts = SessionOptions(url=server.url, settings=settings, backoff_base_s=0.05, **options)
        credentials = CredentialSource(ApiKey(server.api_key, "test"), server.token_url if token else "")
        self.session = RealtimeSession(opts, credentials, listener=self)
        self.ready = 0
        self.reconnects: list[str] = []

    def session_ready(self) -> None:
        self.ready += 1
        self.core.session_ready()
        self._drain()

    def session_event(self, event: p.ServerEvent) -> None:
        self.core.server_event(event)
        self._drain()

    def session_reconnecting(self, reason: str) -> None:
        self.reconnects.append(reason)
        self.core.session_reconnecting(reason)
        self._drain()

    def _drain(self) -> None:
        outputs = self.core.take_outputs()
        self.outputs.extend(outputs)
        now = time.monotonic()
        self.timed.extend((now, o) for o in outputs)

    def finals(self) -> list[core.TranscriptEmitted]:
        self._drain()
        return [o for o in self.outputs if isinstance(o, core.TranscriptEmitted) and o.final]

    def errors(self) -> list[core.ErrorRaised]:
        return [o for o in self.outputs if isinstance(o, core.ErrorRaised)]

    async def feed(self, samples: np.ndarray, speed: float = 4.0) -> None:
        """Send 40 ms frames paced at ``speed`` times real time, as a microphone would."""
        data = samples.astype("<i2").tobytes()
        step = FRAME * 2
        for i in range(0, len(data), step):
            self.session.send_audio(data[i : i + step])
            await asyncio.sleep(0.04 / speed)

    async def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        await wait_until_async(predicate, timeout, what)


def run(harness_body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(harness_body(), 60))
