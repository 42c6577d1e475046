"""systemd integration: readiness, status, reload and watchdog notifications.

Everything here is a no-op outside systemd: without ``NOTIFY_SOCKET`` in the
environment no message is sent, so the daemon runs the same by hand.

The messages go through systemd-python's ``sd_notify`` when it is installed
(``pip install 'sttd[systemd]'``); without it, a plain datagram to
``NOTIFY_SOCKET`` (the whole sd_notify protocol for a path or an abstract
socket). That fallback matters because the unit is ``Type=notify``: a daemon
that never says ``READY=1`` would be killed by systemd after the start
timeout.

The unit file (``systemd/sttd.service``) relies on:

* ``READY=1`` once the bus name is owned (``Daemon.run``), and again after a
  reload;
* ``STATUS=`` with the dictation state, shown by ``systemctl --user status``
  (redacted and cut by :func:`sttd.redact.outward`: an error message quoting
  the server may echo the API key);
* ``WATCHDOG=1`` every ``WATCHDOG_USEC / 2``, sent from the event loop itself
  so that a stuck loop gets the daemon restarted;
* ``RELOADING=1`` (with ``MONOTONIC_USEC``, which ``Type=notify-reload``
  requires) while SIGHUP is handled, and ``STOPPING=1`` on SIGTERM.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

from .redact import outward

logger = logging.getLogger(__name__)

Sender = Callable[[str], object]


def send_datagram(address: str, message: str) -> None:
    """sd_notify without libsystemd: one datagram to ``address`` (``@`` = abstract socket)."""
    target = "\0" + address[1:] if address.startswith("@") else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(message.encode("utf-8"), target)


def _sender() -> Sender | None:
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return None
    try:
        from systemd import daemon
    except ImportError:
        return lambda message: send_datagram(address, message)
    notify: Sender = daemon.notify
    return notify


STATUS_CHARS = 200
"""The longest ``STATUS=`` text sent (systemctl shows one line)."""


def _status(text: str) -> str:
    """The ``STATUS=`` assignment for ``text``: one line, redacted, bounded."""
    # A newline would end the STATUS= assignment and start another one.
    return "STATUS=" + outward(" ".join(text.split()), STATUS_CHARS)


class Notifier:
    """Sends sd_notify messages when systemd asked for them (``NOTIFY_SOCKET`` is set)."""

    def __init__(self) -> None:
        self._send_message = _sender()
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.watchdog_interval_s: float | None = int(usec) / 2e6 if wanted and self._send_message else None
        """Half the watchdog timeout, or None when no watchdog is configured."""

    @property
    def active(self) -> bool:
        """True when messages go somewhere (systemd started us with ``NOTIFY_SOCKET``)."""
        return self._send_message is not None

    def _send(self, *fields: str) -> None:
        if self._send_message is None:
            return
        try:
            self._send_message("\n".join(fields))
        except OSError as exc:  # the manager went away; nothing to do but say so once in a while
            logger.debug("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        """Started (or reloaded): clients can call us now."""
        self._send("READY=1", _status(status))

    def status(self, status: str) -> None:
        """The one-line status ``systemctl --user status sttd`` shows."""
        self._send(_status(status))

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def reloading(self) -> None:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", _status("reloading the configuration"))

    def stopping(self) -> None:
        self._send("STOPPING=1", _status("stopping"))
