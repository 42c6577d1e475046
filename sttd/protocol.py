"""The Realtime transcription protocol, as the service speaks it today. No I/O.

Client events are built strictly: only keys the service declares, so a
change on our side cannot smuggle in a field the service refuses. Server
events are parsed leniently, once, at the boundary, into frozen dataclasses
keyed on ``type``: unknown fields are ignored, unknown event types become
:class:`UnknownEvent`, and an event missing a field we need raises
:class:`~sttd.errors.ProtocolError` so the caller can log it and skip it.

The server-side half (:func:`parse_client_event`, :class:`ServerEvents`) is
here too so that the test server and a local engine speak exactly the same
shapes as the client expects.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ProtocolError
from .models import ModelInfo, model_info

SAMPLE_RATE = 24000
"""The only PCM rate the service accepts."""

BYTES_PER_MS = SAMPLE_RATE * 2 // 1000
"""PCM16 mono at 24 kHz: 48 bytes of audio per millisecond."""

MIN_COMMIT_MS = 100
"""The service refuses to commit a buffer holding less audio than this."""

TurnDetectionType = Literal["server_vad", "semantic_vad", "client_vad", "manual"]
NoiseReduction = Literal["near_field", "far_field", "off"]


@dataclass(frozen=True)
class TurnDetection:
    """How the end of an utterance is found: by the service, by sttd, or by Stop."""

    type: TurnDetectionType = "server_vad"
    """``server_vad`` (the service's energy VAD), ``semantic_vad`` (the service's model),
    ``client_vad`` (sttd's own, which commits each turn) or ``manual`` (commit on Stop)."""
    threshold: float = 0.5
    """Activation threshold, 0..1."""
    prefix_padding_ms: int = 300
    """Audio kept before detected speech."""
    silence_duration_ms: int = 500
    """Silence that ends an utterance."""

    @property
    def by_service(self) -> bool:
        """The service finds turns (and commits them) itself."""
        return self.type in ("server_vad", "semantic_vad")


@dataclass(frozen=True)
class SessionSettings:
    """Everything sttd configures on a transcription session.

    ``language`` is the one the user chose (SetLanguage); ``languages`` the
    configured hints for models that take a list. :func:`_transcription`
    decides, from the model table, which of them go on the wire.
    """

    model: str
    language: str = ""
    """ISO-639-1 code, or "" to let the model detect it."""
    prompt: str = ""
    turn_detection: TurnDetection = TurnDetection()
    noise_reduction: NoiseReduction = "near_field"
    languages: tuple[str, ...] = ()
    """Possible languages (gpt-transcribe family); ``language``, when set, wins."""
    keywords: tuple[str, ...] = ()
    """Words the model should expect (gpt-transcribe family)."""
    delay: str = ""
    """How long the model may wait before emitting text (gpt-realtime-whisper); "" = its default."""

    @property
    def model_info(self) -> ModelInfo:
        return model_info(self.model)


# ---------------------------------------------------------------- client side


class ClientEvents:
    """Builds client events, each tagged with a unique ``event_id``.

    The service echoes the ``event_id`` of the client event an ``error``
    refers to, which is how a refused ``session.update`` or ``commit`` is told
    apart from other errors.
    """

    def __init__(self, prefix: str = "sttd") -> None:
        self._prefix = prefix
        self._counter = itertools.count(1)

    def _next_id(self) -> str:
        return f"{self._prefix}_{next(self._counter)}"

    def session_update(self, settings: SessionSettings) -> dict[str, Any]:
        return {
            "type": "session.update",
            "event_id": self._next_id(),
            "session": {"type": "transcription", "audio": {"input": _audio_input(settings)}},
        }

    def append(self, pcm: bytes) -> dict[str, Any]:
        # No event_id: appends are never acknowledged and an id per 40 ms
        # frame would only add bytes to the wire.
        return {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode("ascii")}

    def append_json(self, pcm: bytes) -> bytes:
        """:meth:`append` as its JSON text, UTF-8: built once per frame, no dict, no copy but the join.

        Base64 needs no JSON escaping, so the text is put together directly.
        """
        return b'{"type":"input_audio_buffer.append","audio":"' + base64.b64encode(pcm) + b'"}'

    def commit(self) -> dict[str, Any]:
        return {"type": "input_audio_buffer.commit", "event_id": self._next_id()}

    def clear(self) -> dict[str, Any]:
        return {"type": "input_audio_buffer.clear", "event_id": self._next_id()}


def _audio_input(settings: SessionSettings) -> dict[str, Any]:
    return {
        "format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
        "transcription": _transcription(settings),
        "turn_detection": _turn_detection(settings.turn_detection),
        "noise_reduction": None if settings.noise_reduction == "off" else {"type": settings.noise_reduction},
    }


def _transcription(settings: SessionSettings) -> dict[str, Any]:
    """The ``transcription`` member, shaped by what the model takes (see :mod:`sttd.models`).

    ``language`` and ``languages`` never go together (the service refuses
    that): a list model gets ``languages``, every other model one ``language``.
    """
    info = settings.model_info
    transcription: dict[str, Any] = {"model": settings.model}
    hints = [settings.language] if settings.language else list(settings.languages)
    if info.languages:
        if hints:
            transcription["languages"] = hints
    elif hints:
        transcription["language"] = hints[0]
    if settings.prompt and info.prompt:
        transcription["prompt"] = settings.prompt
    if settings.keywords and info.keywords:
        transcription["keywords"] = list(settings.keywords)
    if settings.delay and info.delay:
        transcription["delay"] = settings.delay
    return transcription


def _turn_detection(td: TurnDetection) -> dict[str, Any] | None:
    if not td.by_service:
        return None  # sttd commits: client_vad at each end of speech, manual on Stop
    if td.type == "semantic_vad":
        return {"type": "semantic_vad"}
    return {
        "type": "server_vad",
        "threshold": td.threshold,
        "prefix_padding_ms": td.prefix_padding_ms,
        "silence_duration_ms": td.silence_duration_ms,
    }


# ------------------------------------------------------------- server events


@dataclass(frozen=True)
class SessionCreated:
    session_id: str


@dataclass(frozen=True)
class SessionUpdated:
    session: dict[str, Any]


@dataclass(frozen=True)
class SpeechStarted:
    item_id: str
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True)
class Committed:
    item_id: str
    previous_item_id: str | None


