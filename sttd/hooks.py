"""Hook commands (``[hooks]``) and built-in text outputs (``[output]``), run in the order their events happened.

The daemon :meth:`~HookRunner.submit`\\ s one event per final utterance
(``transcript``, with the text that joined the pending text), per send and
per purge. One worker task, :meth:`~HookRunner.run`, takes them from a
bounded queue one at a time and, for each, first does what ``[output] mode``
asks (type, copy, print; see :mod:`sttd.output`) and then runs the hook
configured for the event. So the typed text of an utterance always lands
before the Return of the send that follows it, and a hook never sees events
out of order.

Every command, hook or output tool, runs without a shell, the text on
standard input, in a process group of its own (:mod:`sttd.command_runner`,
which also ends everything a hook left running, at ``[hooks] timeout_s`` and
at shutdown); the environment gains ``STTD_EVENT``, ``STTD_LANGUAGE`` and
``STTD_ITEM_ID``. A failure is logged with the exit status and reported to
``on_error`` (the daemon turns it into the D-Bus ``Error`` signal) but never
stops dictation. What a
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .command_runner import (
    CAPTURE_BYTES,
    KILL_GRACE_S,
    OUTPUT_GRACE_S,
    SUPERVISOR_MARGIN_S,
    CommandResult,
    describe_status,
    run_command,
)
from .config import HooksConfig, OutputConfig
from .errors import OutputError
from .output import KEYMAP_RELEASE_S, TextOutput
from .redact import excerpt, outward, redact
from .window import Choice

__all__ = [
    "CAPTURE_BYTES",
    "KILL_GRACE_S",
    "LOGGED_OUTPUT_CHARS",
    "OUTPUT_GRACE_S",
    "PRIVATE_ENV",
    "QUEUE_SIZE",
    "SUPERVISOR_MARGIN_S",
    "CommandResult",
    "ErrorCallback",
    "Event",
    "HookRunner",
    "describe_status",
    "run_command",
]

logger = logging.getLogger(__name__)

Event = Literal["transcript", "send", "purge"]
ErrorCallback = Callable[[str, str], None]
"""``on_error(code, message)``: ``code`` is ``hook`` (a hook command failed) or ``output`` (a built-in output)."""

QUEUE_SIZE = 256
"""Events waiting for the worker; more are dropped (and logged) rather than blocking the daemon."""
LOGGED_OUTPUT_CHARS = 300
"""How much of what a command printed a DEBUG line shows."""
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
