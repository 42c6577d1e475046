"""Running one command, a hook or a built-in output tool: no shell, a timeout, its whole process group.

Every command runs without a shell: ``argv`` is passed as is, the text
arrives on standard input (an in-memory file holding exactly the text, no
newline added) and never on the command line. Each runs in a session and
process group of its own. A hook command runs under a small supervisor
(:mod:`sttd.hookgroup`, a child subreaper): when the hook exits, at its
timeout and at shutdown, everything it started, also what it detached with
``&`` or ``setsid``, gets SIGTERM and, after :data:`KILL_GRACE_S`, SIGKILL.
The built-in output tools run without it, in their own group killed at their
timeout only: ``wl-copy`` and ``xclip`` leave a child behind on purpose, to
serve the clipboard. What a command prints is captured (the first
:data:`CAPTURE_BYTES`) for :class:`sttd.hooks.HookRunner` to log.
:mod:`sttd.hooks` re-exports :func:`run_command`, :class:`CommandResult`,
:func:`describe_status` and the constants.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import hookgroup

logger = logging.getLogger(__name__)

CAPTURE_BYTES = 4096
"""How much of a command's output is kept for the log."""
OUTPUT_GRACE_S = 0.1
"""After a command exits, how long to wait for the rest of its output (a built-in tool's child may hold the pipe)."""
KILL_GRACE_S = 1.0
"""Between SIGTERM and SIGKILL for what a hook left running, and for a hook that timed out or is stopped."""
SUPERVISOR_MARGIN_S = 2.0
"""How much longer than the grace the supervisor may take before the daemon kills everything itself."""
_SUPERVISOR = (sys.executable, "-I", "-S", os.path.abspath(hookgroup.__file__))
"""How a hook's supervisor is started: this Python, isolated and without site-packages (it imports only the stdlib)."""


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
        stdin = memory_file(text)
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


def memory_file(text: str | bytes) -> int:
    """A file descriptor of an in-memory file holding ``text``, positioned at its start (never on disk).

    A child reads its stdin from it at its own pace, or not at all: nothing is
    written to a pipe, so a child that exits first cannot break the write.
    """
    fd = os.memfd_create("sttd-text", os.MFD_CLOEXEC)
    try:
        data = text.encode("utf-8") if isinstance(text, str) else text
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
