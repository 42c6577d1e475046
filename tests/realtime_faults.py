"""The test Realtime server's switches and faults: :class:`ServerOptions` and the methods that arm them.

Every fault is a :class:`ServerOptions` field (set it at construction, or at
any time with ``server.configure(...)``) and most have a method that arms
it; all are thread-safe. ``*_times`` fields count how many more times a
fault fires (``None``: every time while armed); at 0 it disarms itself.

Handshake and token endpoint
    :meth:`~Faults.refuse_handshakes` (HTTP status), ``handshake_delay_s``,
    :meth:`~Faults.refuse_tokens`, :meth:`~Faults.expire_tokens`, ``token_delay_s``.
Connections
    :meth:`~Faults.close_on_connect` (error + close before ``session.created``);
    :meth:`~Faults.close_after_update` (close every session ``delay_s`` after its
    first ``session.updated``: 1001 with :data:`MAX_DURATION_MESSAGE` at 0 s plays a
    broken proxy's instant "maximum duration", 1011 after 1 s a server that
    accepts and then drops); :meth:`~Faults.close_sessions`, :meth:`~Faults.drop`
    (TCP abort or 1011 now), :meth:`~Faults.drop_mid_utterance`, :meth:`~Faults.freeze`
    (stop reading: no events, no pong), ``session_max_s`` (``error`` then 1001).
    ``max_concurrent_connections`` and ``connection_timeline()`` (on the server)
    tell how many websockets were open at once.
Events
    :meth:`~Faults.send_raw`, :meth:`~Faults.send_error`;
    :meth:`~Faults.flood_deltas` (``per_second`` transcript deltas, each for a new
    unknown ``item_id`` ``{item_prefix}_{n}``, to every open session and every
    session opened while it runs, until :meth:`~Faults.stop_flood`; counted in
    ``flood_count``, not kept in ``server_events()``; a client that stops
    reading holds its flood back, as a socket would); :meth:`~Faults.echo_key_in_errors` (every ``error``
    event's message ends with the bearer the client authenticated with, and
    the next ``commit_errors`` client commits are each answered by such an error,
    then committed as usual).
Turns
    ``fail_turns``, ``out_of_order_turns``, ``turn_delays``, ``completion_delay_s``;
    :meth:`~Faults.never_commit` (audio is accepted and recorded, no speech is
    detected, client commits are ignored without an answer: no turn ever completes;
    the server keeps no input buffer meanwhile, only the session's record of its audio).
Models
    ``strict_models`` (default on): every per-model refusal of a ``session.update``
    is also a violation that fails the test at teardown; a test that provokes
    refusals on purpose turns it off and reads ``server.refusals()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed

from sttd.protocol import ServerEvents

from .openai_models import server_event_problems
from .realtime_records import DropMode, _Session
from .realtime_rules import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, MAX_DURATION_MESSAGE

logger = logging.getLogger(__name__)

DELTA = "conversation.item.input_audio_transcription.delta"
FLOOD_TICK_S = 0.01


@dataclass
class ServerOptions:
    """Behaviour and fault switches; change them at any time with :meth:`FakeRealtimeServer.configure`."""

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
    live_word_ms: int = 250
    """Live models: one word of the scripted text as a delta per this much speech heard."""
    # models
    strict_models: bool = True
    """Record every per-model refusal of a ``session.update`` as a violation too (fails the test)."""
    # turn detection
    energy_vad: bool = True
    """False: never detect speech by energy; turns only by client commit or :meth:`~FakeRealtimeServer.force_turn`."""
    vad_rms_threshold: float | None = None
    """Override the RMS threshold (full scale 1.0) mapped from ``turn_detection.threshold``."""
    refuse_semantic_vad: bool = False
    """Answer ``semantic_vad`` in ``session.update`` with an ``invalid_value`` error."""
    never_commit: bool = False
    """Accept audio but never detect speech and ignore client commits (no answer): no turn completes."""
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
    close_after_update: int | None = None
    """Close each session with this code ``close_after_update_delay_s`` after its first ``session.updated``."""
    close_after_update_reason: str = ""
    close_after_update_delay_s: float = 0.0
    close_after_update_times: int | None = None
    # event faults
    flood_deltas_per_second: float | None = None
    """Send this many deltas per second for unknown item ids to every open session."""
    flood_item_prefix: str = "ghost"
    echo_key_in_errors: bool = False
    """Every ``error`` event's message ends with the bearer the client authenticated with."""
    echo_key_commit_errors: int | None = 0
    """While echoing: how many more client commits are answered by an extra ``error`` (None: all)."""
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


