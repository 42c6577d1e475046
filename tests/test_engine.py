"""The offline engine (``sttd-engine``): the Realtime protocol served locally, Whisper behind it.

One engine runs for the whole module (loading the model costs seconds), under
the daemon's own supervisor (:class:`sttd.engine.supervisor.EngineProcess`),
with Whisper base from ``scripts/fetch-test-model``. Its speech is espeak-ng
speech; every event it sends is checked against the ``openai`` package's
models; the Realtime client runs against it as it runs against OpenAI; and at
the end sttd itself dictates through it from a PulseAudio microphone.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect, unix_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sttd import core
from sttd import protocol as p
from sttd.config import LocalConfig
from sttd.engine.partials import final_delta
from sttd.engine.resample import Resampler, resample
from sttd.engine.supervisor import EngineEndpoint, EngineError, EngineProcess, engine_available
from sttd.engine.vad import WINDOW, InputBuffer, SpeechStart, SpeechStop, VadSettings
from sttd.models import TURN_DETECTION_REFUSED, model_info

from .bus import SessionBus, wait_until
from .daemon import Listener, Sttd
from .openai_models import server_event_problems
from .sound import SoundServer, speech_wav, wav_samples
from .test_session import Harness, dictate, run
from .wer import wer, words

REPO = Path(__file__).resolve().parent.parent
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
    """espeak-ng saying ``text`` (-s 175 -g 5), 24 kHz int16, made once per module."""
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
    """The module's engine: what the test_session Harness needs (``url``, ``api_key``) and more."""

    url: str
    api_key: str
    unix_socket: str
    endpoint: EngineEndpoint
    token_url: str = ""


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    """Nothing here may fetch a model from a hub: an engine given a name instead of a directory fails fast."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield
    if old is None:
        del os.environ["HF_HUB_OFFLINE"]
    else:
        os.environ["HF_HUB_OFFLINE"] = old


@pytest.fixture(scope="module")
def model_dir() -> Path:
    if not engine_available():
        pytest.fail("faster-whisper is not installed: pip install -e '.[local]' (scripts/test does)")
    if not (MODEL_DIR / "model.bin").exists():
        pytest.fail(f"no test model in {MODEL_DIR}: run scripts/fetch-test-model (scripts/test does)")
    return MODEL_DIR


def _in_thread(body: Callable[[asyncio.Event, Callable[[Any], None]], Any]) -> tuple[Any, Callable[[], None]]:
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


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[RunningEngine]:
    sock_dir = Path(tempfile.mkdtemp(prefix="sttd-engine-", dir="/tmp"))  # a unix socket path must stay short
    sock = str(sock_dir / "engine.sock")

    async def body(stop: asyncio.Event, ready: Callable[[Any], None]) -> None:
        process = EngineProcess(
            LocalConfig(model=str(model_dir)), log_level="DEBUG", unix_socket=sock, listen="127.0.0.1:0"
        )
        async with process as ep:
            ready(ep)
            await stop.wait()

    endpoint, stop = _in_thread(body)
    try:
        yield RunningEngine(endpoint.url, endpoint.api_key, sock, endpoint)
    finally:
        stop()
        assert not os.path.exists(sock), "the engine left its socket behind"
        sock_dir.rmdir()


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


# --------------------------------------------------- the protocol, raw


def test_a_spoken_turn_gets_every_event_in_order_and_each_matches_the_openai_models(engine: RunningEngine) -> None:
    sentence = SENTENCES[0]
    lead = 1.0

    async def body(c: Client) -> None:
        updated = await c.update(language="en")
        config = updated["session"]["audio"]["input"]
        assert config["format"] == {"type": "audio/pcm", "rate": 24000}
        # The model the client named (Whisper does the work whatever the name).
        assert config["transcription"] == {"model": "gpt-4o-mini-transcribe", "language": "en"}
        assert config["turn_detection"] == {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 500,
        }
        await c.append(np.concatenate([silence(lead), speech(sentence), silence(1.0)]))
        await c.turns_done(1)

    c = session(engine, body)
    kinds = [e["type"] for e in c.events]
    turn = [k for k in kinds if k not in ("session.created", "session.updated")]
    assert turn[:4] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
    ]
    assert turn[4:-2] and set(turn[4:-2]) == {"conversation.item.input_audio_transcription.delta"}
    assert turn[-2:] == ["conversation.item.input_audio_transcription.completed", "conversation.item.done"]
    started, stopped = c.of("input_audio_buffer.speech_started")[0], c.of("input_audio_buffer.speech_stopped")[0]
    item = started["item_id"]
    assert {e.get("item_id") for e in c.events if "item_id" in e} == {item}
    assert c.of("input_audio_buffer.committed")[0]["previous_item_id"] is None
    # The turn starts 300 ms (the prefix padding) before the speech, and ends 500 ms (the silence) after it.
    voice_start, voice_end = voiced_ms(speech(sentence))
    onset_ms, end_ms = lead * 1000 + voice_start, lead * 1000 + voice_end
    assert onset_ms - 300 - 50 <= started["audio_start_ms"] <= onset_ms - 300 + 100
    assert end_ms + 500 <= stopped["audio_end_ms"] <= end_ms + 500 + 150
    completed = c.of("conversation.item.input_audio_transcription.completed")[0]
    assert "languages" not in completed  # only the gpt-transcribe family reports them
    deltas = "".join(e["delta"] for e in c.of("conversation.item.input_audio_transcription.delta"))
    assert deltas.strip() == completed["transcript"]
    assert words(completed["transcript"]) == words(sentence)
    turn_seconds = (stopped["audio_end_ms"] - started["audio_start_ms"]) / 1000
    assert completed["usage"] == {"type": "duration", "seconds": pytest.approx(turn_seconds, abs=0.05)}
    assert c.of("conversation.item.done")[0]["item"]["content"][0]["transcript"] == completed["transcript"]


def test_bad_requests_get_error_events_with_the_services_codes(engine: RunningEngine) -> None:
    async def body(c: Client) -> None:
        async def refused(event: dict[str, Any] | str) -> dict[str, Any]:
            if isinstance(event, str):
                await c.ws.send(event)
            else:
                await c.send(event)
            return (await c.next(lambda e: e["type"] == "error"))["error"]

        error = await refused({"type": "response.create", "event_id": "evt_unknown"})
        assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", "type", "evt_unknown")
        error = await refused({"type": "no.such.event", "event_id": "evt_nonsense"})
        assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", "type", "evt_nonsense")

        await c.append(silence(0.05))
        error = await refused({"type": "input_audio_buffer.commit", "event_id": "evt_commit"})
        assert (error["code"], error["event_id"]) == ("input_audio_buffer_commit_empty", "evt_commit")
        assert "buffer too small" in error["message"]

        def update(audio_input: dict[str, Any], event_id: str, **session: Any) -> dict[str, Any]:
            body = {"type": "transcription", "audio": {"input": audio_input}, **session}
            return {"type": "session.update", "event_id": event_id, "session": body}

        error = await refused(update({"format": {"type": "audio/pcm", "rate": 16000}}, "evt_rate"))
        assert error["code"] == "invalid_value"
        assert error["param"] == "session.audio.input.format.rate"
        assert error["event_id"] == "evt_rate"
        error = await refused(update({"turn_detection": {"type": "semantic_vad"}}, "evt_semantic"))
        assert (error["code"], error["param"]) == ("invalid_value", "session.audio.input.turn_detection.type")
        assert "semantic" in error["message"]
        error = await refused(update({"turn_detection": {"type": "server_vad", "threshold": 2}}, "evt_threshold"))
        assert (error["code"], error["param"]) == ("invalid_value", "session.audio.input.turn_detection.threshold")
        error = await refused(update({"transcription": {"language": "xx"}}, "evt_language"))
        assert (error["code"], error["param"]) == ("invalid_value", "session.audio.input.transcription.language")
        error = await refused(update({}, "evt_unknown_key", voice="alloy"))
        assert (error["code"], error["param"]) == ("unknown_parameter", "session.voice")
        realtime = {"type": "session.update", "event_id": "evt_realtime", "session": {"type": "realtime"}}
        error = await refused(realtime)
        assert (error["code"], error["event_id"]) == ("invalid_parameter", "evt_realtime")
        assert error["message"] == "Passing a realtime session update event to a transcription session is not allowed."
        error = await refused("{not json")
        assert error["code"] == "invalid_json"
        error = await refused({"type": "input_audio_buffer.append", "event_id": "evt_audio", "audio": "**"})
        assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", "audio", "evt_audio")

        # None of it changed the session: an update still works, and so does the buffer.
        updated = await c.update()
        assert updated["session"]["audio"]["input"]["format"]["rate"] == 24000
        assert updated["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        await c.send({"type": "input_audio_buffer.clear"})
        await c.next(lambda e: e["type"] == "input_audio_buffer.cleared")

    c = session(engine, body)
    assert len(c.of("error")) == 11


def test_each_model_name_gets_the_services_rules_and_a_refused_update_changes_nothing(engine: RunningEngine) -> None:
    base = "session.audio.input.transcription"

    async def body(c: Client) -> None:
        async def answer(event_id: str, turn_detection: Any = "omit", **transcription: Any) -> dict[str, Any]:
            audio_input: dict[str, Any] = {"transcription": transcription}
            if turn_detection != "omit":
                audio_input["turn_detection"] = turn_detection
            session = {"type": "transcription", "audio": {"input": audio_input}}
            await c.send({"type": "session.update", "event_id": event_id, "session": session})
            return await c.next(lambda e: e["type"] in ("session.updated", "error"))

        async def refused(event_id: str, turn_detection: Any = "omit", **transcription: Any) -> tuple[str, str]:
            reply = await answer(event_id, turn_detection, **transcription)
            assert reply["type"] == "error", reply
            error = reply["error"]
            assert (error["type"], error["event_id"]) == ("invalid_request_error", event_id)
            return error["param"], error["message"]

        server_vad = {"type": "server_vad"}
        for model in ("gpt-live-transcribe", "gpt-realtime-whisper"):
            param, message = await refused(f"evt_{model}", server_vad, model=model)
            assert (param, message) == ("session.audio.input.turn_detection", TURN_DETECTION_REFUSED)
        param, _ = await refused("evt_both", None, model="gpt-transcribe", language="en", languages=["en"])
        assert param == f"{base}.languages"
        param, _ = await refused("evt_keyword", None, model="gpt-live-transcribe", keywords=["ok", "<b>"])
        assert param == f"{base}.keywords[1]"
        param, _ = await refused("evt_prompt", None, model="gpt-realtime-whisper", prompt="expect names")
        assert param == f"{base}.prompt"
        param, _ = await refused("evt_delay", None, model="gpt-realtime-whisper", delay="sometime")
        assert param == f"{base}.delay"

        # None of that changed the session: it still has the engine's defaults.
        reply = await answer("evt_unchanged", "omit")
        assert reply["type"] == "session.updated"
        audio_input = reply["session"]["audio"]["input"]
        assert audio_input["transcription"] == {"model": engine.endpoint.model}
        assert audio_input["turn_detection"]["type"] == "server_vad"

        # Every name the service knows is served; a live model with turn detection left out has none.
        reply = await answer("evt_live", model="gpt-live-transcribe", languages=["en", "de"], keywords=["milk"])
        assert reply["type"] == "session.updated", reply
        assert reply["session"]["audio"]["input"]["turn_detection"] is None
        assert (await answer("evt_whisper", None, model="gpt-realtime-whisper", delay="low"))["type"] == (
            "session.updated"
        )
        for model in ("gpt-transcribe", "gpt-4o-mini-transcribe", "gpt-4o-transcribe", "whisper-1"):
            reply = await answer(f"evt_{model}", server_vad, model=model)
            assert reply["type"] == "session.updated", reply
            assert reply["session"]["audio"]["input"]["transcription"]["model"] == model

    session(engine, body)


def test_client_commits_with_the_new_models_get_deltas_and_the_languages_the_service_reports(
    engine: RunningEngine,
) -> None:
    sentence = SENTENCES[3]
    said = np.concatenate([silence(0.3), speech(sentence), silence(0.3)])

    async def body(c: Client) -> None:
        for transcription in (
            {"model": "gpt-live-transcribe", "languages": ["en", "de"], "keywords": ["tomorrow"]},
            {"model": "gpt-transcribe"},  # no hint: Whisper detects the language
            {"model": "gpt-realtime-whisper"},
        ):
            await c.update(None, **transcription)
            await c.append(said)
            await c.send({"type": "input_audio_buffer.commit"})
            await c.turns_done(1)

    c = session(engine, body)
    completed = c.of("conversation.item.input_audio_transcription.completed")
    assert [words(e["transcript"]) for e in completed] == [words(sentence)] * 3
    assert [e.get("languages") for e in completed] == [[{"code": "en"}], [{"code": "en"}], None]
    for done in completed:  # each turn's text comes as deltas first
        kinds = [e["type"] for e in c.events if e.get("item_id") == done["item_id"]]
        assert kinds[-2:] == ["conversation.item.input_audio_transcription.delta", kinds[-1]]


LIVE_SENTENCE = "please remember to buy milk on the way home and call me back tomorrow morning"
"""About 4.5 s of espeak-ng speech."""


@dataclass
class Streamed:
    """A sentence streamed in real time, then committed: what arrived when."""

    client: Client
    arrivals: list[tuple[float, dict[str, Any]]]
    onset: float
    """When the first voiced sample was sent (monotonic)."""
    committed_at: float
    """When the client sent its commit."""
    cpu_s: float
    """The engine's CPU time over the streaming and the final."""


