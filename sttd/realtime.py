"""The websocket session with the Realtime service, across reconnects and rollovers.

One :class:`RealtimeSession` lives for one dictation (Start to Stop). It
keeps two pieces of audio so that no word is lost:

* the *backlog*: audio captured but not yet sent (while connecting, while
  reconnecting, or simply not yet written), bounded in seconds;
* the *replay log*: audio already sent on the current connection that the
  service has not turned into finished transcripts yet. When the connection
  drops, that audio is sent again on the next one, so an utterance cut in
  half by a drop is transcribed whole.

Failures are split by an explicit list: a lost connection, the recoverable
close codes, a handshake timeout and HTTP 5xx reconnect with capped
exponential backoff; bad credentials, a refused request and HTTP 401/403 end
the dictation in ``error`` without retrying.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from . import protocol as p
from .credentials import CredentialSource
from .errors import ProtocolError, SessionError

logger = logging.getLogger(__name__)

RECOVERABLE_CLOSE_CODES = frozenset({1000, 1001, 1006, 1011, 1012, 1013, 1014})
"""Close codes after which a new connection may succeed. 1001 is also how the
service ends a session at its 60-minute limit."""

FATAL_CLOSE_CODES = {
    3000: ("credentials", "the service refused the credentials (close 3000)"),
    4000: ("refused", "the service refused the request (close 4000)"),
}

MAX_DURATION_HINT = "maximum duration"
IDLE_REPLAY_BYTES = 2000 * p.BYTES_PER_MS
"""After a drop with no turn owed, the audio resent: the last 2 s (a word the VAD had not flagged yet)."""
REPLAY_FRAME_BYTES = 100 * p.BYTES_PER_MS
"""Resent audio goes out in 100 ms appends, not one event the size of the whole log."""
FLUSH_GRACE_S = 0.3
"""On Stop, how long to wait for the service to notice speech in the last frames before deciding
there is nothing to commit (its VAD reports speech_started a little after the audio)."""


@dataclass(frozen=True)
class SessionOptions:
    """Tunables of a session; the defaults are what a user gets."""

    url: str
    settings: p.SessionSettings
    max_reconnect_attempts: int = 3
    connect_timeout_s: float = 10.0
    """Handshake plus session.update/session.updated."""
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 10.0
    """A dead connection is noticed within interval + timeout."""
    backlog_s: float = 120.0
    """Audio kept while disconnected; older audio beyond it is dropped and counted."""
    flush_timeout_s: float = 10.0
    """How long Stop waits for the last transcripts."""
    rollover_after_s: float = 55 * 60.0
    """Start a new session at the next turn boundary after this long (the service stops at 60 min)."""
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0


Target = Callable[[], Awaitable[tuple[str, CredentialSource]]]


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


class SessionListener(Protocol):
    """What the session reports; called on the event loop, must not block."""

    def session_ready(self) -> None: ...

    def session_event(self, event: p.ServerEvent) -> None: ...

    def session_reconnecting(self, reason: str) -> None: ...


class _Phase(enum.Enum):
    RUNNING = "running"
    FINISHING = "finishing"
    CANCELLED = "cancelled"


class _Retry(Exception):
    """The connection ended in a way another connection may fix."""

    def __init__(self, reason: str, *, counts: bool = True, planned: bool = False) -> None:
        super().__init__(reason)
        self.counts = counts
        self.planned = planned
        """Our own rollover between turns: nothing is owed, nothing to announce."""


@dataclass
class _Turn:
    item_id: str
    end_ms: int
    done: bool = False


class _Flush:
    """The bounds of one Stop's flush."""

    def __init__(self, now: float, timeout_s: float) -> None:
        self.deadline = now + timeout_s
        self.grace_until = now + FLUSH_GRACE_S
        self.committed = False

    def next_check(self) -> float:
        now = time.monotonic()
        wake = self.grace_until if now < self.grace_until else self.deadline
        return max(0.0, wake - now)


