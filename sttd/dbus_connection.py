"""Getting sttd's interface on the session bus, and keeping it there.

The connection is a :class:`sttd.bus.Bus` (dbus-next, repaired so that a
full socket buffer does not end it); :func:`export` can be called again
after a loss, and :func:`stay_exported` does that for the daemon.
:mod:`sttd.dbus_service` re-exports these functions.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from dbus_next import DBusError, Message
from dbus_next.aio import MessageBus
from dbus_next.constants import NameFlag, RequestNameReply

from .bus import Bus
from .dbus_contract import BUS_NAME, OBJECT_PATH, SHUTTING_DOWN
from .errors import SttdError
from .redact import excerpt

if TYPE_CHECKING:
    from .dbus_service import SttdInterface

logger = logging.getLogger(__name__)


def add_match(rule: str) -> Message:
    """The bus's ``AddMatch(rule)`` call: its reply means the subscription is live."""
    return Message(
        destination="org.freedesktop.DBus",
        path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus",
        member="AddMatch",
        signature="s",
        body=[rule],
    )


RECONNECT_DELAYS_S = (0.2, 1.0, 2.0, 5.0, 10.0)
"""Pauses before each attempt to get back on a lost session bus; then sttd gives up (and systemd restarts it)."""


async def export(interface: SttdInterface) -> MessageBus:
    """Connect to the session bus, export ``interface`` on it and own :data:`BUS_NAME`.

    Call it again, with the same interface, after the connection was lost.
    Calls wait until :meth:`SttdInterface.serve` (once; it stays served).
    Raises :class:`SttdError` when there is no session bus or another sttd
    owns the name (requested without queueing, so a second daemon exits at
    once).
    """
    bus = await _connect_bus()
    _export_on(bus, interface)
    await own_name(bus)
    return bus


async def wait_for_disconnect(bus: MessageBus) -> str:
    """Return once ``bus`` is disconnected: why (``""`` when sttd disconnected it itself)."""
    try:
        await bus.wait_for_disconnect()
    except Exception as exc:  # dbus-next raises whatever ended the connection
        return excerpt(f"{exc.__class__.__name__}: {exc}")
    return ""


async def stay_exported(interface: SttdInterface) -> None:
    """Keep ``interface`` on the session bus: after a lost connection, connect and own the name again.

    Runs until cancelled, or until sttd leaves the bus itself
    (:meth:`SttdInterface.disconnect`, or after :meth:`SttdInterface.shutting_down`):
    then it returns. Raises :class:`SttdError` when
    :data:`RECONNECT_DELAYS_S` attempts in a row failed; the daemon then
    exits and systemd (or the next activating call) brings it back.
    """
    while True:
        bus = interface.bus
        assert bus is not None, "export() first"
        reason = await wait_for_disconnect(bus)
        if interface.closing or not reason:  # no reason: sttd disconnected it
            return
        logger.warning("lost the session bus connection (%s); reconnecting", reason)
        await _reconnect(interface)


async def _reconnect(interface: SttdInterface) -> None:
    problem = ""
    for delay in RECONNECT_DELAYS_S:
        await asyncio.sleep(delay)
        try:
            await export(interface)
        except SttdError as exc:
            problem = str(exc)
            logger.info("session bus: %s; trying again", problem)
            continue
        logger.info("back on the session bus as %s", BUS_NAME)
        return
    raise SttdError(f"lost the session bus and could not get back on it: {problem}")


async def _connect_bus() -> MessageBus:
    try:
        return await Bus(cancelled_error=SHUTTING_DOWN).connect()
    except (OSError, ValueError, EOFError, DBusError) as exc:
        raise SttdError(f"cannot connect to the session bus: {excerpt(str(exc), limit=200)}") from None


def _export_on(bus: MessageBus, interface: SttdInterface) -> None:
    bus.add_message_handler(interface.check_arguments)
    bus.export(OBJECT_PATH, interface)
    interface._bus = bus


async def own_name(bus: MessageBus) -> None:
    """Own :data:`BUS_NAME`; from here on the bus delivers calls (and activating ones).

    Raises :class:`SttdError` (and disconnects) when another sttd owns it:
    the name is requested without queueing, so a second daemon exits at once.
    """
    try:
        reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
    except (OSError, EOFError, DBusError) as exc:
        bus.disconnect()
        raise SttdError(f"cannot own {BUS_NAME}: {excerpt(str(exc), limit=200)}") from None
    if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        bus.disconnect()
        raise SttdError(f"another sttd already owns {BUS_NAME} on this session bus")
