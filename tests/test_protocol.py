"""The protocol module against the official SDK's models: what sttd sends and what it accepts."""

from __future__ import annotations

import base64
import itertools
import json

import pytest

from sttd import protocol as p
from sttd.errors import ProtocolError

from .openai_models import client_event_problems, validate_client_event, validate_server_event

SETTINGS = [
    p.SessionSettings(model="gpt-4o-mini-transcribe"),
    p.SessionSettings(model="gpt-4o-transcribe", language="de", prompt="sttd, PipeWire", noise_reduction="far_field"),
    p.SessionSettings(model="m", turn_detection=p.TurnDetection("semantic_vad"), noise_reduction="off"),
    p.SessionSettings(model="m", turn_detection=p.TurnDetection("manual")),
    p.SessionSettings(model="m", turn_detection=p.TurnDetection("server_vad", 0.7, 100, 900)),
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_session_update_is_the_ga_transcription_shape(settings: p.SessionSettings) -> None:
    event = p.ClientEvents().session_update(settings)
    validate_client_event(event)
    audio_input = event["session"]["audio"]["input"]
    assert event["session"]["type"] == "transcription"
    assert audio_input["format"] == {"type": "audio/pcm", "rate": 24000}
    assert audio_input["transcription"]["model"] == settings.model
    assert audio_input["transcription"].get("language", "") == settings.language
    if settings.turn_detection.type == "manual":
        assert audio_input["turn_detection"] is None
    else:
        assert audio_input["turn_detection"]["type"] == settings.turn_detection.type
    if settings.noise_reduction == "off":
        assert audio_input["noise_reduction"] is None


def test_audio_commit_and_clear_validate_and_carry_unique_ids() -> None:
    events = p.ClientEvents()
    append = events.append(b"\x01\x00" * 480)
    assert base64.b64decode(append["audio"]) == b"\x01\x00" * 480
    sent = [append, events.commit(), events.clear(), events.session_update(SETTINGS[0])]
    for event in sent:
        validate_client_event(event)
    ids = [e["event_id"] for e in sent if "event_id" in e]
    assert len(ids) == len(set(ids)) == 3


def test_an_undeclared_key_is_caught_by_the_strict_check() -> None:
    event = p.ClientEvents().session_update(SETTINGS[0])
    event["session"]["audio"]["input"]["sample_rate"] = 24000
    assert client_event_problems(event)


def test_every_server_event_the_builders_make_validates_and_parses_back() -> None:
    s = p.ServerEvents()
    built = [
        s.session_created({"type": "transcription", "id": "sess_1", "object": "realtime.transcription_session"}),
        s.speech_started("item_1", 100),
        s.speech_stopped("item_1", 900),
        s.committed("item_1", None),
        s.item_added("item_1", None),
        s.delta("item_1", "hel"),
        s.completed("item_1", "hello", 0.8),
        s.item_done("item_1", None, "hello"),
        s.failed("item_2", "model_error", "boom"),
        s.error("input_audio_buffer_commit_empty", "buffer too small", event_id="sttd_3"),
    ]
    for event in built:
        validate_server_event(event)
    parsed = [p.parse_server_event(json.dumps(e)) for e in built]
    assert parsed[1] == p.SpeechStarted("item_1", 100)
    assert parsed[3] == p.Committed("item_1", None)
    assert parsed[4] == p.ItemAdded("item_1", None)
    assert parsed[6] == p.TranscriptionCompleted("item_1", "hello")
    assert parsed[8] == p.TranscriptionFailed("item_2", "model_error", "boom")
    assert parsed[9] == p.ServiceError(
        "invalid_request_error", "input_audio_buffer_commit_empty", "buffer too small", "sttd_3"
    )
    assert parsed[7] == p.UnknownEvent("conversation.item.done")


def test_server_events_are_parsed_leniently_but_malformed_ones_raise() -> None:
    extra = {"type": "input_audio_buffer.committed", "event_id": "e", "item_id": "i", "future_field": [1, 2]}
    assert p.parse_server_event(json.dumps(extra)) == p.Committed("i", None)
    assert p.parse_server_event('{"type": "rate_limits.updated", "rate_limits": []}') == p.UnknownEvent(
        "rate_limits.updated"
    )
    for bad in [
        "not json",
        "[]",
        '{"no": "type"}',
        '{"type": "input_audio_buffer.committed"}',
        '{"type": "conversation.item.input_audio_transcription.completed", "item_id": 3}',
    ]:
        with pytest.raises(ProtocolError):
            p.parse_server_event(bad)


def test_a_protocol_error_never_quotes_the_payload() -> None:
    secret_text = "my bank password is hunter2"
    with pytest.raises(ProtocolError) as info:
        p.parse_server_event(
            json.dumps(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": 5,
                    "transcript": secret_text,
                }
            )
        )
    assert secret_text not in str(info.value)


def test_client_event_ids_do_not_repeat_across_many_events() -> None:
    events = p.ClientEvents()
    ids = {events.commit()["event_id"] for _ in itertools.repeat(None, 1000)}
    assert len(ids) == 1000


@pytest.mark.parametrize(
    ("model", "language", "languages", "expected"),
    [
        ("gpt-live-transcribe", "de", ("en", "de"), {"languages": ["de"]}),  # the chosen one wins
        ("gpt-live-transcribe", "", ("en", "de"), {"languages": ["en", "de"]}),
        ("gpt-transcribe", "fr", (), {"languages": ["fr"]}),
        ("gpt-4o-mini-transcribe", "", ("en", "de"), {"language": "en"}),  # one code: the first hint
        ("gpt-4o-mini-transcribe", "de", ("en",), {"language": "de"}),
    ],
)
def test_language_and_languages_never_go_out_together(
    model: str, language: str, languages: tuple[str, ...], expected: dict[str, object]
) -> None:
    settings = p.SessionSettings(model=model, language=language, languages=languages)
    event = p.ClientEvents().session_update(settings)
    transcription = event["session"]["audio"]["input"]["transcription"]
    assert {k: v for k, v in transcription.items() if k in ("language", "languages")} == expected
    assert client_event_problems(event) == []


def test_text_no_d_bus_string_can_carry_is_mended_where_it_comes_in() -> None:
    # JSON escapes for a NUL and a lone surrogate: valid JSON, impossible in a D-Bus string.
    kind = "conversation.item.input_audio_transcription.delta"
    delta = '{"type": "' + kind + '", "item_id": "it\\u0000", "delta": "a\\u0000b"}'
    assert p.parse_server_event(delta) == p.TranscriptionDelta("it\ufffd", "a\ufffdb")
    error = '{"type": "error", "error": {"type": "x", "code": "c\\ud800", "message": "m\\udfff\\ud800!"}}'
    parsed = p.parse_server_event(error)
    assert isinstance(parsed, p.ServiceError)
    assert (parsed.code, parsed.message) == ("c\ufffd", "m\ufffd\ufffd!")
    assert p.carriable("日本語 😀 ok") == "日本語 😀 ok"  # paired surrogates from JSON are one character already
