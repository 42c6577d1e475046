"""The fake Realtime service's per-model rules and live models, driven by a plain websockets client
(no sttd daemon): what each model refuses, streams and reports.
"""

from __future__ import annotations

from typing import Any

import pytest

from .openai_models import validate_server_event
from .realtime_client import (
    COMPLETED,
    DELTA,
    LIVE,
    MS,
    Client,
    model_settings,
    open_client,
    post_token,
    raw_update,
    run,
    settings,
    silence,
    tone,
    turn_events,
)
from .realtime_server import FakeRealtimeServer, running_server

# ------------------------------------------------------- per-model rules


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
