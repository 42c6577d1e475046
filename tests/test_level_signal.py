"""``Level`` through the wire path (:mod:`sttd.dbus_wire`): a header marshalled once, the body written per send.

sttd's own interface on a real private bus, in this process; a dbus-next
client on another connection (its own thread and loop) sees what any
widget would: each successive value, in order, as a proper
``PropertiesChanged``, interleaved correctly with the other properties'
changes, and a ``Get`` of Level that answers the last value.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import Any

from dbus_next import Message, Variant
from dbus_next.aio import MessageBus
from dbus_next.service import ServiceInterface

from sttd import core, dbus_service
from sttd.dbus_connection import add_match

from .bus import SessionBus

RULE = f"type='signal',interface='{dbus_service.PROPERTIES}',member='PropertiesChanged'"


class _Controller:
    source = ""
    engine = "openai"
    model = "gpt-transcribe"

    def __init__(self) -> None:
        self.dictation = core.Dictation(enabled=True, language="")


class _Client:
    """A D-Bus client on its own thread and event loop: each PropertiesChanged as (sender, serial, body)."""

    def __init__(self, address: str) -> None:
        self.changes: queue.Queue[tuple[str, int, list[Any]]] = queue.Queue()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.bus: MessageBus = asyncio.run_coroutine_threadsafe(self._connect(address), self._loop).result(20)

    async def _connect(self, address: str) -> MessageBus:
        bus = await MessageBus(bus_address=address).connect()

        def handler(message: Message) -> None:
            if message.member == "PropertiesChanged":
                self.changes.put((message.sender, message.serial, list(message.body)))

        bus.add_message_handler(handler)
        await bus.call(add_match(RULE))  # answered once the rule is live
        return bus

    def next(self, what: str) -> tuple[str, int, list[Any]]:
        try:
            return self.changes.get(timeout=10)
        except queue.Empty:
            raise AssertionError(f"no PropertiesChanged within 10 s: waiting for {what}") from None

    def get(self, name: str) -> Any:
        message = Message(
            destination=dbus_service.BUS_NAME,
            path=dbus_service.OBJECT_PATH,
            interface=dbus_service.PROPERTIES,
            member="Get",
            signature="ss",
            body=[dbus_service.INTERFACE, name],
        )
        reply = asyncio.run_coroutine_threadsafe(self.bus.call(message), self._loop).result(10)
        return reply.body[0].value

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self.bus.disconnect)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@contextlib.contextmanager
def _client(address: str) -> Iterator[_Client]:
    client = _Client(address)
    try:
        yield client
    finally:
        client.close()


LEVELS = [0.25, 0.5, 0.125, 0.999, 1.0, 0.0, 0.003, 0.731]


def test_a_client_sees_each_level_in_order_among_the_other_property_changes(session_bus: SessionBus) -> None:
    async def scenario(client: _Client) -> None:
        interface = dbus_service.SttdInterface(_Controller())  # type: ignore[arg-type]
        bus = await dbus_service.export(interface)
        interface.serve()
        ordinary: list[str] = []  # the properties that went through dbus-next's own message building
        notify = bus._interface_signal_notify

        def spy(*args: Any) -> None:
            ordinary.extend(args[4][1])
            notify(*args)

        bus._interface_signal_notify = spy
        try:
            for n, level in enumerate(LEVELS):
                interface.set_level(level)
                if n == 2:
                    # A message sent dbus-next's own way waits in its queue until the loop
                    # runs: the Levels after it must queue behind it, not overtake it.
                    ServiceInterface.emit_properties_changed(interface, {"State": "listening"})
                    interface.set_level(0.5)
            interface.set_level(0.731)  # unchanged: nothing is sent
            interface.emit_properties_changed({"PendingText": "end"})
            await asyncio.to_thread(check, client, bus.unique_name)
            assert ordinary == ["State"]  # every other change took the wire path
        finally:
            interface.disconnect()

    def check(client: _Client, sender: str) -> None:
        seen: list[Any] = []
        serials: list[int] = []
        while not seen or seen[-1] != ("PendingText", "end"):
            who, serial, (interface, changed, invalidated) = client.next(f"the changes after {seen}")
            assert (who, interface, invalidated) == (sender, dbus_service.INTERFACE, [])
            assert len(changed) == 1 and all(isinstance(v, Variant) for v in changed.values())
            ((name, variant),) = changed.items()
            assert variant.signature == ("d" if name == "Level" else "s")
            seen.append((name, variant.value))
            serials.append(serial)
        expected = [("Level", v) for v in LEVELS]
        expected[3:3] = [("State", "listening"), ("Level", 0.5)]
        assert seen == [*expected, ("PendingText", "end")]
        assert len(set(serials)) == len(serials) and 0 not in serials  # each message its own serial
        assert client.get("Level") == LEVELS[-1]  # a method reply after them: serials still line up

    with _client(session_bus.address) as client:
        asyncio.run(scenario(client))
