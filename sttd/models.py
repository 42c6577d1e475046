"""What each transcription model takes: one table, no I/O.

The service's transcription models differ in what a ``session.update`` may
carry (OpenAI's model pages and the ``openai`` package 3.57, December 2026):

* the older models (``gpt-4o-*-transcribe``, ``whisper-1``) take one
  ``language``, a ``prompt`` and the service's voice detection
  (``server_vad``/``semantic_vad``); they are shut down on 2027-02-26;
* ``gpt-transcribe`` and ``gpt-live-transcribe`` take ``languages`` (a list)
  and ``keywords`` instead of ``language``; ``gpt-live-transcribe`` streams
  text while the person speaks but refuses turn detection, so the client
  commits each turn;
* ``gpt-realtime-whisper`` streams too, takes ``delay`` and refuses ``prompt``.

The client (:mod:`sttd.protocol`) shapes its ``session.update`` from this
table, the config check reports settings a model does not take, and the
servers sttd ships or tests against (the local engine, the test server)
refuse what the service refuses, with :func:`session_problems`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger(__name__)

ServiceVad = Literal["server_vad", "semantic_vad"]
Delay = Literal["minimal", "low", "medium", "high", "xhigh"]
DELAYS: tuple[str, ...] = ("minimal", "low", "medium", "high", "xhigh")

DEFAULT_MODEL = "gpt-live-transcribe"
"""OpenAI's transcription guide: "Start with gpt-live-transcribe"."""

KEYWORD_FORBIDDEN = ("<", ">", "\r", "\n")
"""Characters the service refuses inside a keyword."""
MAX_KEYWORDS = 100
MAX_KEYWORD_CHARS = 100
"""sttd's own caps (the service documents none): keywords are hints, not a dictionary."""

TURN_DETECTION_REFUSED = "Turn detection is not supported for this transcription model."
"""The service's message when a model without voice detection is sent ``turn_detection``."""


@dataclass(frozen=True)
class ModelInfo:
    """What one transcription model takes and does."""

    name: str
    known: bool
    """False: a name sttd has never heard of, passed through with the most conservative shape."""
    service_vad: frozenset[str]
    """The service's turn detection types it accepts; empty: ``turn_detection`` must be null (client commits)."""
    languages: bool
    """Takes ``languages`` (a list) and refuses ``language``; else one ``language`` code."""
    keywords: bool
    prompt: bool
    delay: bool
    live: bool
    """Sends transcript deltas while the person is still speaking (before the commit)."""
    price: str
    """What it costs, as the model page states it."""
    shutdown: str = ""
    """The announced shutdown date of a deprecated model ("" for current ones)."""
    replacement: str = ""

    @property
    def deprecated(self) -> bool:
        return bool(self.shutdown)

    @property
    def needs_client_turns(self) -> bool:
        """Without the service's voice detection, sttd finds the end of each turn itself."""
        return not self.service_vad


_VAD = frozenset({"server_vad", "semantic_vad"})
_SHUTDOWN = "2027-02-26"


def _old(name: str, price: str, replacement: str) -> ModelInfo:
    return ModelInfo(
        name,
        known=True,
        service_vad=_VAD,
        languages=False,
        keywords=False,
        prompt=True,
        delay=False,
        live=False,
        price=price,
        shutdown=_SHUTDOWN,
        replacement=replacement,
    )


MODELS: Mapping[str, ModelInfo] = {
    info.name: info
    for info in (
        ModelInfo(
            "gpt-live-transcribe",
            known=True,
            service_vad=frozenset(),
            languages=True,
            keywords=True,
            prompt=True,
            delay=False,
            live=True,
            price="$0.017 per minute",
        ),
        ModelInfo(
            "gpt-transcribe",
            known=True,
            # server_vad is presumed (not confirmed by the service); manual commits work.
            service_vad=frozenset({"server_vad"}),
            languages=True,
            keywords=True,
            prompt=True,
            delay=False,
            live=False,
            price="$0.0045 per minute",
        ),
        ModelInfo(
            "gpt-realtime-whisper",
            known=True,
            service_vad=frozenset(),
            languages=False,
            keywords=False,
            prompt=False,
            delay=True,
            live=True,
            price="$0.017 per minute",
        ),
        _old("gpt-4o-mini-transcribe", "$0.003 per minute (estimated)", "gpt-transcribe"),
        _old("gpt-4o-mini-transcribe-2025-12-15", "$0.003 per minute (estimated)", "gpt-transcribe"),
        _old("gpt-4o-transcribe", "$0.006 per minute (estimated)", "gpt-transcribe"),
        _old("gpt-4o-transcribe-diarize", "$0.006 per minute (estimated)", "gpt-transcribe"),
        _old("whisper-1", "$0.006 per minute", "gpt-transcribe"),
    )
}


def model_info(name: str) -> ModelInfo:
    """The table's entry for ``name``; an unknown name gets the most conservative shape.

    Conservative means: nothing the model might refuse. No turn detection
    (sttd commits each turn, which every model accepts), one ``language``,
    a ``prompt``, no keywords, no delay.
    """
    info = MODELS.get(name)
    if info is not None:
        return info
    return ModelInfo(
        name,
        known=False,
        service_vad=frozenset(),
        languages=False,
        keywords=False,
        prompt=True,
        delay=False,
        live=False,
        price="unknown",
    )


TurnChoice = Literal["auto", "server_vad", "semantic_vad", "client_vad", "manual"]
TurnMode = Literal["server_vad", "semantic_vad", "client_vad", "manual"]


