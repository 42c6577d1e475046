"""What may leave the process: secrets replaced, outside values cut short. No I/O.

Everything sttd shows to the outside world (log records, D-Bus errors and
properties, sd_notify ``STATUS=``, ``sttctl`` output, hook input) goes
through :func:`redact`: every secret sttd has read is replaced, and so is
anything shaped like an OpenAI key or ephemeral token, because a server's
error message may echo a key sttd never registered.

Values that came from outside (D-Bus arguments, config values, server
messages, hook output) are shown through :func:`excerpt`: short, escaped,
with their length, so a 10 MB argument cannot become a 10 MB log line.

Messages sttd itself composes that may quote such values and leave the
process as text a person reads (a D-Bus error's message, ``LastError``, the
``Error`` signal, ``STATUS=``, ``sttctl`` output) go through
:func:`outward`: redacted, then cut to a bounded length, but not quoted.
"""

from __future__ import annotations

import re
import threading

REDACTED = "[redacted]"
_KEY_SHAPED = re.compile(r"\b(?:sk-[A-Za-z0-9_\-]{8,}|ek_[A-Za-z0-9_\-]{8,})")
_secrets: set[str] = set()
_lock = threading.Lock()

EXCERPT_CHARS = 60
"""How much of an outside value a message shows."""
OUTWARD_CHARS = 300
"""The longest message :func:`outward` lets out."""


def register_secret(value: str) -> None:
    """Remember a secret so that nothing sttd shows ever contains it."""
    if len(value) >= 8:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """``text`` with every registered secret and every key-shaped string replaced."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _KEY_SHAPED.sub(REDACTED, text)


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """A short, escaped, redacted rendering of an outside value, safe for one log line."""
    text = value if isinstance(value, str) else repr(value)
    length = len(text)
    # Redact before cutting, so that a key straddling the cut is not half shown.
    text = redact(text[: limit * 4]) if length > limit else redact(text)
    if length > limit:
        return f"{text[:limit]!r}... ({length} characters)"
    return repr(text)


def outward(text: str, limit: int = OUTWARD_CHARS) -> str:
    """``text`` fit to leave the process as a message: secrets and key-shaped strings replaced, at most ``limit``
    characters (a cut one ends with ``…``)."""
    # Only the start is shown; redact a margin beyond it so a secret straddling the cut is still caught.
    head = text[: max(4 * limit, limit + 1024)]
    cleaned = redact(head)
    if len(cleaned) <= limit and len(head) == len(text):
        return cleaned
    return cleaned[: limit - 1] + "…"
