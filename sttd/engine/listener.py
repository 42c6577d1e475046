"""The engine's listener: the websocket handshake, who may open a session, and how many.

The handshake is the service's: ``GET /v1/realtime?intent=transcription``
with ``Authorization: Bearer <key>`` (the key the engine made up at start,
so other local users cannot use it). Refused with the service's HTTP
errors and JSON bodies: 404 for another path, 401 for a wrong key, 400 for
a missing or other ``intent``, a ``model`` query parameter (transcription
sessions name their model in ``session.update``) and an ``OpenAI-Beta``
header (the beta shape is gone), so a client bug shows here as it would
against OpenAI.

What a stranger can hold is bounded (:class:`ListenerLimits`):

* every connection has ``handshake_timeout_s`` to complete its handshake
  (websockets' ``open_timeout``); one that sends half a request and waits
  is dropped then, and meanwhile costs a socket and a small task: each
  handshake runs in its own task, so it never delays anyone else's;
* at most ``max_sessions`` sessions at once: one more gets HTTP 503 at once
  (which the daemon's client retries with backoff). Only connections with
  the key count, so a stranger cannot fill the slots.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from .session import Session, SessionContext

logger = logging.getLogger(__name__)

REALTIME_PATH = "/v1/realtime"
MAX_MESSAGE_BYTES = 16 * 2**20
CLOSE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ListenerLimits:
    """What one client, or a stranger, can hold of the engine."""

    handshake_timeout_s: float = 10.0
    """From the TCP connection to the end of the websocket handshake."""
    max_sessions: int = 16
    """Concurrent sessions (connections past the handshake and their admitted handshakes)."""


class Engine:
    """The websocket handler and what every session shares: the model, the VAD model, event ids."""

    def __init__(self, context: SessionContext, *, api_key: str | None, limits: ListenerLimits) -> None:
        self.context = context
        self.api_key = api_key
        self.limits = limits
        self.sessions: set[Session] = set()
        self.model_error: str | None = None
        self._admitted: set[ServerConnection] = set()
        self._watchers: set[asyncio.Task[None]] = set()

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for websockets' ``serve``/``unix_serve``."""
        return {
            "process_request": self.process_request,
            "open_timeout": self.limits.handshake_timeout_s,
            "max_size": MAX_MESSAGE_BYTES,
            "ping_interval": None,
            "close_timeout": CLOSE_TIMEOUT_S,
        }

    def start(self) -> None:
        """Start loading the model; a failure closes every session (call on the event loop)."""
        loop = asyncio.get_running_loop()

        def loaded(future: Any) -> None:
            if not future.cancelled() and future.exception() is not None:
                loop.call_soon_threadsafe(self._model_failed, str(future.exception()))

        self.context.transcriber.start_loading().add_done_callback(loaded)

    def _model_failed(self, message: str) -> None:
        self.model_error = message
        for session in list(self.sessions):
            asyncio.get_running_loop().create_task(session.refuse(message))

    # -- the handshake

    async def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        refused = self._refusal(request)
        if refused is not None:
            status, message, code, param = refused
            return _http_error(conn, status, message, code, param)
        if len(self._admitted) >= self.limits.max_sessions:
            logger.warning("refused a session: already serving %d (the most it takes)", len(self._admitted))
            response = _http_error(
                conn,
                503,
                f"The local engine is serving its maximum of {self.limits.max_sessions} sessions; try again later.",
                "too_many_sessions",
                None,
                kind="server_error",
            )
            response.headers["Retry-After"] = "1"
            return response
        self._admit(conn)
        return None

    def _refusal(self, request: Request) -> tuple[int, str, str | None, str | None] | None:
        """``(status, message, code, param)`` when the handshake is refused, as the service refuses it."""
        url = urlsplit(request.path)
        if url.path != REALTIME_PATH:
            return 404, f"Invalid URL (GET {url.path[:80]})", None, None
        if self.api_key is not None:
            authorization = request.headers.get("Authorization", "")
            given = authorization[len("Bearer ") :] if authorization.startswith("Bearer ") else ""
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return 401, "Incorrect API key for the local engine.", "invalid_api_key", None
        query = parse_qs(url.query, keep_blank_values=True)
        intent = query.get("intent")
        if intent is None:
            return (
                400,
                "Missing required parameter: 'intent' (use ?intent=transcription).",
                "missing_required_parameter",
                "intent",
            )
        if intent != ["transcription"]:
            return (
                400,
                "The local engine serves transcription sessions only: use ?intent=transcription.",
                "invalid_value",
                "intent",
            )
        if "model" in query:
            message = (
                "Unknown parameter: 'model'. A transcription session names its model in session.update "
                "(session.audio.input.transcription.model)."
            )
            return 400, message, "unknown_parameter", "model"
        if "OpenAI-Beta" in request.headers:
            message = "The Realtime API beta has been removed; connect without the 'OpenAI-Beta' header."
            return 400, message, "beta_api_removed", None
        return None

    def _admit(self, conn: ServerConnection) -> None:
        """Count ``conn`` against the cap from now until it closes (a failed handshake included)."""
        self._admitted.add(conn)
        watcher = asyncio.get_running_loop().create_task(conn.wait_closed())
        self._watchers.add(watcher)

        def closed(task: asyncio.Task[None]) -> None:
            self._watchers.discard(task)
            self._admitted.discard(conn)

        watcher.add_done_callback(closed)

    # -- sessions

    async def handler(self, ws: ServerConnection) -> None:
        session = Session(self.context, ws, "sess_" + secrets.token_hex(12))
        if self.model_error is not None:
            await session.refuse(self.model_error)
            return
        self.sessions.add(session)
        logger.info("session %s opened", session.id)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            logger.info("session %s closed (%s)", session.id, ws.close_code)


def _http_error(
    conn: ServerConnection,
    status: int,
    message: str,
    code: str | None,
    param: str | None,
    *,
    kind: str = "invalid_request_error",
) -> Response:
    body = {"error": {"message": message, "type": kind, "code": code, "param": param}}
    response = conn.respond(status, json.dumps(body) + "\n")
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response
