"""One Realtime transcription session of the local engine: its configuration, input buffer and turns.

A :class:`Session` answers the client events of one websocket connection:

* ``session.update`` → ``session.updated``, or an ``error`` that leaves the
  configuration as it was (the rules are in :mod:`sttd.engine.session_config`);
* ``input_audio_buffer.append`` / ``commit`` / ``clear``; with server VAD
  (Silero, :mod:`sttd.engine.vad`) per turn ``speech_started`` →
  ``speech_stopped`` → ``committed`` → ``conversation.item.added`` →
  transcription ``delta`` (one per Whisper segment) → ``completed`` (with
  ``usage``, and ``languages`` for the models that report them) or
  ``failed`` → ``conversation.item.done``; a client commit skips the two
  speech events (and commits speech in progress with its ``item_id``);
* ``error`` events with the service's codes, echoing the client's ``event_id``.

Turns are transcribed one at a time in commit order by the engine's one
:class:`~sttd.engine.transcriber.Transcriber`. The live models
(``gpt-live-transcribe``, ``gpt-realtime-whisper``) get the same events:
their deltas come after the commit, not during speech. Partials while the
person speaks belong in :meth:`Session.append` (the audio of the turn in
progress is :attr:`Session.buffer`'s), decoded at a lower priority than
committed turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from ..errors import ProtocolError
from ..protocol import MIN_COMMIT_MS, ServerEvents, parse_client_event
from ..redact import excerpt
from .resample import Resampler
from .session_config import DEFAULT_VAD, EventRefused, SessionConfig, Transcription, apply_update, diagnose
from .transcriber import ModelUnavailableError, Transcriber
from .transcriber import Request as TranscriptionRequest
from .vad import SAMPLES_PER_MS, InputBuffer, SpeechProbe, SpeechStart, SpeechStop

logger = logging.getLogger(__name__)

CLOSE_REFUSED = 4000
"""A refused request shape: the client does not retry it."""
SUPPORTED_EVENTS = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
)


@dataclass(frozen=True)
class SessionContext:
    """What every session of one engine shares."""

    transcriber: Transcriber
    new_probe: Callable[[], SpeechProbe | None]
    """A fresh Silero stream for a session's VAD."""
    languages: frozenset[str]
    """Language codes the model knows."""
    events: ServerEvents


@dataclass(eq=False)
class _Turn:
    item_id: str
    previous_item_id: str | None
    audio: npt.NDArray[np.float32]
    request: TranscriptionRequest
    reports_languages: bool
    committed_at: float = field(default_factory=time.monotonic)


