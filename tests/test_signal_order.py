"""The ``Transcript`` signal is on the bus before the transcript hook's process starts.

A hook's fork and exec block sttd's event loop for a millisecond or more, so
a signal still queued when the hook starts waits that long. Two views, both
with a real bus and real hook processes, neither timed:

* in this process, with sttd's D-Bus interface, core and hook runner: once
  the outputs are published, a client on another connection receives the
  signal while sttd's event loop is held (so nothing, and no hook, could
  have run in between), and the hook runs only afterwards;
* the installed daemon, whose hook announces its own start on the bus: on
  the listening client's one connection, every ``Transcript`` comes before
  the start of its hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dbus_next import Message
from dbus_next.aio import MessageBus

from sttd import core, dbus_service
from sttd import protocol as p
from sttd.config import HooksConfig, OutputConfig
from sttd.dbus_connection import add_match
from sttd.fanout import Fanout
from sttd.hooks import HookRunner
from sttd.systemd import Notifier

from .bus import SessionBus, require, wait_until
from .daemon import running_sttd
from .realtime_server import FakeRealtimeServer
from .sound import SoundServer

HOOK_SIGNAL = "io.github.sttd.Test"


class _Controller:
    """What SttdInterface reads of the daemon; the dictation is a real core."""

    source = ""
    engine = "openai"
    model = "gpt-transcribe"

    def __init__(self) -> None:
        self.dictation = core.Dictation(enabled=True, language="", triggers=core.Triggers(r"\bsend\b", r"\bpurge\b"))


class _Client:
    """A D-Bus client on its own thread and event loop: every signal matching ``rules``, in arrival order."""

    def __init__(self, address: str, *rules: str) -> None:
        self.signals: queue.Queue[tuple[str, list[Any]]] = queue.Queue()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._bus: MessageBus = asyncio.run_coroutine_threadsafe(self._connect(address, rules), self._loop).result(20)

    async def _connect(self, address: str, rules: tuple[str, ...]) -> MessageBus:
        bus = await MessageBus(bus_address=address).connect()

        def handler(message: Message) -> None:
            if message.message_type.name == "SIGNAL" and message.member != "NameAcquired":
                self.signals.put((message.member, list(message.body)))

        bus.add_message_handler(handler)
        for rule in rules:  # each AddMatch is answered once the rule is live
            await bus.call(add_match(rule))
        return bus

    def next(self, timeout: float, what: str) -> tuple[str, list[Any]]:
        try:
            return self.signals.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no signal within {timeout} s: waiting for {what}") from None

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._bus.disconnect)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@contextlib.contextmanager
def _client(address: str, *rules: str) -> Iterator[_Client]:
    client = _Client(address, *rules)
    try:
        yield client
    finally:
        client.close()


TRANSCRIPT_RULE = f"type='signal',interface='{dbus_service.INTERFACE}',member='Transcript'"


def test_the_signal_is_on_the_bus_before_the_loop_can_start_a_hook(session_bus: SessionBus, tmp_path: Path) -> None:
    started = tmp_path / "hook-started"
    hooks = HooksConfig(transcript=(require("sh"), "-c", 'echo "$STTD_ITEM_ID" >> "$0"', str(started)))

    def hook_runs() -> list[str]:
        return started.read_text().split() if started.exists() else []

    async def scenario(client: _Client) -> None:
        controller = _Controller()
        interface = dbus_service.SttdInterface(controller)  # type: ignore[arg-type]
        await dbus_service.export(interface)
        interface.serve()
        runner = HookRunner(hooks, OutputConfig())
        fanout = Fanout(controller.dictation, runner, Notifier())
        fanout.interface = interface
        worker = asyncio.create_task(runner.run())
        dictation = controller.dictation
        dictation.start()
        dictation.session_ready()
        previous = None
        try:
            for n in range(3):
                item = f"item_{n}"
                dictation.server_event(p.Committed(item, previous))
                dictation.server_event(p.TranscriptionCompleted(item, f"words number {n}"))
                previous = item
                fanout.publish()
                # The event loop is held from here until the signal is seen: had the signal
                # not been written yet, it could not be, and the hook could not start either.
                member, body = client.next(10, f"Transcript of {item} while sttd's loop is held")
                assert (member, body) == ("Transcript", [f"words number {n}", True, item])
                assert item not in hook_runs()
                await asyncio.to_thread(wait_until, lambda i=item: i in hook_runs(), 10, f"the hook for {item}")
            assert hook_runs() == ["item_0", "item_1", "item_2"]
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            interface.disconnect()

    with _client(session_bus.address, TRANSCRIPT_RULE) as client:
        asyncio.run(asyncio.wait_for(scenario(client), 60))


def test_with_a_transcript_hook_each_transcript_reaches_a_client_before_its_hook_starts(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    send = require("dbus-send")
    # The hook's first act is a signal on the same bus: dbus-daemon delivers to one client in
    # the order it received, so the listener sees the Transcript first only if sttd sent it first.
    announce = f'exec {send} --session --type=signal /hook {HOOK_SIGNAL}.HookStarted "string:$STTD_ITEM_ID"'
    hook = json.dumps([shutil.which("sh") or "sh", "-c", announce])
    config = f'model = "gpt-transcribe"\n\n[hooks]\ntranscript = {hook}\n'
    with (
        running_sttd(tmp_path, session_bus, pulse_server, realtime_server, extra_config=config) as sttd,
        _client(session_bus.address, TRANSCRIPT_RULE, f"type='signal',interface='{HOOK_SIGNAL}'") as client,
    ):
        assert sttd.ctl("start").returncode == 0
        sttd.wait_state("listening")
        items = [realtime_server.force_turn(f"turn number {n}") for n in range(4)]
        order: list[tuple[str, str]] = []
        while sum(1 for kind, _ in order if kind == "hook") < len(items):
            member, body = client.next(15, f"the transcripts and hooks of {items}; saw {order}")
            if member == "HookStarted":
                order.append(("hook", body[0]))
            elif member == "Transcript" and body[1]:
                order.append(("final", body[2]))
        for item in items:
            assert order.index(("final", item)) < order.index(("hook", item)), order
        assert sttd.ctl("stop").returncode == 0
