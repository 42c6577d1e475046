"""The daemon's side of the IBus input method: is it enabled, and asking it to undo.

``sttd-ibus`` owns ``io.github.sttd.Ibus1`` on the session bus while it is
enabled in IBus (:mod:`sttd.ibus`). :func:`watch` follows that name's owner
(``NameOwnerChanged``, after one ``NameHasOwner``) for ``[output] mode =
"auto"``; :func:`undo` calls the engine's ``Undo()``, which alone can see
whether the user typed after its last commit. This module is the boundary
(dbus-next); the engine's name and errors are the contract.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dbus_next import Message, MessageType

from .errors import NothingToUndoError, SttdError, UserTypedError

logger = logging.getLogger(__name__)

BUS_NAME = "io.github.sttd.Ibus1"
OBJECT_PATH = "/io/github/sttd/Ibus1"
INTERFACE = "io.github.sttd.Ibus1"
ERROR_PREFIX = "io.github.sttd.Sttd1.Error."
_DBUS = {"destination": "org.freedesktop.DBus", "path": "/org/freedesktop/DBus", "interface": "org.freedesktop.DBus"}
_RULE = (
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
    f"member='NameOwnerChanged',arg0='{BUS_NAME}'"
)


async def watch(bus: Any, on_change: Callable[[bool], None]) -> None:
    """Call ``on_change(enabled)`` now and whenever the engine's name gains or loses its owner.

    Returns once subscribed. A bus error is logged and the engine counts as absent.
    """

    def handler(message: Message) -> None:
        if (
            message.message_type is MessageType.SIGNAL
            and message.member == "NameOwnerChanged"
            and message.body
            and message.body[0] == BUS_NAME
        ):
            on_change(bool(message.body[2]))

    bus.add_message_handler(handler)
    try:
        await bus.call(Message(**_DBUS, member="AddMatch", signature="s", body=[_RULE]))
        reply = await bus.call(Message(**_DBUS, member="NameHasOwner", signature="s", body=[BUS_NAME]))
    except Exception as exc:  # a broken bus: typing still works without it
        logger.warning("cannot follow the IBus input method on the session bus: %s", exc)
        return
    on_change(reply.message_type is MessageType.METHOD_RETURN and bool(reply.body and reply.body[0]))


async def undo(bus: Any) -> str:
    """Ask the engine to take back its last text (its preedit, else its last commit); the text it removed.

    Raises :class:`NothingToUndoError` / :class:`UserTypedError` as the engine
    answers, :class:`SttdError` for anything else. Cancelling is safe.
    """
    reply = await bus.call(Message(destination=BUS_NAME, path=OBJECT_PATH, interface=INTERFACE, member="Undo"))
    if reply.message_type is MessageType.METHOD_RETURN:
        return str(reply.body[0]) if reply.body else ""
    name = reply.error_name or ""
    text = str(reply.body[0]) if reply.body else name
    if name == ERROR_PREFIX + "UserTyped":
        raise UserTypedError(text)
    if name in (ERROR_PREFIX + "NothingToUndo", "org.freedesktop.DBus.Error.ServiceUnknown"):
        raise NothingToUndoError(text if name.startswith(ERROR_PREFIX) else "the IBus input method is not running")
    raise SttdError(f"the IBus input method could not undo: {text}")