def close_reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8."""
    data = text.encode()
    return text if len(data) <= 123 else data[:120].decode(errors="ignore") + "..."


class Session:
    """One websocket connection: its configuration, input buffer and turns."""

    def __init__(self, context: SessionContext, ws: ServerConnection, session_id: str) -> None:
        self.context = context
        self.ws = ws
        self.id = session_id
        self.config = SessionConfig(Transcription(context.transcriber.settings.name))
        self.resampler = Resampler()
        self.buffer = InputBuffer(context.new_probe(), self.config.vad)
        self.speech_item: str | None = None
        self.last_item: str | None = None
        self.turns: asyncio.Queue[_Turn] = asyncio.Queue()
        self._events = context.events

    def session_object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "realtime.transcription_session",
            "type": "transcription",
            "audio": self.config.echo(),
        }

    async def send(self, event: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(json.dumps(event))

    async def refuse(self, message: str) -> None:
        """The model is unusable: say so and close with 4000 (the client does not retry that)."""
        await self.send(self._events.error("model_unavailable", message, type_="server_error"))
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(CLOSE_REFUSED, close_reason(f"local engine: {message}"))

    async def run(self) -> None:
        await self.send(self._events.session_created(self.session_object()))
        async with asyncio.TaskGroup() as tg:
            worker = tg.create_task(self._turn_worker())
            try:
                async for raw in self.ws:
                    await self.on_message(raw)
            except ConnectionClosed:
                pass
            finally:
                worker.cancel()

    # -- client events

    async def on_message(self, raw: str | bytes) -> None:
        try:
            event = parse_client_event(raw)
        except ProtocolError:
            refusal, event_id = diagnose(raw)
            await self._error(refusal, event_id)
            return
        kind = event["type"]
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        try:
            if kind == "input_audio_buffer.append":
                await self.append(event["pcm"])
            elif kind == "session.update":
                await self.update(event.get("session"))
            elif kind == "input_audio_buffer.commit":
                await self.commit()
            elif kind == "input_audio_buffer.clear":
                self.buffer.clear()
                self.speech_item = None
                await self.send(self._events.cleared())
            else:
                supported = ", ".join(f"'{t}'" for t in SUPPORTED_EVENTS)
                message = f"Invalid value: {excerpt(kind)}. Supported values are: {supported}."
                raise EventRefused("invalid_value", message, "type")
        except EventRefused as refusal:
            await self._error(refusal, event_id)

    async def _error(self, refusal: EventRefused, event_id: str | None) -> None:
        logger.info("session %s: refused a client event: %s", self.id, refusal.message)
        await self.send(self._events.error(refusal.code, refusal.message, event_id=event_id, param=refusal.param))

    async def update(self, session: Any) -> None:
        self.config = apply_update(self.config, session, self.context.languages)
        if self.config.vad != self.buffer.vad:
            self.speech_item = None
        self.buffer.set_vad(self.config.vad)
        logger.debug(
            "session %s: model %s, language %r, turn detection %s",
            self.id,
            self.config.transcription.model[:60],
            self.config.transcription.whisper_language or "auto",
            self.config.vad,
        )
        await self.send(self._events.session_updated(self.session_object()))

    async def append(self, pcm: bytes) -> None:
        dropped = self.buffer.dropped
        for decision in self.buffer.append(self.resampler.process_bytes(pcm)):
            if isinstance(decision, SpeechStart):
                self.speech_item = self._events.new_item_id()
                await self.send(self._events.speech_started(self.speech_item, decision.start // SAMPLES_PER_MS))
            elif isinstance(decision, SpeechStop):
                item = self.speech_item or self._events.new_item_id()
                self.speech_item = None
                await self.send(self._events.speech_stopped(item, decision.end // SAMPLES_PER_MS))
                await self._commit(item, decision.audio, client=False)
        if self.buffer.dropped > dropped and dropped == 0:
            logger.warning("session %s: the uncommitted buffer is full; dropping its oldest audio", self.id)

    async def commit(self) -> None:
        buffered = self.buffer.buffered_ms
        if buffered < MIN_COMMIT_MS:
            raise EventRefused(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {buffered:.2f}ms of audio.",
            )
        item = self.speech_item or self._events.new_item_id()
        self.speech_item = None
        _, audio = self.buffer.take()
        await self._commit(item, audio, client=True)

    async def _commit(self, item: str, audio: npt.NDArray[np.float32], *, client: bool) -> None:
        previous, self.last_item = self.last_item, item
        await self.send(self._events.committed(item, previous))
        await self.send(self._events.item_added(item, previous))
        # A client commit's audio was not cut by the VAD: let Silero drop what is not speech
        # (silence sent after the last words, or a whole buffer of it in manual mode).
        threshold = (self.config.vad or DEFAULT_VAD).threshold if client else None
        transcription = self.config.transcription
        reports = self.config.reports_languages
        request = TranscriptionRequest(
            audio,
            language=transcription.whisper_language,
            prompt=transcription.prompt,
            hotwords=transcription.hotwords,
            vad_threshold=threshold,
            report_language=reports,
        )
        self.turns.put_nowait(_Turn(item, previous, audio, request, reports))

    # -- transcription

    async def _turn_worker(self) -> None:
        while True:
            await self._transcribe(await self.turns.get())

    async def _transcribe(self, turn: _Turn) -> None:
        seconds = turn.audio.size / (SAMPLES_PER_MS * 1000)
        deltas: list[str] = []
        language = ""
        try:
            async for piece in self.context.transcriber.transcribe(turn.request):
                delta = piece.text if deltas else piece.text.lstrip()
                language = piece.language or language
                if delta.strip():
                    deltas.append(delta)
                    await self.send(self._events.delta(turn.item_id, delta))
        except ModelUnavailableError as exc:
            await self.send(self._events.failed(turn.item_id, "model_unavailable", str(exc)))
            return
        except Exception as exc:  # any failure of the model is this turn's failure, not the session's
            logger.exception("session %s: transcription of %s failed", self.id, turn.item_id)
            message = f"Input transcription failed for this item: {exc.__class__.__name__}: {exc}"
            await self.send(self._events.failed(turn.item_id, "transcription_failed", message))
            return
        transcript = "".join(deltas).strip()
        logger.debug(
            "session %s: %s, %.2f s of audio, final %.2f s after commit: %r",
            self.id,
            turn.item_id,
            seconds,
            time.monotonic() - turn.committed_at,
            transcript,
        )
        completed = self._events.completed(turn.item_id, transcript, seconds)
        if turn.reports_languages:
            # As the service does: an empty list when no language could be told.
            completed["languages"] = [{"code": language}] if transcript and language else []
        await self.send(completed)
        await self.send(self._events.item_done(turn.item_id, turn.previous_item_id, transcript))
