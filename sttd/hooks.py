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
Each runs in a session and process group of its own. A hook command runs
under a small supervisor (:mod:`sttd.hookgroup`, a child subreaper): when
the hook exits, at ``[hooks] timeout_s`` and at shutdown, everything it
started, also what it detached with ``&`` or ``setsid``, gets SIGTERM and,
after :data:`KILL_GRACE_S`, SIGKILL. The built-in output tools run without
it, in their own group killed at their timeout only: ``wl-copy`` and
``xclip`` leave a child behind on purpose, to serve the clipboard. A failure
is logged with the exit status and reported to ``on_error`` (the daemon
turns it into the D-Bus ``Error`` signal) but never stops dictation. What a
command prints is captured (the first few KiB) and logged at DEBUG only, as
a short excerpt, since hooks may echo the transcript, which is never logged
above DEBUG; the output of the built-in tools (xdotool, wl-copy, ...) is
quoted, redacted and cut, in their failure messages. The text a command
gets is redacted (:func:`sttd.redact.redact`) like everything else that
leaves the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from . import hookgroup
from .config import HooksConfig, OutputConfig
from .errors import OutputError
from .output import KEYMAP_RELEASE_S, TextOutput
from .redact import excerpt, outward, redact
from .window import Choice

logger = logging.getLogger(__name__)

Event = Literal["transcript", "send", "purge"]
ErrorCallback = Callable[[str, str], None]
"""``on_error(code, message)``: ``code`` is ``hook`` (a hook command failed) or ``output`` (a built-in output)."""

QUEUE_SIZE = 256
"""Events waiting for the worker; more are dropped (and logged) rather than blocking the daemon."""
CAPTURE_BYTES = 4096
"""How much of a command's output is kept for the log."""
OUTPUT_GRACE_S = 0.1
"""After a command exits, how long to wait for the rest of its output (a built-in tool's child may hold the pipe)."""
KILL_GRACE_S = 1.0
"""Between SIGTERM and SIGKILL for what a hook left running, and for a hook that timed out or is stopped."""
SUPERVISOR_MARGIN_S = 2.0
"""How much longer than the grace the supervisor may take before the daemon kills everything itself."""
LOGGED_OUTPUT_CHARS = 300
"""How much of what a command printed a DEBUG line shows."""
_SUPERVISOR = (sys.executable, "-I", "-S", os.path.abspath(hookgroup.__file__))
"""How a hook's supervisor is started: this Python, isolated and without site-packages (it imports only the stdlib)."""
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
    output: str | None = None
    """This event's output mode (a dictation's StartWith/profile); None: ``[output] mode``."""
    separator: str = " "
    command: tuple[str, tuple[str, ...]] | None = None
    """A command hook (``[commands] hooks``): its phrase and argv; the output does nothing for it."""


