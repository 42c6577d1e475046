"""Running ``sttd-engine`` for the daemon: start it, read its URL, log its stderr, stop it.

::

    async with EngineProcess(config.local, log_level="INFO") as engine:
        session = RealtimeSession(SessionOptions(url=engine.url, ...),
                                  CredentialSource(ApiKey(engine.api_key, "local engine")), ...)
        ...
        await engine.wait()   # returns the exit code if the engine dies

The engine runs as ``python -m sttd.engine`` with the daemon's own
interpreter (the ``sttd-engine`` console script, without depending on PATH
or on the script being installed in the same environment). It gets its own
session and process group, so a terminal's Ctrl-C reaches the daemon only,
and stopping it kills everything it started. Its stdin is a pipe the
supervisor holds: if the daemon dies without cleaning up, the engine sees
end of file and exits (``--exit-with-stdin``). Its stderr is read line by
line and logged under ``sttd.engine`` at the level the engine gave the line.
Restarting a dead engine is the caller's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from types import TracebackType

from ..config import LocalConfig
from ..errors import SttdError
from ..hooks import PRIVATE_ENV
from ..redact import register_secret
from ..sockets import parse_listen, unix_url

logger = logging.getLogger("sttd.engine")

STARTUP_TIMEOUT_S = 60.0
"""Until the engine prints its URL (it imports faster-whisper first, not the model)."""
STOP_TIMEOUT_S = 5.0
"""After SIGTERM, before SIGKILL."""
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}
_LEVELS["CRITICAL"] = logging.CRITICAL


class EngineError(SttdError):
    """The local engine could not be started."""

    dbus_name = "Engine"


def engine_available() -> bool:
    """True when the local engine can run: faster-whisper is installed (``pip install 'sttd[local]'``)."""
    try:
        return importlib.util.find_spec("faster_whisper") is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class EngineEndpoint:
    """Where a running engine listens and the bearer key it wants."""

    url: str
    api_key: str
    pid: int
    model: str
    unix_socket: str | None = None
    """The unix socket it listens on, if any (then the daemon connects there)."""

    @property
    def connect_url(self) -> str:
        """The URL the daemon's client connects to: ``ws+unix://`` for a unix socket (see :mod:`sttd.sockets`)."""
        return unix_url(self.unix_socket) if self.unix_socket else self.url


def engine_command(
    local: LocalConfig,
    *,
    log_level: str = "INFO",
    unix_socket: str | None = None,
    listen: str = "",
    api_key_file: str | None = None,
) -> list[str]:
    """The engine's argv for a ``[local]`` config.

    ``unix_socket`` alone: only that socket, no TCP port. ``listen``
    (``HOST:PORT``): that TCP address too. Neither: a free TCP port on 127.0.0.1.
    """
    argv = [
        sys.executable,
        "-m",
        "sttd.engine",
        "--model",
        local.model,
        "--device",
        local.device,
        "--compute-type",
        local.compute_type,
        "--threads",
        str(local.threads),
        "--log-level",
        log_level.upper(),
        "--exit-with-stdin",
    ]
    if unix_socket is not None:
        argv += ["--unix", unix_socket]
    if listen:
        host, port = parse_listen(listen)
        argv += ["--host", host, "--port", str(port)]
    elif unix_socket is None:
        argv += ["--port", "0"]
    if api_key_file is not None:
        argv += ["--api-key-file", api_key_file]
    return argv