def engine_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stream_in_real_time(engine: RunningEngine, model: str) -> Streamed:
    """``LIVE_SENTENCE`` at the pace of a microphone (40 ms frames), 0.6 s of silence, then a client commit."""
    lead, said = silence(0.3), speech(LIVE_SENTENCE)
    audio = np.concatenate([lead, said, silence(0.6)])
    onset_s = (len(lead) + voiced_ms(said)[0] * RATE / 1000) / RATE
    times: dict[str, float] = {}
    arrivals: list[tuple[float, dict[str, Any]]] = []
    cpu: list[float] = []

    async def body(c: Client) -> None:
        hint = {"languages": ["en"]} if model_info(model).live else {"language": "en"}
        await c.update(None, model=model, **hint)

        async def receive() -> None:
            while True:
                event = await c.receive(60)
                arrivals.append((time.monotonic(), event))
                if event["type"] == "conversation.item.done":
                    return

        receiver = asyncio.create_task(receive())
        cpu.append(engine_cpu_s(engine.endpoint.pid))
        start = time.monotonic()
        times["onset"] = start + onset_s
        frame = FRAME_BYTES // 2
        for i in range(0, len(audio), frame):
            await c.append(audio[i : i + frame])
            # Pacing, not waiting for an event: the next frame is "captured" 40 ms after this one.
            await asyncio.sleep(max(0.0, start + (i + frame) / RATE - time.monotonic()))
        times["commit"] = time.monotonic()
        await c.send({"type": "input_audio_buffer.commit"})
        await asyncio.wait_for(receiver, 60)
        cpu.append(engine_cpu_s(engine.endpoint.pid))

    c = session(engine, body)
    return Streamed(c, arrivals, times["onset"], times["commit"], cpu[1] - cpu[0])


