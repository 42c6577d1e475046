"""Logging: journald under systemd, stderr otherwise, and secrets redacted everywhere.

Level policy: ERROR for what stops dictation, WARNING for what the user
should fix (a world-readable key file, a muted microphone), INFO for state
transitions and connections, DEBUG for everything else, including
transcript text: it is never logged above DEBUG.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

_secrets: set[str] = set()
_lock = threading.Lock()
REDACTED = "[redacted]"


def register_secret(value: str) -> None:
    """Remember a secret so that no log record ever shows it."""
    if len(value) >= 8:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    with _lock:
        secrets = list(_secrets)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Replaces registered secrets in every record's message (attached to handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, redact(text)
        return True


class _DropDbusNextTracebacks(logging.Filter):
    """dbus-next logs a traceback at ERROR for every DBusError a method raises on
    purpose (an invalid language, Start while disabled); those are answers to the
    caller, not daemon faults."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "root" and record.getMessage().startswith("got unexpected error processing"))


def under_systemd() -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup(level: str = "INFO") -> None:
    """Configure the root logger once, for the daemon."""
    handler = _journal_handler() if under_systemd() else None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    handler.addFilter(_DropDbusNextTracebacks())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # websockets logs handshake headers (the bearer secret) at DEBUG.
    logging.getLogger("websockets").setLevel(max(root.level, logging.INFO))


def _journal_handler() -> logging.Handler | None:
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None
    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER="sttd")
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    return handler
