"""A D-Bus client for the benchmark, in a process of its own: it time-stamps what it sees.

Run as ``python -m bench.dbus_probe`` with ``DBUS_SESSION_BUS_ADDRESS`` set.
It subscribes to sttd's signals and ``PropertiesChanged`` and prints one
JSON line per event on stdout, each with ``t``, the ``time.monotonic()`` at
which the message was handed to this client (``CLOCK_MONOTONIC`` is the same
clock in every process of the machine):

* ``{"kind": "ready"}`` once the subscriptions are in place;
* ``{"kind": "transcript", "text", "final", "item_id", "t"}`` per ``Transcript``;
* ``{"kind": "state", "value", "t"}`` per change of ``State``;
* ``{"kind": "call", "method", "t_sent", "t_reply", "error"}`` for every method
  name read from stdin (one per line: ``Start``, ``Stop``, ``Cancel``):
  ``t_sent`` is taken just before the call is written to the bus.

It exits at the end of stdin. It is a separate process so that its time
stamps do not wait for the benchmark's own threads (one GIL per process).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from dbus_next import Message, MessageType
from dbus_next.aio import MessageBus
from dbus_next.constants import BusType

BUS_NAME = "io.github.sttd.Sttd1"
OBJECT_PATH = "/io/github/sttd/Sttd1"
INTERFACE = "io.github.sttd.Sttd1"
PROPERTIES = "org.freedesktop.DBus.Properties"
CALL_TIMEOUT_S = 10.0


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def on_message(message: Message) -> None:
    t = time.monotonic()
    if message.message_type != MessageType.SIGNAL or message.path != OBJECT_PATH:
        return
    if message.interface == INTERFACE and message.member == "Transcript":
        text, final, item_id = message.body
        emit({"kind": "transcript", "text": text, "final": bool(final), "item_id": item_id, "t": t})
    elif message.interface == PROPERTIES and message.member == "PropertiesChanged":
        changed = message.body[1]
        if "State" in changed:
            emit({"kind": "state", "value": changed["State"].value, "t": t})


async def call(bus: MessageBus, method: str) -> None:
    message = Message(destination=BUS_NAME, path=OBJECT_PATH, interface=INTERFACE, member=method)
    t_sent = time.monotonic()
    error = ""
    try:
        reply = await asyncio.wait_for(bus.call(message), CALL_TIMEOUT_S)
        if reply is not None and reply.message_type == MessageType.ERROR:
            error = f"{reply.error_name}: {reply.body[0] if reply.body else ''}"
    except TimeoutError:
        error = f"no reply within {CALL_TIMEOUT_S} s"
    emit({"kind": "call", "method": method, "t_sent": t_sent, "t_reply": time.monotonic(), "error": error})


async def main() -> int:
    bus = await MessageBus(bus_type=BusType.SESSION).connect()
    for rule in (
        f"type='signal',path='{OBJECT_PATH}',interface='{INTERFACE}'",
        f"type='signal',path='{OBJECT_PATH}',interface='{PROPERTIES}',member='PropertiesChanged'",
    ):
        await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=[rule],
            )
        )
    bus.add_message_handler(on_message)
    emit({"kind": "ready", "t": time.monotonic()})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        method = line.decode().strip()
        if method:
            await call(bus, method)
    bus.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
