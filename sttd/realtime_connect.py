"""Opening one websocket to the Realtime service, and what a failed handshake means.

:func:`open_connection` connects (a ``ws+unix://`` URL of the local engine
included) with the bearer in the ``Authorization`` header and sorts every
failure into :class:`~sttd.reconnect.Retry` (a lost network, a timeout, HTTP
5xx and 429) or a :class:`~sttd.errors.SessionError` that retrying will not
fix (HTTP 401/403: the credentials; any other refusal). What the server
said reaches the error only as a short, redacted excerpt.
"""

from __future__ import annotations

import logging
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from .credentials import CredentialSource
from .errors import SessionError
from .reconnect import EXCERPT_CHARS, Retry
from .redact import excerpt
from .sockets import split_unix_url

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 2**24


async def bearer_of(credentials: CredentialSource) -> str:
    """The bearer to send; a failure worth retrying (a token endpoint down) raises Retry. Safe to cancel."""
    try:
        return await credentials.bearer()
    except SessionError as exc:
        if exc.retryable:
            raise Retry(str(exc)) from None
        raise


async def open_connection(
    url: str, bearer: str, *, open_timeout: float, ping_interval: float, ping_timeout: float
) -> ClientConnection:
    """The open websocket; raises Retry or a non-retryable SessionError. Safe to cancel."""
    logger.info("connecting to %s", url.split("?")[0])
    # The local engine's private unix socket comes as a ws+unix:// URL (sttd.sockets).
    unix_path, url = split_unix_url(url)
    unix: dict[str, Any] = {} if unix_path is None else {"unix": True, "path": unix_path}
    try:
        return await connect(
            url,
            **unix,
            additional_headers={"Authorization": f"Bearer {bearer}"},
            open_timeout=open_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=2,
            max_size=MAX_MESSAGE_BYTES,
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
            raise Retry(f"handshake failed with HTTP {status}") from None
        raise SessionError(
            f"the service refused the connection (HTTP {status})", retryable=False, code="refused"
        ) from None
    except TimeoutError:
        raise Retry("handshake timed out") from None
    except (OSError, InvalidHandshake) as exc:
        raise Retry(f"cannot connect: {exc.__class__.__name__}: {excerpt(str(exc), EXCERPT_CHARS)}") from None
