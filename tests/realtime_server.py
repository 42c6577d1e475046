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

It plays each transcription model as the service does (:mod:`tests.realtime_rules`):
a ``session.update`` the model does not take is refused with the service's
``error`` (the session keeps its previous config) and recorded in
:meth:`~FakeRealtimeServer.refusals`; with ``strict_models`` (the default)
a refusal is a violation too. Live models (``gpt-live-transcribe``,
``gpt-realtime-whisper``, turn detection null) stream deltas while the person
speaks and complete on the client's commit (:mod:`tests.realtime_turns`).

The parts: :mod:`tests.realtime_messages` (each client event: parsed,
checked, refused or dispatched), :mod:`tests.realtime_rules` (session shapes,
per-model rules), :mod:`tests.realtime_vad` (the energy VAD),
:mod:`tests.realtime_turns` (audio to turns), :mod:`tests.realtime_faults`
(:class:`ServerOptions` and every fault switch, documented there),
:mod:`tests.realtime_records` (snapshots and waits), :mod:`tests.realtime_http`
(the handshake's HTTP side and the token endpoint:
``POST /v1/realtime/client_secrets`` on its own port, answered with an
``ek_...`` token the websocket handshake then accepts). This module is the
server's I/O: its thread and loop, the connection handler and every send.

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
* The session a client never configures uses ``gpt-4o-mini-transcribe``
  with ``server_vad``; see :mod:`tests.realtime_rules` for how updates apply.
* Energy VAD: see :mod:`tests.realtime_vad` (-35 dBFS at the default threshold).

Run by hand: ``python -m tests.realtime_server --port 8765 --script "hello world" --script send``;
it prints one JSON line (``url``, ``token_url``, ``api_key``) and serves
until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from sttd.protocol import ServerEvents

from .openai_models import server_event_problems
from .realtime_faults import Faults, ServerOptions
from .realtime_http import HttpSide
from .realtime_messages import Messages
from .realtime_records import ConnectionSample, DropMode, Records, SessionInfo, TurnInfo, _ConnInfo, _Session, _Turn
from .realtime_rules import (
    CLOSE_BAD_CREDENTIALS,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_REFUSED,
    DEFAULT_MODEL,
    MAX_DURATION_MESSAGE,
    REALTIME_PATH,
    SESSION_MAX_S,
    TOKEN_PATH,
    RefusalInfo,
    session_object,
)
from .realtime_turns import Turns
from .realtime_vad import DEFAULT_TURN_DETECTION, VAD_WINDOW_MS, rms_threshold, window_rms

try:  # the module also runs as a plain program (the benchmark), where pytest is optional
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

__all__ = [
    "CLOSE_BAD_CREDENTIALS",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_REFUSED",
    "DEFAULT_API_KEY",
    "DEFAULT_MODEL",
    "DEFAULT_TURN_DETECTION",
    "MAX_DURATION_MESSAGE",
    "REALTIME_PATH",
    "SESSION_MAX_S",
    "TOKEN_PATH",
    "VAD_WINDOW_MS",
    "ConnectionSample",
    "DropMode",
    "FakeRealtimeServer",
    "RefusalInfo",
    "ServerOptions",
    "SessionInfo",
    "TurnInfo",
    "main",
    "rms_threshold",
    "running_server",
    "window_rms",
]

logger = logging.getLogger(__name__)

DEFAULT_API_KEY = "sk-test-sttd-fake"


# -------------------------------------------------------------------- server


class FakeRealtimeServer(Messages, Faults, Turns, HttpSide, Records):
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
        self._refusals: list[RefusalInfo] = []
        self._connections: list[ConnectionSample] = []
        self._flood_count = 0
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

    def script(self, texts: Iterable[str]) -> None:
        """Queue transcripts for the next committed turns (a live model's: the next utterances), in order."""
        with self._cond:
            self._script.extend(texts)

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

    # ------------------------------------------------------------ session

    async def _handler(self, ws: ServerConnection) -> None:
        info = self._conn_info.pop(ws, None) or _ConnInfo("api_key", {}, False, None)
        with self._cond:
            s = _Session(len(self._sessions), ws, "sess_" + secrets.token_hex(12), info)
            self._sessions.append(s)
            self._count_connection(+1)
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
                max_s, flood = self._options.session_max_s, self._options.flood_deltas_per_second
            if max_s is not None:
                s.spawn(self._expire(s, max_s))
            if flood and not s.flooding:
                s.flooding = True
                s.spawn(self._flood(s))
            async for raw in ws:
                await self._on_message(s, raw)
                if s.ended:
                    break
        except ConnectionClosed:
            pass
        finally:
            self._abandon_live(s)
            for task in list(s.tasks):
                task.cancel()
            await asyncio.gather(*s.tasks, return_exceptions=True)
            if s.ended and ws.state.name != "CLOSED":
                # The server ended it: finish that close (the task sending it may have been
                # cancelled above before its close frame went out), bounded by close_timeout.
                with contextlib.suppress(Exception):
                    await ws.close(*s.end_close)
            with self._cond:
                s.closed = True
                s.close_code = ws.close_code
                s.close_reason = ws.close_reason
                self._count_connection(-1)
            logger.info("session %d closed (%s %s)", s.index, ws.close_code, ws.close_reason)

    def _session_object(self, s: _Session) -> dict[str, Any]:
        if not s.expires_at:
            max_s = self._options.session_max_s
            s.expires_at = int(time.time() + (max_s if max_s is not None else SESSION_MAX_S))
        return session_object(s.id, s.config, s.expires_at)

    def _count_connection(self, change: int) -> None:
        """Take a :class:`ConnectionSample` (with ``_cond`` held)."""
        now_open = (self._connections[-1].open if self._connections else 0) + change
        self._connections.append(ConnectionSample(time.monotonic(), now_open, len(self._sessions)))
        self._cond.notify_all()

    async def _send(self, s: _Session, event: dict[str, Any]) -> None:
        event = self._echo_key(s, event)
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
    """``python -m tests.realtime_server``: see :mod:`tests.realtime_cli`."""
    from .realtime_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
