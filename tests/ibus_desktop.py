"""A desktop with IBus, for the input method's tests: Xvfb, ``ibus-daemon``, ``sttd-ibus`` and a GTK receiver.

All of it runs on the test's private session bus: ``ibus-daemon --panel
disable`` with ``IBUS_COMPONENT_PATH`` naming a folder holding the
component file (``ibus/sttd.xml`` with ``<exec>`` pointing at the installed
``sttd-ibus``), so ibus-daemon itself starts the engine when ``ibus engine
sttd`` selects it, as on a user's desktop. The receiver,
``tests/ibus_receiver.py``, is a GTK 3 window (system Python, ``gi``) with
``GTK_IM_MODULE=ibus`` that records its preedit and its text as JSON lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .bus import SessionBus, require, wait_until
from .daemon import command
from .processes import end_process, start_xvfb

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"


class IbusDesktop:
    """Xvfb + ibus-daemon + the GTK receiver, with the ``sttd`` engine selected."""

    def __init__(self, directory: Path, bus: SessionBus, engine_args: str = "") -> None:
        require("ibus-daemon")
        require("ibus")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._processes: list[subprocess.Popen[Any]] = []
        try:
            self._start(bus, engine_args)
        except BaseException:
            self.close()
            raise

    def _start(self, bus: SessionBus, engine_args: str) -> None:
        directory = self.directory
        xvfb, self.display = start_xvfb(directory)
        self._processes.append(xvfb)
        components = directory / "components"
        components.mkdir()
        template = (ROOT / "ibus" / "sttd.xml").read_text(encoding="utf-8")
        exec_line = f"{command('sttd-ibus')} --ibus --log-level INFO {engine_args}".strip()
        (components / "sttd.xml").write_text(
            template.replace("<exec>sttd-ibus --ibus</exec>", f"<exec>{exec_line}</exec>"), encoding="utf-8"
        )
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("IBUS_", "GTK_", "WAYLAND"))},
            **bus.env(),
            "HOME": str(directory),
            "XDG_CONFIG_HOME": str(directory / "config"),
            "XDG_CACHE_HOME": str(directory / "cache"),
            "DISPLAY": self.display,
            "LC_ALL": "C.UTF-8",
        }
        self.daemon_log = directory / "ibus-daemon.log"
        with self.daemon_log.open("wb") as log:
            daemon = subprocess.Popen(
                [
                    "ibus-daemon",
                    "--panel",
                    "disable",
                    "--emoji-extension",
                    "disable",
                    "--config",
                    "disable",
                    "--cache",
                    "none",
                    "--verbose",
                ],
                env={**self.env, "IBUS_COMPONENT_PATH": str(components)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._processes.append(daemon)
        bus_dir = directory / "config" / "ibus" / "bus"
        address_file = wait_until(lambda: next(iter(bus_dir.glob("*")), None), 15, "ibus-daemon's address file")
        address = wait_until(lambda: _address(address_file), 15, "IBUS_ADDRESS in its address file")
        self.env["IBUS_ADDRESS"] = address
        wait_until(lambda: "sttd" in self.ibus("list-engine").stdout, 20, "IBus to list the sttd engine")
        # `ibus engine sttd` selects it, then exits 1 when it cannot run setxkbmap for the engine's
        # "default" layout (keep the user's): what counts is the engine it reports afterwards.
        self.ibus("engine", "sttd")
        current = self.ibus("engine").stdout.strip()
        assert current == "sttd", f"ibus engine reports {current!r}\n{self.logs()}"
        self.record = directory / "receiver.jsonl"
        self.record.touch()
        with (directory / "receiver.log").open("wb") as log:
            receiver = subprocess.Popen(
                [SYSTEM_PYTHON, str(ROOT / "tests" / "ibus_receiver.py"), str(self.record)],
                env={**self.env, "GTK_IM_MODULE": "ibus", "NO_AT_BRIDGE": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._processes.append(receiver)
        self.wait_for(lambda e: e["type"] == "ready", 20, "the receiver to have the focus")
        # The engine owns its name once IBus enabled it for the focused context.
        wait_until(self.engine_on_bus, 20, "sttd-ibus to own io.github.sttd.Ibus1")

    def ibus(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ibus", *args], env=self.env, capture_output=True, text=True, timeout=20, check=False)

    def engine_on_bus(self) -> bool:
        reply = subprocess.run(
            [
                "gdbus",
                "call",
                "--session",
                "-d",
                "org.freedesktop.DBus",
                "-o",
                "/org/freedesktop/DBus",
                "-m",
                "org.freedesktop.DBus.NameHasOwner",
                "io.github.sttd.Ibus1",
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return "true" in reply.stdout

    def events(self) -> list[dict[str, Any]]:
        lines = self.record.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in self.events() if predicate(e)), None)

        try:
            return wait_until(found, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nreceiver saw: {self.events()}\n{self.logs()}") from None

    @property
    def text(self) -> str:
        """The receiver's committed text now."""
        texts = [e["text"] for e in self.events() if e["type"] == "text"]
        return texts[-1] if texts else ""

    @property
    def preedits(self) -> list[str]:
        return [e["text"] for e in self.events() if e["type"] == "preedit"]

    def wait_text(self, text: str, timeout: float = 20) -> None:
        self.wait_for(lambda e: e["type"] == "text" and e["text"] == text, timeout, f"the text {text!r}")

    def type_keys(self, text: str) -> None:
        """The user types ``text`` on the keyboard (through IBus, like every key)."""
        subprocess.run(["xdotool", "type", "--delay", "30", text], env=self.env, check=True, timeout=20)

    def logs(self) -> str:
        return "\n".join(f"--- {name}:\n{_tail(self.directory / name)}" for name in ("ibus-daemon.log", "receiver.log"))

    def close(self) -> None:
        for process in reversed(self._processes):
            end_process(process)


def _address(path: Path) -> str | None:
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("IBUS_ADDRESS="):
            return line.split("=", 1)[1]
    return None


@contextlib.contextmanager
def ibus_desktop(directory: Path, bus: SessionBus, engine_args: str = "") -> Iterator[IbusDesktop]:
    desktop = IbusDesktop(directory, bus, engine_args)
    try:
        yield desktop
    finally:
        desktop.close()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(none)"
