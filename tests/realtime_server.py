"""A stand-in for OpenAI's Realtime transcription service, on 127.0.0.1.

:class:`FakeRealtimeServer` is a real websocket server (``websockets``'
asyncio server) that speaks the GA transcription protocol as DESIGN.md
describes it: the handshake on ``/v1/realtime?intent=transcription`` with a
bearer API key or an ephemeral token, ``session.created`` /
``session.update`` / ``session.updated``, ``input_audio_buffer.append`` /
``commit`` / ``clear``, an energy VAD that finds utterances in the audio, and
per turn ``speech_started`` → ``speech_stopped`` → ``committed`` →
``conversation.item.added`` → transcription ``delta``\\ s → ``completed`` →
``conversation.item.done``, with scripted transcripts. Every client event is
checked against the official ``openai`` models (undeclared keys included) and
every event the server sends is checked before it goes out; both kinds of
violation are recorded and fail the test at teardown.

A small HTTP server beside it (its own port: websockets refuses requests
with a body) answers ``POST /v1/realtime/client_secrets`` with an ephemeral
``ek_...`` token that the websocket handshake then accepts.

The server runs in a background thread with its own event loop, so it can be
used from synchronous tests, from asyncio tests (use the ``*_async`` waits),
and by a daemon in a subprocess. Every public method is thread-safe and must
be called from a thread other than the server's.

Choices where the service's behaviour is not pinned down (documented so a
test can rely on them):

* A handshake carrying ``OpenAI-Beta`` is accepted, answered with an
  ``error`` event (code ``beta_api_removed``) and closed with code 4000.
* Turn numbers (for ``fail_turns``, ``out_of_order_turns``, ``turn_delays``
  and ``"utterance {n}"``) count commits across all sessions, from 1; the
  script queue is server-wide too, so a reconnect continues it.
* A committed turn whose audio has no window above the VAD threshold is
  transcribed as ``silence_transcript`` (``""``) without consuming the
  script; forced turns always use the script.
* A client commit while the VAD is mid-speech commits with the speech's
  ``item_id`` and sends no ``speech_stopped`` for it.
* ``session.update`` replaces each ``audio.input`` member it names
  (``format``, ``transcription``, ``turn_detection``, ``noise_reduction``)
  as a whole; members it does not name are kept.
* Energy VAD: RMS over 20 ms windows; speech when the RMS (full scale = 1.0)
  is at least ``10 ** ((-60 + 50 * threshold) / 20)``, i.e. -35 dBFS at the
  default threshold 0.5 (-60 dBFS at 0, -10 dBFS at 1). ``semantic_vad`` is
  treated as ``server_vad`` with the default padding and silence.

Run by hand: ``python -m tests.realtime_server --port 8765 --script "hello world" --script send``;
it prints one JSON line (``url``, ``token_url``, ``api_key``) and serves
until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
import http
import json
import logging
import re
import secrets
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from sttd.errors import ProtocolError
from sttd.protocol import BYTES_PER_MS, MIN_COMMIT_MS, SAMPLE_RATE, ServerEvents, parse_client_event

from .openai_models import (
    CLIENT_EVENT_TYPES,
    Problem,
    client_event_problems,
    client_secret_response_problems,
    server_event_problems,
    transcription_session_request_problems,
)

try:  # the module also runs as a plain program (the benchmark), where pytest is optional
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_API_KEY = "sk-test-sttd-fake"
REALTIME_PATH = "/v1/realtime"
TOKEN_PATH = "/v1/realtime/client_secrets"
MAX_DURATION_MESSAGE = "Your session hit the maximum duration of 60 minutes."
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011
CLOSE_BAD_CREDENTIALS = 3000
CLOSE_REFUSED = 4000
SESSION_MAX_S = 3600
VAD_WINDOW_MS = 20
DEFAULT_TURN_DETECTION: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
}
DEFAULT_MODEL = "gpt-4o-mini-transcribe"
SUPPORTED_EVENTS = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
)
DropMode = Literal["abort", "close_1011"]


# -------------------------------------------------------------------- options


@dataclass
class ServerOptions:
    """Behaviour and fault switches; change them at any time with :meth:`FakeRealtimeServer.configure`.

    ``*_times`` fields count how many more times a one-shot fault fires
    (``None``: every time while armed); at 0 the fault disarms itself.
    """

    # transcripts
    default_transcript: str = "utterance {n}"
    """Transcript when the script is empty; ``{n}`` is the global turn number."""
    silence_transcript: str | None = ""
    """Transcript of a turn with no audio above the VAD threshold (None: use the script anyway)."""
    delta_pieces: int = 3
    """How many ``delta`` events a transcript is split into (at word boundaries)."""
    delta_interval_s: float = 0.0
    completion_delay_s: float = 0.0
    """Delay between ``committed`` and the first delta of every turn."""
    turn_delays: dict[int, float] = field(default_factory=dict)
    """Extra delay per turn number."""
    # turn detection
    energy_vad: bool = True
    """False: never detect speech by energy; turns only by client commit or :meth:`~FakeRealtimeServer.force_turn`."""
    vad_rms_threshold: float | None = None
    """Override the RMS threshold (full scale 1.0) mapped from ``turn_detection.threshold``."""
    refuse_semantic_vad: bool = False
    """Answer ``semantic_vad`` in ``session.update`` with an ``invalid_value`` error."""
    # transcription faults
    fail_turns: set[int] = field(default_factory=set)
    """Turn numbers answered with ``...transcription.failed`` instead of ``completed``."""
    fail_code: str = "transcription_failed"
    fail_message: str = "Input transcription failed for this item."
    out_of_order_turns: set[int] = field(default_factory=set)
    """Turn N in this set completes only after turn N+1 (of the same session) has completed."""
    out_of_order_hold_s: float = 10.0
    """How long a held turn waits for its successor before completing anyway."""
    # session faults
    session_max_s: float | None = None
    """End every session after this long: ``error`` (``session_expired``) then close 1001 with the 60-minute message."""
    drop_mid_utterance: DropMode | None = None
    """Drop the connection ``drop_after_ms`` into the next utterance:
    ``abort`` (TCP, no close frame) or ``close_1011``."""
    drop_after_ms: int = 200
    drop_times: int | None = 1
    close_on_connect: int | None = None
    """Accept the next connection(s), send an ``error`` and close with this code (3000, 4000, ...)."""
    close_on_connect_reason: str = ""
    close_on_connect_times: int | None = 1
    # handshake faults
    handshake_delay_s: float = 0.0
    refuse_handshake_status: int | None = None
    """Answer the handshake with this HTTP status (401, 403, 500, 503, ...)."""
    refuse_handshake_times: int | None = None
    # token endpoint
    token_ttl_s: int = 600
    token_delay_s: float = 0.0
    refuse_token_status: int | None = None
    refuse_token_times: int | None = None


# ------------------------------------------------------------------- records


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


class _Session:
    def __init__(self, index: int, ws: ServerConnection, session_id: str, info: _ConnInfo) -> None:
        self.index = index
        self.ws = ws
        self.id = session_id
        self.auth = info.auth
        self.headers = info.headers
        self.config: dict[str, Any] = copy.deepcopy(info.config) if info.config else _default_config()
        self.audio = bytearray()
        self.client_events: list[dict[str, Any]] = []
        self.server_events: list[dict[str, Any]] = []
        self.created = False
        self.closed = False
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.ended = False  # the server dropped or closed it: stop reading
        self.expires_at = 0
        # input audio buffer; positions are bytes on the session's audio timeline
        self.buffer = bytearray()
        self.buffer_start = 0
        self.total = 0
        self.vad_pending = bytearray()
        self.vad_pos = 0
        self.speech_item: str | None = None
        self.speech_start = 0
        self.last_speech_end = 0
        self.drop_at: int | None = None
        self.drop_mode: DropMode = "abort"
        self.last_item_id: str | None = None
        self.tail: _Turn | None = None
        self.held: _Turn | None = None
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def turn_detection(self) -> dict[str, Any] | None:
        td = self.config.get("audio", {}).get("input", {}).get("turn_detection")
        return td if isinstance(td, dict) else None

    def reset_vad(self) -> None:
        self.speech_item = None
        self.vad_pending.clear()
        self.vad_pos = self.total
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


def _default_config() -> dict[str, Any]:
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


def _effective_turn_detection(td: Any) -> dict[str, Any] | None:
    """What ``session.updated`` echoes: only keys both SDK session models declare."""
    if not isinstance(td, dict):
        return None
    if td.get("type") == "semantic_vad":
        return {"type": "semantic_vad"}
    return {key: td.get(key, default) for key, default in DEFAULT_TURN_DETECTION.items()}


def _apply_update(config: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    new = copy.deepcopy(config)
    audio_input = (update.get("audio") or {}).get("input") or {}
    target = new.setdefault("audio", {}).setdefault("input", {})
    for key in ("format", "transcription", "noise_reduction"):
        if key in audio_input:
            target[key] = copy.deepcopy(audio_input[key])
    if "turn_detection" in audio_input:
        target["turn_detection"] = _effective_turn_detection(audio_input["turn_detection"])
    if "include" in update:
        new["include"] = copy.deepcopy(update["include"])
    return new


def _session_object(session_id: str, config: dict[str, Any], expires_at: int) -> dict[str, Any]:
    return {
        "id": session_id,
        "object": "realtime.transcription_session",
        "type": "transcription",
        "expires_at": expires_at,
        **copy.deepcopy(config),
    }


def rms_threshold(threshold: float) -> float:
    """The RMS (full scale 1.0) the energy VAD maps a ``turn_detection.threshold`` to."""
    return float(10 ** ((-60 + 50 * min(max(threshold, 0.0), 1.0)) / 20))


def window_rms(pcm: bytes, window_ms: int = VAD_WINDOW_MS) -> np.ndarray:
    """RMS (full scale 1.0) of each ``window_ms`` window of s16le PCM; the last window may be short."""
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64) / 32768.0
    n = window_ms * SAMPLE_RATE // 1000
    rms = [np.sqrt(np.mean(samples[i : i + n] ** 2)) for i in range(0, samples.size, n)]
    return np.asarray(rms, dtype=np.float64)


def _rms(pcm: bytes | bytearray) -> float:
    samples = np.frombuffer(bytes(pcm[: len(pcm) // 2 * 2]), dtype="<i2").astype(np.float64) / 32768.0
    return float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0


def _split_deltas(text: str, pieces: int) -> list[str]:
    words = re.findall(r"\s*\S+", text)
    if not words:
        return [text] if text else []
    words[-1] += text[len("".join(words)) :]  # trailing whitespace, if any
    pieces = max(1, min(pieces, len(words)))
    size = -(-len(words) // pieces)
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


def _json_error(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}


# -------------------------------------------------------------------- server


class FakeRealtimeServer:
    """The Realtime transcription service, faked on 127.0.0.1 (see the module docstring).

    ``FakeRealtimeServer(api_key=..., port=0, token_port=0, script=[...], **options)``
    where ``options`` are :class:`ServerOptions` fields. ``start()`` runs it in
    a background thread; ``stop()`` closes every connection (1001) and joins
    the thread. Prefer :func:`running_server` or the ``realtime_server``
    fixture, which also fail the test on protocol violations.
    """

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        extra_api_keys: Iterable[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        token_port: int = 0,
        script: Iterable[str] = (),
        ping_interval: float | None = None,
        **options: Any,
    ) -> None:
        self.api_key = api_key
        self._api_keys = {api_key, *extra_api_keys}
        self.host = host
        self.port = port
        self.token_port = token_port
        self._ping_interval = ping_interval
        self._options = ServerOptions(**options)
        self._cond = threading.Condition(threading.RLock())
        self._script: deque[str] = deque(script)
        self._events = ServerEvents()
        self._sessions: list[_Session] = []
        self._turns: list[_Turn] = []
        self._server_log: list[tuple[int, dict[str, Any]]] = []
        self._client_log: list[tuple[int, dict[str, Any]]] = []
        self._handshakes: list[dict[str, Any]] = []
        self._token_requests: list[dict[str, Any]] = []
        self._tokens: dict[str, tuple[int, dict[str, Any] | None]] = {}
        self._violations: list[str] = []
        self._conn_info: dict[ServerConnection, _ConnInfo] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._token_writers: set[asyncio.StreamWriter] = set()

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{REALTIME_PATH}?intent=transcription"

    @property
    def token_url(self) -> str:
        return f"http://{self.host}:{self.token_port}{TOKEN_PATH}"

    def start(self) -> FakeRealtimeServer:
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._thread = threading.Thread(target=self._run, name="fake-realtime-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake realtime server did not start within 10 s")
        if self._startup_error is not None:
            self._thread.join(5)
            raise RuntimeError(f"fake realtime server failed to start: {self._startup_error!r}")
        logger.info("fake realtime server on %s (tokens: %s)", self.url, self.token_url)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or not thread.is_alive() or loop is None or stopping is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"fake realtime server thread still running {timeout} s after stop()")

    def __enter__(self) -> FakeRealtimeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start() or logged
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            else:
                logger.exception("fake realtime server crashed")
                self._violation(f"server crashed: {exc!r}")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        ws_server: Server = await serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            ping_interval=self._ping_interval,
            max_size=16 * 2**20,
            close_timeout=2,
        )
        token_server = await asyncio.start_server(self._token_client, self.host, self.token_port)
        self.port = ws_server.sockets[0].getsockname()[1]
        self.token_port = token_server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            ws_server.close(close_connections=True)
            await ws_server.wait_closed()
            token_server.close()
            for writer in list(self._token_writers):
                writer.close()
            await token_server.wait_closed()
            current = asyncio.current_task()
            others = [t for t in asyncio.all_tasks() if t is not current]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

    def _call(self, coro_fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``coro_fn()`` on the server's loop and wait for its result."""
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            raise RuntimeError("fake realtime server is not running")
        if threading.current_thread() is self._thread:
            raise RuntimeError("FakeRealtimeServer methods must be called from another thread")
        return asyncio.run_coroutine_threadsafe(coro_fn(), self._loop).result(timeout)

    # ------------------------------------------------------------ configuration

    def configure(self, **options: Any) -> None:
        """Change :class:`ServerOptions` fields (fault switches included) at once."""
        names = {f.name for f in dataclasses.fields(ServerOptions)}
        unknown = set(options) - names
        if unknown:
            raise TypeError(f"unknown server options: {sorted(unknown)}")
        with self._cond:
            self._options = dataclasses.replace(self._options, **options)

    @property
    def options(self) -> ServerOptions:
        with self._cond:
            return copy.deepcopy(self._options)

    def script(self, texts: Iterable[str]) -> None:
        """Queue transcripts for the next committed turns, in order."""
        with self._cond:
            self._script.extend(texts)

    def refuse_handshakes(self, status: int, times: int | None = None) -> None:
        """Answer the next ``times`` handshakes (None: all, until :meth:`accept_handshakes`) with HTTP ``status``."""
        self.configure(refuse_handshake_status=status, refuse_handshake_times=times)

    def accept_handshakes(self) -> None:
        self.configure(refuse_handshake_status=None, refuse_handshake_times=None)

    def close_on_connect(self, code: int, reason: str = "", times: int | None = 1) -> None:
        """Accept the next connection(s), send an ``error`` and close with ``code`` (before ``session.created``)."""
        self.configure(close_on_connect=code, close_on_connect_reason=reason, close_on_connect_times=times)

    def drop_mid_utterance(self, mode: DropMode = "abort", after_ms: int = 200, times: int | None = 1) -> None:
        """Drop the connection ``after_ms`` of audio into the next utterance (after ``speech_started``)."""
        self.configure(drop_mid_utterance=mode, drop_after_ms=after_ms, drop_times=times)

    def refuse_tokens(self, status: int, times: int | None = None) -> None:
        """Answer the token endpoint with HTTP ``status`` (None to stop refusing)."""
        self.configure(refuse_token_status=status, refuse_token_times=times)

    def expire_tokens(self) -> None:
        """Make every token issued so far expired (the handshake then answers 401)."""
        with self._cond:
            self._tokens = {value: (0, config) for value, (_, config) in self._tokens.items()}

    def _take(self, status_field: str, times_field: str) -> Any:
        """Read an armed one-shot fault and count it down."""
        with self._cond:
            value = getattr(self._options, status_field)
            if value is None:
                return None
            times = getattr(self._options, times_field)
            if times is not None:
                if times <= 0:
                    setattr(self._options, status_field, None)
                    return None
                setattr(self._options, times_field, times - 1)
                if times - 1 == 0:
                    setattr(self._options, status_field, None)
            return value

    # ------------------------------------------------------------ on-demand faults

    def send_raw(self, text: str, *, session: int | None = None) -> None:
        """Send ``text`` as is (a malformed event, say); it is not validated or recorded."""

        async def go() -> None:
            with contextlib.suppress(ConnectionClosed):
                await self._target(session).ws.send(text)

        self._call(go)

    def send_error(
        self,
        code: str,
        message: str,
        *,
        type_: str = "server_error",
        event_id: str | None = None,
        session: int | None = None,
    ) -> None:
        """Send an ``error`` event to the open session (the latest, or ``session``)."""

        async def go() -> None:
            s = self._target(session)
            await self._send(s, self._events.error(code, message, event_id=event_id, type_=type_))

        self._call(go)

    def close_sessions(self, code: int, reason: str = "", *, error: tuple[str, str] | None = None) -> None:
        """Close every open session with ``code`` (3000, 4000, 1001, 1011, ...), optionally after an
        ``error`` event ``(code, message)``."""

        async def go() -> None:
            async def one(s: _Session) -> None:
                if error is not None:
                    await self._send(s, self._events.error(error[0], error[1]))
                s.ended = True
                await s.ws.close(code, reason)

            await asyncio.gather(*(one(s) for s in self._open_sessions()))

        self._call(go)

    def drop(self, mode: DropMode = "abort") -> None:
        """Drop every open session now: ``abort`` the TCP connection (no close frame) or ``close_1011``."""

        async def go() -> None:
            await asyncio.gather(*(self._drop(s, mode) for s in self._open_sessions()))

        self._call(go)

    def freeze(self) -> None:
        """Stop reading every open session: no more events and no pong, like a dead network path."""

        async def go() -> None:
            for s in self._open_sessions():
                s.ws.transport.pause_reading()

        self._call(go)

    def force_turn(self, text: str | None = None, *, session: int | None = None) -> str:
        """Commit what the open session has buffered as a turn now, as the VAD would.

        Emits ``speech_started`` (unless speech is in progress) and
        ``speech_stopped`` when turn detection is on, then ``committed`` and the
        rest. ``text`` overrides the script for this turn. Returns the item id.
        """

        async def go() -> str:
            s = self._target(session)
            td = s.turn_detection()
            if td is not None:
                if s.speech_item is None:
                    item = self._events.new_item_id()
                    s.speech_start = s.buffer_start
                    await self._send(s, self._events.speech_started(item, s.buffer_start // BYTES_PER_MS))
                else:
                    item = s.speech_item
                s.speech_item = None
                await self._send(s, self._events.speech_stopped(item, s.total // BYTES_PER_MS))
            else:
                item = self._events.new_item_id()
            await self._commit(s, item, kind="forced", text=text)
            return item

        result: str = self._call(go)
        return result

    def force_speech_started(self, *, session: int | None = None) -> str:
        """Declare speech in progress now (``speech_started``); returns its item id."""

        async def go() -> str:
            s = self._target(session)
            if s.turn_detection() is None:
                raise RuntimeError("force_speech_started needs turn detection (not manual mode)")
            if s.speech_item is None:
                await self._start_speech(s, s.buffer_start, s.total)
            assert s.speech_item is not None
            return s.speech_item

        result: str = self._call(go)
        return result

    def _open_sessions(self) -> list[_Session]:
        with self._cond:
            return [s for s in self._sessions if not s.closed and not s.ended]

    def _target(self, index: int | None) -> _Session:
        with self._cond:
            if index is not None:
                return self._sessions[index]
            for s in reversed(self._sessions):
                if s.created and not s.closed and not s.ended:
                    return s
        raise RuntimeError("no open session")

    # ------------------------------------------------------------ records (thread-safe)

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
        """Server events sent, optionally of one type or session."""
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

    # ------------------------------------------------------------ handshake

    def _http_error(self, conn: ServerConnection, status: int, body: dict[str, Any]) -> Response:
        response = conn.respond(status, json.dumps(body) + "\n")
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    def _token_valid(self, value: str) -> tuple[bool, dict[str, Any] | None]:
        with self._cond:
            entry = self._tokens.get(value)
        if entry is None or entry[0] <= time.time():
            return False, None
        return True, entry[1]

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = parse_qs(url.query)
        record: dict[str, Any] = {
            "path": request.path,
            "openai_beta": request.headers.get("OpenAI-Beta"),
            "user_agent": request.headers.get("User-Agent"),
            "status": 101,
        }
        with self._cond:
            self._handshakes.append(record)
            delay = self._options.handshake_delay_s

        def answer(status: int, body: dict[str, Any]) -> Response:
            with self._cond:
                record["status"] = status
                self._cond.notify_all()
            return self._http_error(conn, status, body)

        if delay:
            await asyncio.sleep(delay)
        if url.path != REALTIME_PATH:
            return answer(404, _json_error(f"Invalid URL (GET {url.path})", "invalid_request_error", None))
        refused = self._take("refuse_handshake_status", "refuse_handshake_times")
        if refused is not None:
            return answer(
                refused,
                _json_error(f"Refused by the fake server (HTTP {refused})", "server_error", f"http_{refused}"),
            )
        authorization = request.headers.get("Authorization", "")
        key = authorization[len("Bearer ") :] if authorization.startswith("Bearer ") else ""
        token_config: dict[str, Any] | None = None
        if key in self._api_keys:
            auth = "api_key"
        else:
            valid, token_config = self._token_valid(key)
            if not valid:
                message = (
                    "You didn't provide an API key."
                    if not key
                    else "Incorrect API key provided, or the ephemeral token expired."
                )
                return answer(401, _json_error(message, "invalid_request_error", "invalid_api_key"))
            auth = "token"
        if query.get("intent") != ["transcription"]:
            return answer(
                400,
                _json_error(
                    "The fake server serves transcription sessions only: use ?intent=transcription",
                    "invalid_request_error",
                    "invalid_value",
                    "intent",
                ),
            )
        if "model" in query:
            self._violation(f"handshake {request.path}: no 'model' query parameter in transcription sessions")
        record["auth"] = auth
        self._conn_info[conn] = _ConnInfo(
            auth=auth,
            headers={k: v for k, v in request.headers.raw_items() if k.lower() != "authorization"},
            beta="OpenAI-Beta" in request.headers,
            config=token_config,
        )
        return None

    # ------------------------------------------------------------ session

    async def _handler(self, ws: ServerConnection) -> None:
        info = self._conn_info.pop(ws, None) or _ConnInfo("api_key", {}, False, None)
        with self._cond:
            s = _Session(len(self._sessions), ws, "sess_" + secrets.token_hex(12), info)
            self._sessions.append(s)
            self._cond.notify_all()
        logger.info("session %d (%s) connected with %s", s.index, s.id, s.auth)
        try:
            if info.beta:
                await self._send(
                    s,
                    self._events.error(
                        "beta_api_removed",
                        "The Realtime API beta has been removed; connect without the 'OpenAI-Beta' header.",
                    ),
                )
                s.ended = True
                await ws.close(CLOSE_REFUSED, "OpenAI-Beta header refused")
                return
            close_code = self._take("close_on_connect", "close_on_connect_times")
            if close_code is not None:
                reason = self._options.close_on_connect_reason or f"closed by the fake server ({close_code})"
                code = "invalid_api_key" if close_code == CLOSE_BAD_CREDENTIALS else "invalid_request"
                await self._send(s, self._events.error(code, reason))
                s.ended = True
                await ws.close(close_code, reason)
                return
            await self._send(s, self._events.session_created(self._session_object(s)))
            with self._cond:
                s.created = True
                self._cond.notify_all()
            max_s = self._options.session_max_s
            if max_s is not None:
                s.spawn(self._expire(s, max_s))
            async for raw in ws:
                await self._on_message(s, raw)
                if s.ended:
                    break
        except ConnectionClosed:
            pass
        finally:
            for task in list(s.tasks):
                task.cancel()
            await asyncio.gather(*s.tasks, return_exceptions=True)
            if s.ended and ws.state.name != "CLOSED":
                # The server ended it: wait (bounded by close_timeout) for the close to finish.
                with contextlib.suppress(Exception):
                    await ws.wait_closed()
            with self._cond:
                s.closed = True
                s.close_code = ws.close_code
                s.close_reason = ws.close_reason
                self._cond.notify_all()
            logger.info("session %d closed (%s %s)", s.index, ws.close_code, ws.close_reason)

    def _session_object(self, s: _Session) -> dict[str, Any]:
        if not s.expires_at:
            max_s = self._options.session_max_s
            s.expires_at = int(time.time() + (max_s if max_s is not None else SESSION_MAX_S))
        return _session_object(s.id, s.config, s.expires_at)

    async def _expire(self, s: _Session, after_s: float) -> None:
        await asyncio.sleep(after_s)
        await self._send(s, self._events.error("session_expired", MAX_DURATION_MESSAGE))
        s.ended = True
        await s.ws.close(CLOSE_GOING_AWAY, MAX_DURATION_MESSAGE)

    async def _drop(self, s: _Session, mode: DropMode) -> None:
        s.ended = True
        logger.info("dropping session %d (%s)", s.index, mode)
        if mode == "abort":
            s.ws.transport.abort()
        else:
            await s.ws.close(CLOSE_INTERNAL_ERROR, "Internal server error")

    async def _send(self, s: _Session, event: dict[str, Any]) -> None:
        problems = server_event_problems(event)
        if problems:
            self._violation(f"server event {event.get('type')} (session {s.index}): " + "; ".join(map(str, problems)))
        try:
            await s.ws.send(json.dumps(event))
        except ConnectionClosed:
            return
        with self._cond:
            s.server_events.append(event)
            self._server_log.append((s.index, event))
            self._cond.notify_all()

    async def _error(
        self, s: _Session, code: str, message: str, event_id: str | None, param: str | None = None
    ) -> None:
        await self._send(s, self._events.error(code, message, event_id=event_id, param=param))

    async def _on_message(self, s: _Session, raw: str | bytes) -> None:
        try:
            event = parse_client_event(raw)
        except ProtocolError as exc:
            self._violation(f"client message (session {s.index}): {exc}")
            with self._cond:
                entry = {"type": None, "invalid": str(exc)}
                s.client_events.append(entry)
                self._client_log.append((s.index, entry))
                self._cond.notify_all()
            await self._error(s, "invalid_json", f"The message could not be parsed: {exc}", None)
            return
        pcm = event.pop("pcm", None)
        kind = event["type"]
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        record = {k: v for k, v in event.items() if k != "audio"}
        with self._cond:
            s.client_events.append(record)
            self._client_log.append((s.index, record))
            self._cond.notify_all()
        problems = client_event_problems(event)
        if problems:
            self._violation(f"client event {kind} (session {s.index}): " + "; ".join(map(str, problems)))
        if kind not in CLIENT_EVENT_TYPES:
            supported = ", ".join(f"'{t}'" for t in SUPPORTED_EVENTS)
            await self._error(
                s, "invalid_value", f"Invalid value: '{kind}'. Supported values are: {supported}.", event_id, "type"
            )
            return
        if kind == "session.update":
            await self._on_session_update(s, event, event_id, problems)
            return
        if problems:
            await self._refuse(s, problems, event_id)
            return
        if kind == "input_audio_buffer.append":
            await self._on_append(s, pcm or b"")
        elif kind == "input_audio_buffer.commit":
            await self._on_commit(s, event_id)
        elif kind == "input_audio_buffer.clear":
            s.buffer.clear()
            s.buffer_start = s.total
            s.reset_vad()
            await self._send(s, self._events.cleared())
        else:
            await self._error(
                s, "invalid_value", f"'{kind}' is not supported in transcription sessions.", event_id, "type"
            )

    async def _refuse(self, s: _Session, problems: list[Problem], event_id: str | None) -> None:
        first = problems[0]
        message = first.message if first.code == "unknown_parameter" else f"Invalid '{first.param}': {first.message}"
        await self._error(s, first.code, message, event_id, first.param or None)

    async def _on_session_update(
        self, s: _Session, event: dict[str, Any], event_id: str | None, problems: list[Problem]
    ) -> None:
        session = event.get("session")
        session = session if isinstance(session, dict) else {}
        audio = session.get("audio")
        audio_input = audio.get("input") if isinstance(audio, dict) else None
        audio_input = audio_input if isinstance(audio_input, dict) else {}
        fmt = audio_input.get("format")
        if isinstance(fmt, dict) and "rate" in fmt and fmt["rate"] != SAMPLE_RATE:
            await self._error(
                s,
                "invalid_value",
                f"Invalid value: {fmt['rate']!r}. Supported values are: {SAMPLE_RATE}.",
                event_id,
                "session.audio.input.format.rate",
            )
            return
        if session.get("type") != "transcription":
            await self._error(
                s,
                "invalid_value",
                f"Invalid value: {session.get('type')!r}. This is a transcription session: "
                "session.type must be 'transcription'.",
                event_id,
                "session.type",
            )
            return
        if problems:
            await self._refuse(s, problems, event_id)
            return
        td = audio_input.get("turn_detection")
        if isinstance(td, dict) and td.get("type") == "semantic_vad" and self._options.refuse_semantic_vad:
            await self._error(
                s,
                "invalid_value",
                "Invalid value: 'semantic_vad'. Supported values are: 'server_vad'.",
                event_id,
                "session.audio.input.turn_detection.type",
            )
            return
        old_td = s.turn_detection()
        new_config = _apply_update(s.config, session)
        with self._cond:
            s.config = new_config
            self._cond.notify_all()
        if s.turn_detection() != old_td:
            s.reset_vad()
        await self._send(s, self._events.session_updated(self._session_object(s)))

    # ------------------------------------------------------------ audio and VAD

    async def _on_append(self, s: _Session, pcm: bytes) -> None:
        with self._cond:
            s.audio.extend(pcm)
            self._cond.notify_all()
        s.buffer.extend(pcm)
        s.total += len(pcm)
        td = s.turn_detection()
        if td is not None and self._options.energy_vad:
            s.vad_pending.extend(pcm)
            await self._run_vad(s, td)
        else:
            s.vad_pos = s.total
        if s.drop_at is not None and s.total >= s.drop_at:
            s.drop_at = None
            await self._drop(s, s.drop_mode)

    def _threshold(self, td: dict[str, Any]) -> float:
        override = self._options.vad_rms_threshold
        if override is not None:
            return override
        value = td.get("threshold")
        return rms_threshold(float(value) if isinstance(value, int | float) else 0.5)

    async def _run_vad(self, s: _Session, td: dict[str, Any]) -> None:
        window = VAD_WINDOW_MS * BYTES_PER_MS
        threshold = self._threshold(td)
        semantic = td.get("type") == "semantic_vad"
        prefix = DEFAULT_TURN_DETECTION["prefix_padding_ms"] if semantic else td.get("prefix_padding_ms")
        silence = DEFAULT_TURN_DETECTION["silence_duration_ms"] if semantic else td.get("silence_duration_ms")
        prefix_bytes = int(prefix if isinstance(prefix, int) else 300) * BYTES_PER_MS
        silence_bytes = int(silence if isinstance(silence, int) else 500) * BYTES_PER_MS
        while len(s.vad_pending) >= window:
            chunk = bytes(s.vad_pending[:window])
            del s.vad_pending[:window]
            start, end = s.vad_pos, s.vad_pos + window
            s.vad_pos = end
            loud = _rms(chunk) >= threshold
            if s.speech_item is None:
                if loud:
                    await self._start_speech(s, max(s.buffer_start, start - prefix_bytes), end)
                else:
                    # Not speech: keep only the prefix padding in the buffer.
                    keep_from = max(s.buffer_start, end - prefix_bytes)
                    del s.buffer[: keep_from - s.buffer_start]
                    s.buffer_start = keep_from
            elif loud:
                s.last_speech_end = end
            elif end - s.last_speech_end >= silence_bytes:
                item = s.speech_item
                s.speech_item = None
                s.drop_at = None
                await self._send(s, self._events.speech_stopped(item, end // BYTES_PER_MS))
                await self._commit(s, item, kind="vad", upto=end)
            if s.ended:
                return

    async def _start_speech(self, s: _Session, audio_start: int, speech_end: int) -> None:
        del s.buffer[: audio_start - s.buffer_start]
        s.buffer_start = audio_start
        item = self._events.new_item_id()
        s.speech_item = item
        s.speech_start = audio_start
        s.last_speech_end = speech_end
        await self._send(s, self._events.speech_started(item, audio_start // BYTES_PER_MS))
        mode = self._take("drop_mid_utterance", "drop_times")
        if mode is not None:
            s.drop_mode = mode
            s.drop_at = s.total + self._options.drop_after_ms * BYTES_PER_MS

    async def _on_commit(self, s: _Session, event_id: str | None) -> None:
        buffered_ms = len(s.buffer) / BYTES_PER_MS
        if buffered_ms < MIN_COMMIT_MS:
            await self._error(
                s,
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {buffered_ms:.2f}ms of audio.",
                event_id,
            )
            return
        item = s.speech_item or self._events.new_item_id()
        s.speech_item = None
        await self._commit(s, item, kind="client")

    # ------------------------------------------------------------ turns

    def _has_speech(self, s: _Session, pcm: bytes) -> bool:
        td = s.turn_detection() or DEFAULT_TURN_DETECTION
        return bool(np.any(window_rms(pcm) >= self._threshold(td)))

    async def _commit(
        self, s: _Session, item_id: str, *, kind: str, upto: int | None = None, text: str | None = None
    ) -> None:
        upto = s.total if upto is None else upto
        n_bytes = max(0, upto - s.buffer_start)
        pcm = bytes(s.buffer[:n_bytes])
        del s.buffer[:n_bytes]
        start_ms, end_ms = s.buffer_start // BYTES_PER_MS, upto // BYTES_PER_MS
        s.buffer_start = upto
        if upto > s.vad_pos:  # the unanalysed audio was committed too
            s.vad_pending.clear()
            s.vad_pos = upto
        s.drop_at = None
        previous, s.last_item_id = s.last_item_id, item_id
        with self._cond:
            opts = self._options
            number = len(self._turns) + 1
            silent_text = opts.silence_transcript
            if text is not None:
                transcript = text
            elif kind != "forced" and silent_text is not None and not self._has_speech(s, pcm):
                transcript = silent_text
            elif self._script:
                transcript = self._script.popleft()
            else:
                transcript = opts.default_transcript.format(n=number)
            turn = _Turn(
                number=number,
                session=s.index,
                item_id=item_id,
                previous_item_id=previous,
                kind=kind,
                transcript=transcript,
                pcm=pcm,
                audio_start_ms=start_ms,
                audio_end_ms=end_ms,
                failed=number in opts.fail_turns,
            )
            swap = number in opts.out_of_order_turns
            hold_s = opts.out_of_order_hold_s
            self._turns.append(turn)
            self._cond.notify_all()
        # Completion order: commit order, except that a turn in
        # out_of_order_turns completes right after its successor.
        held = s.held
        if held is not None:
            turn.gate = held.pending_gate
            turn.gate_ready.set()
            held.gate = turn
            held.gate_ready.set()
            s.tail, s.held = held, None
        elif swap:
            turn.pending_gate = s.tail
            s.held = turn
        else:
            turn.gate = s.tail
            turn.gate_ready.set()
            s.tail = turn
        logger.info("session %d turn %d (%s) %s: %r", s.index, number, kind, item_id, transcript)
        await self._send(s, self._events.committed(item_id, previous))
        await self._send(s, self._events.item_added(item_id, previous))
        s.spawn(self._transcribe(s, turn, hold_s))

    async def _transcribe(self, s: _Session, turn: _Turn, hold_s: float) -> None:
        try:
            try:
                await asyncio.wait_for(turn.gate_ready.wait(), hold_s)
            except TimeoutError:
                logger.info("turn %d: no successor within %s s, completing anyway", turn.number, hold_s)
                if s.held is turn:
                    s.held = None
                    turn.gate = turn.pending_gate
                    s.tail = turn
            if turn.gate is not None:
                await turn.gate.done.wait()
            with self._cond:
                delay = self._options.completion_delay_s + self._options.turn_delays.get(turn.number, 0.0)
                interval = self._options.delta_interval_s
                pieces = self._options.delta_pieces
                fail_code, fail_message = self._options.fail_code, self._options.fail_message
            if delay > 0:
                await asyncio.sleep(delay)
            if turn.failed:
                await self._send(s, self._events.failed(turn.item_id, fail_code, fail_message))
            else:
                for piece in _split_deltas(turn.transcript, pieces):
                    await self._send(s, self._events.delta(turn.item_id, piece))
                    if interval > 0:
                        await asyncio.sleep(interval)
                seconds = len(turn.pcm) / (SAMPLE_RATE * 2)
                await self._send(s, self._events.completed(turn.item_id, turn.transcript, seconds))
                await self._send(s, self._events.item_done(turn.item_id, turn.previous_item_id, turn.transcript))
            with self._cond:
                turn.completed = True
                self._cond.notify_all()
        finally:
            turn.done.set()

    # ------------------------------------------------------------ token endpoint

    async def _token_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._token_writers.add(writer)
        try:
            async with asyncio.timeout(10):
                request_line = (await reader.readline()).decode("latin-1").strip()
                headers: dict[str, str] = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
            method, _, rest = request_line.partition(" ")
            target = rest.rsplit(" ", 1)[0]
            status, payload = await self._token_response(method, target, headers, body)
            data = (json.dumps(payload) + "\n").encode()
            head = (
                f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + data)
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError, asyncio.IncompleteReadError) as exc:
            logger.warning("token endpoint: bad request: %r", exc)
        finally:
            self._token_writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _token_response(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        record: dict[str, Any] = {"method": method, "path": target, "status": 0}
        with self._cond:
            self._token_requests.append(record)
            delay = self._options.token_delay_s
            ttl = self._options.token_ttl_s

        def answer(status: int, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            with self._cond:
                record["status"] = status
                self._cond.notify_all()
            return status, payload

        if delay:
            await asyncio.sleep(delay)
        if urlsplit(target).path != TOKEN_PATH:
            return answer(404, _json_error(f"Invalid URL ({method} {target})", "invalid_request_error", None))
        if method != "POST":
            return answer(405, _json_error(f"Method {method} not allowed", "invalid_request_error", None))
        refused = self._take("refuse_token_status", "refuse_token_times")
        if refused is not None:
            return answer(refused, _json_error(f"Refused by the fake server (HTTP {refused})", "server_error", None))
        authorization = headers.get("authorization", "")
        key = authorization[len("Bearer ") :] if authorization.startswith("Bearer ") else ""
        if key not in self._api_keys:
            return answer(401, _json_error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"))
        try:
            request = json.loads(body) if body.strip() else {}
        except ValueError:
            return answer(400, _json_error("The body is not valid JSON.", "invalid_request_error", "invalid_json"))
        if not isinstance(request, dict):
            return answer(400, _json_error("The body must be a JSON object.", "invalid_request_error", None))
        record["body"] = request
        unknown = set(request) - {"session", "expires_after"}
        if unknown:
            self._violation(f"token request: unknown parameters {sorted(unknown)}")
            param = sorted(unknown)[0]
            return answer(
                400, _json_error(f"Unknown parameter: '{param}'.", "invalid_request_error", "unknown_parameter", param)
            )
        config = _default_config()
        session = request.get("session")
        if session is not None:
            problems = transcription_session_request_problems(session)
            if problems:
                self._violation("token request: " + "; ".join(map(str, problems)))
                first = problems[0]
                return answer(400, _json_error(first.message, "invalid_request_error", first.code, first.param))
            config = _apply_update(config, session)
        expires_after = request.get("expires_after")
        if isinstance(expires_after, dict) and isinstance(expires_after.get("seconds"), int):
            ttl = expires_after["seconds"]
        value = "ek_" + secrets.token_hex(16)
        expires_at = int(time.time()) + ttl
        payload = {
            "value": value,
            "expires_at": expires_at,
            "session": _session_object("sess_" + secrets.token_hex(12), config, expires_at),
        }
        problems = client_secret_response_problems(payload)
        if problems:
            self._violation("token response: " + "; ".join(map(str, problems)))
        with self._cond:
            self._tokens[value] = (expires_at, config)
            record["value"] = value
        return answer(200, payload)


# -------------------------------------------------------------------- helpers


@contextlib.contextmanager
def running_server(*, check_violations: bool = True, **kwargs: Any) -> Iterator[FakeRealtimeServer]:
    """Run a :class:`FakeRealtimeServer` in a background thread for the ``with`` block.

    On a clean exit, raises AssertionError if a protocol violation was
    recorded (unless ``check_violations`` is false).
    """
    server = FakeRealtimeServer(**kwargs).start()
    try:
        yield server
    except BaseException:
        server.stop()
        raise
    server.stop()
    if check_violations:
        server.assert_no_violations()


if pytest is not None:

    @pytest.fixture
    def realtime_server() -> Iterator[FakeRealtimeServer]:
        """A running :class:`FakeRealtimeServer`; the test fails on any protocol violation.

        Change behaviour with ``realtime_server.configure(...)`` / ``.script([...])``.
        """
        with running_server() as server:
            yield server


# ------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.realtime_server", description="A stand-in for OpenAI's Realtime transcription service."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="websocket port (0: any free port)")
    parser.add_argument("--token-port", type=int, default=0, help="token endpoint port (0: any free port)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--script", action="append", default=[], metavar="TEXT", help="transcript of the next turn")
    parser.add_argument("--script-file", help="file with one transcript per line")
    parser.add_argument("--default-transcript", default="utterance {n}")
    parser.add_argument("--completion-delay", type=float, default=0.0, metavar="S")
    parser.add_argument("--delta-interval", type=float, default=0.0, metavar="S")
    parser.add_argument("--handshake-delay", type=float, default=0.0, metavar="S")
    parser.add_argument("--session-max", type=float, default=None, metavar="S")
    parser.add_argument("--no-energy-vad", action="store_true", help="only client commits make turns")
    parser.add_argument("--dump", metavar="PATH", help="write sessions, events and violations as JSON at exit")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    script = list(args.script)
    if args.script_file:
        with open(args.script_file, encoding="utf-8") as f:
            script += [line.rstrip("\n") for line in f if line.strip()]
    # Block the signals before the server thread starts so that only sigwait() sees them.
    signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    server = FakeRealtimeServer(
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        token_port=args.token_port,
        script=script,
        default_transcript=args.default_transcript,
        completion_delay_s=args.completion_delay,
        delta_interval_s=args.delta_interval,
        handshake_delay_s=args.handshake_delay,
        session_max_s=args.session_max,
        energy_vad=not args.no_energy_vad,
    ).start()
    print(
        json.dumps({"url": server.url, "token_url": server.token_url, "api_key": server.api_key}),
        flush=True,
    )
    received = signal.sigwait(signals)
    logger.info("signal %d: stopping", received)
    server.stop()
    if args.dump:
        dump = {
            "sessions": [
                {
                    "index": s.index,
                    "id": s.session_id,
                    "audio_bytes": len(s.audio),
                    "close_code": s.close_code,
                    "client_events": server.client_events(session=s.index),
                    "server_events": server.server_events(session=s.index),
                }
                for s in server.sessions()
            ],
            "turns": [
                {k: v for k, v in dataclasses.asdict(t).items() if k != "audio"} | {"audio_bytes": len(t.audio)}
                for t in server.turns()
            ],
            "violations": server.violations,
        }
        with open(args.dump, "w", encoding="utf-8") as f:
            json.dump(dump, f, indent=1)
    for violation in server.violations:
        print(f"violation: {violation}", file=sys.stderr)
    return 1 if server.violations else 0


if __name__ == "__main__":
    sys.exit(main())