class AudioLedger:
    """Audio bookkeeping for one dictation: backlog, replay log and turns. No I/O.

    Positions are in milliseconds of the *current connection's* audio
    timeline, which is what the service's ``audio_end_ms`` refers to.
    """

    def __init__(self, backlog_bytes: int) -> None:
        self._backlog: deque[bytes] = deque()
        self._backlog_bytes = 0
        self._limit = backlog_bytes
        self.dropped_bytes = 0
        self._in_flight = False
        self._log = bytearray()
        self._log_start = 0  # byte offset of _log[0] on the connection's timeline
        self._sent = 0  # bytes sent on this connection
        self._turns: deque[_Turn] = deque()
        self._committed_at = 0  # byte offset up to which audio is committed
        self._speech_end: dict[str, int] = {}
        self.in_speech = False
        self.awaiting_commit = False

    # -- capture side

    def add(self, pcm: bytes) -> None:
        self._backlog.append(pcm)
        self._backlog_bytes += len(pcm)
        # Drop the oldest audio beyond the bound, but never the frame being written right now.
        oldest = 1 if self._in_flight else 0
        while self._backlog_bytes > self._limit and len(self._backlog) > oldest + 1:
            old = self._backlog[oldest]
            del self._backlog[oldest]
            self._backlog_bytes -= len(old)
            self.dropped_bytes += len(old)

    @property
    def backlog_empty(self) -> bool:
        return not self._backlog

    def next_frame(self) -> bytes | None:
        """The oldest frame not yet sent; it stays queued until :meth:`sent` says it went out."""
        if not self._backlog:
            return None
        self._in_flight = True
        return self._backlog[0]

    def sent(self) -> None:
        """The frame :meth:`next_frame` returned was written to the connection."""
        self._in_flight = False
        pcm = self._backlog.popleft()
        self._backlog_bytes -= len(pcm)
        self._log += pcm
        self._sent += len(pcm)

    # -- service side

    @property
    def uncommitted_ms(self) -> int:
        return (self._sent - self._committed_at) // p.BYTES_PER_MS

    @property
    def outstanding(self) -> int:
        return sum(1 for turn in self._turns if not turn.done)

    def event(self, event: p.ServerEvent) -> None:
        match event:
            case p.SpeechStarted():
                self.in_speech = True
            case p.SpeechStopped(item_id, audio_end_ms):
                self.in_speech = False
                self.awaiting_commit = True
                self._speech_end[item_id] = audio_end_ms * p.BYTES_PER_MS
            case p.Committed(item_id):
                self.in_speech = self.awaiting_commit = False
                end = self._speech_end.pop(item_id, self._sent)
                self._committed_at = max(self._committed_at, min(end, self._sent))
                self._turns.append(_Turn(item_id, self._committed_at))
            case p.TranscriptionCompleted(item_id) | p.TranscriptionFailed(item_id):
                self._finish_turn(item_id)

    def manual_commit(self) -> None:
        """The client committed: a commit event follows, and it ends here."""
        self.awaiting_commit = True

    def _finish_turn(self, item_id: str) -> None:
        for turn in self._turns:
            if turn.item_id == item_id:
                turn.done = True
        # Audio up to the end of the leading finished turns will never be needed again.
        while self._turns and self._turns[0].done:
            self._trim(self._turns.popleft().end_ms)

    def _trim(self, upto: int) -> None:
        cut = max(0, min(upto - self._log_start, len(self._log)))
        del self._log[:cut]
        self._log_start += cut

    def connection_lost(self) -> int:
        """Put the unconfirmed audio back in front of the backlog; returns its length in ms."""
        self._in_flight = False  # that frame was not confirmed written: it goes again
        replay = bytes(self._log)
        if not (self._turns or self.in_speech or self.awaiting_commit):
            # Nothing owed: only the last moments, where speech may have begun unnoticed.
            replay = replay[-IDLE_REPLAY_BYTES:]
        replay = replay[-self._limit :]
        frames = [replay[i : i + REPLAY_FRAME_BYTES] for i in range(0, len(replay), REPLAY_FRAME_BYTES)]
        self._backlog.extendleft(reversed(frames))
        self._backlog_bytes += len(replay)
        self._log.clear()
        self._log_start = self._sent = self._committed_at = 0
        self._turns.clear()
        self._speech_end.clear()
        self.in_speech = self.awaiting_commit = False
        return len(replay) // p.BYTES_PER_MS


