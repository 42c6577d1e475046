"""What the offline engine's tests share: the test model, espeak-ng speech and silence, the engine run on an
event loop in a thread, and a raw websockets client of it that checks every event against the SDK's models.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect, unix_connect

from sttd import protocol as p
from sttd.engine.supervisor import EngineEndpoint

from ..openai_models import server_event_problems
from ..sound import speech_wav, wav_samples

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = Path(os.environ.get("STTD_TEST_MODEL", REPO / ".cache" / "whisper-base"))
RATE = p.SAMPLE_RATE
FRAME_BYTES = RATE * 40 // 1000 * 2
MANUAL = p.TurnDetection("manual")

# Whisper base hears each of these right whatever the alignment of the audio to the 32 ms VAD windows
# (checked at 4 ms steps); "the quick brown fox jumps..." is not one of them: at some offsets the fox "dumps".
SENTENCES = [
    "please remember to buy milk on the way home",
    "the weather is lovely today",
    "we will meet in the library after lunch",
    "can you call me back tomorrow morning",
]


SPEECH_CACHE: dict[str, np.ndarray] = {}


def speech(text: str) -> np.ndarray:
    """espeak-ng saying ``text`` (-s 175 -g 5), 24 kHz int16, made once per process."""
    if text not in SPEECH_CACHE:
        with tempfile.TemporaryDirectory() as tmp:
            SPEECH_CACHE[text] = wav_samples(speech_wav(text, Path(tmp) / "speech.wav"))
    return SPEECH_CACHE[text]


def voiced_ms(samples: np.ndarray) -> tuple[float, float]:
    """Where the voice starts and ends in a clip (espeak-ng leaves ~350 ms of silence at the end)."""
    loud = np.nonzero(np.abs(samples.astype(np.int32)) > 300)[0]
    return loud[0] / RATE * 1000, loud[-1] / RATE * 1000


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.int16)


# ------------------------------------------------------------------ fixtures


@dataclass(frozen=True)
class RunningEngine:
    """The package's engine: what the test_session Harness needs (``url``, ``api_key``) and more."""

    url: str
    api_key: str
    unix_socket: str
    endpoint: EngineEndpoint
    token_url: str = ""


def in_thread(body: Callable[[asyncio.Event, Callable[[Any], None]], Any]) -> tuple[Any, Callable[[], None]]:
    """Run ``body(stop, ready)`` on an event loop in a thread until ``stop``; returns what it passed to ready."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    def thread() -> None:
        async def main() -> None:
            stop = asyncio.Event()
            state["loop"], state["stop"] = asyncio.get_running_loop(), stop

            def got(value: Any) -> None:
                state["value"] = value
                ready.set()

            await body(stop, got)

        try:
            asyncio.run(main())
        except BaseException as exc:
            state["error"] = exc
        finally:
            ready.set()

    worker = threading.Thread(target=thread, name="engine-supervisor", daemon=True)
    worker.start()
    ready.wait(90)
    if "value" not in state:
        worker.join(10)
        raise AssertionError(f"the engine did not start: {state.get('error')!r}")

    def stop() -> None:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        worker.join(30)
        if "error" in state:
            raise state["error"]

    return state["value"], stop


# ------------------------------------------------------------ a raw client


class Client:
    """A bare websocket client: sends client events, collects server events, validating each one."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self._counter = 0

    async def send(self, event: dict[str, Any]) -> str:
        self._counter += 1
        event_id = event.setdefault("event_id", f"test_{self._counter}")
        await self.ws.send(json.dumps(event))
        return str(event_id)

    async def update(self, turn_detection: Any = "default", **transcription: Any) -> dict[str, Any]:
        audio_input: dict[str, Any] = {
            "format": {"type": "audio/pcm", "rate": RATE},
            "transcription": {"model": "gpt-4o-mini-transcribe", **transcription},
        }
        if turn_detection != "default":
            audio_input["turn_detection"] = turn_detection
        await self.send(
            {"type": "session.update", "session": {"type": "transcription", "audio": {"input": audio_input}}}
        )
        reply = await self.next(lambda e: e["type"] in ("session.updated", "error"))
        assert reply["type"] == "session.updated", reply
        return reply

    async def append(self, samples: np.ndarray) -> None:
        data = samples.astype("<i2").tobytes()
        for i in range(0, len(data), FRAME_BYTES):
            chunk = base64.b64encode(data[i : i + FRAME_BYTES]).decode()
            await self.ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))

    async def receive(self, timeout: float = 30) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        event: dict[str, Any] = json.loads(raw)
        self.problems += [f"{event.get('type')}: {problem}" for problem in server_event_problems(event)]
        self.events.append(event)
        return event

    async def next(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = await self.receive(max(0.01, deadline - time.monotonic()))
            if predicate(event):
                return event

    async def turns_done(self, count: int, timeout: float = 40) -> list[dict[str, Any]]:
        """Wait for ``count`` more ``conversation.item.done``; returns the completions since the start."""
        for _ in range(count):
            await self.next(lambda e: e["type"] in ("conversation.item.done",), timeout)
        return self.of("conversation.item.input_audio_transcription.completed")

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    async def quiet(self, seconds: float) -> list[dict[str, Any]]:
        """Events that arrive within ``seconds`` (expecting none, usually)."""
        got = []
        try:
            while True:
                got.append(await self.receive(seconds))
        except TimeoutError:
            return got


async def open_client(engine: RunningEngine, *, unix: bool = False) -> Client:
    headers = {"Authorization": f"Bearer {engine.api_key}"}
    if unix:
        ws = await unix_connect(
            engine.unix_socket, "ws://localhost/v1/realtime?intent=transcription", additional_headers=headers
        )
    else:
        ws = await connect(engine.url, additional_headers=headers, max_size=2**24)
    client = Client(ws)
    created = await client.receive()
    assert created["type"] == "session.created"
    return client


def session(engine: RunningEngine, body: Callable[[Client], Any], *, unix: bool = False) -> Client:
    """Run ``body(client)`` on a fresh session; every event the engine sent must validate."""

    async def main() -> Client:
        client = await open_client(engine, unix=unix)
        try:
            await asyncio.wait_for(body(client), 90)
        finally:
            await client.ws.close()
        return client

    client = asyncio.run(main())
    assert client.problems == [], "events that do not match the openai models:\n" + "\n".join(client.problems)
    return client
