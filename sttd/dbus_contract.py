"""The D-Bus contract's names and limits, what the D-Bus layer needs from the daemon, and errors.

:class:`Controller` is the daemon as :class:`sttd.dbus_service.SttdInterface`
sees it. Every failure a caller can cause is answered with a typed
``io.github.sttd.Sttd1.Error.<Name>``; an unexpected one with
``...Error.Failed`` and a pointer to the log, never a Python traceback
(:func:`_dbus_errors`). Everything that leaves on the bus as an error
(replies, the ``Error`` signal, ``LastError``) passes through
:func:`outward`, hence :func:`sttd.redact.redact`. :mod:`sttd.dbus_service`
re-exports the public names.

No ``from __future__ import annotations``, like sttd.dbus_service.
"""

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from dbus_next import DBusError, Variant

from . import core
from .errors import SttdError
from .redact import excerpt, redact

if TYPE_CHECKING:  # sttd.audio loads numpy and libpulse: too slow for sttctl, which imports this module
    from .audio import SourceInfo
    from .dbus_service import SttdInterface

logger = logging.getLogger(__name__)

BUS_NAME = "io.github.sttd.Sttd1"
OBJECT_PATH = "/io/github/sttd/Sttd1"
INTERFACE = "io.github.sttd.Sttd1"
ERROR_PREFIX = f"{INTERFACE}.Error."
PROPERTIES = "org.freedesktop.DBus.Properties"
INVALID_ARGUMENT = ERROR_PREFIX + "InvalidArgument"
SHUTTING_DOWN = ERROR_PREFIX + "ShuttingDown"
"""The answer to a call that arrives, or is still running, once sttd is stopping."""
MAX_STRING_CHARS = 4096
"""The longest string argument any call takes; a longer one is refused before any work."""
MAX_LANGUAGE_CHARS = 64
"""The longest ``SetLanguage`` argument looked at (a code is two letters)."""
MAX_OUTWARD_CHARS = 1000
"""The longest error text sttd sends on the bus (a server's message may be any length)."""
SHUTDOWN_REPLY_S = 2.0
"""How long :meth:`SttdInterface.shutting_down` waits for the calls in flight and their replies."""


class Controller(Protocol):
    """What the D-Bus layer needs from the daemon."""

    @property
    def dictation(self) -> core.Dictation: ...

    @property
    def source(self) -> str: ...

    @property
    def engine(self) -> str: ...

    @property
    def model(self) -> str:
        """The transcription model in use (``gpt-live-transcribe``)."""
        ...

    async def start(self) -> None: ...

    async def start_with(self, values: dict[str, Any]) -> None:
        """Start with options already type-checked by :func:`sttd.options.check_types`."""
        ...

    def stop(self) -> None: ...

    def cancel(self) -> None: ...

    async def toggle(self) -> None: ...

    def set_language(self, code: str) -> None: ...

    def set_enabled(self, enabled: bool) -> None: ...

    def send(self) -> None: ...

    def purge(self) -> None: ...

    async def list_sources(self) -> "list[SourceInfo]": ...

    def output(self) -> "tuple[str, str]":
        """The window output in use and why (``ibus``, ``type:wtype``, ...; see sttd.window)."""
        ...

    async def undo(self) -> str:
        """Take back the text sttd last inserted into a window; what was removed. NothingToUndo / UserTyped."""

    @property
    def shortcuts_status(self) -> str:
        """The desktop shortcuts: ``bound``, ``binding``, ``disabled`` or ``unavailable (<reason>)``."""
        ...

    async def list_shortcuts(self) -> list[tuple[str, str, str]]:
        """``(id, description, trigger)`` as the desktop reports them; raises ``ShortcutsUnavailableError``."""
        ...


F = TypeVar("F", bound=Callable[..., Any])


def outward(text: str, limit: int = MAX_OUTWARD_CHARS) -> str:
    """``text`` as it may leave on the bus: secrets replaced, at most ``limit`` characters."""
    text = redact(text[: limit * 4])  # redact before cutting: no half key at the cut
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _one_line(text: str) -> str:
    """An error message as one log line: secrets replaced, control characters escaped, bounded."""
    return outward(text, 240).encode("unicode_escape").decode("ascii")[:280]


def _convert(name: str, exc: Exception) -> DBusError:
    if isinstance(exc, SttdError):
        logger.info("%s refused: %s", name, _one_line(str(exc)))
        return DBusError(ERROR_PREFIX + exc.dbus_name, outward(str(exc)))
    logger.exception("%s failed", name)
    return DBusError(ERROR_PREFIX + "Failed", f"{name} failed: {exc.__class__.__name__} (details in sttd's log)")


def _dbus_errors(fn: F) -> F:
    """Turn sttd's errors into typed D-Bus errors and hide everything else's traceback.

    An ``async`` handler is also one of the interface's calls in flight:
    refused once sttd is shutting down, and answered with ``ShuttingDown``
    when :meth:`SttdInterface.shutting_down` cancels it.
    """
    if _is_coroutine(fn):

        @functools.wraps(fn)
        async def async_wrapper(interface: "SttdInterface", *args: Any) -> Any:
            if interface.closing:
                raise DBusError(SHUTTING_DOWN, "sttd is shutting down")
            task = asyncio.current_task()
            assert task is not None
            interface._calls.add(task)
            try:
                return await fn(interface, *args)
            except DBusError:
                raise
            except asyncio.CancelledError:
                if interface.closing:  # cancelled by shutting_down(): an answer, not a crash
                    raise DBusError(SHUTTING_DOWN, f"sttd is shutting down; {fn.__name__} did not finish") from None
                raise
            except Exception as exc:
                raise _convert(fn.__name__, exc) from None
            finally:
                interface._calls.discard(task)

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        try:
            return fn(*args)
        except DBusError:
            raise
        except Exception as exc:
            raise _convert(fn.__name__, exc) from None

    return wrapper  # type: ignore[return-value]


def _too_long(member: str, body: list[Any]) -> str:
    """Why a call's arguments are refused unread ("" when they are not): a string over the limits."""
    limit = MAX_LANGUAGE_CHARS if member == "SetLanguage" else MAX_STRING_CHARS
    for value in body:
        text = value.value if isinstance(value, Variant) else value
        if isinstance(text, str) and len(text) > limit:
            return f"{member}: an argument of {len(text)} characters (at most {limit}): {excerpt(text, limit=20)}"
    return ""


def _is_coroutine(fn: Callable[..., Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)