def test_a_live_model_sends_growing_partials_while_the_person_speaks(engine: RunningEngine) -> None:
    streamed = stream_in_real_time(engine, "gpt-live-transcribe")
    deltas = [
        (at, e) for at, e in streamed.arrivals if e["type"] == "conversation.item.input_audio_transcription.delta"
    ]
    early = [e for at, e in deltas if at < streamed.committed_at]
    assert early, "no delta before the client's commit"
    first_ms = (deltas[0][0] - streamed.onset) * 1000
    print(f"\nfirst delta {first_ms:.0f} ms after speech onset; engine CPU {streamed.cpu_s:.2f} s for this turn")
    # The coming item's id comes with the first delta; the commit and everything after carry it.
    kinds = [e["type"] for _, e in streamed.arrivals]
    committed = streamed.client.of("input_audio_buffer.committed")[0]
    assert kinds.index("input_audio_buffer.committed") > kinds.index(deltas[0][1]["type"])
    item = committed["item_id"]
    assert {e["item_id"] for _, e in deltas} == {item}
    completed = streamed.client.of("conversation.item.input_audio_transcription.completed")[0]
    assert completed["item_id"] == item
    # Each delta appends words: the text only grows.
    texts = [e["delta"] for _, e in deltas]
    assert all(t.strip() for t in texts)
    assert not texts[0].startswith(" ") and all(t.startswith(" ") for t in texts[1:])
    # The final is the decode of the whole turn; the deltas lead up to it unless it disagrees with them.
    assert wer(LIVE_SENTENCE, completed["transcript"]) <= 0.15, completed["transcript"]
    at_commit = kinds.index("input_audio_buffer.committed")
    before = "".join(e["delta"] for _, e in streamed.arrivals[:at_commit] if e["type"] == deltas[0][1]["type"])
    if final_delta(before, completed["transcript"]) is None:
        assert "".join(texts) == before  # it disagrees: only completed follows, and the client replaces the text
    else:
        assert "".join(texts) == completed["transcript"]


