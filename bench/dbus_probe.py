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

``Transcript`` signals are read by a process of their own, forked at start
(:func:`read_transcripts`): a bare socket subscribed to ``Transcript`` only,
each signal stamped as soon as the read that completes it returns, before
anything is parsed. Through one dbus-next connection a turn's final
``Transcript`` would wait behind the parsing of the State, Level, partial and
PendingText messages before it (50-100 µs each in Python): that is the
client's cost, not sttd's or the bus's.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import select
import struct
import sys
import time
from typing import Any

from dbus_next import Message, MessageType
from dbus_next._private.unmarshaller import Unmarshaller
from dbus_next.aio import MessageBus
from dbus_next.constants import BusType

from sttd.dbus_connection import add_match
from tests.bus import RawPeer

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
    if message.interface == PROPERTIES and message.member == "PropertiesChanged":
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


TRANSCRIPTS = f"type='signal',path='{OBJECT_PATH}',interface='{INTERFACE}',member='Transcript'"


def read_transcripts(ready: int, parent: int) -> None:
    """The forked reader: every ``Transcript`` as a JSON line, stamped when its last byte is read.

    Writes a byte to ``ready`` once the subscription is live; returns when the
    bus closes or ``parent`` (the read end of a pipe the probe holds open) ends.
    """
    peer = RawPeer(os.environ["DBUS_SESSION_BUS_ADDRESS"])
    peer.send([add_match(TRANSCRIPTS)])  # serial 2, after Hello's 1
    peer.sock.settimeout(None)
    buffer = bytearray()
    while True:
        readable, _, _ = select.select([peer.sock, parent], [], [])
        if parent in readable:
            return
        chunk = peer.sock.recv(1 << 16)
        t = time.monotonic()
        if not chunk:
            return
        buffer += chunk
        for message in _complete_messages(buffer):
            if message.message_type == MessageType.METHOD_RETURN and message.reply_serial == 2:
                os.write(ready, b"1")
            elif message.message_type == MessageType.SIGNAL and message.member == "Transcript":
                text, final, item_id = message.body
                emit({"kind": "transcript", "text": text, "final": bool(final), "item_id": item_id, "t": t})


def _complete_messages(buffer: bytearray) -> list[Message]:
    """Take every whole message off the front of ``buffer`` (little endian, as dbus-daemon sends to us)."""
    found = []
    while len(buffer) >= 16:
        (body,) = struct.unpack_from("<I", buffer, 4)
        (fields,) = struct.unpack_from("<I", buffer, 12)
        header = 16 + fields + (-(16 + fields) % 8)
        if len(buffer) < header + body:
            break
        unmarshaller = Unmarshaller(io.BytesIO(bytes(buffer[: header + body])))
        unmarshaller.unmarshall()
        found.append(unmarshaller.message)
        del buffer[: header + body]
    return found


def fork_transcript_reader() -> int:
    """Start :func:`read_transcripts` in a child; returns once it is subscribed. Keep the fd returned open."""
    ready_r, ready_w = os.pipe()
    alive_r, alive_w = os.pipe()
    if os.fork() == 0:  # before any thread or event loop exists: a plain fork is safe
        os.close(ready_r)
        os.close(alive_w)
        try:
            read_transcripts(ready_w, alive_r)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(alive_r)
    readable, _, _ = select.select([ready_r], [], [], 15)
    if not readable or os.read(ready_r, 1) != b"1":
        raise SystemExit("the Transcript reader did not subscribe within 15 s")
    os.close(ready_r)
    return alive_w


async def main() -> int:
    bus = await MessageBus(bus_type=BusType.SESSION).connect()
    for rule in (f"type='signal',path='{OBJECT_PATH}',interface='{PROPERTIES}',member='PropertiesChanged'",):
        await bus.call(add_match(rule))
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
    _alive = fork_transcript_reader()  # held open until this process exits: then the reader ends too
    sys.exit(asyncio.run(main()))