class HookRunner:
    """Runs ``[hooks]`` commands and the ``[output]`` mode for dictation events, one after another."""

    def __init__(self, hooks: HooksConfig, output: OutputConfig, *, on_error: ErrorCallback | None = None) -> None:
        self._hooks = hooks
        self.ibus_active = False
        """The sttd IBus input method is enabled (the daemon watches its bus name)."""
        self._output = self._make_output(output)
        self._last_used: TextOutput | None = None
        """The output that delivered the last event: a profile's own output types its text, and undoes it."""
        self._on_error = on_error
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(QUEUE_SIZE)
        self._retired: list[TextOutput] = []
        self._others: dict[str, TextOutput] = {}
        """Outputs of dictations that chose another mode (StartWith ``output``, a profile)."""
        """Outputs replaced by a reload that still have temporary changes to undo."""
        self._problems: dict[str, str] = {}
        """The last failure reported per source (``output``, ``send hook``, ...); not repeated until it works."""
        self._env: Mapping[str, str] = {}
        """The ``STTD_*`` variables of the event being handled."""
        self._log_output()

    # -- the daemon's side

    def submit(
        self,
        event: Event,
        text: str,
        *,
        language: str,
        item_id: str = "",
        output: str | None = None,
        separator: str = " ",
    ) -> None:
        """Queue an event; never blocks. When the queue is full the event is dropped and logged.

        ``output`` names another output mode for this event (a dictation's own);
        ``separator`` is what goes before the text when it follows earlier text.
        """
        if not self._wanted(event, output):
            return
        try:
            self._queue.put_nowait(_Job(event, text, language, item_id, output, separator))
        except asyncio.QueueFull:
            logger.warning(
                "hooks: %d events are already waiting (a hook or output is too slow); dropped a %s event",
                self._queue.qsize(),
                event,
            )

    def submit_command(self, phrase: str, argv: tuple[str, ...], text: str, *, language: str) -> None:
        """Queue a command hook (``[commands] hooks``), after what was submitted before it; never blocks."""
        job = _Job("send", text, language, "", command=(phrase, argv))
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            logger.warning("hooks: %d events are already waiting; dropped a command hook", self._queue.qsize())

    def reconfigure(self, hooks: HooksConfig, output: OutputConfig) -> None:
        """Take a new configuration (SIGHUP); it applies from the next event the worker takes."""
        self._hooks = hooks
        self._problems.clear()
        if output.mode != self._output.mode:
            if self._output.needs_idle:
                self._retired.append(self._output)
            self._output = self._make_output(output)
            self._log_output()
        elif output.paste_keys != self._output.paste_keys:
            self._output.paste_keys = output.paste_keys

    def _make_output(self, output: OutputConfig) -> TextOutput:
        return TextOutput(output.mode, paste_keys=output.paste_keys, ibus_active=lambda: self.ibus_active)

    def output_choice(self) -> Choice:
        """The output in use now and why."""
        return self._output.choice()

    async def undo(self) -> str:
        """Take back what the typing or paste output inserted last, once the events before it are done.

        Raises NothingToUndoError / OutputError. Cancelling is safe (a running tool is killed).
        """
        await self.join()
        return await (self._last_used or self._output).undo(self._output_command)

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

    def _wanted(self, event: Event, output: str | None = None) -> bool:
        return (output or self._output.mode) != "none" or bool(getattr(self._hooks, event))

    def _output_for(self, mode: str | None) -> TextOutput:
        """The output of an event: the configured one, or one kept per mode for dictations that chose another."""
        if mode is None or mode == self._output.mode:
            return self._output
        if mode not in self._others:
            self._others[mode] = TextOutput(mode)  # type: ignore[arg-type]  # checked by sttd.options
        return self._others[mode]

    def _log_output(self) -> None:
        if self._output.mode == "none":
            return
        try:
            logger.info("output: %s", self._output.describe())
        except OutputError as exc:
            logger.warning("%s", exc)

    async def _handle(self, job: _Job) -> None:
        if job.command is not None:
            phrase, argv = job.command
            env = {"STTD_EVENT": "command", "STTD_COMMAND": phrase, "STTD_LANGUAGE": job.language, "STTD_ITEM_ID": ""}
            self._env = env
            await self._command(f"command hook {excerpt(phrase)}", "hook", argv, redact(job.text), env)
            return
        env = {"STTD_EVENT": job.event, "STTD_LANGUAGE": job.language, "STTD_ITEM_ID": job.item_id}
        logger.debug("hooks: %s event %s (item %s)", job.event, excerpt(job.text), excerpt(job.item_id or "-"))
        self._env = env
        text = redact(job.text)
        try:
            output = self._output_for(job.output)
            if await output.deliver(job.event, text, self._output_command, job.separator):
                self._problems.pop("output", None)
                self._last_used = output
        except OutputError as exc:
            self._failed("output", "output", str(exc))
        argv = getattr(self._hooks, job.event)
        if argv:
            await self._command(f"{job.event} hook", "hook", argv, text, env)

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
        result = await run_command(argv, text, {**inherited, **env}, timeout, contain=code == "hook")
        if result.output:
            logger.debug("%s %s printed: %s", what, program, excerpt(result.output, LOGGED_OUTPUT_CHARS))
        if result.error is not None:
            message = f"{what}: cannot run {program}: {result.error}"
        elif result.timed_out:
            message = f"{what}: {program} did not finish within {timeout:g} s; killed it and what it started"
        elif result.status != 0:
            message = f"{what}: {program} {describe_status(result.status)}"
            if code == "output" and result.output.strip():
                # The built-in tools do not echo the text; their complaint is what the user needs.
                message += f": {outward(result.output.strip()[-300:])}"
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


