"""Hook commands (``[hooks]``) and built-in text outputs (``[output]``), run in the order their events happened.

The daemon :meth:`~HookRunner.submit`\\ s one event per final utterance
(``transcript``, with the text that joined the pending text), per send and
per purge. One worker task, :meth:`~HookRunner.run`, takes them from a
bounded queue one at a time and, for each, first does what ``[output] mode``
asks (type, copy, print; see :mod:`sttd.output`) and then runs the hook
configured for the event. So the typed text of an utterance always lands
before the Return of the send that follows it, and a hook never sees events
out of order.

Every command, hook or output tool, runs without a shell: ``argv`` is passed
as is, the text arrives on standard input (an in-memory file holding exactly
the text, no newline added) and never on the command line, and the
environment gains ``STTD_EVENT``, ``STTD_LANGUAGE`` and ``STTD_ITEM_ID``.
Each runs in a session of its own; at ``[hooks] timeout_s`` the whole process
group is killed. A failure is logged with the exit status and reported to
``on_error`` (the daemon turns it into the D-Bus ``Error`` signal) but never
stops dictation. What a command prints is captured (the first few KiB) and
logged at DEBUG only, since hooks may echo the transcript, which is never
logged above DEBUG; the output of the built-in tools (xdotool, wl-copy, ...)
is quoted in their failure messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .config import HooksConfig, OutputConfig
from .errors import OutputError
from .output import KEYMAP_RELEASE_S, TextOutput

logger = logging.getLogger(__name__)

Event = Literal["transcript", "send", "purge"]
ErrorCallback = Callable[[str, str], None]
"""``on_error(code, message)``: ``code`` is ``hook`` (a hook command failed) or ``output`` (a built-in output)."""

QUEUE_SIZE = 256
"""Events waiting for the worker; more are dropped (and logged) rather than blocking the daemon."""
CAPTURE_BYTES = 4096
"""How much of a command's output is kept for the log."""
OUTPUT_GRACE_S = 0.1
"""After a command exits, how long to wait for the rest of its output (a background child may hold the pipe)."""
PRIVATE_ENV = frozenset(
    {
        "OPENAI_API_KEY",
        "CREDENTIALS_DIRECTORY",
        "NOTIFY_SOCKET",
        "WATCHDOG_PID",
        "WATCHDOG_USEC",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
    }
)
"""The daemon's secrets and its systemd channels: not passed on to hooks and tools."""


@dataclass(frozen=True)
class _Job:
    event: Event
    text: str
    language: str
    item_id: str


class HookRunner:
    """Runs ``[hooks]`` commands and the ``[output]`` mode for dictation events, one after another."""

    def __init__(self, hooks: HooksConfig, output: OutputConfig, *, on_error: ErrorCallback | None = None) -> None:
        self._hooks = hooks
        self._output = TextOutput(output.mode)
        self._on_error = on_error
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(QUEUE_SIZE)
        self._retired: list[TextOutput] = []
        """Outputs replaced by a reload that still have temporary changes to undo."""
        self._problems: dict[str, str] = {}
        """The last failure reported per source (``output``, ``send hook``, ...); not repeated until it works."""
        self._env: Mapping[str, str] = {}
        """The ``STTD_*`` variables of the event being handled."""
        self._log_output()

    # -- the daemon's side

    def submit(self, event: Event, text: str, *, language: str, item_id: str = "") -> None:
        """Queue an event; never blocks. When the queue is full the event is dropped and logged."""
        if not self._wanted(event):
            return
        try:
            self._queue.put_nowait(_Job(event, text, language, item_id))
        except asyncio.QueueFull:
            logger.warning(
                "hooks: %d events are already waiting (a hook or output is too slow); dropped a %s event",
                self._queue.qsize(),
                event,
            )

    def reconfigure(self, hooks: HooksConfig, output: OutputConfig) -> None:
        """Take a new configuration (SIGHUP); it applies from the next event the worker takes."""
        self._hooks = hooks
        self._problems.clear()
        if output.mode != self._output.mode:
            if self._output.needs_idle:
                self._retired.append(self._output)
            self._output = TextOutput(output.mode)
            self._log_output()

    async def run(self) -> None:
        """The worker: handles queued events until cancelled. Cancelling kills a running command's process group."""
        try:
            while True:
                job = await self._next_job()
                try:
                    await self._handle(job)
                except Exception:
                    logger.exception("hooks: unexpected failure while handling a %s event", job.event)
                finally:
                    self._queue.task_done()
        finally:
            if self._needs_idle():
                # Stopping: undo temporary keymap changes, briefly.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._idle(), 2)

    async def _next_job(self) -> _Job:
        """The next event; while waiting, once typing has been idle long enough, undo its temporary changes."""
        while self._needs_idle():
            try:
                return await asyncio.wait_for(self._queue.get(), KEYMAP_RELEASE_S)
            except TimeoutError:
                try:
                    await self._idle()
                except Exception:
                    logger.exception("output: unexpected failure while tidying up")
        return await self._queue.get()

    def _needs_idle(self) -> bool:
        return self._output.needs_idle or bool(self._retired)

    async def _idle(self) -> None:
        retired, self._retired = self._retired, []
        for output in [*retired, self._output]:
            await output.idle(self._output_command)

    async def join(self) -> None:
        """Wait until every event submitted so far has been handled (bound it with a timeout)."""
        await self._queue.join()

    @property
    def waiting(self) -> int:
        """Events submitted and not yet taken by the worker."""
        return self._queue.qsize()

    # -- the worker's side

    def _wanted(self, event: Event) -> bool:
        return self._output.mode != "none" or bool(getattr(self._hooks, event))

    def _log_output(self) -> None:
        if self._output.mode == "none":
            return
        try:
            logger.info("output: %s", self._output.describe())
        except OutputError as exc:
            logger.warning("%s", exc)

    async def _handle(self, job: _Job) -> None:
        env = {"STTD_EVENT": job.event, "STTD_LANGUAGE": job.language, "STTD_ITEM_ID": job.item_id}
        logger.debug("hooks: %s event %r (item %s)", job.event, job.text, job.item_id or "-")
        self._env = env
        try:
            if await self._output.deliver(job.event, job.text, self._output_command):
                self._problems.pop("output", None)
        except OutputError as exc:
            self._failed("output", "output", str(exc))
        argv = getattr(self._hooks, job.event)
        if argv:
            await self._command(f"{job.event} hook", "hook", argv, job.text, env)

    async def _output_command(
        self, argv: Sequence[str], stdin: str = "", *, env: Mapping[str, str] | None = None, timeout_s: float = 0
    ) -> str | None:
        """The :class:`~sttd.output.Runner` the built-in outputs run their tools with."""
        result = await self._command(
            f"output {self._output.mode}", "output", argv, stdin, {**self._env, **(env or {})}, timeout_s
        )
        return result.output if result.status == 0 else None

    def _failed(self, source: str, code: str, message: str) -> None:
        """Log and report a failure; the same failure of ``source`` again is not reported again until it works.

        A hook failure is an incident: each one is logged. An output failure is
        a state (a tool missing, no display): it is logged once.
        """
        again = self._problems.get(source) == message
        self._problems[source] = message
        logger.log(logging.DEBUG if again and code == "output" else logging.WARNING, "%s", message)
        if not again and self._on_error is not None:
            self._on_error(code, message)

    async def _command(
        self, what: str, code: str, argv: Sequence[str], text: str, env: Mapping[str, str], timeout_s: float = 0
    ) -> CommandResult:
        """Run one command to completion or its timeout, reporting a failure."""
        timeout = max(self._hooks.timeout_s, timeout_s)
        program = argv[0]
        inherited = {key: value for key, value in os.environ.items() if key not in PRIVATE_ENV}
        result = await run_command(argv, text, {**inherited, **env}, timeout)
        if result.output:
            logger.debug("%s %s printed: %r", what, program, result.output)
        if result.error is not None:
            message = f"{what}: cannot run {program}: {result.error}"
        elif result.timed_out:
            message = f"{what}: {program} did not finish within {timeout:g} s; killed its process group"
        elif result.status != 0:
            message = f"{what}: {program} {describe_status(result.status)}"
            if code == "output" and result.output.strip():
                # The built-in tools do not echo the text; their complaint is what the user needs.
                message += f": {result.output.strip()[-300:]}"
        else:
            logger.debug("%s: %s exited with status 0", what, program)
            if code == "hook":
                self._problems.pop(what, None)
            return result
        self._failed("output" if code == "output" else what, code, message)
        return result


