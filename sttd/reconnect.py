"""What a failed Realtime connection means, and when to try again. No I/O.

A connection can end in three ways that matter: :class:`Retry` (another
connection may fix it: a lost connection, a recoverable close code, a
handshake timeout, HTTP 5xx), :class:`~sttd.errors.SessionError` with
``retryable=False`` (bad credentials, a refused request: retrying cannot
help), or a bug, which is passed on as it is. Retries are paced by
:func:`backoff` and counted by the session; a "maximum duration" close is a
free rollover only when the session really lived close to the service's
limit.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from websockets.exceptions import ConnectionClosed

from .errors import SessionError
from .redact import excerpt

RECOVERABLE_CLOSE_CODES = frozenset({1000, 1001, 1006, 1011, 1012, 1013, 1014})
"""Close codes after which a new connection may succeed. 1001 is also how the
service ends a session at its 60-minute limit."""

FATAL_CLOSE_CODES = {
    3000: ("credentials", "the service refused the credentials (close 3000)"),
    4000: ("refused", "the service refused the request (close 4000)"),
}

MAX_DURATION_HINT = "maximum duration"
EXCERPT_CHARS = 200
"""What a server's error message or close reason may add to a log line or LastError."""


class Retry(Exception):
    """The connection ended in a way another connection may fix."""

    def __init__(self, reason: str, *, counts: bool = True, planned: bool = False) -> None:
        super().__init__(reason)
        self.counts = counts
        """False for a rollover: not a failure, no backoff."""
        self.planned = planned
        """Our own rollover between turns: nothing is owed, nothing to announce."""


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def classify(exc: Exception, *, lived_s: float, min_rollover_s: float) -> Exception:
    """What a connection's failure means: fatal (SessionError), worth retrying (Retry), or a bug (as is).

    ``exc`` may group several failures (send and receive both failed); the
    most decisive wins. ``lived_s`` is how long the connection had been open.
    """
    found = list(leaves(exc))
    for kind in (SessionError, Retry):
        decisive = next((e for e in found if isinstance(e, kind)), None)
        if decisive is not None:
            return decisive
    closed = next((e for e in found if isinstance(e, ConnectionClosed)), None)
    if closed is not None:
        return closed_by_service(closed, lived_s=lived_s, min_rollover_s=min_rollover_s)
    if any(isinstance(e, TimeoutError) for e in found):
        return Retry("the service did not answer session.update in time")
    return exc


def closed_by_service(exc: ConnectionClosed, *, lived_s: float, min_rollover_s: float) -> Exception:
    """The meaning of the close code (and reason) the service ended the connection with."""
    rcvd = exc.rcvd
    code = rcvd.code if rcvd is not None else 1006
    reason = excerpt(rcvd.reason, EXCERPT_CHARS) if rcvd is not None and rcvd.reason else ""
    if code in FATAL_CLOSE_CODES:
        kind, message = FATAL_CLOSE_CODES[code]
        return SessionError(f"{message}: {reason}" if reason else message, retryable=False, code=kind)
    if code not in RECOVERABLE_CLOSE_CODES:
        return SessionError(f"the service closed the session (code {code}: {reason})", retryable=False)
    if code == 1001 and MAX_DURATION_HINT in reason.lower():
        # Only a session near the service's limit really reached it: an earlier
        # "maximum duration" (a broken proxy, a hostile endpoint) is a failure,
        # paced and counted like any other, or it would reconnect in a tight loop.
        if lived_s >= min_rollover_s:
            return Retry("the session reached its maximum duration", counts=False)
        return Retry(f"the service claimed the session's maximum duration after only {lived_s:.0f} s")
    return Retry(f"connection closed (code {code}{': ' + reason if reason else ''})")


def backoff(failures: int, base_s: float, max_s: float) -> float:
    """Capped exponential backoff with jitter (half to all of the step), for the ``failures``-th in a row."""
    delay = min(max_s, base_s * 2.0 ** (failures - 1))
    return delay * random.uniform(0.5, 1.0)