def test_a_model_that_is_not_live_gets_no_deltas_before_the_commit(engine: RunningEngine) -> None:
    streamed = stream_in_real_time(engine, "gpt-4o-mini-transcribe")
    print(f"\nwithout partials: engine CPU {streamed.cpu_s:.2f} s for this turn")
    kinds = [e["type"] for _, e in streamed.arrivals]
    assert kinds[0] == "input_audio_buffer.committed"
    assert "conversation.item.input_audio_transcription.delta" in kinds
    completed = streamed.client.of("conversation.item.input_audio_transcription.completed")[0]
    assert wer(LIVE_SENTENCE, completed["transcript"]) <= 0.15, completed["transcript"]


def test_the_handshake_wants_the_engines_key_path_and_the_services_shape(engine: RunningEngine) -> None:
    key = {"Authorization": f"Bearer {engine.api_key}"}
    base = engine.url.split("?")[0]

    async def refused(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        with pytest.raises(InvalidStatus) as info:
            await connect(url, additional_headers=headers)
        response = info.value.response
        return response.status_code, json.loads(response.body)["error"]

    async def main() -> None:
        assert (await refused(engine.url, {"Authorization": "Bearer sk-wrong"}))[0] == 401
        assert (await refused(engine.url))[0] == 401
        assert (await refused(engine.url.replace("/v1/realtime", "/v1/other"), key))[0] == 404
        # What the service refuses, so a client bug shows here too.
        status, error = await refused(base, key)
        assert (status, error["code"], error["param"]) == (400, "missing_required_parameter", "intent")
        status, error = await refused(base + "?intent=conversation", key)
        assert (status, error["code"], error["param"]) == (400, "invalid_value", "intent")
        status, error = await refused(engine.url + "&model=gpt-live-transcribe", key)
        assert (status, error["code"], error["param"]) == (400, "unknown_parameter", "model")
        status, error = await refused(engine.url, {**key, "OpenAI-Beta": "realtime=v1"})
        assert (status, error["code"], error["type"]) == (400, "beta_api_removed", "invalid_request_error")

    asyncio.run(main())


def test_a_client_commit_right_after_the_vads_commit_is_too_small(engine: RunningEngine) -> None:
    async def body(c: Client) -> None:
        await c.update(language="en")
        # Well over the 300 ms of prefix padding the buffer keeps after the turn.
        await c.append(np.concatenate([silence(0.5), speech(SENTENCES[1]), silence(1.5)]))
        await c.turns_done(1)
        await c.send({"type": "input_audio_buffer.commit", "event_id": "evt_late"})
        error = (await c.next(lambda e: e["type"] == "error"))["error"]
        assert (error["code"], error["event_id"]) == ("input_audio_buffer_commit_empty", "evt_late")
        assert await c.quiet(0.5) == []  # no empty turn of the padding

    c = session(engine, body)
    assert len(c.of("input_audio_buffer.committed")) == 1


def test_the_engine_also_listens_on_its_unix_socket(engine: RunningEngine) -> None:
    assert os.stat(engine.unix_socket).st_mode & 0o077 == 0

    async def body(c: Client) -> None:
        await c.update(None)

    session(engine, body, unix=True)


def test_without_turn_detection_only_a_commit_makes_a_turn(engine: RunningEngine) -> None:
    sentence = SENTENCES[1]

    async def body(c: Client) -> None:
        updated = await c.update(None)
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        await c.append(np.concatenate([silence(0.5), speech(sentence), silence(1.5)]))
        assert await c.quiet(1.0) == []  # no speech_started, no commit
        await c.send({"type": "input_audio_buffer.commit", "event_id": "evt_commit"})
        await c.turns_done(1)
        # The buffer is empty again.
        await c.send({"type": "input_audio_buffer.commit"})
        error = await c.next(lambda e: e["type"] == "error")
        assert error["error"]["code"] == "input_audio_buffer_commit_empty"

    c = session(engine, body)
    assert [e["type"] for e in c.events[2:6]] == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
    ]
    assert words(c.of("conversation.item.input_audio_transcription.completed")[0]["transcript"]) == words(sentence)