async def run_command(
    argv: Sequence[str], text: str, env: Mapping[str, str], timeout: float, *, contain: bool = False
) -> CommandResult:
    """Run ``argv`` without a shell, ``text`` on stdin, in a new session; stop it at ``timeout``.

    With ``contain`` (hooks) it runs under :mod:`sttd.hookgroup`: whatever it
    started is ended when it exits, and stopping it ends that too. Without
    (the built-in tools), its process group is SIGKILLed at the timeout only.
    Cancelling the caller stops the command the same way, and waits for it to
    be reaped before the cancellation goes on.
    """
    try:
        process, read_end, status_read = await _spawn(argv, text, env, contain)
    except OSError as exc:
        return CommandResult(None, "", error=exc.strerror or str(exc))
    capture = _Capture(read_end, CAPTURE_BYTES)
    timed_out = False
    try:
        try:
            async with asyncio.timeout(timeout):
                await process.wait()
        except TimeoutError:
            timed_out = True
            await _stop(process, contain)
    except BaseException:
        if process.returncode is None:
            await _stop(process, contain)
        capture.close()
        _close([status_read] if contain else [])
        raise
    output = await capture.finish(OUTPUT_GRACE_S)
    if not contain:
        return CommandResult(process.returncode, output, timed_out=timed_out)
    status, error = _supervised_status(status_read, process.returncode)
    return CommandResult(status, output, timed_out=timed_out, error=error)


async def _spawn(
    argv: Sequence[str], text: str, env: Mapping[str, str], contain: bool
) -> tuple[asyncio.subprocess.Process, int, int]:
    """Start ``argv`` (under the supervisor when ``contain``): the process, its output pipe, its status pipe (or -1).

    Raises OSError when it cannot start; no descriptor is left open then.
    """
    opened: list[int] = []
    try:
        stdin = _memory_file(text)
        opened.append(stdin)
        read_end, write_end = os.pipe()
        opened += [read_end, write_end]
        status_read, status_write = os.pipe() if contain else (-1, -1)
        opened += [status_read, status_write]
        command = [*_SUPERVISOR, str(status_write), f"{KILL_GRACE_S:g}", *argv] if contain else list(argv)
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=stdin,
            stdout=write_end,
            stderr=write_end,
            env=dict(env),
            start_new_session=True,
            pass_fds=(status_write,) if contain else (),
        )
    except BaseException:
        _close(opened)
        raise
    _close([stdin, write_end, status_write])  # the child has its copies
    return process, read_end, status_read


def _supervised_status(fd: int, fallback: int | None) -> tuple[int | None, str | None]:
    """The hook's status (or why it could not start) as :mod:`sttd.hookgroup` reported it on ``fd``."""
    try:
        os.set_blocking(fd, False)  # every writer is gone once the supervisor exited; never wait anyway
        report = os.read(fd, 512).decode("utf-8", errors="replace")
    except OSError:
        report = ""
    finally:
        os.close(fd)
    kind, _, value = report.partition(" ")
    if kind == "error":
        return None, value
    if kind == "status" and value.lstrip("-").isdigit():
        return int(value), None
    return fallback, None  # the supervisor itself was killed


async def _stop(process: asyncio.subprocess.Process, contained: bool) -> None:
    """End a command that is still running and wait until it is reaped.

    A supervised hook gets SIGTERM (its supervisor then ends everything the
    hook started); if the supervisor is not gone in time, the daemon SIGKILLs
    its group and every descendant itself.
    """
    if contained:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(KILL_GRACE_S + SUPERVISOR_MARGIN_S):
                await asyncio.shield(process.wait())
            return
        except TimeoutError:
            logger.warning("hook supervisor %d did not end in time; killing what it runs", process.pid)
            hookgroup.signal_all(hookgroup.descendants(process.pid), signal.SIGKILL)
    _signal_group(process.pid, signal.SIGKILL)
    await asyncio.shield(process.wait())


def _close(fds: Sequence[int]) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


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


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as exc:  # pragma: no cover - the group is ours
        logger.warning("cannot signal process group %d: %s", pgid, exc)


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