# ------------------------------------------------------------ running one command


@dataclass(frozen=True)
class CommandResult:
    status: int | None
    """The exit status (negative: killed by that signal); None when it could not start."""
    output: str
    """The start of what it printed (stdout and stderr together)."""
    timed_out: bool = False
    error: str | None = None
    """Why it could not start."""


def describe_status(status: int | None) -> str:
    if status is None:
        return "did not run"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"exited with status {status}"


async def run_command(argv: Sequence[str], text: str, env: Mapping[str, str], timeout: float) -> CommandResult:
    """Run ``argv`` without a shell, ``text`` on stdin, in a new session; kill its process group at ``timeout``.

    Cancelling the caller kills the process group too, and waits for the
    command to be reaped before the cancellation goes on.
    """
    stdin = _memory_file(text)
    try:
        read_end, write_end = os.pipe()
    except OSError as exc:
        os.close(stdin)
        return CommandResult(None, "", error=exc.strerror or str(exc))
    try:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin,
                stdout=write_end,
                stderr=write_end,
                env=dict(env),
                start_new_session=True,
            )
        finally:
            os.close(stdin)
            os.close(write_end)
    except OSError as exc:
        os.close(read_end)
        return CommandResult(None, "", error=exc.strerror or str(exc))
    capture = _Capture(read_end, CAPTURE_BYTES)
    timed_out = False
    try:
        try:
            async with asyncio.timeout(timeout):
                await process.wait()
        except TimeoutError:
            timed_out = True
            _kill_group(process.pid)
            await process.wait()
    except BaseException:
        if process.returncode is None:
            _kill_group(process.pid)
            await process.wait()
        capture.close()
        raise
    output = await capture.finish(OUTPUT_GRACE_S)
    return CommandResult(process.returncode, output, timed_out=timed_out)


def _memory_file(text: str) -> int:
    """A file descriptor of an in-memory file holding ``text``, positioned at its start (never on disk)."""
    fd = os.memfd_create("sttd-text", os.MFD_CLOEXEC)
    try:
        data = text.encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError as exc:  # pragma: no cover - the group is ours
        logger.warning("cannot kill process group %d: %s", pgid, exc)


class _Capture:
    """Reads a command's output pipe on the event loop, keeping the first ``limit`` bytes."""

    def __init__(self, fd: int, limit: int) -> None:
        self._fd = fd
        self._limit = limit
        self._data = bytearray()
        self._eof = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._readable)
        self._open = True

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._eof.set()
            self.close()
            return
        room = self._limit - len(self._data)
        if room > 0:
            self._data += data[:room]

    async def finish(self, grace: float) -> str:
        """The output, once the pipe is closed or ``grace`` seconds have passed."""
        if self._open:
            try:
                async with asyncio.timeout(grace):
                    await self._eof.wait()
            except TimeoutError:
                pass
        self.close()
        return self._data.decode("utf-8", errors="replace")

    def close(self) -> None:
        if self._open:
            self._open = False
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
