"""The websocket session with the Realtime service, across reconnects and rollovers.

One :class:`RealtimeSession` lives for one dictation (Start to Stop). Its
:class:`~sttd.ledger.AudioLedger` holds the audio not yet sent and the audio
the service still owes transcripts for, so a drop or a rollover loses no
word: that audio is sent again on the next connection.

Failures are split by an explicit list: a lost connection, the recoverable
close codes, a handshake timeout and HTTP 5xx reconnect with capped
exponential backoff, never faster than a hard floor, and at most
``max_reconnect_attempts`` times in a row; bad credentials, a refused request
and HTTP 401/403 end the dictation in ``error`` without retrying. What a
server says (error messages, close reasons) reaches logs and errors only as a
short, redacted excerpt. Opening one connection, and sorting a failed
handshake into those two, is :mod:`sttd.realtime_connect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from . import protocol as p
from .credentials import CredentialSource
from .errors import ProtocolError, SessionError
from .ledger import AudioLedger
from .realtime_connect import bearer_of, open_connection
from .reconnect import EXCERPT_CHARS, Retry, backoff, classify
from .redact import excerpt
from .wakeup import Wakeup
from .wsframe import send_text_now

if TYPE_CHECKING:
    # sttd.vad (numpy, the resampler, ctypes) is imported only by a session that uses
    # client_vad: with the service's voice detection it would be ~1 MB of RSS for nothing.
    from .vad import SpeechStarted, SpeechStopped, VoiceDetector

logger = logging.getLogger(__name__)

FLUSH_GRACE_S = 0.3
"""On Stop, how long to wait for the service to notice speech in the last frames before deciding
there is nothing to commit (its VAD reports speech_started a little after the audio)."""
CLIENT_TURN_PREFIX = "sttd_turn_"
"""Item ids of the speech_started/stopped events sttd's own voice detection reports to the core."""


@dataclass(frozen=True)
class SessionOptions:
    """Tunables of a session; the defaults are what a user gets."""

    url: str
    settings: p.SessionSettings
    max_reconnect_attempts: int = 3
    """Consecutive failed connections (per dictation) before it ends in error."""
    connect_timeout_s: float = 10.0
    """Handshake plus session.update/session.updated."""
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 10.0
    """A dead connection is noticed within interval + timeout."""
    backlog_s: float = 120.0
    """Audio kept while disconnected, and sent audio kept for replay; older audio is dropped and counted."""
    flush_timeout_s: float = 10.0
    """How long Stop waits for the last transcripts, reconnects included."""
    rollover_after_s: float = 55 * 60.0
    """Start a new session at the next turn boundary after this long (the service stops at 60 min)."""
    min_rollover_s: float = 50 * 60.0
    """A "maximum duration" close earlier than this is not the service's limit: it counts as a failure."""
    healthy_after_s: float = 60.0
    """A connection that lived this long (or had a turn committed) resets the failure count."""
    min_attempt_interval_s: float = 1.0
    """Hard floor between the starts of two connection attempts, whatever the reason."""
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0


Target = Callable[[], Awaitable[tuple[str, CredentialSource]]]


class SessionListener(Protocol):
    """What the session reports; called on the event loop, must not block."""

    def session_ready(self) -> None: ...

    def session_event(self, event: p.ServerEvent) -> None: ...

    def session_reconnecting(self, reason: str) -> None: ...


class _Phase(enum.Enum):
    RUNNING = "running"
    FINISHING = "finishing"
    CANCELLED = "cancelled"


class _Flush:
    """The bounds of one Stop's flush on one connection."""

    def __init__(self, now: float, deadline: float) -> None:
        self.deadline = deadline
        self.grace_until = min(now + FLUSH_GRACE_S, deadline)
        self.committed = False

    def next_check(self) -> float:
        now = time.monotonic()
        wake = self.grace_until if now < self.grace_until else self.deadline
        return max(0.0, wake - now)


