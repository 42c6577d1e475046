"""systemd integration: readiness, status, watchdog. No-ops outside systemd.

systemd-python is optional; without it (or without ``NOTIFY_SOCKET``) every
call here does nothing, so the daemon runs the same by hand.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

logger = logging.getLogger(__name__)


def _notifier() -> Callable[[str], object] | None:
    if not os.environ.get("NOTIFY_SOCKET"):
        return None
    try:
        from systemd import daemon
    except ImportError:
        logger.warning("NOTIFY_SOCKET is set but systemd-python is not installed: no readiness notification")
        return None
    notify: Callable[[str], object] = daemon.notify
    return notify


class Notifier:
    """Sends sd_notify messages when systemd asked for them."""

    def __init__(self) -> None:
        self._notify = _notifier()
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval_s: float | None = int(usec) / 2e6 if wanted and self._notify else None
        """Half the watchdog timeout, or None when no watchdog is configured."""

    def _send(self, message: str) -> None:
        if self._notify is not None:
            self._notify(message)

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def reloading(self) -> None:
        self._send("RELOADING=1")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=stopping")
