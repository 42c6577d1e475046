"""What a session of the local engine is configured to do, and what a ``session.update`` must pass. No I/O.

:func:`apply_update` checks an update in three steps, in the order the
service's answers imply, and changes nothing when one fails:

1. the shape: known keys, types, values the protocol allows (24 kHz PCM,
   ISO-639-1 codes Whisper knows, a ``delay`` word, lists of strings);
2. the transcription model's rules (:func:`sttd.models.session_problems`,
   the same table the client and the test server use): ``turn_detection``
   for a model without the service's VAD, ``language`` with ``languages``,
   keywords with ``<``, ``>``, CR or LF, a ``prompt`` for
   ``gpt-realtime-whisper``, ...;
3. what this engine cannot do although the model could: ``semantic_vad``
   (there is no semantic model here, and falling back silently would hide it).

Whatever model name the client asks for, Whisper does the work; the name
only decides the rules and the shape of the events (see
:attr:`SessionConfig.reports_languages`). A name the table does not know
gets no rules (the most lenient shape), so a client naming the engine's own
Whisper model keeps working as before.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..models import DELAYS, ModelInfo, model_info, session_problems
from ..protocol import SAMPLE_RATE
from ..redact import excerpt
from .vad import VadSettings

DEFAULT_VAD = VadSettings()
TRANSCRIPTION_KEYS = frozenset({"model", "language", "languages", "prompt", "keywords", "delay"})
"""Keys of ``audio.input.transcription`` the service declares."""
AUDIO_INPUT_KEYS = frozenset({"format", "transcription", "turn_detection", "noise_reduction"})
SESSION_KEYS = frozenset({"type", "audio", "include"})
_TD = "session.audio.input.turn_detection"
_TR = "session.audio.input.transcription"


class EventRefused(Exception):
    """A client event the engine answers with an ``error`` event (``invalid_request_error``)."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass(frozen=True)
class Transcription:
    """``audio.input.transcription`` as the client set it (echoed in ``session.updated``)."""

    model: str
    """The model the client named; its rules apply, Whisper does the work."""
    language: str = ""
    """One ISO-639-1 code (older models), or "" to detect it."""
    languages: tuple[str, ...] = ()
    """Possible languages (gpt-transcribe family): the first one is Whisper's language."""
    prompt: str = ""
    """Whisper's initial prompt."""
    keywords: tuple[str, ...] = ()
    """Words to expect: Whisper's hotwords."""
    delay: str = ""
    """gpt-realtime-whisper's latency setting: accepted and echoed, not used (Whisper decodes whole turns)."""

    def wire(self) -> dict[str, Any]:
        """The JSON object, with only the members that are set."""
        out: dict[str, Any] = {"model": self.model}
        if self.language:
            out["language"] = self.language
        if self.languages:
            out["languages"] = list(self.languages)
        if self.prompt:
            out["prompt"] = self.prompt
        if self.keywords:
            out["keywords"] = list(self.keywords)
        if self.delay:
            out["delay"] = self.delay
        return out

    @property
    def whisper_language(self) -> str:
        """The language Whisper is told to expect: the one code, else the first hint, else "" (detect)."""
        return self.language or (self.languages[0] if self.languages else "")

    @property
    def hotwords(self) -> str:
        return " ".join(self.keywords)


@dataclass(frozen=True)
class SessionConfig:
    """What a session is configured to do; :meth:`echo` is the ``audio`` object of ``session.updated``."""

    transcription: Transcription
    """What the client asked of the transcription model."""
    vad: VadSettings | None = DEFAULT_VAD
    """Server VAD (Silero) settings, or None: the client commits each turn."""
    noise_reduction: str | None = None
    """Accepted and echoed, not applied."""

    @property
    def model(self) -> ModelInfo:
        return model_info(self.transcription.model)

    @property
    def reports_languages(self) -> bool:
        """``completed`` carries ``languages`` (the models that take a list of them, as the service does)."""
        return self.model.languages

    def turn_detection(self) -> dict[str, Any] | None:
        vad = self.vad
        if vad is None:
            return None
        return {
            "type": "server_vad",
            "threshold": vad.threshold,
            "prefix_padding_ms": vad.prefix_padding_ms,
            "silence_duration_ms": vad.silence_duration_ms,
        }

    def echo(self) -> dict[str, Any]:
        return {
            "input": {
                "format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                "transcription": self.transcription.wire(),
                "noise_reduction": None if self.noise_reduction is None else {"type": self.noise_reduction},
                "turn_detection": self.turn_detection(),
            }
        }


