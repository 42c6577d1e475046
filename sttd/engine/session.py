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
:class:`~sttd.engine.transcriber.Transcriber`.

The live models (``gpt-live-transcribe``, ``gpt-realtime-whisper``), which
take no turn detection, also get deltas *while the person speaks*: a first
draft :data:`PARTIAL_FIRST_S` after the speech's onset, the next few every
:data:`PARTIAL_EARLY_S`, then every :data:`PARTIAL_EVERY_S` of new audio
with speech in it (Silero says so) while no draft decode of this session is
running, the turn's audio from just before the onset is decoded again as a
draft (after every committed turn waiting), and the words two successive
drafts agree on are sent as deltas
for the coming item (:class:`~sttd.engine.partials.Agreement`). Its
``item_id`` is chosen with the first delta and the commit carries it. At the
commit, the final decode's text beyond what was sent comes as one more
delta; when the final does not continue the sent text, only ``completed``
follows (the client replaces the partial text with it).

Every session's final may be decoded ahead, when its pause begins
(:mod:`sttd.engine.speculative`): with server VAD from the buffer's own
pause, for the live models from the drafts' speech tracker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from ..errors import ProtocolError
from ..protocol import MIN_COMMIT_MS, ServerEvents, parse_client_event
from ..redact import excerpt
from .decoding import Piece
from .decoding import Request as TranscriptionRequest
from .partials import Agreement, SpeechTracker, final_delta
from .resample import Resampler
from .session_config import DEFAULT_VAD, EventRefused, SessionConfig, Transcription, apply_update, diagnose
from .speculative import Lookahead
from .transcriber import Speculation, Transcriber
from .vad import RATE, SAMPLES_PER_MS, WINDOW, FloatArray, InputBuffer, SpeechProbe, SpeechStart, SpeechStop
from .whisper_model import ModelUnavailableError

logger = logging.getLogger(__name__)

CLOSE_REFUSED = 4000
"""A refused request shape: the client does not retry it."""
PARTIAL_EVERY_S = 1.0
"""A draft decode of the turn in progress once this much new audio has arrived..."""
PARTIAL_FIRST_S = 0.45
"""...but the first one this soon after the speech began,"""
PARTIAL_EARLY_S = 0.35
"""...and the next :data:`PARTIAL_EARLY_DRAFTS` at this pace: two drafts must agree on a word before it
is sent, so the first words show about 0.8 s of speech plus one draft decode after the onset."""
PARTIAL_EARLY_DRAFTS = 3
PARTIAL_LEAD_S = 0.3
"""Audio kept before the speech's onset in a draft (the silence before it only costs encoder time)."""
PARTIALS = os.environ.get("STTD_ENGINE_PARTIALS", "on") != "off"
"""Off: no drafts at all (the deltas come after the commit, as for the other models): the bench's baseline."""
PARTIAL_SPEECH_S = 0.15
"""...and only if speech was heard this recently: in a pause the client is about to commit, and its
final should not wait for a draft (a draft that has started cannot be interrupted)."""
PARTIAL_MAX_S = 30.0
"""No drafts for a longer buffer: beyond one Whisper window each draft would cost a decode per 30 s."""
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
    sent: str = ""
    """What partial deltas already sent of this item's text."""
    speculation: Speculation | None = None
    """Its final decoded ahead (its request, the same audio's beginning and no speech after it)."""
    committed_at: float = field(default_factory=time.monotonic)