def test_a_commit_of_silence_is_an_empty_transcript(engine: RunningEngine) -> None:
    async def body(c: Client) -> None:
        await c.update(None)
        await c.append(silence(2.0))
        await c.send({"type": "input_audio_buffer.commit"})
        await c.turns_done(1)

    c = session(engine, body)
    assert c.of("conversation.item.input_audio_transcription.completed")[0]["transcript"] == ""


def test_silence_duration_decides_where_one_turn_ends(engine: RunningEngine) -> None:
    # 0.4 s more after the ~0.35 s espeak-ng ends with: a pause of ~0.75 s between the sentences.
    two = np.concatenate([silence(0.5), speech(SENTENCES[2]), silence(0.4), speech(SENTENCES[3]), silence(1.5)])

    async def body(c: Client) -> None:
        await c.update({"type": "server_vad", "silence_duration_ms": 500})
        await c.append(two)
        await c.turns_done(2)
        await c.update({"type": "server_vad", "silence_duration_ms": 1200})
        await c.append(two)
        await c.turns_done(1)
        assert await c.quiet(0.5) == []

    c = session(engine, body)
    transcripts = [e["transcript"] for e in c.of("conversation.item.input_audio_transcription.completed")]
    assert [words(t) for t in transcripts] == [words(SENTENCES[2]), words(SENTENCES[3]), words(" ".join(SENTENCES[2:]))]
    committed = c.of("input_audio_buffer.committed")
    assert [e["previous_item_id"] for e in committed] == [None, committed[0]["item_id"], committed[1]["item_id"]]


