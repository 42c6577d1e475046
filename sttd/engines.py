"""Which transcription engine serves a dictation, and keeping the local one running.

``[realtime] engine`` picks OpenAI's service or the offline ``sttd-engine``;
``auto`` takes OpenAI when credentials exist, else the local engine when it
is installed. :class:`LocalEngine` runs that engine as a child process for as
long as it is the chosen one, restarting it with backoff when it dies, and
tells each connection attempt where it listens now: by default a unix socket
in the private ``$XDG_RUNTIME_DIR/sttd/`` (no TCP port at all); with
``[local] listen`` that TCP address, with a bearer key kept in
``$XDG_RUNTIME_DIR/sttd/engine.key`` (0600) for the user's other programs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from typing import TYPE_CHECKING

from . import config
from .credentials import ApiKey, CredentialSource, find_api_key
from .errors import CredentialsError, SessionError
from .sockets import KEY_NAME, SOCKET_NAME, private_runtime_dir

if TYPE_CHECKING:
    # The supervisor is imported where the local engine is chosen or run: a daemon that talks
    # to OpenAI never loads it.
    from .engine.supervisor import EngineEndpoint, EngineProcess

logger = logging.getLogger(__name__)

ENGINE_WAIT_S = 60.0
"""How long Start waits for the local engine to listen (it may be starting or restarting)."""
ENGINE_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Pauses before restarting a local engine that died, by consecutive failures."""
MODEL_WAIT_S = 15.0
"""How long a connection waits for the engine to say whether its model loaded (a missing one fails at once)."""
ENGINE_STABLE_S = 60.0
"""An engine that ran this long before dying starts the backoff afresh."""
NO_ENGINE = (
    "no transcription engine: set OPENAI_API_KEY (or [realtime] api_key_file) to use OpenAI, "
    "or install the offline engine (pip install 'sttd[local]') and set [realtime] engine = \"local\""
)


def choose_engine(cfg: config.Config) -> str:
    """``openai``, ``local`` or ``""`` (neither is usable) for ``[realtime] engine``."""
    wanted = cfg.realtime.engine
    if wanted != "auto":
        return wanted
    try:
        has_credentials = bool(cfg.realtime.token_url) or find_api_key(cfg.realtime.api_key_file) is not None
    except CredentialsError:
        has_credentials = True  # a configured key file that cannot be read: OpenAI's error says why
    if has_credentials:
        return "openai"
    return "local" if engine_available() else ""


def engine_available() -> bool:
    """Whether the offline engine is installed (its supervisor is imported here, not at start-up)."""
    from .engine import supervisor

    return supervisor.engine_available()


class LocalEngine:
    """The offline engine as a supervised child process."""

    def __init__(self, log_level: str) -> None:
        self._log_level = log_level
        self._endpoint: EngineEndpoint | None = None
        self._up = asyncio.Event()
        self._problem = ""
        self._directory = ""
        self._process: EngineProcess | None = None

    async def run(self, settings: config.LocalConfig) -> None:
        """Keep the engine running until cancelled (cancelling stops it): restarted with backoff when it dies."""
        from .engine.supervisor import EngineError

        failures = 0
        while True:
            started = time.monotonic()
            endpoint: EngineEndpoint | None = None
            try:
                process = self._new_process(settings)
                async with process as endpoint:
                    self._endpoint, self._problem, self._process = endpoint, "", process
                    self._up.set()
                    code = await process.wait()
                self._problem = f"the local engine exited with code {code}"
            except EngineError as exc:
                self._problem = str(exc)
            finally:
                if self._endpoint is endpoint:  # a restarted engine may already have replaced it
                    self._endpoint = None
                    self._up.clear()
            logger.error("%s", self._problem)
            failures = 1 if time.monotonic() - started >= ENGINE_STABLE_S else failures + 1
            await asyncio.sleep(ENGINE_BACKOFF_S[min(failures, len(ENGINE_BACKOFF_S)) - 1])

    def _new_process(self, settings: config.LocalConfig) -> EngineProcess:
        """The engine on its private socket, or on ``[local] listen`` with a key the user's programs can read."""
        from .engine.supervisor import EngineError, EngineProcess

        if not self._directory or not os.path.isdir(self._directory):  # a fallback /tmp directory is made once
            try:
                self._directory = private_runtime_dir()
            except OSError as exc:
                raise EngineError(f"cannot make a private directory for the engine's socket: {exc}") from None
        directory = self._directory
        if not settings.listen:
            return EngineProcess(settings, log_level=self._log_level, unix_socket=os.path.join(directory, SOCKET_NAME))
        return EngineProcess(
            settings, log_level=self._log_level, listen=settings.listen, api_key_file=_key_file(directory)
        )

    async def endpoint(self) -> EngineEndpoint:
        """Where the engine listens; waits (bounded) while it starts. Raises :class:`SessionError`."""
        try:
            await asyncio.wait_for(self._up.wait(), ENGINE_WAIT_S)
        except TimeoutError:
            problem = self._problem or "it did not start in time"
            raise SessionError(f"the local engine is not running: {problem}", retryable=False, code="engine") from None
        endpoint, process = self._endpoint, self._process
        assert endpoint is not None and process is not None
        model_problem = await process.model_problem(MODEL_WAIT_S)
        if model_problem is not None:
            # The engine's own sentence (what is missing, the command that fixes it), uncut.
            raise SessionError(model_problem, retryable=False, code="model")
        return endpoint


def _key_file(directory: str) -> str:
    """``engine.key`` in the private directory: kept across engine restarts, made once (0600)."""
    path = os.path.join(directory, KEY_NAME)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write("sk-local-" + secrets.token_urlsafe(24) + "\n")
    return path


async def connection_target(engine: str, local: LocalEngine, cfg: config.Config) -> tuple[str, CredentialSource]:
    """Where the chosen engine listens, and the credentials it takes (asked again on every reconnect)."""
    if engine == "local":
        endpoint = await local.endpoint()
        return endpoint.connect_url, CredentialSource(ApiKey(endpoint.api_key, "the local engine"))
    if not engine:
        raise CredentialsError(NO_ENGINE)
    return cfg.realtime.url, CredentialSource(find_api_key(cfg.realtime.api_key_file), cfg.realtime.token_url)