@dataclass(frozen=True)
class ItemAdded:
    item_id: str
    previous_item_id: str | None


@dataclass(frozen=True)
class TranscriptionDelta:
    item_id: str
    delta: str


@dataclass(frozen=True)
class TranscriptionCompleted:
    item_id: str
    transcript: str


@dataclass(frozen=True)
class TranscriptionFailed:
    item_id: str
    code: str
    message: str


@dataclass(frozen=True)
class ServiceError:
    """An ``error`` event. ``event_id`` is the client event it refers to, if any."""

    type: str
    code: str
    message: str
    event_id: str | None


@dataclass(frozen=True)
class UnknownEvent:
    """A well-formed event sttd has no use for (rate limits, item.done, ...)."""

    type: str


ServerEvent = (
    SessionCreated
    | SessionUpdated
    | SpeechStarted
    | SpeechStopped
    | Committed
    | ItemAdded
    | TranscriptionDelta
    | TranscriptionCompleted
    | TranscriptionFailed
    | ServiceError
    | UnknownEvent
)


def parse_server_event(raw: str | bytes) -> ServerEvent:
    """Parse one websocket message from the service.

    Raises :class:`ProtocolError` when the message is not a JSON object with a
    ``type`` or lacks a field sttd needs; the message never includes the raw
    payload, which may carry transcript text.
    """
    data = _load_object(raw)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("server event without a type")
    parser = _PARSERS.get(kind)
    if parser is None:
        return UnknownEvent(kind)
    try:
        event: ServerEvent = parser(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError(f"malformed {kind} event: {exc!r}") from None
    return event


def _load_object(raw: str | bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("event is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("event is not a JSON object")
    return data


def _str(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} is not a string")
    return carriable(value)


def carriable(text: str) -> str:
    """``text`` as D-Bus, hooks and the desktop can carry it: no NUL, no lone surrogate (each becomes U+FFFD).

    JSON allows both (``"\\u0000"``, ``"\\ud800"``); a D-Bus string allows neither
    (the bus drops a client that sends a NUL, and a surrogate cannot be encoded
    at all), so one such character from the service must not cost the dictation.
    """
    return _UNCARRIABLE.sub("\ufffd", text)


_UNCARRIABLE = re.compile("[\0\ud800-\udfff]")


def _text(value: Any, default: str) -> str:
    """A lenient text field: ``default`` when missing or empty, anything else as a string, made carriable."""
    return carriable(str(value or default))


def _opt_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return carriable(value) if isinstance(value, str) else None


def _int(data: dict[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if not isinstance(value, int):
        raise TypeError(f"{key} is not an integer")
    return value


def _error_fields(data: dict[str, Any]) -> dict[str, Any]:
    error = data.get("error")
    return error if isinstance(error, dict) else {}


def _parse_error(data: dict[str, Any]) -> ServiceError:
    error = _error_fields(data)
    return ServiceError(
        type=_text(error.get("type"), "error"),
        code=_text(error.get("code"), ""),
        message=_text(error.get("message"), ""),
        event_id=_opt_str(error, "event_id"),
    )


def _parse_failed(data: dict[str, Any]) -> TranscriptionFailed:
    error = _error_fields(data)
    return TranscriptionFailed(
        item_id=_str(data, "item_id"),
        code=_text(error.get("code") or error.get("type"), "transcription_failed"),
        message=_text(error.get("message"), "transcription failed"),
    )


def _parse_item_added(data: dict[str, Any]) -> ItemAdded:
    item = data["item"]
    if not isinstance(item, dict):
        raise TypeError("item is not an object")
    return ItemAdded(item_id=_str(item, "id"), previous_item_id=_opt_str(data, "previous_item_id"))


_PARSERS: dict[str, Any] = {
    "session.created": lambda d: SessionCreated(_text(d.get("session", {}).get("id"), "")),
    "session.updated": lambda d: SessionUpdated(dict(d["session"])),
    "input_audio_buffer.speech_started": lambda d: SpeechStarted(_str(d, "item_id"), _int(d, "audio_start_ms")),
    "input_audio_buffer.speech_stopped": lambda d: SpeechStopped(_str(d, "item_id"), _int(d, "audio_end_ms")),
    "input_audio_buffer.committed": lambda d: Committed(_str(d, "item_id"), _opt_str(d, "previous_item_id")),
    "conversation.item.added": _parse_item_added,
    "conversation.item.input_audio_transcription.delta": lambda d: TranscriptionDelta(
        _str(d, "item_id"), _text(d.get("delta"), "")
    ),
    "conversation.item.input_audio_transcription.completed": lambda d: TranscriptionCompleted(
        _str(d, "item_id"), _str(d, "transcript")
    ),
    "conversation.item.input_audio_transcription.failed": _parse_failed,
    "error": _parse_error,
}


# ------------------------------------------------------------- server side


def parse_client_event(raw: str | bytes) -> dict[str, Any]:
    """Parse a client event on the server side: a JSON object with a ``type``.

    Decodes ``input_audio_buffer.append`` audio into ``pcm`` (bytes) so the
    server does not have to; raises :class:`ProtocolError` otherwise.
    """
    data = _load_object(raw)
    if not isinstance(data.get("type"), str):
        raise ProtocolError("client event without a type")
    if data["type"] == "input_audio_buffer.append":
        try:
            data["pcm"] = base64.b64decode(_str(data, "audio"), validate=True)
        except (KeyError, TypeError, binascii.Error):
            raise ProtocolError("input_audio_buffer.append without valid base64 audio") from None
    return data


class ServerEvents:
    """Builds server events with unique ``event_id``s, as the service sends them."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._items = itertools.count(1)

    def new_item_id(self) -> str:
        return f"item_{next(self._items):06d}"

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "event_id": f"event_{next(self._counter):06d}", **fields}

    def session_created(self, session: dict[str, Any]) -> dict[str, Any]:
        return self._event("session.created", session=session)

    def session_updated(self, session: dict[str, Any]) -> dict[str, Any]:
        return self._event("session.updated", session=session)

    def speech_started(self, item_id: str, audio_start_ms: int) -> dict[str, Any]:
        return self._event("input_audio_buffer.speech_started", item_id=item_id, audio_start_ms=audio_start_ms)

    def speech_stopped(self, item_id: str, audio_end_ms: int) -> dict[str, Any]:
        return self._event("input_audio_buffer.speech_stopped", item_id=item_id, audio_end_ms=audio_end_ms)

    def committed(self, item_id: str, previous_item_id: str | None) -> dict[str, Any]:
        return self._event("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous_item_id)

    def _user_audio_item(self, item_id: str, status: str, transcript: str | None) -> dict[str, Any]:
        return {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": status,
            "content": [{"type": "input_audio", "transcript": transcript}],
        }

    def item_added(self, item_id: str, previous_item_id: str | None) -> dict[str, Any]:
        item = self._user_audio_item(item_id, "completed", None)
        return self._event("conversation.item.added", previous_item_id=previous_item_id, item=item)

    def item_done(self, item_id: str, previous_item_id: str | None, transcript: str) -> dict[str, Any]:
        item = self._user_audio_item(item_id, "completed", transcript)
        return self._event("conversation.item.done", previous_item_id=previous_item_id, item=item)

    def delta(self, item_id: str, delta: str) -> dict[str, Any]:
        return self._event(
            "conversation.item.input_audio_transcription.delta", item_id=item_id, content_index=0, delta=delta
        )

    def completed(self, item_id: str, transcript: str, audio_seconds: float) -> dict[str, Any]:
        return self._event(
            "conversation.item.input_audio_transcription.completed",
            item_id=item_id,
            content_index=0,
            transcript=transcript,
            usage={"type": "duration", "seconds": round(audio_seconds, 3)},
        )

    def failed(self, item_id: str, code: str, message: str) -> dict[str, Any]:
        return self._event(
            "conversation.item.input_audio_transcription.failed",
            item_id=item_id,
            content_index=0,
            error={"type": "transcription_error", "code": code, "message": message},
        )

    def cleared(self) -> dict[str, Any]:
        return self._event("input_audio_buffer.cleared")

    def error(
        self,
        code: str,
        message: str,
        *,
        event_id: str | None = None,
        type_: str = "invalid_request_error",
        param: str | None = None,
    ) -> dict[str, Any]:
        error: dict[str, Any] = {"type": type_, "code": code, "message": message, "param": param, "event_id": event_id}
        return self._event("error", error=error)