def test_prefix_padding_and_threshold_are_honoured(engine: RunningEngine) -> None:
    async def body(c: Client) -> None:
        await c.update({"type": "server_vad", "prefix_padding_ms": 0})
        await c.append(np.concatenate([silence(1.0), speech(SENTENCES[2]), silence(1.0)]))
        await c.turns_done(1)
        await c.update({"type": "server_vad", "prefix_padding_ms": 800})
        await c.append(np.concatenate([silence(1.0), speech(SENTENCES[2]), silence(1.0)]))
        await c.turns_done(1)
        # Threshold 0: every window is "speech", digital silence included.
        await c.update({"type": "server_vad", "threshold": 0.0})
        await c.append(silence(0.2))
        await c.next(lambda e: e["type"] == "input_audio_buffer.speech_started", 10)
        await c.send({"type": "input_audio_buffer.clear"})
        await c.next(lambda e: e["type"] == "input_audio_buffer.cleared")

    c = session(engine, body)
    starts = [e["audio_start_ms"] for e in c.of("input_audio_buffer.speech_started")]
    block_ms = (len(speech(SENTENCES[2])) / RATE + 2.0) * 1000
    voice_start = voiced_ms(speech(SENTENCES[2]))[0]
    first_onset, second_onset, third_block = 1000 + voice_start, block_ms + 1000 + voice_start, 2 * block_ms
    assert first_onset - 50 <= starts[0] <= first_onset + 150
    assert second_onset - 800 - 50 <= starts[1] <= second_onset - 800 + 150
    assert len(starts) == 3
    assert third_block - 300 - 50 <= starts[2] <= third_block - 300 + 50  # at the first window, at threshold 0


# ----------------------------------------------- the Realtime client against it


def test_a_dictation_of_two_sentences_delivers_two_finals_in_order(engine: RunningEngine) -> None:
    audio = np.concatenate([silence(0.3), speech(SENTENCES[0]), silence(1.0), speech(SENTENCES[1]), silence(1.0)])
    h = Harness(engine)  # type: ignore[arg-type]
    run(lambda: dictate(h, audio))
    assert [words(f.text) for f in h.finals()] == [words(SENTENCES[0]), words(SENTENCES[1])]
    assert h.core.state is core.State.IDLE
    assert h.errors() == []


def test_stop_in_the_middle_of_a_sentence_flushes_what_was_said(engine: RunningEngine) -> None:
    sentence = "this sentence is cut short by stop while it is still being spoken"
    said = speech(sentence)
    h = Harness(engine)  # type: ignore[arg-type]
    run(lambda: dictate(h, np.concatenate([silence(0.3), said[: int(len(said) * 0.55)]])))
    finals = h.finals()
    assert len(finals) == 1
    got = words(finals[0].text)
    assert got[:4] == words(sentence)[:4]
    assert len(got) < len(words(sentence))


def test_manual_turn_detection_commits_everything_on_stop(engine: RunningEngine) -> None:
    audio = np.concatenate([silence(0.3), speech(SENTENCES[2]), silence(1.0), speech(SENTENCES[3]), silence(0.3)])
    settings = p.SessionSettings(model="gpt-4o-mini-transcribe", turn_detection=MANUAL)
    h = Harness(engine, settings=settings)  # type: ignore[arg-type]
    run(lambda: dictate(h, audio))
    assert [words(f.text) for f in h.finals()] == [words(" ".join(SENTENCES[2:]))]