class RealtimeSession:
    """One dictation's conversation with the service.

    Call :meth:`send_audio` for every captured frame (from the event loop),
    run :meth:`run` as a task, and end with :meth:`finish` (flush and wait
    for transcripts) or :meth:`cancel` (drop everything).

    With ``turn_detection`` of type ``client_vad`` (models without the
    service's voice detection), sttd's own :class:`~sttd.vad.VoiceDetector`
    listens to the captured frames: its decisions reach the listener as the
    service's ``speech_started``/``speech_stopped`` would, and each turn is
    committed where the speech ended.
    """

    def __init__(
        self,
        options: SessionOptions,
        credentials: CredentialSource,
        listener: SessionListener,
        *,
        target: Target | None = None,
        detector: VoiceDetector | None = None,
    ) -> None:
        """``target``, when given, is asked for the URL and credentials before every connection
        attempt (a local engine that restarted listens on a new port with a new key).
        ``detector`` is the voice detector for ``client_vad`` (made here if not given)."""
        self._options = options
        self._settings = options.settings
        self._credentials = credentials
        self._target = target or self._fixed_target
        self._listener = listener
        self._events = p.ClientEvents()
        self._ledger = AudioLedger(int(options.backlog_s * 1000) * p.BYTES_PER_MS)
        self._detector: VoiceDetector | None = None
        self._turns = 0
        self._use_settings(options.settings, detector)
        self._phase = _Phase.RUNNING
        self._finish_by = float("inf")
        self._wake = Wakeup()  # the sender sleeps on it: no task and timer per frame
        self._cancelled = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._idle_ws: ClientConnection | None = None
        """The connection while its sender sleeps with nothing queued: send_audio may write to it at once."""
        self._update_id: str | None = None
        self._connected_at = 0.0
        self._healthy = False

    async def _fixed_target(self) -> tuple[str, CredentialSource]:
        return self._options.url, self._credentials

    def _use_settings(self, settings: p.SessionSettings, detector: VoiceDetector | None = None) -> None:
        self._settings = settings
        td = settings.turn_detection
        if td.type != "client_vad":
            self._detector = None
        elif self._detector is None:
            # Silero's model is loaded only here, by a session that needs sttd's own detection.
            if detector is None:
                from .vad import VadSettings, VoiceDetector

                detector = VoiceDetector(VadSettings.of(td))
            self._detector = detector
        self._ledger.client_turns = td.type in ("client_vad", "manual")
        self._ledger.client_speech = self._detector is not None and self._detector.in_speech

    # -- called by the daemon

    def send_audio(self, pcm: bytes) -> None:
        """Queue a captured frame; never blocks. Frames are sent in order once connected."""
        if self._phase is _Phase.CANCELLED:
            return
        self._ledger.add(pcm)
        ws = self._idle_ws
        # The sender is asleep with nothing before this frame: write it here rather than wake a
        # task for it (a future, a task step and a websockets send context per frame).
        if ws is None or not self._send_now(ws, pcm):
            self._wake.set()
        if self._detector is not None:
            for decision in self._detector.feed(pcm):
                self._turn_decided(decision)

    def _send_now(self, ws: ClientConnection, pcm: bytes) -> bool:
        """Write ``pcm`` synchronously if it is the only thing queued; False when it must wait for the sender."""
        # Anything queued before it (a frame the transport refused, a commit mark) goes first, from the sender.
        if self._ledger.next_frame() is not pcm or not send_text_now(ws, self._events.append_json(pcm)):
            return False
        self._ledger.sent(time.monotonic())
        return True

    def _turn_decided(self, decision: SpeechStarted | SpeechStopped) -> None:
        """sttd's own voice detection heard a turn begin or end."""
        from .vad import SpeechStarted  # already imported: there is a detector

        event: p.ServerEvent
        if isinstance(decision, SpeechStarted):
            self._turns += 1
            event = p.SpeechStarted(f"{CLIENT_TURN_PREFIX}{self._turns}", decision.audio_start_ms)
        else:
            # Everything captured up to here is the turn; what follows belongs to the next one.
            self._ledger.add_commit()
            self._wake.set()  # the commit goes out from the sender
            event = p.SpeechStopped(f"{CLIENT_TURN_PREFIX}{self._turns}", decision.audio_end_ms)
        self._ledger.client_speech = isinstance(decision, SpeechStarted)
        self._listener.session_event(event)

    async def update(self, settings: p.SessionSettings) -> None:
        """Apply new settings (a language change) to the live session, or the next one."""
        self._use_settings(settings)
        ws = self._ws
        if ws is not None:
            event = self._events.session_update(settings)
            self._update_id = event["event_id"]
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps(event))

    def finish(self) -> None:
        """Flush: send what is left, commit speech in progress, wait (bounded) for its transcript, close."""
        if self._phase is _Phase.RUNNING:
            self._phase = _Phase.FINISHING
            self._finish_by = time.monotonic() + self._options.flush_timeout_s
            self._wake.set()

    def cancel(self) -> None:
        """Close at once; what has not been transcribed is dropped."""
        self._phase = _Phase.CANCELLED
        self._wake.set()
        self._cancelled.set()
        if self._ws is not None:
            self._ws.transport.abort()

    async def run(self) -> None:
        """Connect and pump until finished or cancelled; reconnects on recoverable failures.

        Raises :class:`SessionError` for failures that retrying cannot fix, and
        when ``max_reconnect_attempts`` connections in a row failed (a
        connection counts as working only once a turn was committed on it or it
        lived ``healthy_after_s``). Cancelling the task closes the connection.
        """
        failures = 0
        last_attempt = -float("inf")
        while self._phase is not _Phase.CANCELLED:
            await self._sleep_unless_cancelled(last_attempt + self._options.min_attempt_interval_s - time.monotonic())
            if self._gave_up_finishing():
                return
            last_attempt = time.monotonic()
            self._healthy, self._connected_at = False, float("inf")
            try:
                await self._connection()
                return
            except Retry as exc:
                if self._cancelled.is_set():
                    return
                failures = self._count(failures, exc)
                self._announce(exc)
                if exc.counts:
                    delay = backoff(failures, self._options.backoff_base_s, self._options.backoff_max_s)
                    await self._sleep_unless_cancelled(min(delay, self._finish_by - time.monotonic()))
                if self._phase is _Phase.FINISHING and self._ledger.backlog_empty:
                    return  # nothing left that a new connection could transcribe
            finally:
                self._ws = None

    def _count(self, failures: int, exc: Retry) -> int:
        """The consecutive failures after this one; raises when they are too many."""
        if self._healthy or time.monotonic() - self._connected_at >= self._options.healthy_after_s:
            failures = 0  # that connection worked: only consecutive failures count
        if not exc.counts:
            return failures
        failures += 1
        if failures > self._options.max_reconnect_attempts:
            message = f"gave up after {failures} failed connection attempts: {exc}"
            raise SessionError(message, retryable=False, code="connection") from None
        return failures

    def _announce(self, exc: Retry) -> None:
        replay_ms = self._ledger.connection_lost(time.monotonic())
        if exc.planned:
            logger.info("%s; continuing on a new session", exc)
        else:
            logger.warning("connection lost (%s); reconnecting, %d ms of audio to resend", exc, replay_ms)
            self._listener.session_reconnecting(str(exc))

    def _gave_up_finishing(self) -> bool:
        if self._phase is _Phase.FINISHING and time.monotonic() >= self._finish_by:
            logger.warning("stopped without reconnecting: the flush timed out")
            return True
        return False

    # -- one connection

    async def _connection(self) -> None:
        ws = await self._open()
        self._ws = ws
        self._connected_at = time.monotonic()
        try:
            await self._configure(ws)
            self._listener.session_ready()
            await self._pump(ws)
        except Exception as exc:
            if self._phase is _Phase.CANCELLED:
                raise Retry("cancelled") from None
            lived = time.monotonic() - self._connected_at
            raise classify(exc, lived_s=lived, min_rollover_s=self._options.min_rollover_s) from None
        finally:
            try:
                await asyncio.wait_for(ws.close(), 2)
            except Exception:
                # A peer that does not finish the close in time: never leave its socket open
                # beside the next connection.
                ws.transport.abort()

    async def _pump(self, ws: ClientConnection) -> None:
        """Send and receive until the dictation is finished or cancelled; the first failure ends both.

        Two plain tasks rather than a TaskGroup: on Python 3.11 a TaskGroup
        whose child fails as the body ends leaves its task marked as being
        cancelled, and one whose task is cancelled while a child fails raises
        the child's error instead, which a retry loop would then mistake for
        a reason to reconnect. Here a cancellation always arrives as
        CancelledError, and cancelling is safe: both tasks are cancelled and
        awaited.
        """
        sender = asyncio.create_task(self._send(ws), name="realtime-send")
        receiver = asyncio.create_task(self._receive(ws), name="realtime-receive")
        try:
            await asyncio.wait((sender, receiver), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
        if not sender.cancelled() and sender.exception() is None:
            return
        errors = [e for t in (sender, receiver) if not t.cancelled() and isinstance(e := t.exception(), Exception)]
        raise ExceptionGroup("the connection failed", errors)

    async def _open(self) -> ClientConnection:
        url, self._credentials = await self._target()
        bearer = await bearer_of(self._credentials)
        return await open_connection(
            url,
            bearer,
            open_timeout=max(0.1, min(self._options.connect_timeout_s, self._finish_by - time.monotonic())),
            ping_interval=self._options.ping_interval_s,
            ping_timeout=self._options.ping_timeout_s,
        )

    async def _configure(self, ws: ClientConnection) -> None:
        """Send session.update and wait for session.updated; events before it are ignored."""
        event = self._events.session_update(self._settings)
        self._update_id = event["event_id"]
        await ws.send(json.dumps(event))
        async with asyncio.timeout(self._options.connect_timeout_s):
            while True:
                parsed = self._parse(await ws.recv())
                if isinstance(parsed, p.SessionUpdated):
                    return
                if isinstance(parsed, p.ServiceError):
                    self._check_error(parsed)

    async def _receive(self, ws: ClientConnection) -> None:
        while True:
            # recv() rather than async-for: a close by the service, even a
            # "normal" one (1000/1001 at the session limit), must end the
            # connection with its code, not end the loop quietly.
            event = self._parse(await ws.recv())
            if event is None:
                continue
            if isinstance(event, p.ServiceError) and not self._check_error(event):
                continue
            if isinstance(event, p.Committed | p.TranscriptionCompleted):
                self._healthy = True  # the service took a turn: this connection made progress
            self._ledger.event(event)
            self._listener.session_event(event)
            self._wake.set()

    def _parse(self, message: str | bytes) -> p.ServerEvent | None:
        try:
            return p.parse_server_event(message)
        except ProtocolError as exc:
            logger.warning("skipping a malformed server event: %s", excerpt(str(exc), EXCERPT_CHARS))
            return None

    def _check_error(self, error: p.ServiceError) -> bool:
        """Decide what an ``error`` event means; True when the listener should hear of it."""
        message = excerpt(error.message, EXCERPT_CHARS)
        if error.event_id is not None and error.event_id == self._update_id:
            raise SessionError(
                f"the service refused the session configuration: {message}", retryable=False, code="refused"
            )
        if error.code == "input_audio_buffer_commit_empty":
            # Our commit raced the server's own, or the buffer held too little: nothing was lost.
            logger.debug("commit refused as empty: %s", message)
            self._ledger.commit_refused()
            return False
        if error.code == "session_expired":
            # The close that follows is handled like any other end of a session (a new one takes over,
            # the audio it owed is resent): nothing for the user to act on, so no Error signal.
            logger.info("the service ended the session: %s", message)
            return False
        logger.warning("service error %s: %s", excerpt(error.code or error.type, 60), message)
        return True

    async def _send(self, ws: ClientConnection) -> None:
        """Write the backlog as it fills; returns when finished or cancelled."""
        flush: _Flush | None = None
        while True:
            while (frame := self._ledger.next_frame()) is not None:
                # If the connection dies during this send, the frame stays queued for the next one.
                if isinstance(frame, bytes):
                    payload = self._events.append_json(frame)
                    if not send_text_now(ws, payload):
                        await ws.send(payload, text=True)  # bytes: no encode
                elif self._ledger.uncommitted_ms >= p.MIN_COMMIT_MS:  # the service refuses less
                    await self._commit(ws)
                self._ledger.sent(time.monotonic())
            if self._phase is _Phase.CANCELLED:
                return
            if self._phase is _Phase.FINISHING:
                flush = flush or _Flush(time.monotonic(), self._finish_by)
                if not flush.committed and self._should_commit():
                    await self._commit(ws)
                    flush.committed = True
                if self._flush_done(flush):
                    return
            elif self._rollover_due():
                raise Retry("session rollover before the service's time limit", counts=False, planned=True)
            self._wake.clear()
            timeout = flush.next_check() if flush else 1.0
            # Running with nothing queued: frames captured meanwhile are written by send_audio.
            self._idle_ws = ws if flush is None and self._phase is _Phase.RUNNING else None
            try:
                await self._wake.wait(timeout)
            finally:
                self._idle_ws = None

    async def _commit(self, ws: ClientConnection) -> None:
        logger.debug("committing %d ms of audio", self._ledger.uncommitted_ms)
        await ws.send(json.dumps(self._events.commit()))
        self._ledger.commit_sent()

    def _should_commit(self) -> bool:
        """Commit on Stop only speech nobody has committed yet (the service refuses < 100 ms)."""
        if self._ledger.uncommitted_ms < p.MIN_COMMIT_MS:
            return False
        if self._settings.turn_detection.type == "manual" or self._ledger.in_speech:
            return True
        # sttd's own detector may be hearing the first moments of a word it has not confirmed yet.
        return self._detector is not None and self._detector.speech_ms > 0

    def _flush_done(self, flush: _Flush) -> bool:
        now = time.monotonic()
        if now >= flush.deadline:
            if not self._flush_complete():
                logger.warning("stopped without %d transcript(s): flush timed out", self._ledger.outstanding)
            return True
        # Wait out the grace period: speech in the last frames may not be flagged yet.
        return self._flush_complete() and (flush.committed or now >= flush.grace_until)

    def _flush_complete(self) -> bool:
        return not self._ledger.awaiting_commit and self._ledger.outstanding == 0

    def _rollover_due(self) -> bool:
        return (
            time.monotonic() - self._connected_at >= self._options.rollover_after_s
            and not self._ledger.in_speech
            and not self._ledger.awaiting_commit
            and self._ledger.outstanding == 0
        )

    async def _sleep_unless_cancelled(self, delay: float) -> None:
        if delay <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._cancelled.wait(), delay)

    @property
    def queued_audio_ms(self) -> int:
        """Captured audio not sent yet (while connecting, reconnecting, or behind a slow connection)."""
        return self._ledger.backlog_ms

    @property
    def dropped_audio_ms(self) -> int:
        return self._ledger.dropped_bytes // p.BYTES_PER_MS

    @property
    def trimmed_audio_ms(self) -> int:
        """Sent audio cut from the replay log because no turn finished for longer than the backlog."""
        return self._ledger.trimmed_bytes // p.BYTES_PER_MS
