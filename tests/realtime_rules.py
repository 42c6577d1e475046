"""The test Realtime server's protocol rules: session shapes and what each model refuses (no I/O).

* ``session.update`` replaces each ``audio.input`` member it names
  (``format``, ``transcription``, ``turn_detection``, ``noise_reduction``)
  as a whole; members it does not name are kept, with one exception: an
  update that switches to a model without the service's voice detection
  (``gpt-live-transcribe``, ``gpt-realtime-whisper``) and does not name
  ``turn_detection`` turns it off ("omitted or null" is what such a model takes).
* Per-model refusals come from :func:`sttd.models.session_problems` (one
  table for sttd, its local engine and this server): turn detection for a
  model without it (``Turn detection is not supported for this transcription
  model.``), ``language`` with ``languages``, keywords holding ``<``, ``>``,
  CR or LF, a ``prompt`` for ``gpt-realtime-whisper``, and fields a known
  model does not take. The service's shape: an ``error`` event, type
  ``invalid_request_error``, with ``code``, ``param``, ``message`` and the
  client event's ``event_id``; the session stays open with its previous config.
* A live model (``gpt-live-transcribe``, ``gpt-realtime-whisper``) with
  ``turn_detection`` null streams transcript deltas while speech is heard.
* ``gpt-transcribe`` and ``gpt-live-transcribe`` put ``languages: [{code}]``
  on ``completed``: the session's first configured language, else ``en``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from sttd.models import Refusal, model_info, session_problems
from sttd.protocol import SAMPLE_RATE

from .realtime_vad import DEFAULT_TURN_DETECTION

REALTIME_PATH = "/v1/realtime"
TOKEN_PATH = "/v1/realtime/client_secrets"
MAX_DURATION_MESSAGE = "Your session hit the maximum duration of 60 minutes."
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011
CLOSE_BAD_CREDENTIALS = 3000
CLOSE_REFUSED = 4000
SESSION_MAX_S = 3600
DEFAULT_MODEL = "gpt-4o-mini-transcribe"
"""The model of a session no ``session.update`` has configured (clients in tests name theirs)."""
DEFAULT_LANGUAGE = "en"
SUPPORTED_EVENTS = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
)

__all__ = [
    "CLOSE_BAD_CREDENTIALS",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_REFUSED",
    "DEFAULT_MODEL",
    "MAX_DURATION_MESSAGE",
    "REALTIME_PATH",
    "SESSION_MAX_S",
    "SUPPORTED_EVENTS",
    "TOKEN_PATH",
    "Refusal",
    "RefusalInfo",
    "apply_update",
    "completed_languages",
    "default_config",
    "is_live",
    "json_error",
    "model_refusals",
    "session_model",
    "session_object",
    "split_deltas",
    "words",
]


@dataclass(frozen=True)
class RefusalInfo:
    """A ``session.update`` (or token request) the server refused for what its model takes."""

    session: int | None
    """The websocket session's index; None for a token request."""
    event_id: str | None
    """The refused client event's ``event_id``."""
    model: str
    """The transcription model the update would have configured."""
    code: str
    param: str
    message: str
    turn_detection: Any
    """The effective ``turn_detection`` the update would have configured (None: off)."""
    transcription: dict[str, Any]
    """The effective ``transcription`` member the update would have configured."""


def default_config() -> dict[str, Any]:
    return {
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                "transcription": {"model": DEFAULT_MODEL},
                "noise_reduction": None,
                "turn_detection": dict(DEFAULT_TURN_DETECTION),
            }
        }
    }


def _audio_input(config: dict[str, Any]) -> dict[str, Any]:
    audio = config.get("audio")
    value = audio.get("input") if isinstance(audio, dict) else None
    return value if isinstance(value, dict) else {}


def transcription_of(config: dict[str, Any]) -> dict[str, Any]:
    value = _audio_input(config).get("transcription")
    return value if isinstance(value, dict) else {}


def turn_detection_of(config: dict[str, Any]) -> dict[str, Any] | None:
    td = _audio_input(config).get("turn_detection")
    return td if isinstance(td, dict) else None


def session_model(config: dict[str, Any]) -> str:
    model = transcription_of(config).get("model")
    return model if isinstance(model, str) and model else DEFAULT_MODEL


def effective_turn_detection(td: Any) -> dict[str, Any] | None:
    """What ``session.updated`` echoes: only keys both SDK session models declare."""
    if not isinstance(td, dict):
        return None
    if td.get("type") == "semantic_vad":
        return {"type": "semantic_vad"}
    return {key: td.get(key, default) for key, default in DEFAULT_TURN_DETECTION.items()}


def apply_update(config: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """The session after ``update`` (a ``session.update``'s ``session``); ``config`` is not changed."""
    new = copy.deepcopy(config)
    audio = update.get("audio")
    audio_input = audio.get("input") if isinstance(audio, dict) else None
    audio_input = audio_input if isinstance(audio_input, dict) else {}
    target = new.setdefault("audio", {}).setdefault("input", {})
    for key in ("format", "transcription", "noise_reduction"):
        if key in audio_input:
            target[key] = copy.deepcopy(audio_input[key])
    if "turn_detection" in audio_input:
        target["turn_detection"] = effective_turn_detection(audio_input["turn_detection"])
    else:
        info = model_info(session_model(new))
        if info.known and not info.service_vad:
            target["turn_detection"] = None  # such a model takes "omitted or null"
    if "include" in update:
        new["include"] = copy.deepcopy(update["include"])
    return new


def model_refusals(config: dict[str, Any]) -> list[Refusal]:
    """What the service refuses in the effective session ``config``, in its error shape."""
    return session_problems(session_model(config), transcription_of(config), turn_detection_of(config))


def is_live(config: dict[str, Any]) -> bool:
    """Deltas as speech arrives: a live model with turn detection off."""
    return model_info(session_model(config)).live and turn_detection_of(config) is None


def completed_languages(config: dict[str, Any]) -> list[dict[str, str]] | None:
    """``completed.languages`` for the gpt-transcribe family (None: the model does not send it)."""
    if not model_info(session_model(config)).languages:
        return None
    transcription = transcription_of(config)
    languages = transcription.get("languages")
    if isinstance(languages, list) and languages and isinstance(languages[0], str):
        return [{"code": languages[0]}]
    language = transcription.get("language")
    return [{"code": language if isinstance(language, str) and language else DEFAULT_LANGUAGE}]


def session_object(session_id: str, config: dict[str, Any], expires_at: int) -> dict[str, Any]:
    return {
        "id": session_id,
        "object": "realtime.transcription_session",
        "type": "transcription",
        "expires_at": expires_at,
        **copy.deepcopy(config),
    }


def words(text: str) -> list[str]:
    """``text`` cut before each word (leading whitespace kept): the pieces join back to ``text``."""
    found = re.findall(r"\s*\S+", text)
    if not found:
        return [text] if text else []
    found[-1] += text[len("".join(found)) :]  # trailing whitespace, if any
    return found


def split_deltas(text: str, pieces: int) -> list[str]:
    """``text`` in at most ``pieces`` deltas, cut at word boundaries."""
    found = words(text)
    if not found:
        return []
    pieces = max(1, min(pieces, len(found)))
    size = -(-len(found) // pieces)
    return ["".join(found[i : i + size]) for i in range(0, len(found), size)]


def json_error(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}
