"""sttd's D-Bus layer as it ends and as its bus goes away: calls in flight at shutdown or SIGTERM are
answered, and after the bus restarts the interface is exported and the name owned again.

Where a test needs the D-Bus layer without a daemon (shutdown, reconnect), it exports
:class:`sttd.dbus_service.SttdInterface` in this process over the same real bus; otherwise the
installed ``sttd`` runs on a private dbus-daemon with PulseAudio and the fake Realtime service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import threading
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from dbus_next import MessageType

from sttd import core, dbus_service

from .bus import SessionBus, wait_until, wait_until_async
from .daemon import Sttd, leaks_python, running_sttd
from .dbus_peer import ERROR, KINDS, call_message, connect, error_text, get_message
from .realtime_server import FakeRealtimeServer
from .sound import SoundServer

T = TypeVar("T")


# ------------------------------------------------------------------ the D-Bus layer in this process


class _Controller:
    """A daemon stand-in whose Start runs until sttd shuts down (a Start waiting for a slow microphone)."""

    dictation = core.Dictation(enabled=True, language="", triggers=core.Triggers(r"\bsend\b", r"\bpurge\b"))
    source = ""
    engine = "openai"
    model = "gpt-live-transcribe"
    shortcuts_status = "disabled"

    def __init__(self) -> None:
        self.started = 0

    async def start(self) -> None:
        self.started += 1
        await asyncio.Event().wait()

    def stop(self) -> None:
        pass

    def output(self) -> tuple[str, str]:
        return "none", '[output] mode = "none"'


class _Loop:
    """An event loop in a thread, for exporting the interface while the test acts as the clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@contextlib.contextmanager
