"""The offline engine (``sttd-engine``) speaks the Realtime protocol: events, errors, model rules, handshake,
turn detection and commits, seen by a raw client.

The engine runs under the daemon's own supervisor (:class:`sttd.engine.supervisor.EngineProcess`), with
Whisper base from ``scripts/fetch-test-model``; one engine serves the whole package on each worker
(loading the model costs seconds; see conftest.py). Its speech is espeak-ng speech, and every event it
sends is checked against the ``openai`` package's models.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from sttd.models import TURN_DETECTION_REFUSED

from ..wer import words
from .harness import RATE, SENTENCES, Client, RunningEngine, session, silence, speech, voiced_ms

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
