"""The test Realtime server's HTTP side: the websocket handshake and the token endpoint.

The handshake (``GET /v1/realtime?intent=transcription``) takes a bearer API
key or an ephemeral token; refusals are JSON bodies in the service's shape.
The token endpoint, ``POST /v1/realtime/client_secrets``, is a small HTTP
server on its own port (websockets refuses requests with a body); it answers
with an ``ek_...`` token that the handshake then accepts, carrying the
session configuration the request asked for (refused, like a
``session.update``, where its model does not take it).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from .openai_models import client_secret_response_problems, transcription_session_request_problems
from .realtime_faults import ServerOptions
from .realtime_records import _ConnInfo
from .realtime_rules import (
    REALTIME_PATH,
    TOKEN_PATH,
    RefusalInfo,
    apply_update,
    default_config,
    json_error,
    model_refusals,
    session_object,
)

logger = logging.getLogger(__name__)


class HttpSide:
    """The handshake and token endpoint of :class:`~tests.realtime_server.FakeRealtimeServer`."""

    _cond: threading.Condition
    _options: ServerOptions
    _api_keys: set[str]
    _tokens: dict[str, tuple[int, dict[str, Any] | None]]
    _token_requests: list[dict[str, Any]]
    _token_writers: set[asyncio.StreamWriter]
    _refusals: list[RefusalInfo]
    _take: Callable[[str, str], Any]
    _violation: Callable[[str], None]
    _record_refusals: Callable[..., None]
    _handshakes: list[dict[str, Any]]
    _conn_info: dict[ServerConnection, _ConnInfo]

    def _http_error(self, conn: ServerConnection, status: int, body: dict[str, Any]) -> Response:
        response = conn.respond(status, json.dumps(body) + "\n")
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

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
            return answer(404, json_error(f"Invalid URL (GET {url.path})", "invalid_request_error", None))
        refused = self._take("refuse_handshake_status", "refuse_handshake_times")
        if refused is not None:
            return answer(
                refused,
                json_error(f"Refused by the fake server (HTTP {refused})", "server_error", f"http_{refused}"),
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
                return answer(401, json_error(message, "invalid_request_error", "invalid_api_key"))
            auth = "token"
        if query.get("intent") != ["transcription"]:
            return answer(
                400,
                json_error(
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
            credential=key,
        )
        return None

    # ------------------------------------------------------------ token endpoint

    def _token_valid(self, value: str) -> tuple[bool, dict[str, Any] | None]:
        with self._cond:
            entry = self._tokens.get(value)
        if entry is None or entry[0] <= time.time():
            return False, None
        return True, entry[1]

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
            return answer(404, json_error(f"Invalid URL ({method} {target})", "invalid_request_error", None))
        if method != "POST":
            return answer(405, json_error(f"Method {method} not allowed", "invalid_request_error", None))
        refused = self._take("refuse_token_status", "refuse_token_times")
        if refused is not None:
            return answer(refused, json_error(f"Refused by the fake server (HTTP {refused})", "server_error", None))
        authorization = headers.get("authorization", "")
        key = authorization[len("Bearer ") :] if authorization.startswith("Bearer ") else ""
        if key not in self._api_keys:
            return answer(401, json_error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"))
        try:
            request = json.loads(body) if body.strip() else {}
        except ValueError:
            return answer(400, json_error("The body is not valid JSON.", "invalid_request_error", "invalid_json"))
        if not isinstance(request, dict):
            return answer(400, json_error("The body must be a JSON object.", "invalid_request_error", None))
        record["body"] = request
        config_or_error = self._token_config(request)
        if isinstance(config_or_error, tuple):
            return answer(*config_or_error)
        config = config_or_error
        expires_after = request.get("expires_after")
        if isinstance(expires_after, dict) and isinstance(expires_after.get("seconds"), int):
            ttl = expires_after["seconds"]
        value = "ek_" + secrets.token_hex(16)
        expires_at = int(time.time()) + ttl
        payload = {
            "value": value,
            "expires_at": expires_at,
            "session": session_object("sess_" + secrets.token_hex(12), config, expires_at),
        }
        problems = client_secret_response_problems(payload)
        if problems:
            self._violation("token response: " + "; ".join(map(str, problems)))
        with self._cond:
            self._tokens[value] = (expires_at, config)
            record["value"] = value
        return answer(200, payload)

    def _token_config(self, request: dict[str, Any]) -> dict[str, Any] | tuple[int, dict[str, Any]]:
        """The session a token request configures, or the (status, body) refusing it."""
        unknown = set(request) - {"session", "expires_after"}
        if unknown:
            self._violation(f"token request: unknown parameters {sorted(unknown)}")
            param = sorted(unknown)[0]
            return 400, json_error(
                f"Unknown parameter: '{param}'.", "invalid_request_error", "unknown_parameter", param
            )
        config = default_config()
        session = request.get("session")
        if session is None:
            return config
        problems = transcription_session_request_problems(session)
        if problems:
            self._violation("token request: " + "; ".join(map(str, problems)))
            first = problems[0]
            return 400, json_error(first.message, "invalid_request_error", first.code, first.param)
        config = apply_update(config, session)
        refusals = model_refusals(config)
        if refusals:
            self._record_refusals(None, None, config, refusals, "token request")
            refusal = refusals[0]
            return 400, json_error(refusal.message, "invalid_request_error", refusal.code, refusal.param)
        return config
