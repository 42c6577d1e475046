"""The test Realtime server's answer to each client event: parse, record, check, dispatch.

Every client message is parsed and recorded; its problems against the official ``openai`` models are
violations. An event the service would refuse gets the service's ``error`` (with the client's
``event_id`` echoed); a ``session.update`` is checked for the audio rate, the session type and what its
model takes (:mod:`tests.realtime_rules`) before it applies; audio, commits and clears go to
:mod:`tests.realtime_turns`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from sttd.errors import ProtocolError
from sttd.protocol import SAMPLE_RATE, ServerEvents, parse_client_event

from .openai_models import CLIENT_EVENT_TYPES, Problem, client_event_problems
from .realtime_faults import ServerOptions
from .realtime_records import _Session
from .realtime_rules import SUPPORTED_EVENTS, apply_update, is_live, model_refusals


class Messages:
    """The client-event part of :class:`~tests.realtime_server.FakeRealtimeServer` (see the module docstring)."""

    _cond: threading.Condition
    _options: ServerOptions
    _events: ServerEvents
    _client_log: list[tuple[int, dict[str, Any]]]
    _send: Callable[..., Any]
    _violation: Callable[[str], None]
    _session_object: Callable[[_Session], dict[str, Any]]
    _on_append: Callable[..., Any]
    _on_commit: Callable[..., Any]
    _abandon_live: Callable[[_Session], None]
    _after_first_update: Callable[[_Session], None]
    _record_refusals: Callable[..., None]

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
            self._abandon_live(s)
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
        new_config = apply_update(s.config, session)
        if await self._refuse_for_model(s, new_config, event_id):
            return
        old_td, was_live = s.turn_detection(), is_live(s.config)
        with self._cond:
            s.config = new_config
            self._cond.notify_all()
        if s.turn_detection() != old_td or is_live(new_config) != was_live:
            s.reset_vad()
            self._abandon_live(s)
        await self._send(s, self._events.session_updated(self._session_object(s)))
        if not s.updated:
            s.updated = True
            self._after_first_update(s)

    async def _refuse_for_model(self, s: _Session, config: dict[str, Any], event_id: str | None) -> bool:
        """Refuse, as the service does, an update whose model does not take what it carries."""
        refusals = model_refusals(config)
        if not refusals:
            return False
        self._record_refusals(s.index, event_id, config, refusals, f"session.update (session {s.index})")
        first = refusals[0]
        await self._send(
            s,
            self._events.error(
                first.code, first.message, event_id=event_id, type_="invalid_request_error", param=first.param
            ),
        )
        return True
