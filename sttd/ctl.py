"""``sttctl``: a thin D-Bus client of sttd.

It talks only D-Bus. Exit codes: 0 ok, 1 the daemon refused (its message on
stderr), 2 usage, 3 the daemon is not reachable.

Commands that ask for something to happen (``start``, ``toggle``, ``enable``,
``disable``, ``lang CODE``) let the bus start sttd when its activation file is
installed; queries and ``stop``/``cancel``/``send``/``purge`` never bring up a
daemon (there is nothing to stop, and a fresh daemon has nothing to send).

The D-Bus call itself is :mod:`sttd.ctl_client`, ``listen``
:mod:`sttd.ctl_listen`, and ``shape`` (which needs no daemon)
:mod:`sttd.ctl_shape`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import stat
import sys
from collections.abc import Callable
from typing import Any

from dbus_next import BusType, DBusError, Variant
from dbus_next.aio import MessageBus

from . import __version__, modelctl
from .ctl_client import EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, Client, Refused, Unreachable
from .ctl_listen import listen
from .ctl_shape import shape
from .models import model_info
from .redact import redact

__all__ = ["COMMANDS", "EXIT_OK", "EXIT_REFUSED", "EXIT_UNREACHABLE", "EXIT_USAGE", "main"]

SIMPLE_COMMANDS = {
    "start": "Start",
    "stop": "Stop",
    "toggle": "Toggle",
    "cancel": "Cancel",
    "send": "Send",
    "purge": "Purge",
    "undo": "Undo",
}
COMMANDS = [
    ("start", "start dictating"),
    ("stop", "stop; what was said is still transcribed"),
    ("toggle", "start when idle, stop otherwise"),
    ("cancel", "stop and drop what is not transcribed yet"),
    ("send", "send the pending text (like saying the send word)"),
    ("purge", "drop the pending text (like saying the purge word)"),
    ("undo", "take back the text sttd last put into the window"),
    ("status", "show the daemon's state"),
    ("lang", "show or set the language (ISO-639-1 code, or '' for automatic)"),
    ("enable", "allow dictation (persisted)"),
    ("disable", "refuse dictation until enabled (persisted)"),
    ("listen", "print transcripts as they arrive, until interrupted"),
    ("devices", "list the capture sources (* marks the default)"),
    ("shape", "show what the shaping step makes of TEXT (each argument one utterance; reads the config, no daemon)"),
    ("shortcuts", "list the desktop shortcuts and their keys, as the desktop reports them"),
    ("hold", "start now; stop on SIGTERM, SIGINT or when stdin closes (for a key-release binding)"),
    ("model", "download or list the offline engine's models (works without sttd)"),
]
# Commands that may start the daemon through bus activation.
AUTOSTART = {"start", "toggle", "enable", "disable", "hold"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sttctl",
        description="Control sttd, the speech-to-text daemon.",
        epilog="Exit status: 0 ok, 1 sttd refused, 2 usage, 3 sttd not reachable.",
    )
    parser.add_argument("--version", action="version", version=f"sttctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {name: sub.add_parser(name, help=help_text, description=help_text) for name, help_text in COMMANDS}
    for name in ("start", "toggle"):
        parsers[name].add_argument("--profile", metavar="NAME", help="use [profiles.NAME] for this dictation")
        parsers[name].add_argument("--lang", metavar="CODE", help="dictate in this language (this dictation only)")
    parsers["shape"].add_argument("text", nargs="+", help="what the recognizer wrote (each argument one utterance)")
    parsers["shape"].add_argument("--config", metavar="PATH", help="the config file (default: sttd's)")
    parsers["shape"].add_argument("--profile", metavar="NAME", help="shape as [profiles.NAME] does")
    parsers["shape"].add_argument("--lang", metavar="CODE", help="shape for this language (default: the config's)")
    parsers["status"].add_argument("--json", action="store_true", help="one JSON object")
    parsers["lang"].add_argument("code", nargs="?", help="e.g. en, de; '' for automatic")
    parsers["listen"].add_argument("--json", action="store_true", help="one JSON object per line, every event")
    modelctl.add_arguments(parsers["model"])
    return parser


async def _run(args: argparse.Namespace) -> int:
    try:
        bus = await MessageBus(bus_type=BusType.SESSION).connect()
    except (OSError, ValueError, EOFError, DBusError) as exc:
        raise Unreachable(f"no session bus: {exc}") from None
    try:
        autostart = args.command in AUTOSTART or (args.command == "lang" and args.code is not None)
        return await _dispatch(Client(bus, autostart), bus, args)
    finally:
        bus.disconnect()


def _start_options(args: argparse.Namespace) -> dict[str, Variant]:
    """``StartWith`` options from ``--profile`` and ``--lang`` (empty: a plain Start)."""
    values = {}
    if getattr(args, "profile", None) is not None:
        values["profile"] = Variant("s", args.profile)
    if getattr(args, "lang", None) is not None:
        values["language"] = Variant("s", args.lang)
    return values


async def _dispatch(client: Client, bus: MessageBus, args: argparse.Namespace) -> int:
    command = args.command
    start_options = _start_options(args) if command in ("start", "toggle") else {}
    if start_options:
        active = command == "toggle" and (await client.properties())["State"] not in ("idle", "error")
        if active:
            await client.call("Stop")
        else:
            await client.call("StartWith", "a{sv}", [start_options])
    elif command in SIMPLE_COMMANDS:
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
        return await listen(bus, client, args.json)
    elif command == "shortcuts":
        (shortcuts,) = await client.call("ListShortcuts")
        for shortcut_id, description, trigger in shortcuts:
            print(f"{shortcut_id}\t{trigger or '(no key)'}\t{description}")
    elif command == "hold":
        return await _hold(bus, client)
    return EXIT_OK


def _print_status(props: dict[str, Any], as_json: bool) -> None:
    model = props.get("Model", "")
    status = {
        "state": props["State"],
        "enabled": props["Enabled"],
        "language": props["Language"],
        "source": props["Source"],
        "transcript": props["PendingText"],
        "last_error": redact(props["LastError"]),
        "engine": props.get("Engine", ""),
        "model": model,
        "price": _price(model),
        "profile": props.get("Profile", ""),
        "output": props.get("Output", ""),
        "output_reason": props.get("OutputReason", ""),
        "shortcuts": props.get("Shortcuts", ""),
    }
    if as_json:
        print(json.dumps(status, ensure_ascii=False))
        return
    print(f"state:      {status['state']}{'' if status['enabled'] else ' (disabled)'}")
    print(f"language:   {status['language'] or 'auto'}")
    if status["profile"]:
        print(f"profile:    {status['profile']}")
    print(f"engine:     {status['engine'] or 'none'}")
    print(f"model:      {_model_line(model, status['price'])}")
    print(f"source:     {status['source'] or 'default'}")
    if status["output"]:
        print(f"output:     {status['output']} ({status['output_reason']})")
    print(f"pending:    {status['transcript']}")
    if status["shortcuts"]:
        print(f"shortcuts:  {status['shortcuts']}")
    if status["last_error"]:
        print(f"last error: {status['last_error']}")


async def _hold(bus: MessageBus, client: Client) -> int:
    """Start, then Stop once told to let go: SIGTERM, SIGINT, or stdin closing (when it is a pipe or terminal).

    Made for a compositor binding on the key's release (``bindsym --release``,
    ``bindr``) that ends this process. stdin is watched only when it is a
    pipe, socket or terminal: a compositor may start commands with
    ``/dev/null`` there, which reads as closed at once.
    """
    loop = asyncio.get_running_loop()
    release = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, release.set)
    await client.call("Start")
    watching = _watch_stdin(loop, release.set)
    let_go = asyncio.ensure_future(release.wait())
    disconnected = asyncio.ensure_future(bus.wait_for_disconnect())
    try:
        await asyncio.wait([let_go, disconnected], return_when=asyncio.FIRST_COMPLETED)
    finally:
        let_go.cancel()
        disconnected.cancel()
        if watching:
            loop.remove_reader(sys.stdin.fileno())
            os.set_blocking(sys.stdin.fileno(), True)  # a terminal's flags are the shell's too
    if not release.is_set():
        raise Unreachable("the session bus closed the connection")
    await client.call("Stop")
    return EXIT_OK


def _watch_stdin(loop: asyncio.AbstractEventLoop, closed: Callable[[], None]) -> bool:
    try:
        fd = sys.stdin.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):
        return False
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)):
        return False

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            closed()

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    return True


def _price(model: str) -> str:
    if model.startswith("local:"):
        return "offline, free"  # the offline engine: nothing leaves the machine, nothing is billed
    return model_info(model).price if model else ""


def _model_line(model: str, price: str) -> str:
    """``gpt-live-transcribe ($0.017 per minute)``: what is in use and what it costs."""
    if not model:
        return "unknown"
    return f"{model} ({price})" if price != "unknown" else f"{model} (price unknown)"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # usage errors exit 2
    if args.command == "model":  # the model cache, not the daemon
        return modelctl.run(args)
    try:
        if args.command == "shape":  # no daemon either, but its output may go to a reader that leaves
            return shape(args)
        return asyncio.run(_run(args))
    except Unreachable as exc:
        print(f"sttctl: cannot reach sttd ({exc}): is sttd running?", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Refused as exc:
        print(f"sttctl: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        # The reader of our output is gone (`sttctl listen | head -1`): exit quietly,
        # and keep Python from complaining again while flushing stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
