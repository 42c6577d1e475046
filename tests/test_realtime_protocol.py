"""The fake Realtime service itself, driven by a plain websockets client (no sttd daemon):
its event validators, session setup, energy VAD turns, commits and protocol errors.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from sttd.protocol import ClientEvents, SessionSettings, TurnDetection

from .openai_models import client_event_problems, server_event_problems, validate_client_event, validate_server_event
from .realtime_client import MS, VAD_TURN, Client, open_client, run, settings, silence, tone, turn_events
from .realtime_server import FakeRealtimeServer, rms_threshold, running_server

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
