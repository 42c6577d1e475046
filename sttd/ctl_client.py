"""sttctl's one D-Bus call: to sttd's object, with a deadline, its errors sorted into what sttctl exits with.

A :class:`Client` calls a method of sttd (or reads and sets its
properties) and raises :class:`Unreachable` when the bus or the daemon is
not there (exit 3), :class:`Refused` when the daemon answered with an error
(exit 1, its message redacted). No printing here: that is :mod:`sttd.ctl`'s.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dbus_next import Message, MessageFlag, MessageType, Variant
from dbus_next.aio import MessageBus

from .dbus_service import BUS_NAME, ERROR_PREFIX, INTERFACE, OBJECT_PATH, PROPERTIES
from .redact import redact

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
CALL_TIMEOUT_S = 30.0
"""How long one call may take (bus activation included) before sttd counts as unreachable."""
UNREACHABLE_ERRORS = {
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.Disconnected",
    "org.freedesktop.DBus.Error.Spawn.ChildExited",
    "org.freedesktop.DBus.Error.Spawn.ChildSignaled",
    "org.freedesktop.DBus.Error.Spawn.ExecFailed",
    "org.freedesktop.DBus.Error.Spawn.ServiceNotFound",
    "org.freedesktop.DBus.Error.Spawn.ServiceNotValid",
    "org.freedesktop.DBus.Error.Spawn.Failed",
    "org.freedesktop.DBus.Error.Spawn.Timeout",
    "org.freedesktop.DBus.Error.TimedOut",
    "org.freedesktop.systemd1.NoSuchUnit",
}


class Unreachable(Exception):
    """The daemon (or the bus) is not there."""


class Refused(Exception):
    """The daemon answered with an error."""


class Client:
    def __init__(self, bus: MessageBus, autostart: bool) -> None:
        self._bus = bus
        self._flags = MessageFlag.NONE if autostart else MessageFlag.NO_AUTOSTART

    async def call(
        self, member: str, signature: str = "", body: list[Any] | None = None, *, interface: str = INTERFACE
    ) -> list[Any]:
        message = Message(
            destination=BUS_NAME,
            path=OBJECT_PATH,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
            flags=self._flags,
        )
        try:
            reply = await asyncio.wait_for(self._bus.call(message), CALL_TIMEOUT_S)
        except TimeoutError:
            raise Unreachable(f"no answer to {member} within {CALL_TIMEOUT_S:.0f} s") from None
        except (OSError, EOFError) as exc:
            raise Unreachable(f"the session bus went away ({exc})") from None
        if reply is None:
            return []
        if reply.message_type == MessageType.ERROR:
            name = reply.error_name or ""
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else name
            text = redact(text)  # an older daemon, or another program on the name, may echo a key
            if name in UNREACHABLE_ERRORS:
                raise Unreachable(text)
            raise Refused(text if name.startswith(ERROR_PREFIX) else f"{name}: {text}")
        return list(reply.body)

    async def properties(self) -> dict[str, Any]:
        (values,) = await self.call("GetAll", "s", [INTERFACE], interface=PROPERTIES)
        return {name: variant.value for name, variant in values.items()}

    async def set_property(self, name: str, variant: Variant) -> None:
        await self.call("Set", "ssv", [INTERFACE, name, variant], interface=PROPERTIES)
