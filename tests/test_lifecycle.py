"""Start, Stop, Cancel and Toggle in any order and at any speed never wedge sttd.

An impatient hotkey sends Start and Cancel back to back; widgets and
bindings from several clients interleave their calls. Each test pipelines
calls on real bus connections (every call is written before any reply is
read) against the installed ``sttd``, then checks what a user would: every
call got a reply, sttd ends ``idle``, and a following dictation works.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from dbus_next import Message, MessageType

from sttd import dbus_service
from sttd.bus import Bus

from .bus import SessionBus
from .daemon import Sttd
from .realtime_server import FakeRealtimeServer

NAME, PATH, IFACE = dbus_service.BUS_NAME, dbus_service.OBJECT_PATH, dbus_service.INTERFACE


def _call(member: str) -> Message:
    return Message(destination=NAME, path=PATH, interface=IFACE, member=member)


async def _pipelined(bus: Bus, members: list[str]) -> list[Message]:
    """Write every call, then collect every reply (dbus-next sends each at once, in order)."""
    replies = await asyncio.wait_for(asyncio.gather(*(bus.call(_call(m)) for m in members)), 60)
    return [reply for reply in replies if reply is not None]


def _failures(replies: list[Message]) -> list[str]:
    return [f"{r.error_name}: {r.body}" for r in replies if r.message_type == MessageType.ERROR]


def _dictation_still_works(sttd: Sttd, server: FakeRealtimeServer) -> None:
    before = server.connection_count
    assert sttd.ctl("start").returncode == 0
    sttd.wait_state("listening", timeout=15)
    assert server.connection_count > before
    assert sttd.ctl("stop").returncode == 0
    sttd.wait_state("idle", timeout=15)


@pytest.mark.parametrize("second", ["Cancel", "Stop"])
def test_start_then_cancel_or_stop_pipelined_fifty_times(
    sttd: Sttd, session_bus: SessionBus, realtime_server: FakeRealtimeServer, second: str
) -> None:
    async def body() -> list[Message]:
        bus = await Bus(bus_address=session_bus.address).connect()
        try:
            replies: list[Message] = []
            for _ in range(50):
                replies += await _pipelined(bus, ["Start", second])
            return replies
        finally:
            bus.disconnect()

    replies = asyncio.run(body())
    assert len(replies) == 100, "a call got no reply"
    assert _failures(replies) == []
    sttd.wait_state("idle", timeout=20)
    _dictation_still_works(sttd, realtime_server)
    assert "Traceback" not in sttd.log


def test_random_sequences_from_three_clients(
    sttd: Sttd, session_bus: SessionBus, realtime_server: FakeRealtimeServer
) -> None:
    rng = random.Random(19)
    sequences = [[rng.choice(["Start", "Stop", "Cancel", "Toggle"]) for _ in range(60)] for _ in range(3)]

    async def client(members: list[str]) -> list[Message]:
        bus = await Bus(bus_address=session_bus.address).connect()
        try:
            replies: list[Message] = []
            for at in range(0, len(members), 4):  # bursts of four, written before any reply is read
                replies += await _pipelined(bus, members[at : at + 4])
            return replies
        finally:
            bus.disconnect()

    async def body() -> list[list[Message]]:
        return await asyncio.gather(*(client(members) for members in sequences))

    results = asyncio.run(body())
    assert [len(r) for r in results] == [60, 60, 60], "a call got no reply"
    # Start may be refused only as Disabled would be (never here): every call succeeds.
    assert [_failures(r) for r in results] == [[], [], []]
    # Whatever state the last calls left, one Stop brings sttd to idle (Stop also acknowledges an error).
    assert sttd.ctl("stop").returncode == 0
    sttd.wait_state("idle", timeout=20)
    _dictation_still_works(sttd, realtime_server)
    assert realtime_server.max_concurrent_connections <= 1
    assert "Traceback" not in sttd.log
