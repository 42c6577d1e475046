"""Runs one hook command so that nothing it starts outlives it.

The daemon does not run a hook directly: it runs this file as
``python -I -S hookgroup.py STATUS_FD GRACE_S ARGV...`` in a new session
and process group, and this small supervisor

1. makes itself a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``), so
   every process the hook starts, however it detaches (``cmd &``,
   ``setsid cmd``, a double fork), is re-parented to the supervisor when its
   own parent exits instead of escaping to init: it stays in the
   supervisor's process tree, where a walk of ``/proc/*/stat`` parent links
   finds it;
2. starts the command (``posix_spawnp``: no shell, stdin/stdout/stderr
   inherited, the signal mask and dispositions reset);
3. when the command exits, or when the daemon sends SIGTERM (the hook's
   timeout, shutdown), sends SIGTERM to every descendant, waits up to
   ``GRACE_S`` for them, then SIGKILLs whatever is left, until it has no
   child at all;
4. writes the command's fate to ``STATUS_FD``: ``status N`` (negative: the
   signal that killed it) or ``error REASON`` (it could not be started).

Why this and not the alternatives: a transient systemd scope needs the user
manager's D-Bus API and is absent when sttd is run by hand or in a
container; a cgroup of our own needs delegation; making the daemon itself the
subreaper would leave it unable to tell a hook's orphans from its other
children and would collect zombies from every orphan in its tree. Here the
subreaper is a process that exists for one hook only, so everything
re-parented to it is that hook's. Only a process that asks another service
to start it (``systemd-run``, D-Bus activation) is out of reach, because it
was never the hook's descendant.

This file imports nothing from sttd (it runs with ``-S``, without
site-packages, to start fast) and must stay runnable on its own.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time

# The supervisor starts once per hook: every import is paid each time (contextlib, collections.abc
# and the enums of signal were 10 of its 24 ms of CPU), so only what it runs is imported.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Iterable
else:
    import _signal as signal  # the C module, which the stdlib's signal wraps in enums (enum: ~4 ms here)

PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
WAKE_SIGNALS = STOP_SIGNALS | {signal.SIGCHLD}
KILL_RETRY_S = 0.05
"""While SIGKILLing, how long to wait for children to exit before looking for new ones again."""


def descendants(root: int) -> list[int]:
    """The pids of every process below ``root`` in the process tree (from ``/proc/*/stat`` parent links)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _parents() -> Iterable[tuple[int, int]]:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # it exited while we looked
        yield int(entry), int(fields[1])


def signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:  # noqa: SIM105 - not contextlib.suppress: see the imports
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):  # gone already; not ours (setuid)
            pass


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        sys.stderr.write(f"sttd hook supervisor: cannot become a subreaper: {os.strerror(error)}\n")


def _reap(statuses: dict[int, int]) -> bool:
    """Collect every exited child; True when none is left."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return False
        statuses[pid] = status


def _wait_for(pid: int, statuses: dict[int, int]) -> None:
    """Until ``pid`` exits or a stop signal arrives (SIGCHLD and the stop signals are blocked: no race)."""
    while True:
        _reap(statuses)
        if pid in statuses:
            return
        info = signal.sigwaitinfo(WAKE_SIGNALS)
        if info.si_signo in STOP_SIGNALS:
            return


def _sweep(grace: float, statuses: dict[int, int]) -> None:
    """End every descendant: SIGTERM, up to ``grace`` seconds to go, then SIGKILL until none is left."""
    if _reap(statuses):
        # No child left, so no descendant either: as the subreaper, this process inherits every
        # orphan of the hook's tree before the hook's exit is reported. Most hooks end here,
        # without walking /proc.
        return
    me = os.getpid()
    signal_all(descendants(me), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while not _reap(statuses):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        signal.sigtimedwait({signal.SIGCHLD}, remaining)
    # Kill again on every round: a process may have forked after the last walk.
    while not _reap(statuses):
        signal_all(descendants(me), signal.SIGKILL)
        signal.sigtimedwait({signal.SIGCHLD}, KILL_RETRY_S)


def main(argv: list[str]) -> int:
    status_fd, grace, command = int(argv[1]), float(argv[2]), argv[3:]
    os.set_inheritable(status_fd, False)  # the hook must not hold it open
    signal.pthread_sigmask(signal.SIG_BLOCK, WAKE_SIGNALS)
    _become_subreaper()
    try:
        pid = os.posix_spawnp(
            command[0],
            command,
            os.environ,
            setsigmask=(),
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, *STOP_SIGNALS, signal.SIGCHLD),
        )
    except OSError as exc:
        os.write(status_fd, f"error {exc.strerror or exc.__class__.__name__}".encode())
        return 127
    statuses: dict[int, int] = {}
    _wait_for(pid, statuses)
    _sweep(grace, statuses)
    os.write(status_fd, f"status {os.waitstatus_to_exitcode(statuses[pid])}".encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