def test_a_language_update_mid_session_is_applied(engine: RunningEngine) -> None:
    h = Harness(engine)  # type: ignore[arg-type]

    async def body() -> None:
        task = asyncio.create_task(h.session.run())
        await h.wait(lambda: h.ready == 1, 10, "the session")
        await h.session.update(p.SessionSettings(model="gpt-4o-mini-transcribe", language="en"))
        await h.feed(np.concatenate([speech(SENTENCES[2]), silence(1.0)]))
        h.core.stop()
        h.session.finish()
        await task

    run(body)
    assert [words(f.text) for f in h.finals()] == [words(SENTENCES[2])]


# ------------------------------------------------------------------ pieces


def test_the_resampler_keeps_speech_frequencies_and_removes_what_would_alias() -> None:
    t = np.arange(RATE) / RATE

    def gain(hz: float) -> float:
        out = resample((np.sin(2 * np.pi * hz * t) * 16000).astype(np.int16))
        return float(np.sqrt(np.mean(out[400:-400] ** 2)) * np.sqrt(2) / (16000 / 32768))

    assert all(abs(gain(hz) - 1) < 0.01 for hz in (100, 1000, 3000, 5000))
    assert all(gain(hz) < 0.002 for hz in (9000, 10000, 11500))
    noise = (np.random.default_rng(1).standard_normal(48000) * 3000).astype(np.int16)
    whole = resample(noise)
    r, parts, data, at = Resampler(), [], noise.tobytes(), 0
    for size in np.random.default_rng(2).integers(0, 3001, 200):
        parts.append(r.process_bytes(data[at : at + size]))
        at += int(size)
    parts.append(r.process_bytes(data[at:]))
    assert len(whole) == 32000
    assert np.allclose(np.concatenate(parts), whole, atol=1e-6)


class ScriptedProbe:
    """Speech probabilities from a list, one per window."""

    def __init__(self, probs: list[float]) -> None:
        self.probs = list(probs)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        out = self.probs[: len(windows)]
        del self.probs[: len(windows)]
        return np.asarray(out + [0.0] * (len(windows) - len(out)), dtype=np.float32)


def test_the_vad_state_machine() -> None:
    # 10 windows silence, 20 speech with dips (one inside the hysteresis band, some below it), then silence.
    probs = [0.1] * 10 + [0.9] * 5 + [0.4] * 3 + [0.9] * 5 + [0.2] * 4 + [0.9] * 3 + [0.0] * 30
    settings = VadSettings(threshold=0.5, prefix_padding_ms=96, silence_duration_ms=320)
    buffer = InputBuffer(ScriptedProbe(probs), settings)
    decisions = []
    for _ in range(len(probs)):
        decisions += buffer.append(np.zeros(WINDOW, dtype=np.float32))
    start, stop = decisions
    assert isinstance(start, SpeechStart) and isinstance(stop, SpeechStop)
    assert start.start == (10 - 3) * WINDOW  # 96 ms = 3 windows of prefix
    # Speech ends after window 29; 320 ms = 10 windows of silence later the turn is cut.
    assert stop.end == (30 + 10) * WINDOW
    assert stop.start == start.start and stop.audio.size == stop.end - start.start
    # Idle again: only the prefix is kept.
    assert buffer.buffered_ms == pytest.approx(96)


# ------------------------------------------------------------ the supervisor


def test_an_engine_that_cannot_load_its_model_refuses_sessions_clearly(tmp_path: Path) -> None:
    async def body(stop: asyncio.Event, ready: Callable[[Any], None]) -> None:
        process = EngineProcess(LocalConfig(model=str(tmp_path)), log_level="INFO")  # a directory without a model
        async with process as ep:
            ready((ep, process))
            await stop.wait()
        ready((ep, process))

    (ep, process), stop = _in_thread(body)
    try:

        async def client() -> tuple[list[dict[str, Any]], int | None, str | None]:
            ws = await connect(ep.url, additional_headers={"Authorization": f"Bearer {ep.api_key}"})
            events = []
            with pytest.raises(ConnectionClosed):
                while True:
                    events.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            return events, ws.close_code, ws.close_reason

        deadline = time.monotonic() + 30
        while True:
            events, code, reason = asyncio.run(client())
            if code == 4000 or time.monotonic() > deadline:
                break
        assert code == 4000
        assert reason is not None and "cannot load the model" in reason
        error = events[-1]
        assert error["type"] == "error" and error["error"]["code"] == "model_unavailable"
        assert all(server_event_problems(e) == [] for e in events)
    finally:
        stop()
    assert process.returncode == 0
    with pytest.raises(ProcessLookupError):
        os.killpg(ep.pid, 0)  # the whole process group is gone