# ------------------------------------------------------------------ shape


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EventRefused("invalid_type", f"Invalid type for '{param}': expected an object.", param)
    return value


def _check_keys(value: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
    for key in value:
        if key not in allowed:
            raise EventRefused("unknown_parameter", f"Unknown parameter: '{prefix}.{key}'.", f"{prefix}.{key}")


def _string(value: Any, param: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise EventRefused("invalid_type", f"Invalid type for '{param}': expected a string.", param)
    return value


def _strings(value: Any, param: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise EventRefused("invalid_type", f"Invalid type for '{param}': expected an array of strings.", param)
    for index, item in enumerate(value):
        _string(item, f"{param}[{index}]")
    return tuple(value)


def _language(code: str, param: str, known: frozenset[str]) -> str:
    if code and code not in known:
        raise EventRefused(
            "invalid_value",
            f"Invalid value: {excerpt(code)}. The local model does not know this language (ISO-639-1 code).",
            param,
        )
    return code


def _transcription(value: Any, current: Transcription, known: frozenset[str]) -> Transcription:
    fields = _object(value or {}, _TR)
    _check_keys(fields, TRANSCRIPTION_KEYS, _TR)
    model = _string(fields.get("model"), f"{_TR}.model") or current.model
    language = _language(_string(fields.get("language"), f"{_TR}.language"), f"{_TR}.language", known)
    languages = _strings(fields.get("languages"), f"{_TR}.languages")
    for index, code in enumerate(languages):
        _language(code, f"{_TR}.languages[{index}]", known)
    delay = _string(fields.get("delay"), f"{_TR}.delay")
    if delay and delay not in DELAYS:
        supported = ", ".join(f"'{d}'" for d in DELAYS)
        raise EventRefused(
            "invalid_value", f"Invalid value: {excerpt(delay)}. Supported values are: {supported}.", f"{_TR}.delay"
        )
    return Transcription(
        model=model,
        language=language,
        languages=languages,
        prompt=_string(fields.get("prompt"), f"{_TR}.prompt"),
        keywords=_strings(fields.get("keywords"), f"{_TR}.keywords"),
        delay=delay,
    )


def _number(td: dict[str, Any], key: str, default: float, low: float, high: float, *, integer: bool) -> Any:
    param = f"{_TD}.{key}"
    value: object = td.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        kind = "an integer" if integer else "a number"
        raise EventRefused(
            "invalid_type", f"Invalid type for '{param}': expected {kind}, but got {excerpt(value)}.", param
        )
    if not low <= value <= high:
        raise EventRefused("invalid_value", f"Invalid '{param}': {value!r} is not between {low:g} and {high:g}.", param)
    return value


def _turn_detection(value: Any) -> tuple[str, VadSettings | None]:
    """The type asked for and the server VAD settings (None for null and for ``semantic_vad``)."""
    if value is None:
        return "", None
    td = _object(value, _TD)
    kind = td.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise EventRefused(
            "invalid_value",
            f"Invalid value: {excerpt(kind)}. Supported values are: 'server_vad' and 'semantic_vad'.",
            f"{_TD}.type",
        )
    if kind == "semantic_vad":
        return kind, None
    return kind, VadSettings(
        threshold=float(_number(td, "threshold", DEFAULT_VAD.threshold, 0.0, 1.0, integer=False)),
        prefix_padding_ms=_number(td, "prefix_padding_ms", DEFAULT_VAD.prefix_padding_ms, 0, 10000, integer=True),
        silence_duration_ms=_number(td, "silence_duration_ms", DEFAULT_VAD.silence_duration_ms, 0, 10000, integer=True),
    )


def _format(value: Any) -> None:
    fmt = _object(value, "session.audio.input.format")
    if fmt.get("type", "audio/pcm") != "audio/pcm":
        raise EventRefused(
            "invalid_value",
            f"Invalid value: {excerpt(fmt.get('type'))}. Supported values are: 'audio/pcm'.",
            "session.audio.input.format.type",
        )
    if fmt.get("rate", SAMPLE_RATE) != SAMPLE_RATE:
        raise EventRefused(
            "invalid_value",
            f"Invalid value: {excerpt(fmt.get('rate'))}. Supported values are: {SAMPLE_RATE}.",
            "session.audio.input.format.rate",
        )


def _noise_reduction(value: Any) -> str | None:
    if value is None:
        return None
    kind = _object(value, "session.audio.input.noise_reduction").get("type")
    if kind not in ("near_field", "far_field"):
        raise EventRefused(
            "invalid_value",
            f"Invalid value: {excerpt(kind)}. Supported values are: 'near_field' and 'far_field'.",
            "session.audio.input.noise_reduction.type",
        )
    return str(kind)


def _audio_input(session: Any) -> dict[str, Any]:
    session = _object(session, "session")
    _check_keys(session, SESSION_KEYS, "session")
    if session.get("type") == "realtime":
        # The service's answer on a ?intent=transcription connection (and its mirror image,
        # "Passing a transcription session update event to a realtime session is not allowed.").
        raise EventRefused(
            "invalid_parameter", "Passing a realtime session update event to a transcription session is not allowed."
        )
    if session.get("type") != "transcription":
        raise EventRefused(
            "invalid_value",
            f"Invalid value: {excerpt(session.get('type'))}. This is a transcription session: "
            "session.type must be 'transcription'.",
            "session.type",
        )
    audio = _object(session.get("audio", {}), "session.audio")
    _check_keys(audio, frozenset({"input"}), "session.audio")
    audio_input = _object(audio.get("input", {}), "session.audio.input")
    _check_keys(audio_input, AUDIO_INPUT_KEYS, "session.audio.input")
    return audio_input


# ------------------------------------------------------------------ update


def apply_update(config: SessionConfig, session: Any, languages: frozenset[str]) -> SessionConfig:
    """The configuration after a ``session.update``; raises :class:`EventRefused` and changes nothing on a bad one.

    Members of ``audio.input`` the update names replace the current ones as
    a whole. ``turn_detection`` left out for a model that takes none means
    none (the service's "omitted or null").
    """
    audio_input = _audio_input(session)
    if "format" in audio_input:
        _format(audio_input["format"])
    new = config
    if "transcription" in audio_input:
        new = replace(new, transcription=_transcription(audio_input["transcription"], config.transcription, languages))
    if "noise_reduction" in audio_input:
        new = replace(new, noise_reduction=_noise_reduction(audio_input["noise_reduction"]))
    kind = ""
    if "turn_detection" in audio_input:
        kind, vad = _turn_detection(audio_input["turn_detection"])
        new = replace(new, vad=vad)
    elif new.model.known and not new.model.service_vad:
        new = replace(new, vad=None)
    turn_detection = {"type": kind} if kind == "semantic_vad" else new.turn_detection()
    problems = session_problems(new.transcription.model, new.transcription.wire(), turn_detection)
    if problems:
        first = problems[0]
        raise EventRefused(first.code, first.message, first.param)
    if kind == "semantic_vad":
        raise EventRefused(
            "invalid_value",
            "Invalid value: 'semantic_vad'. The local engine supports 'server_vad' (Silero VAD) or null "
            "(manual commits); it has no semantic turn detection.",
            f"{_TD}.type",
        )
    return new


def diagnose(raw: str | bytes) -> tuple[EventRefused, str | None]:
    """Why a message that :func:`sttd.protocol.parse_client_event` refused was refused, and its event_id if any."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return EventRefused("invalid_json", "The server could not parse the message as JSON."), None
    if not isinstance(data, dict):
        return EventRefused("invalid_json", "The message must be a JSON object."), None
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    if not isinstance(data.get("type"), str):
        return EventRefused("missing_required_parameter", "Missing required parameter: 'type'.", "type"), event_id
    return EventRefused("invalid_value", "Invalid 'audio': expected base64-encoded PCM16 audio.", "audio"), event_id
