"""The fake Realtime service itself, driven by a plain websockets client (no sttd daemon)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from sttd.protocol import ClientEvents, SessionSettings, TurnDetection

from .openai_models import (
    client_event_problems,
    server_event_problems,
    validate_client_event,
    validate_client_secret_response,
    validate_server_event,
)
from .realtime_server import MAX_DURATION_MESSAGE, FakeRealtimeServer, rms_threshold, running_server

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


# ---------------------------------------------------------- the validators


def test_validate_client_event_flags_undeclared_keys_at_any_depth() -> None:
    event = ClientEvents().session_update(settings())
    validate_client_event(event)
    event["session"]["audio"]["input"]["turn_detection"]["min_speech_ms"] = 100
    with pytest.raises(AssertionError, match=r"session\.audio\.input\.turn_detection\.min_speech_ms"):
        validate_client_event(event)
    top = {**ClientEvents().commit(), "item_id": None}  # None values are keys too
    with pytest.raises(AssertionError, match="Unknown parameter: 'item_id'"):
        validate_client_event(top)


def test_validate_client_event_flags_wrong_values_precisely() -> None:
    event = ClientEvents().session_update(settings())
    event["session"]["audio"]["input"]["format"]["rate"] = 16000
    problems = client_event_problems(event)
    assert [(p.code, p.param) for p in problems] == [("invalid_value", "session.audio.input.format.rate")]
    assert client_event_problems({"type": "input_audio_buffer.append"})[0].code == "missing_required_parameter"
    assert client_event_problems({"type": "transcription_session.update"})[0].code == "unknown_event"
    # The old beta shape is refused: a transcription session has no input_audio_format.
    beta = {"type": "session.update", "session": {"type": "transcription", "input_audio_format": "pcm16"}}
    assert client_event_problems(beta)[0].param == "session.input_audio_format"


def test_validate_server_event_is_strict_too() -> None:
    event = {"type": "input_audio_buffer.committed", "event_id": "e1", "item_id": "i1", "previous_item_id": None}
    validate_server_event(event)
    with pytest.raises(AssertionError, match="Unknown parameter: 'audio_end_ms'"):
        validate_server_event({**event, "audio_end_ms": 5})
    with pytest.raises(AssertionError, match="item_id"):
        validate_server_event({k: v for k, v in event.items() if k != "item_id"})
    session = {"id": "sess_1", "object": "realtime.transcription_session", "type": "transcription"}
    validate_server_event({"type": "session.created", "event_id": "e2", "session": session})
    with pytest.raises(AssertionError, match=r"session\.model"):
        validate_server_event({"type": "session.created", "event_id": "e2", "session": {**session, "model": "x"}})


# ------------------------------------------------------------ session setup


def test_session_created_then_updated_with_the_effective_config(realtime_server: FakeRealtimeServer) -> None:
    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        client = await open_client(realtime_server, None)
        created = client.received[0]
        update = client.ev.session_update(
            SessionSettings(model="gpt-4o-transcribe", language="de", turn_detection=TurnDetection("manual"))
        )
        await client.send(update)
        updated = await client.until("session.updated")
        await client.ws.close()
        return created, updated

    created, updated = run(go)
    assert created["session"]["id"].startswith("sess_")
    assert created["session"]["type"] == "transcription"
    assert created["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    audio_input = updated["session"]["audio"]["input"]
    assert updated["session"]["id"] == created["session"]["id"]
    assert audio_input["turn_detection"] is None
    assert audio_input["transcription"] == {"model": "gpt-4o-transcribe", "language": "de"}
    assert audio_input["noise_reduction"] == {"type": "near_field"}
    assert realtime_server.sessions()[0].config["audio"]["input"]["turn_detection"] is None
    assert [e["type"] for e in realtime_server.client_events()] == ["session.update"]


# ---------------------------------------------------------------- energy VAD


def test_energy_vad_finds_two_utterances_in_order(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.script(["hello big world", "send"])
    signal_ = silence(600) + tone(800) + silence(900) + tone(500) + silence(900)

    async def go() -> Client:
        client = await open_client(realtime_server, settings(prefix_padding_ms=300, silence_duration_ms=500))
        await client.append(signal_)
        while client.types().count("conversation.item.done") < 2:
            await client.recv()
        await client.ws.close()
        return client

    client = run(go)
    starts = [e for e in client.received if e["type"] == "input_audio_buffer.speech_started"]
    stops = [e for e in client.received if e["type"] == "input_audio_buffer.speech_stopped"]
    commits = [e for e in client.received if e["type"] == "input_audio_buffer.committed"]
    first, second = (e["item_id"] for e in commits)
    assert [e["item_id"] for e in starts] == [first, second]
    # tones at 600-1400 ms and 2300-2800 ms: prefix padding before, silence duration after
    assert [e["audio_start_ms"] for e in starts] == [300, 2000]
    assert [e["audio_end_ms"] for e in stops] == [1900, 3300]
    assert [e["previous_item_id"] for e in commits] == [None, first]
    assert turn_events(client.received, first) == VAD_TURN
    assert turn_events(client.received, second)[:4] == VAD_TURN[:4]
    completed = [e for e in client.received if e["type"].endswith("transcription.completed")]
    assert [(e["item_id"], e["transcript"]) for e in completed] == [(first, "hello big world"), (second, "send")]
    assert completed[0]["usage"] == {"type": "duration", "seconds": 1.6}
    deltas = [e["delta"] for e in client.received if e["type"].endswith(".delta") and e["item_id"] == first]
    assert deltas == ["hello", " big", " world"]
    added = [e for e in client.received if e["type"] == "conversation.item.added"]
    assert [e["previous_item_id"] for e in added] == [None, first]
    turns = realtime_server.turns()
    assert turns[0].audio == signal_[300 * MS : 1900 * MS]
    assert realtime_server.audio() == signal_
    # every event the server sent validates, and the client got exactly those
    for event in realtime_server.server_events():
        assert server_event_problems(event) == []
    assert realtime_server.server_events() == client.received


def test_vad_threshold_gates_quiet_audio() -> None:
    quiet = 0.004  # RMS ~ -51 dBFS: below the default threshold (-35 dBFS), above threshold 0.1 (-55 dBFS)
    assert rms_threshold(0.1) < quiet / np.sqrt(2) < rms_threshold(0.5)
    with running_server() as server:

        async def go() -> None:
            loud = await open_client(server, settings(threshold=0.5))
            await loud.append(tone(600, quiet) + silence(700))
            await loud.send(loud.ev.clear())
            await loud.until("input_audio_buffer.cleared")
            assert "input_audio_buffer.speech_started" not in loud.types()
            await loud.ws.close()
            sensitive = await open_client(server, settings(threshold=0.1))
            await sensitive.append(tone(600, quiet) + silence(700))
            await sensitive.until("input_audio_buffer.committed")
            await sensitive.ws.close()

        run(go)


def test_default_transcript_and_silent_turns(realtime_server: FakeRealtimeServer) -> None:
    async def go() -> list[str]:
        client = await open_client(realtime_server, settings("manual"))
        await client.append(tone(200))
        await client.send(client.ev.commit())
        await client.append(silence(200))
        await client.send(client.ev.commit())
        done: list[str] = []
        while len(done) < 2:
            event = await client.until("conversation.item.input_audio_transcription.completed")
            done.append(event["transcript"])
        await client.ws.close()
        return done

    assert run(go) == ["utterance 1", ""]


# ------------------------------------------------------------ manual commits


def test_manual_commit_and_too_small_commit(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.script(["manual text"])

    async def go() -> tuple[Client, dict[str, Any], str]:
        client = await open_client(realtime_server, settings("manual"))
        await client.append(tone(50))
        small = client.ev.commit()
        await client.send(small)
        error = await client.until("error")
        await client.append(tone(250) + silence(1000))
        await client.send(client.ev.commit())
        await client.until("conversation.item.done")
        await client.ws.close()
        return client, error, small["event_id"]

    client, error, small_id = run(go)
    assert error["error"]["code"] == "input_audio_buffer_commit_empty"
    assert error["error"]["event_id"] == small_id
    assert "buffer too small" in error["error"]["message"]
    assert "50.00ms" in error["error"]["message"]
    committed = next(e for e in client.received if e["type"] == "input_audio_buffer.committed")
    assert turn_events(client.received, committed["item_id"]) == VAD_TURN[2:]
    assert "input_audio_buffer.speech_started" not in client.types()
    turn = realtime_server.turns()[0]
    assert (turn.kind, turn.transcript) == ("client", "manual text")
    assert turn.audio == (tone(50) + tone(250) + silence(1000))  # a refused commit keeps the buffer


def test_client_commit_mid_speech_flushes_and_later_commit_is_too_small(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.script(["flushed"])

    async def go() -> Client:
        client = await open_client(realtime_server)
        await client.append(silence(200) + tone(600))
        started = await client.until("input_audio_buffer.speech_started")
        await client.send(client.ev.commit())
        committed = await client.until("input_audio_buffer.committed")
        assert committed["item_id"] == started["item_id"]
        done = await client.until("conversation.item.input_audio_transcription.completed")
        assert done["transcript"] == "flushed"
        await client.send(client.ev.commit())  # nothing left: refused like the service does
        error = await client.until("error")
        assert error["error"]["code"] == "input_audio_buffer_commit_empty"
        await client.ws.close()
        return client

    client = run(go)
    assert "input_audio_buffer.speech_stopped" not in client.types()
    assert realtime_server.turns()[0].audio == silence(200) + tone(600)


# ---------------------------------------------------------- protocol errors


def test_protocol_errors_echo_the_event_id(realtime_server: FakeRealtimeServer) -> None:
    async def go() -> list[dict[str, Any]]:
        client = await open_client(realtime_server, None)
        errors = []
        for event in (
            {"type": "transcription_session.update", "event_id": "t_unknown", "session": {}},
            {"type": "response.create", "event_id": "t_response"},
            {"type": "input_audio_buffer.commit", "event_id": "t_extra", "flush": True},
        ):
            await client.send(event)
            errors.append(await client.until("error"))
        rate = client.ev.session_update(settings())
        rate["session"]["audio"]["input"]["format"]["rate"] = 16000
        await client.send(rate)
        errors.append(await client.until("error"))
        await client.send(client.ev.session_update(settings("manual")))
        await client.until("session.updated")  # the refused update was not applied, this one is
        await client.ws.close()
        errors[-1]["rate_event_id"] = rate["event_id"]
        return errors

    unknown, response, extra, rate = run(go)
    assert (unknown["error"]["code"], unknown["error"]["event_id"]) == ("invalid_value", "t_unknown")
    assert "transcription_session.update" in unknown["error"]["message"]
    assert response["error"]["event_id"] == "t_response"
    assert (extra["error"]["code"], extra["error"]["param"]) == ("unknown_parameter", "flush")
    assert rate["error"]["code"] == "invalid_value"
    assert rate["error"]["param"] == "session.audio.input.format.rate"
    assert rate["error"]["event_id"] == rate.pop("rate_event_id")
    assert "24000" in rate["error"]["message"]
    assert len(realtime_server.server_events("session.updated")) == 1
    violations = realtime_server.take_violations()
    # response.create is a declared client event (the service refuses it here, but it is no violation)
    assert len(violations) == 3
    assert "flush" in violations[1] and "format.rate" in violations[2]


def test_semantic_vad_is_accepted_or_refused_on_demand(realtime_server: FakeRealtimeServer) -> None:
    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        client = await open_client(realtime_server, None)
        await client.send(client.ev.session_update(settings("semantic_vad")))
        updated = await client.until("session.updated")
        realtime_server.configure(refuse_semantic_vad=True)
        await client.send(client.ev.session_update(settings("semantic_vad")))
        error = await client.until("error")
        await client.ws.close()
        return updated, error

    updated, error = run(go)
    assert updated["session"]["audio"]["input"]["turn_detection"] == {"type": "semantic_vad"}
    assert error["error"]["param"] == "session.audio.input.turn_detection.type"


def test_forced_turns_without_energy_vad() -> None:
    with running_server(energy_vad=False, script=["scripted"]) as server:

        async def go() -> Client:
            client = await open_client(server)
            await client.append(tone(400) + silence(800))
            await client.send(client.ev.clear())
            await client.until("input_audio_buffer.cleared")
            await client.append(tone(300))
            await server.wait_for_async(lambda: len(server.audio()) >= (1200 + 300) * MS)
            item = await asyncio.to_thread(server.force_turn)
            done = await client.until("conversation.item.input_audio_transcription.completed")
            assert done["item_id"] == item
            await client.append(silence(300))
            await server.wait_for_async(lambda: len(server.audio()) >= 1800 * MS)
            item2 = await asyncio.to_thread(server.force_turn, "override")
            done2 = await client.until("conversation.item.input_audio_transcription.completed")
            assert (done2["item_id"], done2["transcript"]) == (item2, "override")
            await client.ws.close()
            return client

        client = run(go)
        assert client.types().count("input_audio_buffer.speech_started") == 2
        first = [t for t in client.types() if t.startswith("input_audio_buffer.")][:4]
        assert first == [
            "input_audio_buffer.cleared",
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
        ]
        turns = server.turns()
        assert [(t.kind, t.transcript) for t in turns] == [("forced", "scripted"), ("forced", "override")]
        assert turns[0].audio == tone(300)  # cleared audio is gone


# --------------------------------------------------------------- handshake


def test_handshake_requires_a_known_key_and_the_transcription_intent(realtime_server: FakeRealtimeServer) -> None:
    async def status(url: str, headers: dict[str, str]) -> int:
        try:
            async with connect(url, additional_headers=headers):
                return 101
        except InvalidStatus as exc:
            body = json.loads(exc.response.body or b"{}")
            assert "error" in body
            return exc.response.status_code

    bearer = {"Authorization": f"Bearer {realtime_server.api_key}"}

    async def go() -> list[int]:
        return [
            await status(realtime_server.url, {}),
            await status(realtime_server.url, {"Authorization": "Bearer sk-wrong"}),
            await status(realtime_server.url.replace("intent=transcription", "intent=conversation"), bearer),
            await status(realtime_server.url.replace("/v1/realtime", "/v1/other"), bearer),
            await status(realtime_server.url, bearer),
        ]

    assert run(go) == [401, 401, 400, 404, 101]
    assert realtime_server.connection_count == 1
    assert realtime_server.handshake_count == 5
    assert [h["status"] for h in realtime_server.handshakes()] == [401, 401, 400, 404, 101]


def test_beta_header_is_refused_with_close_4000(realtime_server: FakeRealtimeServer) -> None:
    async def go() -> tuple[dict[str, Any], ConnectionClosed]:
        headers = {"Authorization": f"Bearer {realtime_server.api_key}", "OpenAI-Beta": "realtime=v1"}
        async with connect(realtime_server.url, additional_headers=headers) as ws:
            error = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            return error, closed.value

    error, closed = run(go)
    assert error["error"]["code"] == "beta_api_removed"
    assert closed.rcvd is not None and closed.rcvd.code == 4000
    assert realtime_server.server_events("session.created") == []


def test_refused_and_delayed_handshakes(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.refuse_handshakes(503, times=2)

    async def go() -> tuple[list[int], float]:
        statuses = []
        for _ in range(2):
            with pytest.raises(InvalidStatus) as refused:
                await open_client(realtime_server)
            statuses.append(refused.value.response.status_code)
        client = await open_client(realtime_server)
        await client.ws.close()
        realtime_server.configure(handshake_delay_s=0.4)
        began = time.monotonic()
        client = await open_client(realtime_server)
        elapsed = time.monotonic() - began
        await client.ws.close()
        realtime_server.refuse_handshakes(403)
        for _ in range(2):
            with pytest.raises(InvalidStatus) as refused:
                await open_client(realtime_server)
            statuses.append(refused.value.response.status_code)
        return statuses, elapsed

    statuses, elapsed = run(go)
    assert statuses == [503, 503, 403, 403]
    assert elapsed >= 0.4
    assert realtime_server.connection_count == 2


# ------------------------------------------------------------ token endpoint


def test_token_endpoint_issues_tokens_the_handshake_accepts(realtime_server: FakeRealtimeServer) -> None:
    status, reply = post_token(realtime_server, realtime_server.api_key)
    assert status == 200
    validate_client_secret_response(reply)
    assert reply["value"].startswith("ek_")
    assert 590 <= reply["expires_at"] - time.time() <= 601
    manual = {"session": {"type": "transcription", "audio": {"input": {"turn_detection": None}}}}
    status, manual_reply = post_token(realtime_server, realtime_server.api_key, manual)
    assert status == 200

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        client = await open_client(realtime_server, None, key=reply["value"])
        await client.ws.close()
        manual_client = await open_client(realtime_server, None, key=manual_reply["value"])
        await manual_client.ws.close()
        return client.received[0], manual_client.received[0]

    created, manual_created = run(go)
    assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert manual_created["session"]["audio"]["input"]["turn_detection"] is None
    assert [s.auth for s in realtime_server.sessions()] == ["token", "token"]
    assert [r["status"] for r in realtime_server.token_requests()] == [200, 200]


def test_token_endpoint_refusals_and_expiry(realtime_server: FakeRealtimeServer) -> None:
    assert post_token(realtime_server, "sk-wrong")[0] == 401
    status, token = post_token(realtime_server, realtime_server.api_key)
    assert status == 200
    assert post_token(realtime_server, token["value"])[0] == 401  # a token cannot mint tokens
    realtime_server.refuse_tokens(500, times=1)
    assert post_token(realtime_server, realtime_server.api_key)[0] == 500
    assert post_token(realtime_server, realtime_server.api_key)[0] == 200
    realtime_server.refuse_tokens(401)
    assert post_token(realtime_server, realtime_server.api_key)[0] == 401
    assert post_token(realtime_server, realtime_server.api_key)[0] == 401
    realtime_server.configure(refuse_token_status=None)
    bad_body = {"session": {"type": "transcription", "x": 1}}
    assert post_token(realtime_server, realtime_server.api_key, bad_body)[0] == 400
    assert "session.x" in realtime_server.take_violations()[0]
    realtime_server.expire_tokens()

    async def go() -> int:
        with pytest.raises(InvalidStatus) as refused:
            await open_client(realtime_server, None, key=token["value"])
        return refused.value.response.status_code

    assert run(go) == 401


# ------------------------------------------------------------ session faults


def test_drop_mid_utterance_aborts_without_close_frame(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.drop_mid_utterance("abort", after_ms=200)

    async def go() -> ConnectionClosedError:
        client = await open_client(realtime_server)
        with pytest.raises(ConnectionClosedError) as dropped:
            for i in range(0, 2000, 40):  # like a microphone: read what arrives between frames
                await client.append((silence(100) + tone(1000) + silence(900))[i * MS : (i + 40) * MS])
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.001):
                        await client.recv()
            while True:
                await client.recv()
        assert "input_audio_buffer.speech_started" in client.types()
        return dropped.value

    dropped = run(go)
    assert dropped.rcvd is None  # no close frame: the TCP connection was aborted
    assert realtime_server.server_events("input_audio_buffer.committed") == []
    info = realtime_server.wait_for_session_closed()
    assert info.close_code == 1006
    assert 300 * MS <= len(info.audio) < 1100 * MS


def test_drop_mid_utterance_with_close_1011_then_reconnect(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.drop_mid_utterance("close_1011", after_ms=100)
    realtime_server.script(["after reconnect"])

    async def go() -> tuple[ConnectionClosed, str]:
        client = await open_client(realtime_server)
        with pytest.raises(ConnectionClosed) as closed:
            await client.append(tone(600))
            while True:
                await client.recv()
        again = await open_client(realtime_server)  # one-shot: the second connection works
        await again.append(tone(300) + silence(700))
        done = await again.until("conversation.item.input_audio_transcription.completed")
        await again.ws.close()
        return closed.value, done["transcript"]

    closed, transcript = run(go)
    assert closed.rcvd is not None and closed.rcvd.code == 1011
    assert transcript == "after reconnect"
    assert realtime_server.connection_count == 2


def test_failed_out_of_order_and_delayed_turns() -> None:
    options: dict[str, Any] = {
        "fail_turns": {3},
        "out_of_order_turns": {1},
        "completion_delay_s": 0.05,
        "turn_delays": {2: 0.3},
    }
    with running_server(script=["one", "two", "three"], **options) as server:

        async def go() -> tuple[Client, float]:
            client = await open_client(server)
            began = time.monotonic()
            await client.append(tone(300) + silence(600) + tone(300) + silence(600) + tone(300) + silence(600))
            while "conversation.item.input_audio_transcription.failed" not in client.types():
                await client.recv()
            elapsed = time.monotonic() - began
            await client.ws.close()
            return client, elapsed

        client, elapsed = run(go)
        commits = [e["item_id"] for e in client.received if e["type"] == "input_audio_buffer.committed"]
        finished = [
            (e["item_id"], e.get("transcript"))
            for e in client.received
            if e["type"].endswith((".completed", ".failed"))
        ]
        # turn 2 completes before turn 1; turn 3 (failed) after both; the chain stays in spoken order
        assert finished == [(commits[1], "two"), (commits[0], "one"), (commits[2], None)]
        failed = next(e for e in client.received if e["type"].endswith(".failed"))
        assert failed["error"]["code"] == "transcription_failed"
        assert elapsed >= 0.35
        assert [t.failed for t in server.turns()] == [False, False, True]


def test_session_max_duration_closes_1001_with_the_service_message() -> None:
    with running_server(session_max_s=0.3) as server:

        async def go() -> tuple[dict[str, Any], ConnectionClosed]:
            client = await open_client(server)
            error = await client.until("error")
            with pytest.raises(ConnectionClosed) as closed:
                await client.recv()
            return error, closed.value

        error, closed = run(go)
        assert error["error"]["message"] == MAX_DURATION_MESSAGE
        assert closed.rcvd is not None
        assert (closed.rcvd.code, closed.rcvd.reason) == (1001, MAX_DURATION_MESSAGE)
        assert server.wait_for_session_closed().close_code == 1001


@pytest.mark.parametrize("code", [3000, 4000, 1011])
def test_close_on_demand_and_on_connect(realtime_server: FakeRealtimeServer, code: int) -> None:
    async def go() -> tuple[ConnectionClosed, dict[str, Any], ConnectionClosed]:
        client = await open_client(realtime_server)
        await asyncio.to_thread(realtime_server.close_sessions, code, "closed by test")
        with pytest.raises(ConnectionClosed) as on_demand:
            await client.recv()
        realtime_server.close_on_connect(code, "refused at connect")
        async with connect(
            realtime_server.url, additional_headers={"Authorization": f"Bearer {realtime_server.api_key}"}
        ) as ws:
            error = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed) as on_connect:
                await ws.recv()
        client = await open_client(realtime_server)  # one-shot
        await client.ws.close()
        return on_demand.value, error, on_connect.value

    on_demand, error, on_connect = run(go)
    assert on_demand.rcvd is not None and (on_demand.rcvd.code, on_demand.rcvd.reason) == (code, "closed by test")
    assert error["type"] == "error"
    assert on_connect.rcvd is not None and on_connect.rcvd.code == code


def test_error_events_on_demand(realtime_server: FakeRealtimeServer) -> None:
    async def go() -> dict[str, Any]:
        client = await open_client(realtime_server)
        await asyncio.to_thread(realtime_server.send_error, "rate_limit_exceeded", "slow down", event_id="x1")
        error = await client.until("error")
        await client.ws.close()
        return error

    error = run(go)
    assert error["error"] == {
        "type": "server_error",
        "code": "rate_limit_exceeded",
        "message": "slow down",
        "event_id": "x1",
        "param": None,
    }


# ---------------------------------------------------- lifecycle and the CLI


def test_violations_fail_running_server_and_shutdown_is_clean() -> None:
    before = set(threading.enumerate())
    with pytest.raises(AssertionError, match="Unknown parameter: 'bogus'"), running_server() as server:

        async def go() -> ConnectionClosed:
            client = await open_client(server)
            await client.send({"type": "input_audio_buffer.clear", "bogus": 1})
            await client.until("error")
            with pytest.raises(ConnectionClosed) as closed:
                await client.recv()  # the server stops while the client is connected
            return closed.value

        async def stop_later() -> ConnectionClosed:
            task = asyncio.create_task(go())
            await server.wait_for_server_event_async("error")
            await asyncio.to_thread(server.stop)
            return await task

        closed = run(stop_later)
        assert closed.rcvd is not None and closed.rcvd.code == 1001
    assert set(threading.enumerate()) <= before


def test_command_line_server(tmp_path: Path) -> None:
    dump = tmp_path / "dump.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.realtime_server", "--script", "from the cli", "--dump", str(dump)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        info = json.loads(process.stdout.readline())

        async def go() -> str:
            headers = {"Authorization": f"Bearer {info['api_key']}"}
            async with connect(info["url"], additional_headers=headers) as ws:
                ev = ClientEvents()
                await ws.send(json.dumps(ev.session_update(settings("manual"))))
                append = {"type": "input_audio_buffer.append", "audio": base64.b64encode(tone(300)).decode()}
                await ws.send(json.dumps(append))
                await ws.send(json.dumps(ev.commit()))
                while True:
                    event = json.loads(await ws.recv())
                    if event["type"].endswith("transcription.completed"):
                        return str(event["transcript"])

        assert run(go) == "from the cli"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
        assert process.returncode == 0, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    summary = json.loads(dump.read_text())
    assert summary["violations"] == []
    assert summary["turns"][0]["transcript"] == "from the cli"
    assert summary["sessions"][0]["audio_bytes"] == 300 * MS


def test_forced_speech_then_client_commit_uses_the_speech_item() -> None:
    with running_server(energy_vad=False) as server:

        async def go() -> tuple[str, dict[str, Any], Client]:
            client = await open_client(server)
            await client.append(silence(200))
            await server.wait_for_async(lambda: len(server.audio()) >= 200 * MS)
            item = await asyncio.to_thread(server.force_speech_started)
            started = await client.until("input_audio_buffer.speech_started")
            assert (started["item_id"], started["audio_start_ms"]) == (item, 0)
            await client.send(client.ev.commit())
            committed = await client.until("input_audio_buffer.committed")
            await client.until("conversation.item.done")
            await client.ws.close()
            return item, committed, client

        item, committed, client = run(go)
        assert committed["item_id"] == item
        assert "input_audio_buffer.speech_stopped" not in client.types()
        assert server.turns()[0].transcript == ""  # silence, as committed


# ------------------------------------------------------- per-model rules

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


SERVER_VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}
REFUSED_UPDATES = [
    (
        raw_update("r_td", LIVE, SERVER_VAD),
        "session.audio.input.turn_detection",
        "Turn detection is not supported for this transcription model.",
    ),
    (
        raw_update("r_whisper_td", "gpt-realtime-whisper", {"type": "semantic_vad"}),
        "session.audio.input.turn_detection",
        "Turn detection is not supported for this transcription model.",
    ),
    (
        raw_update("r_both", "gpt-transcribe", language="en", languages=["en", "de"]),
        "session.audio.input.transcription.languages",
        "Specify either 'language' or 'languages', not both.",
    ),
    (
        raw_update("r_kw", LIVE, keywords=["fine", "<b>"]),
        "session.audio.input.transcription.keywords[1]",
        "Keywords must not contain '<', '>', carriage returns or line feeds.",
    ),
    (
        raw_update("r_kw_lf", "gpt-transcribe", keywords=["two\nlines"]),
        "session.audio.input.transcription.keywords[0]",
        "Keywords must not contain '<', '>', carriage returns or line feeds.",
    ),
    (
        raw_update("r_prompt", "gpt-realtime-whisper", prompt="expect code"),
        "session.audio.input.transcription.prompt",
        "'prompt' is not supported with gpt-realtime-whisper.",
    ),
]


@pytest.mark.parametrize(
    ("update", "param", "message"), REFUSED_UPDATES, ids=[u[0]["event_id"] for u in REFUSED_UPDATES]
)
def test_session_update_a_model_does_not_take_is_refused_and_the_session_keeps_its_config(
    update: dict[str, Any], param: str, message: str
) -> None:
    with running_server(strict_models=False, script=["still works"]) as server:

        async def go() -> tuple[dict[str, Any], Client]:
            client = await open_client(server, settings("manual"))
            await client.send(update)
            error = await client.until("error")
            # the session is still open, with the previous (manual, gpt-4o-mini) config: a turn works
            await client.append(tone(300))
            await client.send(client.ev.commit())
            done = await client.until(COMPLETED)
            assert done["transcript"] == "still works"
            await client.ws.close()
            return error, client

        error, client = run(go)
        assert error["error"] == {
            "type": "invalid_request_error",
            "code": error["error"]["code"],
            "param": param,
            "message": message,
            "event_id": update["event_id"],
        }
        assert error["error"]["code"] in ("invalid_value", "invalid_request_error")
        assert client.types().count("session.updated") == 1
        config = server.sessions()[0].config["audio"]["input"]
        assert (config["transcription"]["model"], config["turn_detection"]) == ("gpt-4o-mini-transcribe", None)
        refusals = server.refusals()
        assert [(r.session, r.event_id, r.param, r.message) for r in refusals][:1] == [
            (0, update["event_id"], param, message)
        ]
        assert refusals[0].model == update["session"]["audio"]["input"]["transcription"]["model"]
        assert server.violations == []  # strict_models=False: refusals are not violations


def test_strict_models_makes_a_refusal_fail_the_test() -> None:
    with (
        pytest.raises(AssertionError, match=r"refused: session\.audio\.input\.turn_detection"),
        running_server() as server,
    ):

        async def go() -> None:
            client = await open_client(server, model_settings(LIVE, "server_vad"))
            await client.ws.close()

        with pytest.raises(TimeoutError):  # the update is refused: no session.updated ever comes
            run(go, timeout=1)
        assert [r.turn_detection["type"] for r in server.refusals(LIVE)] == ["server_vad"]
        assert server.refusals("gpt-transcribe") == []


def test_models_that_take_no_turn_detection_get_it_off_when_the_update_omits_it(
    realtime_server: FakeRealtimeServer,
) -> None:
    async def go() -> dict[str, Any]:
        client = await open_client(realtime_server, None)  # the server's default: server_vad
        update = raw_update("omit", LIVE, languages=["de"], keywords=["sttd"])
        del update["session"]["audio"]["input"]["turn_detection"]
        await client.send(update)
        updated = await client.until("session.updated")
        await client.ws.close()
        return updated

    audio_input = run(go)["session"]["audio"]["input"]
    assert audio_input["turn_detection"] is None
    assert audio_input["transcription"] == {"model": LIVE, "languages": ["de"], "keywords": ["sttd"]}
    assert realtime_server.refusals() == []


def test_token_requests_follow_the_model_rules_too() -> None:
    with running_server(strict_models=False) as server:
        session = raw_update("", LIVE, SERVER_VAD)["session"]
        status, body = post_token(server, server.api_key, {"session": session})
        assert status == 400
        assert body["error"]["message"] == "Turn detection is not supported for this transcription model."
        assert [(r.session, r.model) for r in server.refusals()] == [(None, LIVE)]
        session["audio"]["input"]["turn_detection"] = None
        assert post_token(server, server.api_key, {"session": session})[0] == 200


# ------------------------------------------------------------ live models


def test_live_model_streams_words_while_speech_is_heard_and_completes_on_commit(
    realtime_server: FakeRealtimeServer,
) -> None:
    realtime_server.script(["one two three four five six", "second turn"])

    async def go() -> tuple[Client, list[dict[str, Any]], list[dict[str, Any]]]:
        client = await open_client(realtime_server, model_settings(LIVE, languages=("de", "en")))
        await client.append(silence(200) + tone(1000))  # 1 s of speech heard: 4 words at 250 ms a word
        while client.types().count(DELTA) < 4:
            await client.recv()
        during = list(client.received)
        await client.append(silence(700))  # the end of speech: no more words, and no commit by the server
        await realtime_server.wait_for_async(lambda: len(realtime_server.audio()) >= 1900 * MS)
        await client.send(client.ev.commit())
        await client.until("conversation.item.done")
        await client.append(tone(600) + silence(600))
        await client.send(client.ev.commit())
        while client.types().count("conversation.item.done") < 2:
            await client.recv()
        await client.ws.close()
        return client, during, realtime_server.server_events()

    client, during, sent = run(go)
    assert sent == client.received
    deltas = [e for e in during if e["type"] == DELTA]
    item = deltas[0]["item_id"]
    assert [e["delta"] for e in deltas] == ["one", " two", " three", " four"]
    assert {e["item_id"] for e in deltas} == {item}
    assert not [t for t in client.types() if t.startswith("input_audio_buffer.speech_")]
    assert client.types().count(DELTA) == 4 + 2 + 2  # the rest after the commit: " five", " six"; "second", " turn"
    committed = [e for e in client.received if e["type"] == "input_audio_buffer.committed"]
    assert [(e["item_id"], e["previous_item_id"]) for e in committed] == [(item, None), (committed[1]["item_id"], item)]
    assert turn_events(client.received, item) == [
        DELTA,
        "input_audio_buffer.committed",
        "conversation.item.added",
        DELTA,
        COMPLETED,
        "conversation.item.done",
    ]
    completed = [e for e in client.received if e["type"] == COMPLETED]
    assert [e["transcript"] for e in completed] == ["one two three four five six", "second turn"]
    assert completed[0]["languages"] == [{"code": "de"}]
    second = [e["delta"] for e in client.received if e["type"] == DELTA and e["item_id"] == committed[1]["item_id"]]
    assert "".join(second) == "second turn"
    assert realtime_server.turns()[0].audio == silence(200) + tone(1000) + silence(700)


def test_live_commit_without_speech_is_silence_and_a_short_commit_is_refused(
    realtime_server: FakeRealtimeServer,
) -> None:
    realtime_server.script(["not consumed"])

    async def go() -> tuple[dict[str, Any], dict[str, Any], Client]:
        client = await open_client(realtime_server, model_settings("gpt-realtime-whisper", delay="low"))
        await client.append(tone(60))
        await client.send(client.ev.commit())
        small = await client.until("error")
        await client.send(client.ev.clear())
        await client.until("input_audio_buffer.cleared")
        await client.append(silence(500))
        await client.send(client.ev.commit())
        done = await client.until(COMPLETED)
        await client.ws.close()
        return small, done, client

    small, done, _ = run(go)
    assert small["error"]["code"] == "input_audio_buffer_commit_empty"
    assert done["transcript"] == ""
    assert "languages" not in done  # gpt-realtime-whisper does not send them
    assert realtime_server.pending_script == ["not consumed"]  # cleared speech gives its text back


def test_manual_commits_with_gpt_transcribe_carry_languages(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.script(["hallo", "hello"])

    async def go() -> list[dict[str, Any]]:
        client = await open_client(realtime_server, model_settings("gpt-transcribe", "manual", languages=("fr",)))
        await client.append(tone(300))
        await client.send(client.ev.commit())
        first = await client.until(COMPLETED)
        await client.send(client.ev.session_update(model_settings("gpt-transcribe", "manual")))
        await client.until("session.updated")
        await client.append(tone(300))
        await client.send(client.ev.commit())
        second = await client.until(COMPLETED)
        await client.ws.close()
        return [first, second]

    first, second = run(go)
    assert (first["languages"], second["languages"]) == ([{"code": "fr"}], [{"code": "en"}])
    assert "input_audio_buffer.speech_started" not in [e["type"] for e in realtime_server.server_events()]


def test_the_checker_takes_deltas_without_content_index_and_completed_with_languages() -> None:
    validate_server_event({"type": DELTA, "event_id": "e1", "item_id": "i1"})
    validate_server_event({"type": DELTA, "event_id": "e1", "item_id": "i1", "delta": "hi"})
    completed = {
        "type": COMPLETED,
        "event_id": "e2",
        "item_id": "i1",
        "content_index": 0,
        "transcript": "hi",
        "usage": {"type": "duration", "seconds": 1.0},
        "languages": [{"code": "en"}],
    }
    validate_server_event(completed)
    with pytest.raises(AssertionError, match=r"languages\[0\]\.name"):
        validate_server_event({**completed, "languages": [{"code": "en", "name": "English"}]})
    with pytest.raises(AssertionError, match="languages"):
        validate_server_event({**completed, "languages": ["en"]})


# ---------------------------------------------------- faults for hostile peers


@pytest.mark.parametrize(
    ("code", "reason", "delay_s"), [(1001, MAX_DURATION_MESSAGE, 0.0), (1011, "Internal server error", 0.3)]
)
def test_close_after_update(realtime_server: FakeRealtimeServer, code: int, reason: str, delay_s: float) -> None:
    realtime_server.close_after_update(code, reason, delay_s, times=2)

    async def one() -> tuple[float, ConnectionClosed]:
        client = await open_client(realtime_server, model_settings(LIVE))
        updated_at = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await client.recv()
        return time.monotonic() - updated_at, closed.value

    async def go() -> list[tuple[float, ConnectionClosed]]:
        results = [await one(), await one()]
        third = await open_client(realtime_server, model_settings(LIVE))  # times=2: the third stays open
        await third.ws.close()
        return results

    for elapsed, closed in run(go):
        assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (code, reason)
        assert delay_s - 0.05 <= elapsed < delay_s + 1.0  # the server's clock starts as it sends session.updated
    assert [realtime_server.wait_for_session_closed(i).close_code for i in range(3)] == [code, code, 1000]


def test_flood_deltas_for_unknown_items(realtime_server: FakeRealtimeServer) -> None:
    async def go() -> list[dict[str, Any]]:
        client = await open_client(realtime_server, model_settings(LIVE))
        await asyncio.to_thread(realtime_server.flood_deltas, 200, "ghost")
        began = time.monotonic()
        while client.types().count(DELTA) < 100:
            await client.recv()
        elapsed = time.monotonic() - began
        await asyncio.to_thread(realtime_server.stop_flood)
        assert 0.3 <= elapsed < 3, elapsed
        await client.ws.close()
        return client.received

    received = run(go)
    ghosts = [e["item_id"] for e in received if e["type"] == DELTA]
    assert all(i.startswith("ghost_") for i in ghosts) and len(set(ghosts)) == len(ghosts)
    assert realtime_server.flood_count >= 100
    assert realtime_server.server_events(DELTA) == []  # counted, not kept


def test_errors_echo_the_clients_key_on_demand_and_on_commit() -> None:
    with running_server(extra_api_keys=["sk-proj-other-key-123"]) as server:

        async def go() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
            client = await open_client(server, model_settings(LIVE), key="sk-proj-other-key-123")
            await asyncio.to_thread(server.echo_key_in_errors)
            await asyncio.to_thread(server.send_error, "rate_limit_exceeded", "slow down")
            on_demand = await client.until("error")
            await client.append(tone(300))
            commit = client.ev.commit()
            await client.send(commit)
            on_commit = await client.until("error")
            done = await client.until(COMPLETED)  # the commit still goes through
            await client.append(tone(300))
            await client.send(client.ev.commit())  # commit_errors=1: no error this time
            await client.until(COMPLETED)
            on_commit["commit_id"] = commit["event_id"]
            await client.ws.close()
            return on_demand, on_commit, done

        on_demand, on_commit, done = run(go)
        assert on_demand["error"]["message"] == "slow down (request authorized with sk-proj-other-key-123)"
        assert "sk-proj-other-key-123" in on_commit["error"]["message"]
        assert on_commit["error"]["event_id"] == on_commit.pop("commit_id")
        assert done["transcript"] == "utterance 1"
        assert len(server.server_events("error")) == 2


def test_peak_concurrent_connections_and_the_timeline(realtime_server: FakeRealtimeServer) -> None:
    async def go() -> None:
        first = await open_client(realtime_server, model_settings(LIVE))
        second = await open_client(realtime_server, model_settings(LIVE))
        await second.ws.close()
        await realtime_server.wait_for_async(lambda: realtime_server.open_connections == 1)
        third = await open_client(realtime_server, model_settings(LIVE))
        await first.ws.close()
        await third.ws.close()

    run(go)
    realtime_server.wait_for(lambda: realtime_server.open_connections == 0)
    assert realtime_server.max_concurrent_connections == 2
    assert realtime_server.connection_count == 3
    timeline = realtime_server.connection_timeline()
    assert [c.open for c in timeline] == [1, 2, 1, 2, 1, 0]
    assert [c.total for c in timeline][:4] == [1, 2, 2, 3]
    assert all(a.t <= b.t for a, b in itertools.pairwise(timeline))


@pytest.mark.parametrize("model", [LIVE, "gpt-4o-mini-transcribe"])
def test_never_commit_accepts_audio_and_sends_nothing(realtime_server: FakeRealtimeServer, model: str) -> None:
    realtime_server.never_commit()
    td = "client_vad" if model == LIVE else "server_vad"

    async def go() -> Client:
        client = await open_client(realtime_server, model_settings(model, td))
        for _ in range(3):
            await client.append(tone(800) + silence(800))
            await client.send(client.ev.commit())
        await client.send(client.ev.clear())
        cleared = await client.recv()  # nothing came before the answer to clear
        assert cleared["type"] == "input_audio_buffer.cleared"
        await client.ws.close()
        return client

    run(go)
    assert len(realtime_server.audio()) == 3 * 1600 * MS
    assert realtime_server.turns() == []
    assert [e["type"] for e in realtime_server.server_events()][2:] == ["input_audio_buffer.cleared"]