def test_an_engine_that_cannot_start_is_an_engine_error(tmp_path: Path) -> None:
    process = EngineProcess(LocalConfig(model="base.en"), unix_socket=str(tmp_path / "no" / "such" / "dir.sock"))

    async def main() -> None:
        with pytest.raises(EngineError, match=r"exited with code 1 before it was ready: .*cannot listen"):
            await process.start()

    asyncio.run(main())


def test_the_engine_exits_when_its_supervisor_goes_away(tmp_path: Path) -> None:
    engine = subprocess.Popen(
        [sys.executable, "-m", "sttd.engine", "--model", str(tmp_path), "--exit-with-stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert engine.stdout is not None and engine.stdin is not None
        assert json.loads(engine.stdout.readline())["url"].startswith("ws://127.0.0.1:")
        engine.stdin.close()  # what a supervisor's death does
        assert engine.wait(15) == 0
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()


# ------------------------------------------------------------- end to end


def nth_final(n: int) -> Callable[[dict[str, Any]], bool]:
    """A Listener predicate true at the (n+1)-th final Transcript (Listener rescans what it saw first)."""
    count = 0

    def predicate(event: dict[str, Any]) -> bool:
        nonlocal count
        if event["type"] == "transcript" and event["final"]:
            count += 1
        return count > n

    return predicate


def test_sttd_with_the_local_engine_dictates_from_the_microphone(
    tmp_path: Path, model_dir: Path, session_bus: SessionBus, pulse_server: SoundServer
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[realtime]\nengine = "local"\n\n[local]\nmodel = "{model_dir}"\n', encoding="utf-8")
    env = {**session_bus.env(), "PULSE_SERVER": pulse_server.server, "OPENAI_API_KEY": ""}
    wavs = [speech_wav(text, tmp_path / f"sentence{i}.wav") for i, text in enumerate(SENTENCES)]
    daemon = Sttd(tmp_path, env, config)
    listener = None
    latencies, rates = [], []
    early: list[bool] = []  # per sentence: a partial Transcript arrived before the voice ended
    try:
        daemon.wait_ready(30)
        wait_until(
            lambda: "transcription engine: local" in daemon.log,
            10,
            'sttd to log "transcription engine: local" (is the daemon wiring of issue 9 in place?)',
        )
        listener = Listener(daemon)
        assert daemon.ctl("start").returncode == 0
        daemon.wait_state("listening", 60)
        for index, (text, wav) in enumerate(zip(SENTENCES, wavs, strict=True)):
            pulse_server.play(wav)
            played = time.monotonic()
            event = listener.wait_for(nth_final(index), 30, f"the final Transcript of sentence {index + 1}")
            # From the end of the voice: the wav ends with espeak-ng's trailing silence.
            samples = wav_samples(wav)
            trailing_s = (len(samples) / RATE * 1000 - voiced_ms(samples)[1]) / 1000
            latencies.append(round(float(time.monotonic() - played + trailing_s), 2))
            got = event["text"]
            rates.append(wer(text, got))
            assert words(got) == words(text)
            # gpt-live-transcribe (the default model): the engine sends words while the person speaks.
            partials = [
                (at, e["text"])
                for at, e in list(listener.arrived)
                if e["type"] == "transcript" and not e["final"] and e["item_id"] == event["item_id"]
            ]
            texts = [t for _, t in partials]
            assert all(b.startswith(a) for a, b in itertools.pairwise(texts)), texts  # only grows
            early.append(bool(partials) and partials[0][0] < played - trailing_s)
        assert daemon.ctl("stop").returncode == 0
        daemon.wait_state("idle")
        assert daemon.terminate() == 0
    finally:
        if listener is not None:
            listener.close()
        daemon.kill()
    print(f"\nlocal engine end to end: latency (end of speech -> final Transcript) {latencies} s, WER {rates}")
    # The longest sentences last 2.5-3 s; the first words come about a second after the onset.
    assert any(early), "no partial Transcript arrived before the speaker stopped"
    assert "Traceback" not in daemon.log
    for line in daemon.log.splitlines():  # transcripts never above DEBUG, the engine's lines included
        if any(text in line.lower() for text in SENTENCES):
            assert " DEBUG " in line, line
