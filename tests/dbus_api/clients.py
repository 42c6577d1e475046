"""The real command-line D-Bus clients (``busctl --user``, ``gdbus``, ``dbus-send``) and ``gdbus monitor``,
pointed at one private bus, with a parser for the GVariant text ``gdbus`` prints.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bus import SessionBus, require
from ..daemon import Sttd, leaks_python
from ..processes import end_process
from ..realtime_server import FakeRealtimeServer
from ..sound import SoundServer

NAME = "io.github.sttd.Sttd1"
PATH = "/io/github/sttd/Sttd1"
IFACE = "io.github.sttd.Sttd1"
PROPS = "org.freedesktop.DBus.Properties"
REPO = Path(__file__).resolve().parents[2]
ERROR = f"{IFACE}.Error."


# ------------------------------------------------------------------ clients


@dataclass
class Clients:
    """The real command-line D-Bus clients, pointed at one bus."""

    env: dict[str, str]

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30, check=False)
        assert not leaks_python(done.stdout + done.stderr), done
        return done

    def ok(self, *argv: str) -> str:
        done = self.run(*argv)
        assert done.returncode == 0, f"{argv} failed: {done.stderr}"
        return done.stdout

    # busctl --user

    def busctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(require("busctl"), "--user", *args)

    def busctl_call(self, member: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.busctl("call", NAME, PATH, IFACE, member, *args)

    def busctl_get(self, *names: str) -> list[Any]:
        """Property values read with ``busctl --json=short get-property``."""
        out = self.ok(require("busctl"), "--user", "--json=short", "get-property", NAME, PATH, IFACE, *names)
        return [json.loads(line)["data"] for line in out.splitlines() if line.strip()]

    # gdbus

    def gdbus_call(self, method: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(
            require("gdbus"), "call", "--session", "--dest", NAME, "--object-path", PATH, "--method", method, *args
        )

    def gdbus_bus(self, method: str, *args: str) -> Any:
        """Call the bus itself (``org.freedesktop.DBus``) with gdbus; the parsed reply."""
        out = self.ok(
            require("gdbus"),
            "call",
            "--session",
            "--dest",
            "org.freedesktop.DBus",
            "--object-path",
            "/org/freedesktop/DBus",
            "--method",
            f"org.freedesktop.DBus.{method}",
            *args,
        )
        return gvariant(out)

    # dbus-send

    def dbus_send(self, method: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(require("dbus-send"), "--session", "--print-reply", f"--dest={NAME}", PATH, method, *args)


def error_name(done: subprocess.CompletedProcess[str]) -> str:
    """The D-Bus error name in a failed ``gdbus call`` or ``dbus-send`` (``""`` if none)."""
    assert done.returncode != 0, f"expected a D-Bus error: {done}"
    match = re.search(r"GDBus\.Error:([\w.]+):|^Error ([\w.]+):", done.stderr, re.MULTILINE)
    assert match, done.stderr
    return match.group(1) or match.group(2)


# ------------------------------------------------------------- GVariant text


class _GVariantText:
    """A parser for the GVariant text that ``gdbus`` prints (enough for sttd's types)."""

    _PREFIX = re.compile(
        r"\s*(?:@[a-z{}()]+\s+|(?:byte|int16|uint16|int32|uint32|int64|uint64|handle|double|objectpath|signature)\s+)*"
    )
    _NUMBER = re.compile(r"-?(?:\d+\.\d*(?:e[-+]?\d+)?|\d+(?:e[-+]?\d+)?|inf|nan)")

    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0

    def parse(self) -> Any:
        value = self.value()
        self.space()
        assert self.i == len(self.s), f"trailing text in {self.s!r}"
        return value

    def space(self) -> None:
        while self.i < len(self.s) and self.s[self.i].isspace():
            self.i += 1

    def expect(self, token: str) -> None:
        self.space()
        assert self.s.startswith(token, self.i), f"expected {token!r} at {self.i} in {self.s!r}"
        self.i += len(token)

    def value(self) -> Any:
        match = self._PREFIX.match(self.s, self.i)
        self.i = match.end() if match else self.i
        c = self.s[self.i]
        if c in "'\"":
            return self.string(c)
        if c in "([{<":
            close = {"(": ")", "[": "]", "{": "}", "<": ">"}[c]
            self.i += 1
            if c == "<":
                inner = self.value()
                self.expect(">")
                return inner
            items: list[Any] = []
            self.space()
            while not self.s.startswith(close, self.i):
                key = self.value()
                if c == "{":
                    self.expect(":")
                    items.append((key, self.value()))
                else:
                    items.append(key)
                self.space()
                if self.s.startswith(",", self.i):
                    self.i += 1
                    self.space()
            self.i += 1
            return dict(items) if c == "{" else tuple(items) if c == "(" else items
        for word, result in (("true", True), ("false", False), ("nothing", None)):
            if self.s.startswith(word, self.i):
                self.i += len(word)
                return result
        number = self._NUMBER.match(self.s, self.i)
        assert number, f"cannot parse {self.s[self.i :]!r}"
        self.i = number.end()
        text = number.group()
        return float(text) if any(ch in text for ch in ".eninf") else int(text)

    def string(self, quote: str) -> str:
        self.i += 1
        out = []
        while self.s[self.i] != quote:
            ch = self.s[self.i]
            if ch == "\\":
                nxt = self.s[self.i + 1]
                if nxt in "uU":
                    width = 4 if nxt == "u" else 8
                    out.append(chr(int(self.s[self.i + 2 : self.i + 2 + width], 16)))
                    self.i += 2 + width
                    continue
                out.append({"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}.get(nxt, nxt))
                self.i += 2
                continue
            out.append(ch)
            self.i += 1
        self.i += 1
        return "".join(out)


def gvariant(text: str) -> Any:
    return _GVariantText(text).parse()


# ---------------------------------------------------------------- gdbus monitor


@dataclass(frozen=True)
class Signal:
    at: float
    member: str
    """``Transcript``, ``Triggered``, ``Error`` or ``PropertiesChanged``."""
    args: tuple[Any, ...]


class Monitor:
    """``gdbus monitor`` on sttd's object, collecting every signal with its arrival time."""

    def __init__(self, env: dict[str, str]) -> None:
        self.signals: list[Signal] = []
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._owned = threading.Event()
        self.process = subprocess.Popen(
            [require("gdbus"), "monitor", "--session", "--dest", NAME, "--object-path", PATH],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        # Printed once the name's owner is known, after the match rule is in place.
        if not self._owned.wait(15):
            self.close()
            raise AssertionError(f"gdbus monitor did not start: {self.lines}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            now = time.monotonic()
            with self._cond:
                self.lines.append(line)
                if f"The name {NAME} is owned by" in line:
                    self._owned.set()
                match = re.match(rf"{re.escape(PATH)}: ([\w.]+)\.(\w+) (\(.*\))$", line)
                if match:
                    self.signals.append(Signal(now, match.group(2), gvariant(match.group(3))))
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Signal], bool], what: str, timeout: float = 15) -> Signal:
        """The first signal (seen so far or coming) that matches; fails at the deadline."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for sig in self.signals:
                    if predicate(sig):
                        return sig
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"timed out waiting for {what}; gdbus monitor saw:\n" + "\n".join(self.lines))
                self._cond.wait(remaining)

    def wait_signal(self, member: str, *args: Any, timeout: float = 15) -> Signal:
        return self.wait_for(lambda s: s.member == member and s.args[: len(args)] == args, f"{member}{args}", timeout)

    def wait_property(self, name: str, value: Any, timeout: float = 15) -> Signal:
        return self.wait_for(
            lambda s: s.member == "PropertiesChanged" and s.args[0] == IFACE and s.args[1].get(name, ...) == value,
            f"PropertiesChanged {name}={value!r}",
            timeout,
        )

    def values(self, name: str) -> list[Any]:
        return [value for _, value in self.changes(name)]

    def wait_values(self, name: str, expected: list[Any], timeout: float = 15) -> None:
        """Wait until the values ``name`` took through PropertiesChanged are exactly ``expected``."""
        self.wait_for(lambda _: self.values(name) == expected, f"{name} to go through {expected}", timeout)

    def wait_last(self, name: str, value: Any, timeout: float = 15) -> None:
        """Wait until the latest PropertiesChanged value of ``name`` is ``value``."""
        self.wait_for(lambda _: self.values(name)[-1:] == [value], f"{name}={value!r} (latest)", timeout)

    def changes(self, name: str) -> list[tuple[float, Any]]:
        """Every value ``name`` took in PropertiesChanged, in order, with arrival times."""
        with self._cond:
            return [
                (s.at, s.args[1][name])
                for s in self.signals
                if s.member == "PropertiesChanged" and s.args[0] == IFACE and name in s.args[1]
            ]

    def snapshot(self) -> list[Signal]:
        with self._cond:
            return list(self.signals)

    def close(self) -> None:
        end_process(self.process)


@dataclass
class Setup:
    tmp: Path
    bus: SessionBus
    pulse: SoundServer
    realtime: FakeRealtimeServer
    config: Path
    env: dict[str, str]
    """What sttd needs besides the defaults: the bus, the sound server, the key."""

    def daemon(self, name: str = "sttd") -> Sttd:
        daemon = Sttd(self.tmp / name, self.env, self.config)
        daemon.wait_ready()
        return daemon
