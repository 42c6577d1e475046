"""``sttctl``: a thin D-Bus client of sttd.

It talks only D-Bus. Exit codes: 0 ok, 1 the daemon refused (its message on
stderr), 2 usage, 3 the daemon is not reachable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

from dbus_next import BusType, DBusError, Message, MessageFlag, MessageType, Variant
from dbus_next.aio import MessageBus

from . import __version__
from .dbus_service import BUS_NAME, ERROR_PREFIX, INTERFACE, OBJECT_PATH

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
PROPERTIES = "org.freedesktop.DBus.Properties"
UNREACHABLE_ERRORS = {
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.Spawn.ChildExited",
    "org.freedesktop.DBus.Error.Spawn.ExecFailed",
    "org.freedesktop.DBus.Error.Spawn.ServiceNotFound",
    "org.freedesktop.DBus.Error.Spawn.Failed",
    "org.freedesktop.DBus.Error.TimedOut",
}

SIMPLE_COMMANDS = {
    "start": "Start",
    "stop": "Stop",
    "toggle": "Toggle",
    "cancel": "Cancel",
    "send": "Send",
    "purge": "Purge",
}
# Commands that may start the daemon through bus activation; reading state or
# stopping must not bring up a daemon just to say it is idle.
NO_AUTOSTART = {"stop", "cancel", "status", "listen"}


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
        reply = await self._bus.call(message)
        if reply is None:
            return []
        if reply.message_type == MessageType.ERROR:
            name = reply.error_name or ""
            text = reply.body[0] if reply.body else name
            if name in UNREACHABLE_ERRORS:
                raise Unreachable(text)
            raise Refused(text if name.startswith(ERROR_PREFIX) else f"{name}: {text}")
        return list(reply.body)

    async def properties(self) -> dict[str, Any]:
        (values,) = await self.call("GetAll", "s", [INTERFACE], interface=PROPERTIES)
        return {name: variant.value for name, variant in values.items()}

    async def set_property(self, name: str, variant: Variant) -> None:
        await self.call("Set", "ssv", [INTERFACE, name, variant], interface=PROPERTIES)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sttctl", description="Control sttd, the speech-to-text daemon.")
    parser.add_argument("--version", action="version", version=f"sttctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in [
        ("start", "start dictating"),
        ("stop", "stop; what was said is still transcribed"),
        ("toggle", "start when idle, stop otherwise"),
        ("cancel", "stop and drop what is not transcribed yet"),
        ("send", "send the pending text (like saying the send word)"),
        ("purge", "drop the pending text (like saying the purge word)"),
        ("enable", "allow dictation"),
        ("disable", "refuse dictation until enabled"),
        ("devices", "list the capture sources"),
    ]:
        sub.add_parser(name, help=help_text)
    status = sub.add_parser("status", help="show the daemon's state")
    status.add_argument("--json", action="store_true", help="one JSON object")
    lang = sub.add_parser("lang", help="show or set the language (ISO-639-1 code, or '' for automatic)")
    lang.add_argument("code", nargs="?", help="e.g. en, de; '' for automatic")
    listen = sub.add_parser("listen", help="print transcripts as they arrive, until interrupted")
    listen.add_argument("--json", action="store_true", help="one JSON object per line, every event")
    return parser


async def _run(args: argparse.Namespace) -> int:
    try:
        bus = await MessageBus(bus_type=BusType.SESSION).connect()
    except (OSError, ValueError, DBusError) as exc:
        raise Unreachable(f"no session bus ({exc})") from None
    try:
        client = Client(bus, autostart=args.command not in NO_AUTOSTART)
        return await _dispatch(client, bus, args)
    finally:
        bus.disconnect()


async def _dispatch(client: Client, bus: MessageBus, args: argparse.Namespace) -> int:
    command = args.command
    if command in SIMPLE_COMMANDS:
        await client.call(SIMPLE_COMMANDS[command])
    elif command in ("enable", "disable"):
        await client.set_property("Enabled", Variant("b", command == "enable"))
    elif command == "lang":
        if args.code is None:
            language = (await client.properties())["Language"]
            print(language or "auto")
        else:
            await client.call("SetLanguage", "s", [args.code])
    elif command == "status":
        _print_status(await client.properties(), args.json)
    elif command == "devices":
        (sources,) = await client.call("ListSources")
        for name, description, is_default in sources:
            print(f"{'*' if is_default else ' '} {name}\t{description}")
    elif command == "listen":
        await _listen(bus, client, args.json)
    return EXIT_OK


def _print_status(props: dict[str, Any], as_json: bool) -> None:
    status = {
        "state": props["State"],
        "enabled": props["Enabled"],
        "language": props["Language"],
        "source": props["Source"],
        "transcript": props["PendingText"],
        "last_error": props["LastError"],
    }
    if as_json:
        print(json.dumps(status, ensure_ascii=False))
        return
    print(f"state:      {status['state']}{'' if status['enabled'] else ' (disabled)'}")
    print(f"language:   {status['language'] or 'auto'}")
    print(f"source:     {status['source'] or 'default'}")
    print(f"pending:    {status['transcript']}")
    if status["last_error"]:
        print(f"last error: {status['last_error']}")


async def _listen(bus: MessageBus, client: Client, as_json: bool) -> None:
    """Print events until SIGINT/SIGTERM; survives daemon restarts (the match has no sender).

    With ``--json`` the first line is the current state (all properties), printed
    once the subscription is in place, so a status bar starts out right and
    nothing said after that line is missed.
    """
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
    printer = _json_printer if as_json else _text_printer
    bus.add_message_handler(lambda message: _on_signal(message, printer))
    props = await client.properties()  # also fails with exit 3 when sttd is not running
    printer({"type": "properties", **{_snake(k): v for k, v in props.items()}})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    disconnected = asyncio.ensure_future(bus.wait_for_disconnect())
    await asyncio.wait([asyncio.ensure_future(stop.wait()), disconnected], return_when=asyncio.FIRST_COMPLETED)
    disconnected.cancel()


def _on_signal(message: Message, printer: Callable[[dict[str, Any]], None]) -> bool:
    if message.message_type != MessageType.SIGNAL or message.path != OBJECT_PATH:
        return False
    event: dict[str, Any] | None = None
    if message.interface == INTERFACE and message.member == "Transcript":
        text, final, item_id = message.body
        event = {"type": "transcript", "text": text, "final": final, "item_id": item_id}
    elif message.interface == INTERFACE and message.member == "Triggered":
        event = {"type": "triggered", "name": message.body[0], "text": message.body[1]}
    elif message.interface == INTERFACE and message.member == "Error":
        event = {"type": "error", "code": message.body[0], "message": message.body[1]}
    elif message.interface == PROPERTIES and message.body and message.body[0] == INTERFACE:
        changed = {name: variant.value for name, variant in message.body[1].items()}
        event = {"type": "properties", **{_snake(k): v for k, v in changed.items()}}
    if event is not None:
        printer(event)
    return False


def _snake(name: str) -> str:
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except Unreachable as exc:
        print(f"sttctl: cannot reach sttd ({exc}): is sttd running?", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Refused as exc:
        print(f"sttctl: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
