"""What the test Realtime server records, and the waits a test uses on it.

:class:`SessionInfo`, :class:`TurnInfo`, :class:`~tests.realtime_rules.RefusalInfo`
and :class:`ConnectionSample` are frozen snapshots; :class:`Records` is the
part of :class:`~tests.realtime_server.FakeRealtimeServer` that reads them
(thread-safe, from any thread but the server's) and waits for them with a deadline.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from websockets.asyncio.server import ServerConnection

from .realtime_rules import Refusal, RefusalInfo, default_config, session_model, transcription_of, turn_detection_of
from .realtime_vad import Utterance, Windows

logger = logging.getLogger(__name__)

T = TypeVar("T")
DropMode = Literal["abort", "close_1011"]


@dataclass(frozen=True)
class SessionInfo:
    """A snapshot of one websocket session."""

    index: int
    session_id: str
    auth: str
    """``api_key`` or ``token``."""
    headers: dict[str, str]
    config: dict[str, Any]
    """The effective session object (as in ``session.updated``)."""
    audio: bytes
    """Every PCM byte appended in this session."""
    created: bool
    """``session.created`` was sent."""
    closed: bool
    close_code: int | None
    close_reason: str | None


@dataclass(frozen=True)
class TurnInfo:
    """A committed turn."""

    number: int
    session: int
    item_id: str
    previous_item_id: str | None
    kind: str
    """``vad``, ``client`` (client commit) or ``forced``."""
    transcript: str
    audio: bytes
    """The committed PCM."""
    audio_start_ms: int
    audio_end_ms: int
    failed: bool
    done: bool
    """``completed``/``failed`` was sent."""


@dataclass(frozen=True)
class ConnectionSample:
    """The websocket connections at one moment (taken at every open and close)."""

    t: float
    """``time.monotonic()``."""
    open: int
    """Connections open at once."""
    total: int
    """Connections accepted so far."""


# ----------------------------------------------------------------- internals


@dataclass
class _Turn:
    number: int
    session: int
    item_id: str
    previous_item_id: str | None
    kind: str
    transcript: str
    pcm: bytes
    audio_start_ms: int
    audio_end_ms: int
    failed: bool
    streamed: str = ""
    """Text already sent as deltas while the person spoke (live models)."""
    languages: list[dict[str, str]] | None = None
    """``completed.languages`` (gpt-transcribe family)."""
    done: asyncio.Event = field(default_factory=asyncio.Event)
    gate: _Turn | None = None
    gate_ready: asyncio.Event = field(default_factory=asyncio.Event)
    pending_gate: _Turn | None = None
    completed: bool = False

    def info(self) -> TurnInfo:
        return TurnInfo(
            self.number,
            self.session,
            self.item_id,
            self.previous_item_id,
            self.kind,
            self.transcript,
            self.pcm,
            self.audio_start_ms,
            self.audio_end_ms,
            self.failed,
            self.completed,
        )


@dataclass
class _ConnInfo:
    auth: str
    headers: dict[str, str]
    beta: bool
    config: dict[str, Any] | None
    credential: str = ""
    """The bearer the client authenticated with (for the echo-the-key fault only)."""


@dataclass
class _Live:
    """The upcoming item of a live session: streamed while heard, committed by the client."""

    item_id: str
    text: str
    from_script: bool
    """``text`` was taken from the script (put back if the item is never committed)."""
    sent: int = 0
    """Words of ``text`` sent as deltas."""


class _Session:
    def __init__(self, index: int, ws: ServerConnection, session_id: str, info: _ConnInfo) -> None:
        self.index = index
        self.ws = ws
        self.id = session_id
        self.auth = info.auth
        self.credential = info.credential
        self.headers = info.headers
        self.config: dict[str, Any] = copy.deepcopy(info.config) if info.config else default_config()
        self.audio = bytearray()
        self.client_events: list[dict[str, Any]] = []
        self.server_events: list[dict[str, Any]] = []
        self.created = False
        self.updated = False
        self.closed = False
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.ended = False  # the server dropped or closed it: stop reading
        self.end_close: tuple[int, str] = (1000, "")
        """The close the server chose when it ended the session (finished by the handler if cut short)."""
        self.expires_at = 0
        # input audio buffer; positions are bytes on the session's audio timeline
        self.buffer = bytearray()
        self.buffer_start = 0
        self.total = 0
        self.windows = Windows()
        self.speech_item: str | None = None
        self.speech_start = 0
        self.last_speech_end = 0
        self.utterance = Utterance()
        self.live: _Live | None = None
        self.drop_at: int | None = None
        self.drop_mode: DropMode = "abort"
        self.last_item_id: str | None = None
        self.tail: _Turn | None = None
        self.held: _Turn | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.flooding = False

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def turn_detection(self) -> dict[str, Any] | None:
        return turn_detection_of(self.config)

    def reset_vad(self) -> None:
        self.speech_item = None
        self.utterance.reset()
        self.windows.reset(self.total)
        self.drop_at = None

    def info(self) -> SessionInfo:
        return SessionInfo(
            self.index,
            self.id,
            self.auth,
            dict(self.headers),
            copy.deepcopy(self.config),
            bytes(self.audio),
            self.created,
            self.closed,
            self.close_code,
            self.close_reason,
        )


# ------------------------------------------------------------------- reading


class Records:
    """Thread-safe reads of what the server recorded, and waits with a deadline."""

    _cond: threading.Condition
    _thread: threading.Thread | None
    _sessions: list[_Session]
    _turns: list[_Turn]
    _server_log: list[tuple[int, dict[str, Any]]]
    _client_log: list[tuple[int, dict[str, Any]]]
    _handshakes: list[dict[str, Any]]
    _token_requests: list[dict[str, Any]]
    _violations: list[str]
    _refusals: list[RefusalInfo]
    _connections: list[ConnectionSample]
    _script: Any
    _options: Any

    def _violation(self, text: str) -> None:
        logger.error("protocol violation: %s", text)
        with self._cond:
            self._violations.append(text)
            self._cond.notify_all()

    @property
    def violations(self) -> list[str]:
        with self._cond:
            return list(self._violations)

    def take_violations(self) -> list[str]:
        """Return and forget the violations so far (for tests that cause them on purpose)."""
        with self._cond:
            taken, self._violations = self._violations, []
            return taken

    def assert_no_violations(self) -> None:
        found = self.violations
        if found:
            raise AssertionError("Realtime protocol violations:\n  " + "\n  ".join(found))

    def _record_refusals(
        self, session: int | None, event_id: str | None, config: dict[str, Any], refusals: list[Refusal], what: str
    ) -> None:
        """Keep the refusals of one update; with ``strict_models`` they are violations too."""
        model = session_model(config)
        with self._cond:
            strict = self._options.strict_models
            for r in refusals:
                info = RefusalInfo(
                    session,
                    event_id,
                    model,
                    r.code,
                    r.param,
                    r.message,
                    turn_detection_of(config),
                    transcription_of(config),
                )
                self._refusals.append(info)
            self._cond.notify_all()
        if strict:
            found = "; ".join(f"{r.param}: {r.message}" for r in refusals)
            self._violation(f"{what} for {model} refused: {found}")

    def refusals(self, model: str | None = None) -> list[RefusalInfo]:
        """Every ``session.update`` (and token request) refused for what its model takes, in order."""
        with self._cond:
            return [r for r in self._refusals if model is None or r.model == model]

    def audio(self, session: int | None = None) -> bytes:
        """PCM appended in one session, or in all sessions in order."""
        with self._cond:
            if session is not None:
                return bytes(self._sessions[session].audio)
            return b"".join(bytes(s.audio) for s in self._sessions)

    def client_events(self, type_: str | None = None, *, session: int | None = None) -> list[dict[str, Any]]:
        """Client events received (``audio`` payloads stripped), optionally of one type or session."""
        with self._cond:
            return [
                copy.deepcopy(e)
                for i, e in self._client_log
                if (type_ is None or e.get("type") == type_) and (session is None or i == session)
            ]

    def server_events(self, type_: str | None = None, *, session: int | None = None) -> list[dict[str, Any]]:
        """Server events sent, optionally of one type or session (flooded deltas are counted, not kept)."""
        with self._cond:
            return [
                copy.deepcopy(e)
                for i, e in self._server_log
                if (type_ is None or e.get("type") == type_) and (session is None or i == session)
            ]

    def sessions(self) -> list[SessionInfo]:
        with self._cond:
            return [s.info() for s in self._sessions]

    def turns(self) -> list[TurnInfo]:
        with self._cond:
            return [t.info() for t in self._turns]

    def handshakes(self) -> list[dict[str, Any]]:
        with self._cond:
            return copy.deepcopy(self._handshakes)

    def token_requests(self) -> list[dict[str, Any]]:
        with self._cond:
            return copy.deepcopy(self._token_requests)

    @property
    def connection_count(self) -> int:
        """Websocket connections accepted (handshake completed)."""
        with self._cond:
            return len(self._sessions)

    @property
    def open_connections(self) -> int:
        """Websocket connections open now."""
        with self._cond:
            return self._connections[-1].open if self._connections else 0

    @property
    def max_concurrent_connections(self) -> int:
        """The most websocket connections that were open at the same time."""
        with self._cond:
            return max((c.open for c in self._connections), default=0)

    def connection_timeline(self) -> list[ConnectionSample]:
        """Open and accepted connections after every open and close, in order."""
        with self._cond:
            return list(self._connections)

    @property
    def handshake_count(self) -> int:
        """Handshake attempts, refused ones included."""
        with self._cond:
            return len(self._handshakes)

    @property
    def pending_script(self) -> list[str]:
        with self._cond:
            return list(self._script)

    # ------------------------------------------------------------ waiting

    def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0, what: str | None = None) -> T:
        """Wait until ``predicate()`` is truthy (re-checked on every recorded change); return its value."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("wait_for cannot run on the server's own thread")
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate()
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None or not self._thread.is_alive():
                    recent = [e.get("type") for _, e in self._server_log[-8:]]
                    raise TimeoutError(
                        f"timed out after {timeout} s waiting for {what or getattr(predicate, '__name__', 'predicate')}"
                        f" (last server events: {recent}; violations: {self._violations})"
                    )
                self._cond.wait(remaining)

    async def wait_for_async(self, predicate: Callable[[], T], timeout: float = 5.0, what: str | None = None) -> T:
        """:meth:`wait_for` for asyncio tests: waits in a worker thread, not blocking the caller's loop."""
        return await asyncio.to_thread(self.wait_for, predicate, timeout, what)

    def wait_for_server_event(
        self, type_: str, count: int = 1, timeout: float = 5.0, *, session: int | None = None
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` events of ``type_`` were sent; return all of them so far."""

        def enough() -> list[dict[str, Any]]:
            found = self.server_events(type_, session=session)
            return found if len(found) >= count else []

        return self.wait_for(enough, timeout, f"{count} x server event {type_}")

    async def wait_for_server_event_async(
        self, type_: str, count: int = 1, timeout: float = 5.0, *, session: int | None = None
    ) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.wait_for_server_event, type_, count, timeout, session=session)

    def wait_for_client_event(
        self, type_: str, count: int = 1, timeout: float = 5.0, *, session: int | None = None
    ) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]]:
            found = self.client_events(type_, session=session)
            return found if len(found) >= count else []

        return self.wait_for(enough, timeout, f"{count} x client event {type_}")

    def wait_for_connections(self, count: int = 1, timeout: float = 5.0) -> int:
        return self.wait_for(lambda: self.connection_count >= count and self.connection_count, timeout, "connections")

    def wait_for_audio(self, n_bytes: int, timeout: float = 5.0, *, session: int | None = None) -> bytes:
        def enough() -> bytes:
            pcm = self.audio(session)
            return pcm if len(pcm) >= n_bytes else b""

        return self.wait_for(enough, timeout, f"{n_bytes} bytes of audio")

    def wait_for_turns(self, count: int, timeout: float = 5.0, *, done: bool = True) -> list[TurnInfo]:
        """Wait until ``count`` turns were committed (and, with ``done``, completed or failed)."""

        def enough() -> list[TurnInfo]:
            turns = self.turns()
            ok = [t for t in turns if t.done or not done]
            return turns if len(ok) >= count else []

        return self.wait_for(enough, timeout, f"{count} turns")

    def wait_for_session_closed(self, index: int = -1, timeout: float = 5.0) -> SessionInfo:
        def closed() -> SessionInfo | None:
            sessions = self.sessions()
            if not sessions:
                return None
            info = sessions[index]
            return info if info.closed else None

        info = self.wait_for(closed, timeout, f"session {index} closed")
        assert info is not None
        return info
