"""Logging: the journal (with structured fields) under systemd, stderr otherwise; secrets redacted everywhere.

Where records go
    Started by systemd (``JOURNAL_STREAM`` names our stderr), records are sent
    to journald natively, each with ``SYSLOG_IDENTIFIER=sttd``, ``PRIORITY``,
    ``LOGGER``, ``CODE_FILE``/``CODE_LINE``/``CODE_FUNC``, ``THREAD_NAME`` and
    the sttd fields below, so ``journalctl --user -u sttd STTD_STATE=error``
    works. Without systemd-python or journald's socket, or for a record the
    socket refuses (journald restarting), the line goes to stderr with a
    ``<N>`` priority prefix, which systemd's stdout stream turns into the same
    ``PRIORITY``. Run by hand, records go to stderr with a timestamp and the
    level.

Structured fields
    A record carries a journal field for every ``extra`` attribute named
    ``STTD_*`` (upper case, digits and ``_``): ``STTD_STATE`` is the dictation
    state a transition entered (``core`` logs every transition with it) and
    ``STTD_EVENT`` names what happened, so it can be matched exactly: an
    explicit ``extra={"STTD_EVENT": ...}`` (see :func:`event`), else
    ``state`` for a record that carries ``STTD_STATE``. Nothing else of the
    record (its raw arguments in particular, which may hold text that the
    redaction removed from the message) is sent.

Level policy
    * ERROR: what stops a dictation or refuses a request of the user's: bad
      credentials, a refused session, a lost microphone, an invalid config on
      reload (the running one is kept), a state file that cannot be saved.
    * WARNING: what the user should know or fix while sttd keeps working: a
      world-readable key file, a dropped connection being retried, audio
      dropped while reconnecting, a malformed server event.
    * INFO: the life of the daemon: ready, reloaded, stopped, connections,
      and state transitions between idle, connecting, listening,
      reconnecting and error (``--log-level INFO``, the default, shows these).
    * DEBUG: everything else: speaking/processing transitions, every server
      event, and transcript text. What the user said is never logged above
      DEBUG; an API key or token is never logged at any level (it is
      registered with :func:`sttd.redact.register_secret`, and every handler's
      :class:`RedactingFilter` replaces it, and anything shaped like an OpenAI
      key, by ``[redacted]``; see :mod:`sttd.redact`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable

from .redact import redact

IDENTIFIER = "sttd"
"""``SYSLOG_IDENTIFIER`` of every record sttd sends to the journal."""
STATE_FIELD = "STTD_STATE"
EVENT_FIELD = "STTD_EVENT"
_FIELD = re.compile(r"^STTD_[A-Z0-9_]+$")
JOURNAL_SOCKET = "/run/systemd/journal/socket"
"""Where journald listens for native records (and where libsystemd sends them)."""


def event(name: str, **fields: str) -> dict[str, str]:
    """``extra=`` for a record that names its event: ``logger.info("...", extra=event("reload"))``.

    ``fields`` become ``STTD_<NAME>`` journal fields (``state="idle"`` is ``STTD_STATE=idle``).
    """
    return {EVENT_FIELD: name, **{f"STTD_{key.upper()}": str(value) for key, value in fields.items()}}


def journal_fields(record: logging.LogRecord) -> dict[str, str]:
    """The ``STTD_*`` fields of a record, with ``STTD_EVENT`` filled in when it can be named."""
    fields = {key: redact(str(value)) for key, value in vars(record).items() if _FIELD.match(key) and value is not None}
    if STATE_FIELD in fields:
        fields.setdefault(EVENT_FIELD, "state")
    return fields


class RedactingFilter(logging.Filter):
    """Replaces secrets and key-shaped strings in every record's message and traceback (attached to handlers)."""

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


def syslog_priority(levelno: int) -> int:
    """The syslog priority journald files a Python level under (ERROR=3, WARNING=4, INFO=6, DEBUG=7)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class _PriorityPrefixFormatter(logging.Formatter):
    """``<N>logger: message`` for systemd's stdout stream (``SyslogLevelPrefix=yes``, the default)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


class JournalHandler(logging.Handler):
    """Sends each record to journald's native socket with sttd's fields (see the module docstring).

    ``send`` is ``systemd.journal.sendv``: it takes ``FIELD=value`` strings.
    A record the journal refuses is written to stderr instead, prefixed for
    systemd's stdout stream, so nothing is lost when journald is restarting.
    """

    def __init__(self, send: Callable[..., object], identifier: str = IDENTIFIER) -> None:
        super().__init__()
        self._sendv = send
        self._identifier = identifier
        self._fallback = _PriorityPrefixFormatter("%(name)s: %(message)s")

    def fields(self, record: logging.LogRecord) -> list[str]:
        base: dict[str, object] = {
            "MESSAGE": self.format(record),
            "PRIORITY": syslog_priority(record.levelno),
            "SYSLOG_IDENTIFIER": self._identifier,
            "LOGGER": record.name,
            "THREAD_NAME": record.threadName,
            "CODE_FILE": record.pathname,
            "CODE_LINE": record.lineno,
            "CODE_FUNC": record.funcName,
        }
        return [f"{key}={value}" for key, value in {**base, **journal_fields(record)}.items()]

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = self.fields(record)
        except Exception:
            self.handleError(record)
            return
        try:
            self._sendv(*fields)
        except OSError:
            sys.stderr.write(self._fallback.format(record) + "\n")
            sys.stderr.flush()


def under_systemd() -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM to its device:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup(level: str = "INFO") -> None:
    """Configure the root logger once, for the daemon: the journal under systemd, else stderr."""
    handler: logging.Handler
    if under_systemd():
        handler = _journal_handler() or logging.StreamHandler(sys.stderr)
        if not isinstance(handler, JournalHandler):
            handler.setFormatter(_PriorityPrefixFormatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    handler.addFilter(_DropDbusNextTracebacks())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # websockets logs handshake headers (the bearer secret) at DEBUG.
    logging.getLogger("websockets").setLevel(max(root.level, logging.INFO))


def _journal_handler() -> JournalHandler | None:
    if not os.path.exists(JOURNAL_SOCKET):  # libsystemd would drop every record without a word
        return None
    try:
        from systemd.journal import sendv
    except ImportError:
        return None
    handler = JournalHandler(sendv)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler
