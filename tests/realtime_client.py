"""A plain websockets client of the fake Realtime service that checks every event it receives against the
SDK's models, with the audio, session settings and event sequences the service tests build on.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from sttd.protocol import ClientEvents, SessionSettings, TurnDetection

from .openai_models import validate_server_event
from .realtime_server import FakeRealtimeServer

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
MS = 48  # bytes of 24 kHz s16le mono per millisecond


# ------------------------------------------------------------------ helpers


def tone(ms: int, amplitude: float = 0.3, freq: float = 440.0) -> bytes:
    t = np.arange(ms * 24) / 24000
    return (amplitude * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2").tobytes()


def silence(ms: int) -> bytes:
    return bytes(ms * MS)


def run(factory: Callable[[], Awaitable[T]], timeout: float = 15) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await factory()

    return asyncio.run(bounded())


def settings(td: str = "server_vad", **kw: Any) -> SessionSettings:
    return SessionSettings(model="gpt-4o-mini-transcribe", turn_detection=TurnDetection(td, **kw))  # type: ignore[arg-type]


VAD = settings()


class Client:
    """A websockets client that checks every event it receives against the SDK models."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ev = ClientEvents("test")
        self.received: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def recv(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(await self.ws.recv())
        validate_server_event(event)
        self.received.append(event)
        return event

    async def until(self, type_: str) -> dict[str, Any]:
        while True:
            event = await self.recv()
            if event["type"] == type_:
                return event

    async def append(self, pcm: bytes, chunk_ms: int = 40) -> None:
        step = chunk_ms * MS
        for i in range(0, len(pcm), step):
            await self.send(self.ev.append(pcm[i : i + step]))

    def types(self) -> list[str]:
        return [e["type"] for e in self.received]


async def open_client(
    server: FakeRealtimeServer, session: SessionSettings | None = VAD, key: str | None = None
) -> Client:
    ws = await connect(server.url, additional_headers={"Authorization": f"Bearer {key or server.api_key}"})
    client = Client(ws)
    created = await client.recv()
    assert created["type"] == "session.created"
    if session is not None:
        await client.send(client.ev.session_update(session))
        await client.until("session.updated")
    return client


def post_token(server: FakeRealtimeServer, key: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body if body is not None else {"session": {"type": "transcription"}}).encode()
    request = urllib.request.Request(server.token_url, data=data, method="POST")
    request.add_header("Authorization", f"Bearer {key}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def turn_events(received: list[dict[str, Any]], item_id: str) -> list[str]:
    def concerns(e: dict[str, Any]) -> bool:
        return e.get("item_id") == item_id or e.get("item", {}).get("id") == item_id

    types = [e["type"] for e in received if concerns(e)]
    # consecutive deltas collapse into one entry
    return [t for i, t in enumerate(types) if i == 0 or t != types[i - 1] or not t.endswith(".delta")]


VAD_TURN = [
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "conversation.item.added",
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.done",
]


LIVE = "gpt-live-transcribe"
DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"


def model_settings(model: str, td: str = "client_vad", **kw: Any) -> SessionSettings:
    return SessionSettings(model=model, turn_detection=TurnDetection(td), **kw)  # type: ignore[arg-type]


def raw_update(event_id: str, model: str, td: Any = None, **transcription: Any) -> dict[str, Any]:
    """A ``session.update`` built by hand (sttd's builder would never send these shapes)."""
    audio_input = {
        "format": {"type": "audio/pcm", "rate": 24000},
        "transcription": {"model": model, **transcription},
        "turn_detection": td,
    }
    return {
        "type": "session.update",
        "event_id": event_id,
        "session": {"type": "transcription", "audio": {"input": audio_input}},
    }
