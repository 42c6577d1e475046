"""Where the bearer secret for a Realtime connection comes from.

Order of preference for the API key: ``[realtime] api_key_file``, then
``$CREDENTIALS_DIRECTORY/openai-api-key`` (systemd ``LoadCredential=``), then
``OPENAI_API_KEY``. With ``[realtime] token_url`` every connection instead
uses a fresh ephemeral client secret POSTed for at that URL (OpenAI's
``/v1/realtime/client_secrets`` or a broker answering the same shape).

Secrets never enter a log line, an exception message or a D-Bus property:
errors here say *which* source failed, never what it held. Every secret read
is registered with :func:`sttd.redact.register_secret` so that even a third
party library logging a header, or a server echoing the key in an error
message, is redacted wherever it would leave the process.

Key files are read with :func:`sttd.files.read_regular_file`: a FIFO or a
device given as ``api_key_file`` is refused at once, with the key named.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from .errors import CredentialsError, FileError, SessionError
from .files import read_regular_file
from .redact import register_secret

logger = logging.getLogger(__name__)

CREDENTIAL_NAME = "openai-api-key"
KEY_FILE_LIMIT = 4096
"""The largest API key file sttd reads (a key is about 200 bytes)."""
TOKEN_TIMEOUT_S = 10.0
TOKEN_REPLY_LIMIT = 65536
"""The most of a token endpoint's answer read (a real one is under 1 KiB)."""


@dataclass(frozen=True)
class ApiKey:
    """A long-lived API key; sent as is on every connection."""

    value: str
    origin: str
    """Where it came from, for messages: a path or an environment variable name."""


def find_api_key(api_key_file: str) -> ApiKey | None:
    """The configured API key, or None when no source holds one.

    Raises :class:`CredentialsError` when a configured file cannot be read.
    """
    if api_key_file:
        path = Path(os.path.expanduser(api_key_file))
        return ApiKey(_read_key_file(path, "realtime.api_key_file"), str(path))
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        path = Path(directory) / CREDENTIAL_NAME
        value = _read_key_file(path, f"the systemd credential {CREDENTIAL_NAME!r}", optional=True)
        if value is not None:
            return ApiKey(value, str(path))
    value = os.environ.get("OPENAI_API_KEY", "").strip()
    if value:
        register_secret(value)
        return ApiKey(value, "OPENAI_API_KEY")
    return None


@overload
def _read_key_file(path: Path, name: str) -> str: ...
@overload
def _read_key_file(path: Path, name: str, *, optional: bool) -> str | None: ...


def _read_key_file(path: Path, name: str, *, optional: bool = False) -> str | None:
    """The key in ``path``; None when ``optional`` and it does not exist. ``name`` is the key or credential."""
    try:
        read = read_regular_file(path, KEY_FILE_LIMIT, name)
    except FileError as exc:
        if optional and exc.missing:
            return None
        raise CredentialsError(str(exc)) from None
    try:
        value = read.data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CredentialsError(f"{name}: {path} is not UTF-8 text") from None
    if not value:
        raise CredentialsError(f"{name}: {path} is empty")
    register_secret(value)
    if read.mode & (stat.S_IRGRP | stat.S_IROTH):
        logger.warning("the API key file %s is readable by other users; run: chmod 600 %s", path, path)
    return value


class CredentialSource:
    """Hands out the bearer secret for each new connection."""

    def __init__(self, api_key: ApiKey | None, token_url: str = "") -> None:
        if api_key is None and not token_url:
            raise CredentialsError(
                "no OpenAI API key: set OPENAI_API_KEY, [realtime] api_key_file, "
                "or the systemd credential 'openai-api-key'"
            )
        if api_key is not None:
            register_secret(api_key.value)  # also a key handed in by a caller, not found here
        self._api_key = api_key
        self._token_url = token_url

    @property
    def uses_tokens(self) -> bool:
        return bool(self._token_url)

    async def bearer(self) -> str:
        """The secret for one connection: the API key, or a freshly fetched ephemeral token.

        Raises :class:`SessionError` (retryable for 5xx and network trouble,
        fatal when the endpoint refuses). Safe to cancel.
        """
        if not self._token_url:
            assert self._api_key is not None
            return self._api_key.value
        return await asyncio.to_thread(self._fetch_token)

    def _fetch_token(self) -> str:
        body = json.dumps({"session": {"type": "transcription"}}).encode()
        request = urllib.request.Request(self._token_url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        if self._api_key is not None:
            request.add_header("Authorization", f"Bearer {self._api_key.value}")
        try:
            with urllib.request.urlopen(request, timeout=TOKEN_TIMEOUT_S) as response:
                reply = json.loads(response.read(TOKEN_REPLY_LIMIT))
        except urllib.error.HTTPError as exc:
            retryable = exc.code >= 500 or exc.code == 429
            raise SessionError(
                f"the token endpoint refused: HTTP {exc.code}", retryable=retryable, code="token_refused"
            ) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SessionError(f"cannot reach the token endpoint: {reason}", retryable=True, code="token") from None
        except ValueError:
            raise SessionError("the token endpoint answered with invalid JSON", retryable=False, code="token") from None
        return _token_value(reply)


def _token_value(reply: Any) -> str:
    value = reply.get("value") if isinstance(reply, dict) else None
    if not isinstance(value, str) or not value:
        raise SessionError("the token endpoint's answer has no 'value'", retryable=False, code="token")
    register_secret(value)
    expires_at = reply.get("expires_at")
    logger.debug("fetched an ephemeral token (expires_at=%s)", expires_at)
    return value
