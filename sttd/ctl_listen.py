"""``sttctl listen``: sttd's signals and property changes printed as they arrive, as text or JSON lines.

It subscribes before it prints anything, follows the daemon across restarts
(NameOwnerChanged) and stops on SIGINT/SIGTERM; it talks only D-Bus,
through :class:`~sttd.ctl_client.Client`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

from dbus_next import Message, MessageType
from dbus_next.aio import MessageBus

from .ctl_client import EXIT_OK, Client, Refused, Unreachable
from .dbus_connection import add_match
from .dbus_service import BUS_NAME, INTERFACE, OBJECT_PATH, PROPERTIES
from .redact import redact


async def _add_match(bus: MessageBus, rule: str) -> None:
    reply = await bus.call(add_match(rule))
    if reply is not None and reply.message_type == MessageType.ERROR:
        raise Unreachable(f"the bus refused a subscription: {reply.body[0] if reply.body else reply.error_name}")


async def listen(bus: MessageBus, client: Client, as_json: bool) -> int:
    """Print events until SIGINT/SIGTERM.

    With ``--json`` every line is one JSON object with a ``type``:
    ``properties`` (the changed properties, snake_case; the first line holds
    all of them, printed once the subscription is in place, so a status bar
    starts out right and nothing said after that line is missed),
    ``transcript``, ``triggered``, ``error``, and ``daemon`` (``running``
    false when sttd leaves the bus, true when one comes back, followed by all
    its properties). It survives daemon restarts; it exits 3 when sttd is not
    running at the start or the bus goes away.
    """
    for rule in (
        f"type='signal',path='{OBJECT_PATH}',interface='{INTERFACE}'",
        f"type='signal',path='{OBJECT_PATH}',interface='{PROPERTIES}',member='PropertiesChanged'",
        f"type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{BUS_NAME}'",
    ):
        await _add_match(bus, rule)
    stop = asyncio.Event()
    failed: list[BaseException] = []
    tasks: set[asyncio.Task[None]] = set()
    base_printer = _json_printer if as_json else _text_printer

    def printer(event: dict[str, Any]) -> None:
        if stop.is_set():
            return
        try:
            base_printer(event)
        except OSError as exc:  # the reader went away (BrokenPipeError) or the disk is full
            failed.append(exc)
            stop.set()

    async def daemon_back() -> None:
        try:
            props = await client.properties()
        except (Unreachable, Refused):
            return  # gone again: its departure is announced by the next NameOwnerChanged
        printer(_properties_event(props))

    def on_owner_changed(new_owner: str) -> None:
        printer({"type": "daemon", "running": bool(new_owner)})
        if new_owner:
            task = asyncio.ensure_future(daemon_back())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    bus.add_message_handler(lambda message: _on_signal(message, printer, on_owner_changed))
    printer(_properties_event(await client.properties()))  # fails with exit 3 when sttd is not running
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopped = asyncio.ensure_future(stop.wait())
    disconnected = asyncio.ensure_future(bus.wait_for_disconnect())
    await asyncio.wait([stopped, disconnected], return_when=asyncio.FIRST_COMPLETED)
    for task in (stopped, disconnected, *tasks):
        task.cancel()
    if failed:
        raise failed[0]
    if not stop.is_set():
        raise Unreachable("the session bus closed the connection")
    return EXIT_OK


def _properties_event(props: dict[str, Any]) -> dict[str, Any]:
    if "LastError" in props:
        props = {**props, "LastError": redact(props["LastError"])}
    return {"type": "properties", **{_snake(k): v for k, v in props.items()}}


def _on_signal(
    message: Message, printer: Callable[[dict[str, Any]], None], on_owner_changed: Callable[[str], None]
) -> bool:
    if message.message_type != MessageType.SIGNAL:
        return False
    if message.member == "NameOwnerChanged" and message.interface == "org.freedesktop.DBus":
        if message.body and message.body[0] == BUS_NAME:
            on_owner_changed(message.body[2])
        return False
    if message.path != OBJECT_PATH:
        return False
    event: dict[str, Any] | None = None
    if message.interface == INTERFACE and message.member == "Transcript":
        text, final, item_id = message.body
        event = {"type": "transcript", "text": text, "final": final, "item_id": item_id}
    elif message.interface == INTERFACE and message.member == "Triggered":
        event = {"type": "triggered", "name": message.body[0], "text": message.body[1]}
    elif message.interface == INTERFACE and message.member == "Error":
        event = {"type": "error", "code": message.body[0], "message": redact(message.body[1])}
    elif message.interface == PROPERTIES and message.body and message.body[0] == INTERFACE:
        event = _properties_event({name: variant.value for name, variant in message.body[1].items()})
    if event is not None:
        printer(event)
    return False


def _snake(name: str) -> str:
    """D-Bus property names as ``status --json`` spells them (PendingText is the transcript)."""
    return {"PendingText": "transcript", "LastError": "last_error"}.get(name, name.lower())


def _json_printer(event: dict[str, Any]) -> None:
    print(json.dumps(event, ensure_ascii=False), flush=True)


def _text_printer(event: dict[str, Any]) -> None:
    if event["type"] == "transcript" and event["final"]:
        print(event["text"], flush=True)
    elif event["type"] == "triggered":
        print(f"[{event['name']}] {event['text']}", flush=True)
    elif event["type"] == "error":
        print(f"[error] {event['message']}", file=sys.stderr, flush=True)
    elif event["type"] == "daemon":
        print(f"[sttd {'is back' if event['running'] else 'left the bus'}]", file=sys.stderr, flush=True)