class Faults:
    """The fault-arming part of :class:`~tests.realtime_server.FakeRealtimeServer` (see the module docstring)."""

    _cond: threading.Condition
    _options: ServerOptions
    _events: ServerEvents
    _tokens: dict[str, tuple[int, dict[str, Any] | None]]
    _flood_count: int
    _call: Callable[..., Any]
    _send: Callable[..., Any]
    _open_sessions: Callable[[], list[_Session]]
    _target: Callable[[int | None], _Session]
    _violation: Callable[[str], None]

    # ------------------------------------------------------------ switches

    def configure(self, **options: Any) -> None:
        """Change :class:`ServerOptions` fields (fault switches included) at once."""
        names = {f.name for f in dataclasses.fields(ServerOptions)}
        unknown = set(options) - names
        if unknown:
            raise TypeError(f"unknown server options: {sorted(unknown)}")
        with self._cond:
            self._options = dataclasses.replace(self._options, **options)
            flooding = self._options.flood_deltas_per_second
        if flooding and "flood_deltas_per_second" in options:
            self._start_floods()

    @property
    def options(self) -> ServerOptions:
        with self._cond:
            return copy.deepcopy(self._options)

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

    def refuse_handshakes(self, status: int, times: int | None = None) -> None:
        """Answer the next ``times`` handshakes (None: all, until :meth:`accept_handshakes`) with HTTP ``status``."""
        self.configure(refuse_handshake_status=status, refuse_handshake_times=times)

    def accept_handshakes(self) -> None:
        self.configure(refuse_handshake_status=None, refuse_handshake_times=None)

    def close_on_connect(self, code: int, reason: str = "", times: int | None = 1) -> None:
        """Accept the next connection(s), send an ``error`` and close with ``code`` (before ``session.created``)."""
        self.configure(close_on_connect=code, close_on_connect_reason=reason, close_on_connect_times=times)

    def close_after_update(
        self,
        code: int | None = CLOSE_GOING_AWAY,
        reason: str = MAX_DURATION_MESSAGE,
        delay_s: float = 0.0,
        times: int | None = None,
    ) -> None:
        """Close the next ``times`` sessions (None: every one) with ``code``/``reason``,
        ``delay_s`` after each one's first ``session.updated``. ``code=None`` disarms."""
        self.configure(
            close_after_update=code,
            close_after_update_reason=reason,
            close_after_update_delay_s=delay_s,
            close_after_update_times=times,
        )

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

    def echo_key_in_errors(self, on: bool = True, *, commit_errors: int | None = 1) -> None:
        """Put the client's bearer in every ``error`` message; answer the next ``commit_errors``
        client commits (None: all) with such an error before committing them."""
        self.configure(echo_key_in_errors=on, echo_key_commit_errors=commit_errors if on else 0)

    def never_commit(self, on: bool = True) -> None:
        """Accept audio but never make a turn of it (no VAD events, client commits unanswered)."""
        self.configure(never_commit=on)

    def flood_deltas(self, per_second: float, item_prefix: str = "ghost") -> None:
        """Send ``per_second`` deltas for unknown item ids to every open session (and new ones),
        until :meth:`stop_flood`."""
        self.configure(flood_deltas_per_second=per_second, flood_item_prefix=item_prefix)

    def stop_flood(self) -> None:
        self.configure(flood_deltas_per_second=None)

    @property
    def flood_count(self) -> int:
        """Flooded deltas sent so far."""
        with self._cond:
            return self._flood_count

    # ------------------------------------------------------------ on demand

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
                s.ended, s.end_close = True, (code, reason)
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

    # ------------------------------------------------------------ on the server's loop

    async def _drop(self, s: _Session, mode: DropMode) -> None:
        s.ended = True
        logger.info("dropping session %d (%s)", s.index, mode)
        if mode == "abort":
            s.ws.transport.abort()
        else:
            await s.ws.close(CLOSE_INTERNAL_ERROR, "Internal server error")

    async def _expire(self, s: _Session, after_s: float) -> None:
        await asyncio.sleep(after_s)
        await self._send(s, self._events.error("session_expired", MAX_DURATION_MESSAGE))
        s.ended, s.end_close = True, (CLOSE_GOING_AWAY, MAX_DURATION_MESSAGE)
        await s.ws.close(CLOSE_GOING_AWAY, MAX_DURATION_MESSAGE)

    def _after_first_update(self, s: _Session) -> None:
        """Arm the faults that start once a session is configured."""
        code = self._take("close_after_update", "close_after_update_times")
        if code is not None:
            with self._cond:
                reason, delay = self._options.close_after_update_reason, self._options.close_after_update_delay_s
            s.spawn(self._close_later(s, code, reason, delay))

    async def _close_later(self, s: _Session, code: int, reason: str, delay_s: float) -> None:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        logger.info("closing session %d with %d after session.updated", s.index, code)
        s.ended, s.end_close = True, (code, reason)
        await s.ws.close(code, reason)

    def _echo_key(self, s: _Session, event: dict[str, Any]) -> dict[str, Any]:
        """The ``error`` event with the client's bearer in its message, while that fault is on."""
        with self._cond:
            echo = self._options.echo_key_in_errors
        if not echo or event.get("type") != "error" or not s.credential:
            return event
        event = copy.deepcopy(event)
        event["error"]["message"] = f"{event['error']['message']} (request authorized with {s.credential})"
        return event

    async def _commit_echo(self, s: _Session, event_id: str | None) -> None:
        """While echoing the key: answer this commit with an ``error`` first, if any are left to answer."""
        with self._cond:
            opts = self._options
            if not opts.echo_key_in_errors or opts.echo_key_commit_errors == 0:
                return
            if opts.echo_key_commit_errors is not None:
                opts.echo_key_commit_errors -= 1
        error = self._events.error(
            "server_error", "The server had an error processing this commit.", event_id=event_id, type_="server_error"
        )
        await self._send(s, error)

    def _start_floods(self) -> None:
        with contextlib.suppress(RuntimeError):  # not running yet: sessions start their own flood
            self._call(self._start_floods_async)

    async def _start_floods_async(self) -> None:
        for s in self._open_sessions():
            if s.created and not s.flooding:
                s.flooding = True
                s.spawn(self._flood(s))

    async def _flood(self, s: _Session) -> None:
        """Deltas for unknown items at the configured rate, until the flood stops or the session ends."""
        began, sent, checked = time.monotonic(), 0, False
        try:
            while not s.ended:
                with self._cond:
                    rate, prefix = self._options.flood_deltas_per_second, self._options.flood_item_prefix
                if not rate:
                    return
                due = int(rate * (time.monotonic() - began)) - sent
                for _ in range(max(0, due)):
                    event = self._events.delta(f"{prefix}_{sent + 1:06d}", " ghost")
                    if not checked:  # one is enough: they differ only in ids
                        checked = True
                        problems = server_event_problems(event)
                        if problems:
                            self._violation(f"flooded delta: {problems}")
                    await s.ws.send(json.dumps(event))
                    sent += 1
                    with self._cond:
                        self._flood_count += 1
                await asyncio.sleep(FLOOD_TICK_S)
        except ConnectionClosed:
            return
        finally:
            s.flooding = False