def _records() -> Iterator[list[logging.LogRecord]]:
    """Every log record at INFO and above, from every thread, while the block runs."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler, root = Collect(logging.INFO), logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield records
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _no_tracebacks(records: list[logging.LogRecord]) -> None:
    bad = [r for r in records if r.exc_info or leaks_python(r.getMessage())]
    assert not bad, [(r.name, r.getMessage()) for r in bad]


def test_shutting_down_answers_every_call_in_flight_and_refuses_new_ones(session_bus: SessionBus) -> None:
    loop = _Loop()
    controller = _Controller()
    try:
        with _records() as records:
            interface = dbus_service.SttdInterface(controller)  # type: ignore[arg-type]
            loop.run(dbus_service.export(interface))
            interface.serve()

            async def calls() -> list[str]:
                client = await connect(session_bus)
                try:
                    pending = [asyncio.ensure_future(client.call(call_message("Start"))) for _ in range(20)]
                    await wait_until_async(lambda: controller.started == 20, 10, "20 Starts in flight")
                    stopping = asyncio.wrap_future(
                        asyncio.run_coroutine_threadsafe(interface.shutting_down(), loop.loop)
                    )
                    answers = [error_text(r) for r in await asyncio.wait_for(asyncio.gather(*pending), 10)]
                    await asyncio.wait_for(stopping, 10)
                    answers.append(error_text(await client.call(call_message("Toggle"))))
                    answers.append(error_text(await client.call(get_message("State"))))  # properties still read
                    return answers
                finally:
                    client.disconnect()

            *refused, state = asyncio.run(calls())
            interface.disconnect()
        assert all(a.startswith(f"{ERROR}ShuttingDown: sttd is shutting down") for a in refused), refused
        assert state == ""
        _no_tracebacks(records)
    finally:
        loop.close()


def test_sigterm_with_calls_in_flight_answers_them_and_exits_cleanly(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    realtime_server.configure(handshake_delay_s=1.0)  # Starts and Toggles are mid-handshake at SIGTERM
    # A reply, sttd's own ShuttingDown, or the bus saying sttd has left (NoReply; ServiceUnknown for a
    # call the bus had not passed on yet; LimitsExceeded when the bus itself caps the replies it keeps
    # pending for one connection): never a timeout, never a Failed.
    clean = {
        "",
        f"{ERROR}ShuttingDown",
        "org.freedesktop.DBus.Error.NoReply",
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.LimitsExceeded",
    }

    async def calls(sttd: Sttd) -> list[str]:
        client = await connect(session_bus)
        try:
            pending = [asyncio.ensure_future(client.call(KINDS[i % len(KINDS)]())) for i in range(200)]
            await asyncio.sleep(0)
            sttd.process.send_signal(signal.SIGTERM)
            replies = await asyncio.wait_for(asyncio.gather(*pending), 30)
            return [error_text(r).split(":", 1)[0] for r in replies]
        finally:
            client.disconnect()

    with running_sttd(tmp_path, session_bus, pulse_server, realtime_server) as sttd:
        answers = asyncio.run(calls(sttd))
        assert sttd.process.wait(15) == 0
        log = sttd.log
    assert set(answers) <= clean, set(answers) - clean
    assert not leaks_python(log), log[-5000:]
    assert not re.search(r"\b(ERROR|CRITICAL)\b.*(Exception in callback|never retrieved)", log), log[-5000:]


# ------------------------------------------------------------------ losing the bus


def test_export_again_after_the_bus_restarts(tmp_path: Path) -> None:
    bus = SessionBus(tmp_path / "bus", socket_path=tmp_path / "bus" / "socket")
    loop = _Loop()
    os.environ["DBUS_SESSION_BUS_ADDRESS"], saved = bus.address, os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    try:
        with _records() as records:
            interface = dbus_service.SttdInterface(_Controller())  # type: ignore[arg-type]
            loop.run(dbus_service.export(interface))
            interface.serve()
            staying = asyncio.run_coroutine_threadsafe(dbus_service.stay_exported(interface), loop.loop)
            first = interface.bus

            async def model() -> str:
                client = await connect(bus)
                try:
                    reply = await client.call(get_message("Model"))
                    assert reply is not None and reply.message_type == MessageType.METHOD_RETURN, error_text(reply)
                    return str(reply.body[0].value)
                finally:
                    client.disconnect()

            assert asyncio.run(model()) == "gpt-live-transcribe"
            bus.restart()
            wait_until(lambda: interface.bus is not first and not staying.done(), 20, "the interface on the new bus")
            assert asyncio.run(model()) == "gpt-live-transcribe"
            loop.run(interface.shutting_down())
            interface.disconnect()
            staying.result(10)  # returns once sttd itself left
        messages = [r.getMessage() for r in records]
        assert any("lost the session bus connection" in m for m in messages), messages
        assert any("back on the session bus" in m for m in messages), messages
        _no_tracebacks(records)
    finally:
        if saved is None:
            os.environ.pop("DBUS_SESSION_BUS_ADDRESS", None)
        else:
            os.environ["DBUS_SESSION_BUS_ADDRESS"] = saved
        loop.close()
        bus.stop()


@pytest.mark.timeout(90)
def test_sttd_owns_its_name_again_after_the_bus_restarts(
    tmp_path: Path, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    bus = SessionBus(tmp_path / "bus", socket_path=tmp_path / "bus" / "socket")
    (tmp_path / "sttd").mkdir()
    try:
        with running_sttd(tmp_path / "sttd", bus, pulse_server, realtime_server) as sttd:
            assert sttd.ctl("start").returncode == 0
            sttd.wait_state("listening")
            bus.restart()
            wait_until(lambda: sttd.ctl("status").returncode == 0, 30, "sttd back on the restarted bus", interval=0.2)
            assert sttd.process.poll() is None
            assert sttd.status()["state"] == "listening"  # the dictation went on
            assert sttd.ctl("stop").returncode == 0
            sttd.wait_state("idle")
            log = sttd.log
        assert not leaks_python(log), log[-5000:]
    finally:
        bus.stop()