def resolve_turn_detection(info: ModelInfo, wanted: TurnChoice) -> TurnMode:
    """What ``[turn_detection] type`` means for this model.

    ``auto`` is the service's VAD where the model has one, sttd's own where
    it has none. An explicit service VAD the model refuses is kept as asked:
    :func:`setting_problems` reports it, and the service's refusal says so
    clearly rather than sttd falling back silently.
    """
    if wanted != "auto":
        return wanted
    if "server_vad" in info.service_vad:
        return "server_vad"
    return "client_vad"


def warn_if_deprecated(info: ModelInfo) -> None:
    """Log, once per dictation, that the model is going away and what replaces it."""
    if info.deprecated:
        logger.warning(
            "transcription model %s is deprecated and shut down on %s: use %s (or %s, the default)",
            info.name,
            info.shutdown,
            info.replacement,
            DEFAULT_MODEL,
        )
    elif not info.known:
        logger.warning(
            "unknown transcription model %r: sending the most conservative session shape "
            "(one language, no keywords, sttd's own turn detection)",
            info.name[:80],
        )


def keyword_problem(keyword: str) -> str | None:
    """Why the service would refuse ``keyword``, or None."""
    if not keyword.strip():
        return "must not be empty"
    bad = [c for c in KEYWORD_FORBIDDEN if c in keyword]
    if bad:
        return "must not contain " + ", ".join(repr(c) for c in bad)
    if len(keyword) > MAX_KEYWORD_CHARS:
        return f"is longer than {MAX_KEYWORD_CHARS} characters"
    return None


def setting_problems(
    info: ModelInfo,
    *,
    turn_detection: str,
    languages: Sequence[str],
    keywords: Sequence[str],
    prompt: str,
    delay: str,
) -> list[tuple[str, str]]:
    """``(config key, why)`` for each configured setting this model does not take.

    For ``sttd --check-config``: these are not errors (sttd leaves out what
    the model does not take, or the service says no), but the user should know.
    """
    problems: list[tuple[str, str]] = []
    name = info.name
    if turn_detection in ("server_vad", "semantic_vad") and turn_detection not in info.service_vad:
        problems.append(("turn_detection.type", f'{name} does not take {turn_detection} (use "auto" or "client_vad")'))
    if len(languages) > 1 and not info.languages:
        problems.append(("realtime.languages", f"{name} takes one language: only the first is sent"))
    if keywords and not info.keywords:
        problems.append(("realtime.keywords", f"{name} does not take keywords: they are not sent"))
    if prompt and not info.prompt:
        problems.append(("realtime.prompt", f"{name} does not take a prompt: it is not sent"))
    if delay and not info.delay:
        problems.append(("realtime.delay", f"{name} does not take a delay: it is not sent"))
    return problems


# ------------------------------------------------------------- server side


@dataclass(frozen=True)
class Refusal:
    """Why a server refuses a ``session.update``, in the service's error shape."""

    code: str
    param: str
    message: str


def session_problems(model: str, transcription: Mapping[str, Any], turn_detection: Any) -> list[Refusal]:
    """What the service refuses in an effective transcription session, for servers that play it.

    ``transcription`` is ``session.audio.input.transcription`` after the
    update is applied and ``turn_detection`` the effective turn detection
    (``None`` when off).
    """
    info = model_info(model)
    base = "session.audio.input.transcription"
    problems: list[Refusal] = []
    if turn_detection is not None and info.known and not info.service_vad:
        problems.append(Refusal("invalid_value", "session.audio.input.turn_detection", TURN_DETECTION_REFUSED))
    elif isinstance(turn_detection, Mapping) and info.known:
        kind = turn_detection.get("type")
        if kind not in info.service_vad:
            supported = ", ".join(f"'{v}'" for v in sorted(info.service_vad))
            problems.append(
                Refusal(
                    "invalid_value",
                    "session.audio.input.turn_detection.type",
                    f"Invalid value: '{kind}'. Supported values are: {supported}.",
                )
            )
    if transcription.get("language") is not None and transcription.get("languages") is not None:
        problems.append(
            Refusal("invalid_request_error", f"{base}.languages", "Specify either 'language' or 'languages', not both.")
        )
    _field_refusals(info, transcription, base, problems)
    for index, keyword in enumerate(transcription.get("keywords") or ()):
        why = keyword_problem(keyword) if isinstance(keyword, str) else "must be a string"
        if why is not None and any(c in str(keyword) for c in KEYWORD_FORBIDDEN):
            problems.append(
                Refusal(
                    "invalid_value",
                    f"{base}.keywords[{index}]",
                    "Keywords must not contain '<', '>', carriage returns or line feeds.",
                )
            )
    return problems


def _field_refusals(info: ModelInfo, transcription: Mapping[str, Any], base: str, problems: list[Refusal]) -> None:
    """Fields a known model does not take at all."""
    if not info.known:
        return
    unsupported = {
        "languages": not info.languages,
        # "language" alone is not refused for the list models (not confirmed either way); with
        # "languages" beside it, it is (above).
        "keywords": not info.keywords,
        "prompt": not info.prompt,
        "delay": not info.delay,
    }
    for field, refused in unsupported.items():
        if refused and transcription.get(field) not in (None, "", []):
            problems.append(
                Refusal("invalid_value", f"{base}.{field}", f"'{field}' is not supported with {info.name}.")
            )