class _Drafts:
    """The partial text of one session's turn in progress: its audio so far and what was sent of it."""

    def __init__(self, probe: SpeechProbe | None) -> None:
        self.speech = SpeechTracker(probe, DEFAULT_VAD.threshold)
        self.agreement = Agreement()
        self.item: str | None = None
        """The coming item's id, chosen with its first delta."""
        self.task: asyncio.Task[None] | None = None
        self._chunks: list[FloatArray] = []
        self._size = 0
        self.start = 0
        """Stream position (of :attr:`speech`) of the turn's first sample."""
        self.end = 0
        """Stream position after the turn's last sample."""
        self.decoded_upto = 0
        """Stream position where the last draft's audio ended."""
        self.onset: int | None = None
        """Stream position where this turn's speech began (roughly: the first voiced window's feed)."""
        self.drafts = 0
        """Drafts started in this turn."""

    def add(self, samples: FloatArray) -> None:
        self.speech.feed(samples)
        self.end += samples.size
        last = self.speech.last_speech
        if self.onset is None and last is not None and last > self.start:
            self.onset = max(self.start, last - samples.size - WINDOW)
        if self._size <= PARTIAL_MAX_S * RATE:
            self._chunks.append(samples)
            self._size += samples.size

    def due(self) -> bool:
        """Time for a draft: enough new audio, speech in it just now, none running, not too long."""
        last = self.speech.last_speech
        if self.onset is None:
            return False
        if self.drafts == 0:
            wait, since = PARTIAL_FIRST_S, self.onset
        else:
            wait, since = PARTIAL_EARLY_S if self.drafts < PARTIAL_EARLY_DRAFTS else PARTIAL_EVERY_S, self.decoded_upto
        return (
            self.task is None
            and self._size <= PARTIAL_MAX_S * RATE
            and self.end - since >= wait * RATE
            and last is not None
            and last > max(self.decoded_upto, self.start)
            and self.speech.position - last <= PARTIAL_SPEECH_S * RATE
        )

    def audio(self) -> FloatArray:
        """The turn's audio from just before its onset, for a draft that starts now."""
        joined = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.float32)
        self._chunks = [joined]
        self.decoded_upto = self.end
        self.drafts += 1
        lead = 0 if self.onset is None else max(0, self.onset - int(PARTIAL_LEAD_S * RATE) - self.start)
        return joined[lead:]

    def turn_audio(self) -> tuple[FloatArray, int] | None:
        """The whole turn so far and the stream position after it; None when some of it was not kept."""
        if self._size != self.end - self.start:
            return None
        joined = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.float32)
        self._chunks = [joined]
        return joined, self.end

    def restart(self) -> tuple[str | None, str]:
        """The turn is committed or cleared: its item id and sent text; drafts start afresh after it."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        item, sent = self.item, self.agreement.text
        self.item, self.agreement = None, Agreement()
        self.start = self.decoded_upto = self.end
        self.onset, self.drafts = None, 0
        self._chunks, self._size = [], 0
        return item, sent


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
        self._drafts: _Drafts | None = None
        self._draft_tasks: set[asyncio.Task[None]] = set()
        """The partial text of the turn in progress, for a live model without turn detection."""
        self._lookahead = Lookahead(context.transcriber)

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
                self._stop_drafts()

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
                self._lookahead.drop()
                if self._drafts is not None:
                    self._drafts.restart()
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
        self._lookahead.drop()
        if not self._drafting():
            self._stop_drafts()
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
        samples = self.resampler.process_bytes(pcm)
        decisions = self.buffer.append(samples)
        if self._drafting():
            self._draft(samples)
        for decision in decisions:
            if isinstance(decision, SpeechStart):
                self.speech_item = self._events.new_item_id()
                await self.send(self._events.speech_started(self.speech_item, decision.start // SAMPLES_PER_MS))
            elif isinstance(decision, SpeechStop):
                item = self.speech_item or self._events.new_item_id()
                self.speech_item = None
                await self.send(self._events.speech_stopped(item, decision.end // SAMPLES_PER_MS))
                await self._commit(item, decision.audio, client=False, mark=decision.silence_start)
        if self.config.vad is not None:
            self._speculate_in_pause()
        if self.buffer.dropped > dropped and dropped == 0:
            logger.warning("session %s: the uncommitted buffer is full; dropping its oldest audio", self.id)

    async def commit(self) -> None:
        buffered = self.buffer.committable_ms
        if buffered < MIN_COMMIT_MS:
            raise EventRefused(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {buffered:.2f}ms of audio.",
            )
        if self._drafts is not None:
            self._lookahead.heard(self._drafts.speech.last_speech)
        drafted, sent = self._drafts.restart() if self._drafts is not None else (None, "")
        item = self.speech_item or drafted or self._events.new_item_id()
        self.speech_item = None
        _, audio = self.buffer.take()
        await self._commit(item, audio, client=True, sent=sent)

    async def _commit(
        self, item: str, audio: npt.NDArray[np.float32], *, client: bool, sent: str = "", mark: int | None = None
    ) -> None:
        previous, self.last_item = self.last_item, item
        await self.send(self._events.committed(item, previous))
        await self.send(self._events.item_added(item, previous))
        # A client commit's audio was not cut by the VAD: let Silero drop what is not speech
        # (silence sent after the last words, or a whole buffer of it in manual mode).
        request = self._final_request(audio, client=client)
        speculation = self._lookahead.take(request, mark)
        reports = self.config.reports_languages
        self.turns.put_nowait(_Turn(item, previous, audio, request, reports, sent, speculation))

    def _final_request(self, audio: npt.NDArray[np.float32], *, client: bool) -> TranscriptionRequest:
        """What a committed turn of ``audio`` is transcribed with (or would be, for a speculative final)."""
        threshold = (self.config.vad or DEFAULT_VAD).threshold if client else None
        return self._request(audio, vad_threshold=threshold, report_language=self.config.reports_languages)

    def _speculate_in_pause(self) -> None:
        """Server VAD: decode the final ahead once a pause in the speech has lasted a little."""
        pause = self.buffer.pause
        if pause is None:
            if self._lookahead.mark is not None:
                self._lookahead.drop()  # the pause it was taken in ended in speech (or in the commit)
            return
        begun, scored = pause
        if self._lookahead.mark not in (None, begun):
            self._lookahead.drop()
        if self._lookahead.due(begun, scored, mark=begun):
            _, audio = self.buffer.peek(scored)
            self._lookahead.start(self._final_request(audio, client=False), scored, mark=begun)

    def _request(self, audio: npt.NDArray[np.float32], **extra: Any) -> TranscriptionRequest:
        """What Whisper is asked for this session's audio: its language, prompt and keywords, plus ``extra``."""
        transcription = self.config.transcription
        return TranscriptionRequest(
            audio,
            language=transcription.whisper_language,
            prompt=transcription.prompt,
            hotwords=transcription.hotwords,
            **extra,
        )

    # -- partial text while the person speaks

    def _drafting(self) -> bool:
        return PARTIALS and self.config.vad is None and self.config.model.live

    def _stop_drafts(self) -> None:
        if self._drafts is not None:
            self._drafts.restart()
            self._drafts = None

    def _draft(self, samples: FloatArray) -> None:
        """Keep the turn's audio and start a draft decode when one is due."""
        if self._drafts is None:
            # Audio buffered before the session became a live one is not in the drafts (the final has it).
            self._drafts = _Drafts(self.context.new_probe())
        drafts = self._drafts
        drafts.add(samples)
        last = drafts.speech.last_speech
        self._lookahead.heard(last)
        speaking = drafts.onset is not None and last is not None and last > drafts.start
        if speaking and self._lookahead.due(last, drafts.speech.position):
            turn = drafts.turn_audio()
            if turn is not None:
                self._lookahead.start(self._final_request(turn[0], client=True), turn[1])
        if drafts.due():
            drafts.task = asyncio.create_task(self._run_draft(drafts, drafts.audio()))
            # Keep a reference until it ends: drafts.task is dropped before its delta is sent.
            self._draft_tasks.add(drafts.task)
            drafts.task.add_done_callback(self._draft_tasks.discard)

    async def _run_draft(self, drafts: _Drafts, audio: FloatArray) -> None:
        request = self._request(audio, draft=True)
        started = time.monotonic()
        try:
            text = "".join([piece.text async for piece in self.context.transcriber.transcribe(request)]).strip()
        except Exception as exc:  # a draft that fails costs only its partial text; the final will say more
            logger.debug("session %s: a draft decode failed: %s: %s", self.id, exc.__class__.__name__, exc)
            drafts.task = None
            return
        # Decoded: from here on a commit must not cancel this task, or the delta it counts as sent might not be.
        drafts.task = None
        drafts.agreement, delta = drafts.agreement.hear(text)
        logger.debug(
            "session %s: draft of %.2f s in %.2f s: %r", self.id, audio.size / RATE, time.monotonic() - started, text
        )
        if delta:
            if drafts.item is None:
                drafts.item = self._events.new_item_id()
            await self.send(self._events.delta(drafts.item, delta))

    # -- transcription

    async def _turn_worker(self) -> None:
        while True:
            await self._transcribe(await self.turns.get())

    async def _pieces(self, turn: _Turn) -> AsyncIterator[Piece]:
        """The turn's final: its speculation's result when there is one, else a decode now."""
        if turn.speculation is not None:
            ahead = await turn.speculation.result
            if ahead is not None:
                logger.debug("session %s: %s: the final decoded ahead is the final", self.id, turn.item_id)
                if ahead[0].strip():
                    yield Piece(*ahead)
                return
        async for piece in self.context.transcriber.transcribe(turn.request):
            yield piece

    async def _transcribe(self, turn: _Turn) -> None:
        seconds = turn.audio.size / (SAMPLES_PER_MS * 1000)
        deltas: list[str] = []
        language = ""
        try:
            async for piece in self._pieces(turn):
                delta = piece.text if deltas else piece.text.lstrip()
                language = piece.language or language
                if delta.strip():
                    deltas.append(delta)
                    if not turn.sent:  # else the rest is known only once the whole text is
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
        rest = final_delta(turn.sent, transcript) if turn.sent else None
        if rest:
            await self.send(self._events.delta(turn.item_id, rest))
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