class EngineProcess:
    """An async context manager owning one engine process; ``async with`` yields its :class:`EngineEndpoint`."""

    def __init__(
        self,
        local: LocalConfig,
        *,
        log_level: str = "INFO",
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
        unix_socket: str | None = None,
        listen: str = "",
        api_key_file: str | None = None,
    ) -> None:
        self._argv = engine_command(
            local, log_level=log_level, unix_socket=unix_socket, listen=listen, api_key_file=api_key_file
        )
        self._startup_timeout_s = startup_timeout_s
        self._process: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._last_lines: list[str] = []
        self.endpoint: EngineEndpoint | None = None
        self.model_error: str | None = None
        """Why the engine could not load its model (its own sentence), once it has said so."""
        self._model_settled = asyncio.Event()
        self._stdout_task: asyncio.Task[None] | None = None

    @property
    def returncode(self) -> int | None:
        """None while the engine runs."""
        return None if self._process is None else self._process.returncode

    async def __aenter__(self) -> EngineEndpoint:
        return await self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> EngineEndpoint:
        """Start the engine and wait for its URL. Raises :class:`EngineError` if it does not come up."""
        if self._process is not None:
            raise RuntimeError("EngineProcess already started")
        logger.info("starting the local engine (model %s)", self._argv[self._argv.index("--model") + 1])
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                limit=2**20,
                # The engine needs neither the API key nor systemd's sockets.
                env={key: value for key, value in os.environ.items() if key not in PRIVATE_ENV},
            )
        except OSError as exc:
            raise EngineError(f"cannot start the local engine: {exc}") from None
        self._stderr_task = asyncio.get_running_loop().create_task(self._relay_stderr(), name="engine-stderr")
        try:
            self.endpoint = await self._read_endpoint()
        except BaseException:
            await self.stop()
            raise
        logger.info("local engine %d listening on %s", self.endpoint.pid, self.endpoint.url)
        self._stdout_task = asyncio.get_running_loop().create_task(self._read_status(), name="engine-stdout")
        return self.endpoint

    async def _read_status(self) -> None:
        """The engine's later stdout lines: whether its model loaded."""
        assert self._process is not None and self._process.stdout is not None
        try:
            while line := await self._process.stdout.readline():
                with contextlib.suppress(ValueError, AttributeError):
                    data = json.loads(line)
                    if "model_error" in data:
                        self.model_error = str(data["model_error"])
                        self._model_settled.set()
                    elif data.get("model") == "loaded":
                        self._model_settled.set()
        except ValueError:  # a line longer than the stream's limit: not the engine's status
            pass
        finally:
            self._model_settled.set()  # the engine is gone: nothing more will come

    async def model_problem(self, wait_s: float) -> str | None:
        """The engine's reason it cannot transcribe, waiting up to ``wait_s`` for the model to settle.

        None when the model loaded or is still loading (a first download may take minutes).
        Cancelling is safe.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._model_settled.wait(), wait_s)
        return self.model_error

    async def _read_endpoint(self) -> EngineEndpoint:
        process = self._process
        assert process is not None and process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), self._startup_timeout_s)
        except TimeoutError:
            raise EngineError(f"the local engine did not start within {self._startup_timeout_s:.0f} s") from None
        if not line:
            code = await process.wait()
            if self._stderr_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self._stderr_task), 2)
            detail = self._last_lines[-1] if self._last_lines else "no message"
            raise EngineError(f"the local engine exited with code {code} before it was ready: {detail}")
        try:
            data = json.loads(line)
            api_key = data["api_key"] or ""
            unix_socket = data.get("unix_socket")
            endpoint = EngineEndpoint(
                str(data["url"]),
                str(api_key),
                int(data["pid"]),
                str(data["model"]),
                str(unix_socket) if unix_socket else None,
            )
        except (ValueError, KeyError, TypeError):
            raise EngineError("the local engine printed something other than its address") from None
        register_secret(endpoint.api_key)
        return endpoint

    async def _relay_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        stream = self._process.stderr
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the stream's limit: skip it
                continue
            if not raw:
                return
            text = raw.decode(errors="replace").rstrip()
            if not text:
                continue
            word, _, rest = text.partition(" ")
            level = _LEVELS.get(word)
            if level is None:  # not one of the engine's log lines: a traceback, a library's warning
                level, rest = logging.WARNING, text
            self._last_lines = [*self._last_lines[-4:], rest]
            logger.log(level, "%s", rest)

    async def wait(self) -> int:
        """Wait for the engine to exit; its exit code."""
        if self._process is None:
            raise RuntimeError("EngineProcess not started")
        return await self._process.wait()

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to the engine's process group, SIGKILL after ``timeout``; idempotent."""
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                logger.warning("the local engine did not stop within %.0f s; killing it", timeout)
                self._signal(signal.SIGKILL)
                await process.wait()
        if process.stdin is not None:
            process.stdin.close()
        for task in (self._stderr_task, self._stdout_task):
            if task is not None:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(task, 2)
        logger.info("local engine stopped (exit code %s)", process.returncode)

    def _signal(self, sig: signal.Signals) -> None:
        assert self._process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, sig)