class RealtimeSession:
    """One dictation's conversation with the service.

    Call :meth:`send_audio` for every captured frame (from the event loop),
    run :meth:`run` as a task, and end with :meth:`finish` (flush and wait
    for transcripts) or :meth:`cancel` (drop everything).
    """

    def __init__(
        self,
        options: SessionOptions,
        credentials: CredentialSource,
        listener: SessionListener,
        *,
        target: Target | None = None,
    ) -> None:
        """``target``, when given, is asked for the URL and credentials before every connection
        attempt (a local engine that restarted listens on a new port with a new key)."""
        self._options = options
        self._settings = options.settings
        self._credentials = credentials
        self._target = target or self._fixed_target
        self._configured = False
        self._listener = listener
        self._events = p.ClientEvents()
        self._ledger = AudioLedger(int(options.backlog_s * 1000) * p.BYTES_PER_MS)
        self._phase = _Phase.RUNNING
        self._wake = asyncio.Event()
        self._cancelled = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._update_id: str | None = None
        self._done = asyncio.Event()

    async def _fixed_target(self) -> tuple[str, CredentialSource]:
        return self._options.url, self._credentials

    # -- called by the daemon

    def send_audio(self, pcm: bytes) -> None:
        """Queue a captured frame; never blocks. Frames are sent in order once connected."""
        if self._phase is _Phase.CANCELLED:
            return
        self._ledger.add(pcm)
        self._wake.set()

    async def update(self, settings: p.SessionSettings) -> None:
        """Apply new settings (a language change) to the live session, or the next one."""
        self._settings = settings
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

        Raises :class:`SessionError` for failures that retrying cannot fix.
        Cancelling the task closes the connection.
        """
        failures = 0
        while self._phase is not _Phase.CANCELLED:
            self._configured = False
            try:
                await self._connection()
                return
            except _Retry as exc:
                if self._cancelled.is_set():
                    return
                if self._configured:
                    failures = 0  # that connection worked: only consecutive failures count
                failures = failures + 1 if exc.counts else 0
                if failures > self._options.max_reconnect_attempts:
                    message = f"gave up after {failures} failed connection attempts: {exc}"
                    raise SessionError(message, retryable=False, code="connection") from None
                replay_ms = self._ledger.connection_lost()
                if exc.planned:
                    logger.info("%s; continuing on a new session", exc)
                else:
                    logger.warning("connection lost (%s); reconnecting, %d ms of audio to resend", exc, replay_ms)
                    self._listener.session_reconnecting(str(exc))
                if exc.counts:
                    await self._sleep_unless_cancelled(self._backoff(failures))
                if self._phase is _Phase.FINISHING and self._ledger.backlog_empty:
                    return  # nothing left that a new connection could transcribe
            finally:
                self._ws = None

    # -- one connection

    async def _connection(self) -> None:
        ws = await self._open()
        self._ws = ws
        started = time.monotonic()
        try:
            await self._configure(ws)
            self._configured = True
            self._listener.session_ready()
            async with asyncio.TaskGroup() as tg:
                receiver = tg.create_task(self._receive(ws))
                await self._send(ws, started)
                receiver.cancel()
        except Exception as exc:
            raise self._classify(exc) from None
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)

    def _classify(self, exc: Exception) -> Exception:
        """What a connection's failure means: fatal (SessionError), worth retrying, or a bug (as is).

        The task group may report several failures at once; the most decisive wins.
        """
        leaves = list(_leaves(exc))
        for kind in (SessionError, _Retry):
            found = next((e for e in leaves if isinstance(e, kind)), None)
            if found is not None:
                return found
        closed = next((e for e in leaves if isinstance(e, ConnectionClosed)), None)
        if closed is not None:
            return self._closed(closed)
        if any(isinstance(e, TimeoutError) for e in leaves):
            return _Retry("the service did not answer session.update in time")
        return exc

    async def _open(self) -> ClientConnection:
        url, self._credentials = await self._target()
        bearer = await self._bearer()
        logger.info("connecting to %s", url.split("?")[0])
        try:
            return await connect(
                url,
                additional_headers={"Authorization": f"Bearer {bearer}"},
                open_timeout=self._options.connect_timeout_s,
                ping_interval=self._options.ping_interval_s,
                ping_timeout=self._options.ping_timeout_s,
                close_timeout=2,
                max_size=2**24,
                # base64 PCM barely compresses; deflating every frame cost CPU for nothing
                # (the official SDK turns it off too).
                compression=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise SessionError(
                    f"the service refused the credentials (HTTP {status})", retryable=False, code="credentials"
                ) from None
            if status >= 500 or status == 429:
                raise _Retry(f"handshake failed with HTTP {status}") from None
            raise SessionError(
                f"the service refused the connection (HTTP {status})", retryable=False, code="refused"
            ) from None
        except TimeoutError:
            raise _Retry("handshake timed out") from None
        except (OSError, InvalidHandshake) as exc:
            raise _Retry(f"cannot connect: {exc.__class__.__name__}: {exc}") from None

    async def _bearer(self) -> str:
        try:
            return await self._credentials.bearer()
        except SessionError as exc:
            if exc.retryable:
                raise _Retry(str(exc)) from None
            raise

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
            self._ledger.event(event)
            self._listener.session_event(event)
            self._wake.set()

    def _parse(self, message: str | bytes) -> p.ServerEvent | None:
        try:
            return p.parse_server_event(message)
        except ProtocolError as exc:
            logger.warning("skipping a malformed server event: %s", exc)
            return None

    def _check_error(self, error: p.ServiceError) -> bool:
        """Decide what an ``error`` event means; True when the listener should hear of it."""
        if error.event_id is not None and error.event_id == self._update_id:
            raise SessionError(
                f"the service refused the session configuration: {error.message}", retryable=False, code="refused"
            )
        if error.code == "input_audio_buffer_commit_empty":
            # Our flush raced the server's own commit: nothing was lost.
            logger.debug("commit refused as empty: %s", error.message)
            return False
        logger.warning("service error %s: %s", error.code or error.type, error.message)
        return True

    async def _send(self, ws: ClientConnection, started: float) -> None:
        """Write the backlog as it fills; returns when finished or cancelled."""
        flush: _Flush | None = None
        while True:
            while (pcm := self._ledger.next_frame()) is not None:
                # If the connection dies during this send, the frame stays queued for the next one.
                await ws.send(json.dumps(self._events.append(pcm)))
                self._ledger.sent()
            if self._phase is _Phase.CANCELLED:
                return
            if self._phase is _Phase.FINISHING:
                flush = flush or _Flush(time.monotonic(), self._options.flush_timeout_s)
                if not flush.committed and self._should_commit(flush):
                    await ws.send(json.dumps(self._events.commit()))
                    self._ledger.manual_commit()
                    flush.committed = True
                if self._flush_done(flush):
                    return
            elif self._rollover_due(started):
                raise _Retry("session rollover before the service's time limit", counts=False, planned=True)
            self._wake.clear()
            timeout = flush.next_check() if flush else 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _should_commit(self, flush: _Flush) -> bool:
        """Commit on Stop only speech the service has not committed itself (it refuses < 100 ms)."""
        if self._ledger.uncommitted_ms < p.MIN_COMMIT_MS:
            return False
        manual = self._settings.turn_detection.type == "manual"
        if manual or self._ledger.in_speech:
            logger.debug("flushing %d ms of uncommitted audio", self._ledger.uncommitted_ms)
            return True
        return False

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

    def _rollover_due(self, started: float) -> bool:
        return (
            time.monotonic() - started >= self._options.rollover_after_s
            and not self._ledger.in_speech
            and not self._ledger.awaiting_commit
            and self._ledger.outstanding == 0
        )

    def _closed(self, exc: ConnectionClosed) -> Exception:
        if self._phase is _Phase.CANCELLED:
            return _Retry("cancelled")
        rcvd = exc.rcvd
        code = rcvd.code if rcvd is not None else 1006
        reason = rcvd.reason if rcvd is not None else ""
        if code in FATAL_CLOSE_CODES:
            kind, message = FATAL_CLOSE_CODES[code]
            return SessionError(f"{message}: {reason}" if reason else message, retryable=False, code=kind)
        if code not in RECOVERABLE_CLOSE_CODES:
            return SessionError(f"the service closed the session (code {code}: {reason})", retryable=False)
        if code == 1001 and MAX_DURATION_HINT in reason.lower():
            return _Retry("the session reached its maximum duration", counts=False)
        return _Retry(f"connection closed (code {code}{': ' + reason if reason else ''})")

    def _backoff(self, failures: int) -> float:
        delay = min(self._options.backoff_max_s, self._options.backoff_base_s * 2.0 ** (failures - 1))
        return delay * random.uniform(0.5, 1.0)

    async def _sleep_unless_cancelled(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._cancelled.wait(), delay)

    @property
    def dropped_audio_ms(self) -> int:
        return self._ledger.dropped_bytes // p.BYTES_PER_MS
