"""A dbus-next peer of sttd on a private bus: the messages it sends and how it reads the replies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dbus_next import Message, MessageType

from sttd import dbus_service
from sttd.bus import Bus

from .bus import SessionBus

NAME, PATH, IFACE = dbus_service.BUS_NAME, dbus_service.OBJECT_PATH, dbus_service.INTERFACE
PROPS = "org.freedesktop.DBus.Properties"
ERROR = dbus_service.ERROR_PREFIX


def call_message(member: str, signature: str = "", body: list[Any] | None = None, interface: str = IFACE) -> Message:
    return Message(
        destination=NAME, path=PATH, interface=interface, member=member, signature=signature, body=body or []
    )


def get_message(name: str) -> Message:
    return call_message("Get", "ss", [IFACE, name], interface=PROPS)


def get_all_message() -> Message:
    return call_message("GetAll", "s", [IFACE], interface=PROPS)


async def connect(bus: SessionBus) -> Bus:
    client: Bus = await Bus(bus_address=bus.address).connect()
    return client


def error_text(reply: Message | None) -> str:
    """``name: text`` of an error reply; "" for a method return."""
    assert reply is not None
    if reply.message_type == MessageType.ERROR:
        return f"{reply.error_name}: {reply.body[0] if reply.body else ''}"
    return ""


KINDS: list[Callable[[], Message]] = [
    lambda: call_message("Start"),
    lambda: get_message("State"),
    lambda: call_message("Toggle"),
    get_all_message,
    lambda: get_message("Level"),
    lambda: call_message("Stop"),
    get_all_message,
    lambda: call_message("Toggle"),
]
