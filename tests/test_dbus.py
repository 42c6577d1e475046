"""The D-Bus surface as real clients see it: ``busctl --user``, ``gdbus``, ``dbus-send`` and ``sttctl``.

Each test runs the installed ``sttd`` on a private session bus, with a
throwaway PulseAudio (a virtual microphone fed with espeak-ng speech) and the
fake Realtime service. Signals are observed with ``gdbus monitor``; every wait
is for an event, with a deadline. A missing client fails the test.
"""

from __future__ import annotations

import asyncio
import configparser
import json
import os
import re
import signal
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sttd import core, dbus_service
from sttd.ctl import COMMANDS
from sttd.languages import ISO_639_1

from .bus import SessionBus, require, wait_until
from .daemon import Listener, Sttd, command, daemon_env, sttctl, write_config
from .realtime_server import FakeRealtimeServer
from .sound import SoundServer, speech_wav

NAME = "io.github.sttd.Sttd1"
PATH = "/io/github/sttd/Sttd1"
IFACE = "io.github.sttd.Sttd1"
PROPS = "org.freedesktop.DBus.Properties"
REPO = Path(__file__).resolve().parent.parent
ERROR = f"{IFACE}.Error."


# ------------------------------------------------------------------ clients


def _leaks_python(text: str) -> bool:
    return "Traceback" in text or 'File "' in text or '.py", line' in text


@dataclass
class Clients:
    """The real command-line D-Bus clients, pointed at one bus."""

    env: dict[str, str]

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30, check=False)
        assert not _leaks_python(done.stdout + done.stderr), done
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


def test_the_gvariant_parser_reads_what_gdbus_prints() -> None:
    assert gvariant("('io.github.sttd.Sttd1', {'State': <'idle'>, 'Level': <0.25>}, @as [])") == (
        "io.github.sttd.Sttd1",
        {"State": "idle", "Level": 0.25},
        [],
    )
    assert gvariant("(\"it's\", true, 'a\\'b\\u00e9')") == ("it's", True, "a'bé")
    assert gvariant("([('mic', 'Mic', true)],)") == ([("mic", "Mic", True)],)
    assert gvariant("(uint32 42,)") == (42,)


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
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ------------------------------------------------------------------ fixtures


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


@pytest.fixture
def setup(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> Setup:
    config = write_config(tmp_path / "config.toml", realtime_server.url)
    env = daemon_env(session_bus, pulse_server, realtime_server)
    return Setup(tmp_path, session_bus, pulse_server, realtime_server, config, env)


@pytest.fixture
def sttd(setup: Setup) -> Iterator[Sttd]:
    daemon = setup.daemon()
    try:
        yield daemon
    finally:
        daemon.kill()
    assert not _leaks_python(daemon.log), daemon.log


@pytest.fixture
def clients(sttd: Sttd) -> Clients:
    return Clients(sttd.env)


@pytest.fixture
def monitor(clients: Clients) -> Iterator[Monitor]:
    mon = Monitor(clients.env)
    try:
        yield mon
    finally:
        mon.close()


# ------------------------------------------------------------ introspection


def _normalised(element: ET.Element) -> tuple[Any, ...]:
    """An element as a comparable tuple: members in name order, arguments in their order."""
    children = [_normalised(child) for child in element if isinstance(child.tag, str)]
    if element.tag == "interface":
        children.sort()
    return (element.tag, tuple(sorted(element.attrib.items())), tuple(children))


def _interface(xml: str) -> tuple[Any, ...]:
    root = ET.fromstring(xml)
    found = [i for i in root.iter("interface") if i.get("name") == IFACE]
    assert len(found) == 1, xml
    return _normalised(found[0])


def test_the_introspection_file_is_what_sttd_exports(clients: Clients) -> None:
    expected = _interface((REPO / "dbus" / f"{IFACE}.xml").read_text())
    via_gdbus = clients.ok(require("gdbus"), "introspect", "--session", "--dest", NAME, "--object-path", PATH, "--xml")
    via_busctl = clients.ok(require("busctl"), "--user", "introspect", "--xml-interface", NAME, PATH)
    via_dbus_send = clients.ok(
        require("dbus-send"),
        "--session",
        "--print-reply=literal",
        f"--dest={NAME}",
        PATH,
        "org.freedesktop.DBus.Introspectable.Introspect",
    )
    for live in (via_gdbus, via_busctl, via_dbus_send):
        assert _interface(live) == expected

    # What that means to a client: every property announces its changes, only Enabled is writable.
    table = clients.ok(require("busctl"), "--user", "introspect", NAME, PATH, IFACE)
    properties = {line.split()[0]: line for line in table.splitlines() if " property " in line}
    assert set(properties) == {
        ".State",
        ".Enabled",
        ".Language",
        ".PendingText",
        ".Source",
        ".LastError",
        ".Level",
        ".Engine",
        ".Model",
        ".Profile",
        ".Output",
        ".OutputReason",
        ".Shortcuts",
    }
    for name, line in properties.items():
        assert "emits-change" in line, line
        assert ("writable" in line) == (name == ".Enabled"), line
    methods = {line.split()[0] for line in table.splitlines() if " method " in line}
    assert methods == {
        ".Start",
        ".StartWith",
        ".Stop",
        ".Cancel",
        ".Toggle",
        ".SetLanguage",
        ".Send",
        ".Purge",
        ".ListSources",
        ".Undo",
        ".ListShortcuts",
    }
    signals = {line.split()[0] for line in table.splitlines() if " signal " in line}
    assert signals == {".Transcript", ".Triggered", ".Committed", ".Error"}


def test_the_activation_file_names_the_service_and_its_systemd_unit() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(REPO / "dbus" / f"{IFACE}.service")
    section = parser["D-BUS Service"]
    assert section["Name"] == NAME
    assert section["SystemdService"] == "sttd.service"
    assert section["Exec"].startswith("/")  # scripts/install rewrites the Exec= line
    assert (REPO / "dbus" / f"{IFACE}.service").read_text().count("\nExec=") == 1


# --------------------------------------------------------- properties, methods


def test_every_property_reads_the_same_with_every_client(clients: Clients) -> None:
    expected = {
        "State": "idle",
        "Enabled": True,
        "Language": "",
        "PendingText": "",
        "Source": "",
        "LastError": "",
        "Level": 0.0,
        "Engine": "openai",  # an API key is configured
        "Model": "gpt-live-transcribe",  # the default
        "Profile": "",
        "Output": "none",  # [output] mode = "none", the default
        "Shortcuts": "unavailable (no desktop portal (org.freedesktop.portal.Desktop) on the session bus)",
    }
    reason = gvariant(clients.gdbus_call(f"{PROPS}.Get", IFACE, "OutputReason").stdout)
    assert reason == ('[output] mode = "none"',)
    # The shortcuts are looked for once sttd is up: wait until it has found there is no portal.
    wait_until(lambda: clients.busctl_get("Shortcuts") != ["binding"], 10, "the shortcut status")
    assert dict(zip(expected, clients.busctl_get(*expected), strict=True)) == expected

    (everything,) = gvariant(clients.gdbus_call(f"{PROPS}.GetAll", IFACE).stdout)
    assert everything == {**expected, "OutputReason": reason[0]}
    for name, value in expected.items():
        assert gvariant(clients.gdbus_call(f"{PROPS}.Get", IFACE, name).stdout) == (value,)

    for name, value in expected.items():
        out = clients.ok(
            require("dbus-send"),
            "--session",
            "--print-reply",
            f"--dest={NAME}",
            PATH,
            f"{PROPS}.Get",
            f"string:{IFACE}",
            f"string:{name}",
        )
        variant = out.splitlines()[1].split(None, 2)  # a string value may hold spaces
        assert variant[0] == "variant", out
        shown = {str: ["string", json.dumps(value)], bool: ["boolean", str(value).lower()], float: ["double", "0"]}
        assert variant[1:] == shown[type(value)], out


def test_methods_from_every_client_and_their_signals(clients: Clients, monitor: Monitor, setup: Setup) -> None:
    # Start / Stop / Toggle / Cancel, each through a different client.
    assert clients.busctl_call("Start").returncode == 0
    monitor.wait_property("State", "listening")
    assert clients.gdbus_call(f"{IFACE}.Start").stdout.strip() == "()"  # already listening: a no-op
    assert clients.gdbus_call(f"{IFACE}.Stop").returncode == 0
    monitor.wait_property("State", "idle")
    clients.ok(require("dbus-send"), "--session", "--print-reply", f"--dest={NAME}", PATH, f"{IFACE}.Toggle")
    monitor.wait_last("State", "listening")
    assert clients.busctl_call("Toggle").returncode == 0
    monitor.wait_last("State", "idle")
    assert clients.gdbus_call(f"{IFACE}.Toggle").returncode == 0
    monitor.wait_last("State", "listening")
    clients.ok(require("dbus-send"), "--session", "--print-reply", f"--dest={NAME}", PATH, f"{IFACE}.Cancel")
    monitor.wait_last("State", "idle")
    assert monitor.values("State") == [
        *("connecting", "listening", "processing", "idle"),  # Start, Stop
        *("connecting", "listening", "processing", "idle"),  # Toggle, Toggle
        *("connecting", "listening", "processing", "idle"),  # Toggle, Cancel
    ]
    assert monitor.changes("Source")[0][1] == "mic"  # the device being recorded...
    assert clients.busctl_get("Source") == [""]  # ... and none while idle

    # SetLanguage: PropertiesChanged carries the new value.
    assert clients.busctl_call("SetLanguage", "s", "fr").returncode == 0
    monitor.wait_property("Language", "fr")
    assert clients.gdbus_call(f"{IFACE}.SetLanguage", "de").returncode == 0
    monitor.wait_property("Language", "de")
    clients.ok(
        require("dbus-send"), "--session", "--print-reply", f"--dest={NAME}", PATH, f"{IFACE}.SetLanguage", "string:"
    )
    monitor.wait_values("Language", ["fr", "de", ""])

    # Send and Purge fire Triggered (with nothing pending, the text is empty).
    assert clients.busctl_call("Send").returncode == 0
    monitor.wait_signal("Triggered", "send", "")
    assert clients.gdbus_call(f"{IFACE}.Purge").returncode == 0
    monitor.wait_signal("Triggered", "purge", "")

    # ListSources: name, description, is-default.
    listed = json.loads(
        clients.ok(require("busctl"), "--user", "--json=short", "call", NAME, PATH, IFACE, "ListSources")
    )
    assert listed["type"] == "a(ssb)"
    assert ["mic", "Remapped Monitor of Null Output", True] in listed["data"][0]
    (sources,) = gvariant(clients.gdbus_call(f"{IFACE}.ListSources").stdout)
    assert ("mic", "Remapped Monitor of Null Output", True) in sources
    out = clients.ok(require("dbus-send"), "--session", "--print-reply", f"--dest={NAME}", PATH, f"{IFACE}.ListSources")
    assert 'string "mic"' in out and "boolean true" in out

    # Without a sound server: a typed error with a readable message, no traceback.
    setup.pulse.kill()
    failed = clients.gdbus_call(f"{IFACE}.ListSources")
    assert error_name(failed) == f"{ERROR}Audio"
    assert "cannot" in failed.stderr


def test_enabled_is_writable_checked_and_persisted(
    setup: Setup, sttd: Sttd, clients: Clients, monitor: Monitor
) -> None:
    assert clients.busctl("set-property", NAME, PATH, IFACE, "Enabled", "b", "false").returncode == 0
    monitor.wait_property("Enabled", False)

    # Start while disabled: error Disabled, through every client.
    for done in (
        clients.gdbus_call(f"{IFACE}.Start"),
        clients.dbus_send(f"{IFACE}.Start"),
        clients.gdbus_call(f"{IFACE}.Toggle"),
    ):
        assert error_name(done) == f"{ERROR}Disabled"
        assert "disabled" in done.stderr
    busctl = clients.busctl_call("Start")
    assert busctl.returncode != 0 and "dictation is disabled" in busctl.stderr
    refused = sttd.ctl("start")
    assert refused.returncode == 1
    assert refused.stderr.startswith("sttctl: dictation is disabled")

    # Wrongly typed or read-only: standard errors that say what is expected.
    wrong = clients.gdbus_call(f"{PROPS}.Set", IFACE, "Enabled", "<'yes'>")
    assert error_name(wrong) == "org.freedesktop.DBus.Error.InvalidArgs"
    assert "Enabled is of type 'b' (boolean), not 's'" in wrong.stderr
    wrong = clients.dbus_send(f"{PROPS}.Set", f"string:{IFACE}", "string:Enabled", "variant:int32:1")
    assert error_name(wrong) == "org.freedesktop.DBus.Error.InvalidArgs"
    wrong = clients.busctl("set-property", NAME, PATH, IFACE, "Enabled", "s", "true")
    assert wrong.returncode != 0 and "of type 'b'" in wrong.stderr
    readonly = clients.gdbus_call(f"{PROPS}.Set", IFACE, "State", "<'idle'>")
    assert error_name(readonly) == "org.freedesktop.DBus.Error.PropertyReadOnly"
    unknown = clients.gdbus_call(f"{PROPS}.Get", IFACE, "Volume")
    assert error_name(unknown) == "org.freedesktop.DBus.Error.UnknownProperty"
    assert clients.busctl_get("Enabled", "State") == [False, "idle"]
    assert monitor.values("Enabled") == [False]

    # Persisted: a new daemon starts disabled.
    assert sttd.terminate() == 0
    assert json.loads((sttd.tmp / "state" / "sttd" / "state.json").read_text())["enabled"] is False
    again = Sttd(sttd.tmp, setup.env, setup.config)
    try:
        again.wait_ready()
        assert clients.busctl_get("Enabled") == [False]
        assert error_name(clients.gdbus_call(f"{IFACE}.Start")) == f"{ERROR}Disabled"
        assert clients.gdbus_call(f"{PROPS}.Set", IFACE, "Enabled", "<true>").returncode == 0
        monitor.wait_property("Enabled", True)
        assert clients.busctl_call("Start").returncode == 0
        monitor.wait_property("State", "listening")
        assert json.loads((sttd.tmp / "state" / "sttd" / "state.json").read_text())["enabled"] is True
        # Disabling stops a running dictation.
        assert clients.busctl("set-property", NAME, PATH, IFACE, "Enabled", "b", "false").returncode == 0
        monitor.wait_last("State", "idle")
    finally:
        again.kill()
    assert not _leaks_python(again.log), again.log


@pytest.mark.parametrize("bad", ["english", "EN", "e", "xx", "en-US", "en_US", " en", "deu", "12", "de\n"])
def test_set_language_refuses_anything_but_iso_639_1(bad: str) -> None:
    from sttd.errors import InvalidLanguageError
    from sttd.languages import check_language

    with pytest.raises(InvalidLanguageError, match="ISO-639-1"):
        check_language(bad)


def test_set_language_errors_reach_every_client_typed(clients: Clients, monitor: Monitor) -> None:
    for bad in ("english", "EN", "xx", "en-US", "zz"):
        done = clients.gdbus_call(f"{IFACE}.SetLanguage", bad)
        assert error_name(done) == f"{ERROR}InvalidLanguage"
        assert "is not an ISO-639-1 language code" in done.stderr
    done = clients.dbus_send(f"{IFACE}.SetLanguage", "string:german")
    assert error_name(done) == f"{ERROR}InvalidLanguage"
    done = clients.busctl_call("SetLanguage", "s", "german")
    assert done.returncode != 0 and "'german' is not an ISO-639-1 language code" in done.stderr
    # The wrong type of argument, or one too many: InvalidArgs, naming what is expected.
    done = clients.dbus_send(f"{IFACE}.SetLanguage", "int32:3")
    assert error_name(done) == "org.freedesktop.DBus.Error.InvalidArgs"
    assert "SetLanguage takes one argument of type 's', not 'i'" in done.stderr
    done = clients.dbus_send(f"{IFACE}.Start", "string:now")
    assert error_name(done) == "org.freedesktop.DBus.Error.InvalidArgs"
    assert error_name(clients.dbus_send(f"{IFACE}.Dictate")) == "org.freedesktop.DBus.Error.UnknownMethod"

    assert clients.busctl_get("Language") == [""]
    assert clients.gdbus_call(f"{IFACE}.SetLanguage", "pt").returncode == 0
    monitor.wait_property("Language", "pt")
    assert clients.busctl_get("Language") == ["pt"]


# --------------------------------------------------------- a whole dictation


def test_a_dictation_seen_through_signals(tmp_path: Path, setup: Setup, clients: Clients, monitor: Monitor) -> None:
    """State in order, Level while listening only, Transcript, PendingText and a voice Triggered."""
    setup.realtime.script(["Hello world. Send."])
    wav = speech_wav("hello world send", tmp_path / "speech.wav")
    assert clients.busctl_get("State", "Level") == ["idle", 0.0]

    assert clients.busctl_call("Start").returncode == 0
    monitor.wait_property("State", "listening")
    setup.pulse.play(wav)
    triggered = monitor.wait_signal("Triggered", "send", timeout=20)
    assert triggered.args == ("send", "Hello world")
    monitor.wait_last("State", "listening")  # back from processing once the transcript is in
    assert clients.gdbus_call(f"{IFACE}.Stop").returncode == 0
    monitor.wait_last("State", "idle")
    # A fence: every signal sent before this one has arrived.
    assert clients.busctl_call("Purge").returncode == 0
    fence = monitor.wait_signal("Triggered", "purge")

    signals = [s for s in monitor.snapshot() if s.at <= fence.at]
    states = monitor.values("State")
    # Stop passes through processing: the session is flushed before it closes.
    assert states == ["connecting", "listening", "speaking", "processing", "listening", "processing", "idle"]

    transcripts = [s.args for s in signals if s.member == "Transcript"]
    assert transcripts, "no Transcript signal"
    *partials, final = transcripts
    assert final[:2] == ("Hello world. Send.", True)
    item_id = final[2]
    assert item_id
    assert partials and all(p[1] is False and p[2] == item_id for p in partials)
    assert "Hello world. Send.".startswith(partials[-1][0].rstrip("."))
    assert monitor.values("PendingText") == ["Hello world", ""]
    assert clients.busctl_get("PendingText", "Level") == ["", 0.0]

    # Level: moves while the microphone hears speech, never outside listening/speaking/processing,
    # at most ten updates a second.
    state = "idle"
    levels: list[tuple[float, float]] = []
    for s in signals:
        if s.member != "PropertiesChanged":
            continue
        changed = s.args[1]
        if "Level" in changed:
            assert state in ("listening", "speaking", "processing"), (state, changed)
            levels.append((s.at, changed["Level"]))
        state = changed.get("State", state)
    assert any(level > 0.01 for _, level in levels), levels
    assert all(0.0 <= level <= 1.0 for _, level in levels)
    times = [at for at, _ in levels]
    assert len(times) <= 10 * (times[-1] - times[0]) + 3, times  # the arrivals jitter; the daemon paces
    for first, eleventh in zip(times, times[10:], strict=False):
        assert eleventh - first >= 0.7, times
    # Level was reset before the State left listening: nothing follows the idle.
    idle_at = monitor.changes("State")[-1][0]
    assert all(at <= idle_at for at in times)


def test_a_fatal_close_raises_the_error_signal(setup: Setup, clients: Clients, monitor: Monitor) -> None:
    setup.realtime.close_on_connect(3000, "x", times=None)
    clients.ok(require("dbus-send"), "--session", "--print-reply", f"--dest={NAME}", PATH, f"{IFACE}.Start")
    error = monitor.wait_signal("Error")
    code, message = error.args
    assert code == "credentials"
    assert "3000" in message
    monitor.wait_property("State", "error")
    (last_error,) = [v for v in monitor.values("LastError") if v]
    assert clients.busctl_get("State", "LastError") == ["error", last_error]
    assert "3000" in last_error
    assert not _leaks_python(message + last_error)
    # A new Start clears LastError and tries again.
    assert clients.busctl_call("Start").returncode == 0
    monitor.wait_for(lambda s: len([e for e in monitor.snapshot() if e.member == "Error"]) == 2, "a second Error")
    assert "" in monitor.values("LastError")


# ---------------------------------------------------------------- activation


def _owner_pid(clients: Clients) -> int:
    """The process owning sttd's name, or 0."""
    done = clients.run(
        require("gdbus"), "call", "--session", "--dest", "org.freedesktop.DBus", "--object-path",
        "/org/freedesktop/DBus", "--method", "org.freedesktop.DBus.GetConnectionUnixProcessID", NAME,
    )  # fmt: skip
    return int(gvariant(done.stdout)[0]) if done.returncode == 0 else 0


def test_sttctl_start_activates_sttd_through_the_bus(
    tmp_path: Path, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    services = tmp_path / "services"
    services.mkdir()
    log = tmp_path / "activated.log"
    config = write_config(tmp_path / "config.toml", realtime_server.url)
    environment = " ".join(
        f"{key}={value}"
        for key, value in {
            "PULSE_SERVER": pulse_server.server,
            "OPENAI_API_KEY": realtime_server.api_key,
            "XDG_STATE_HOME": tmp_path / "state",
            "XDG_CONFIG_HOME": tmp_path / "config",
        }.items()
    )
    exec_line = (
        f"Exec=/bin/sh -c 'exec /usr/bin/env {environment} {command('sttd')} --config {config}"
        f" --log-level DEBUG >{log} 2>&1'"
    )
    shipped = (REPO / "dbus" / f"{IFACE}.service").read_text()
    (services / f"{IFACE}.service").write_text(re.sub(r"(?m)^Exec=.*$", lambda _: exec_line, shipped))

    bus = SessionBus(tmp_path / "bus", service_dir=services)
    env = {**os.environ, **bus.env()}
    for key in ("PULSE_SERVER", "OPENAI_API_KEY"):
        env.pop(key, None)  # sttctl needs neither; the daemon gets them from the Exec= line
    clients = Clients(env)
    pid = 0
    try:
        # Reading state or stopping never brings a daemon up just to say it is idle.
        for args in (("status",), ("stop",), ("send",)):
            done = sttctl(env, *args)
            assert done.returncode == 3, done
            assert "is sttd running?" in done.stderr
        assert NAME in clients.gdbus_bus("ListActivatableNames")[0]
        assert clients.gdbus_bus("NameHasOwner", NAME) == (False,)

        started = sttctl(env, "start")
        assert started.returncode == 0, (started, log.read_text() if log.exists() else "")
        pid = _owner_pid(clients)
        assert pid

        def listening() -> bool:
            state = clients.busctl_get("State")[0]
            assert state in ("connecting", "listening"), (state, log.read_text())
            return bool(state == "listening")

        wait_until(listening, 15, "the activated sttd to listen")
        realtime_server.wait_for_connections(1, timeout=10)
        assert sttctl(env, "stop").returncode == 0
        wait_until(lambda: clients.busctl_get("State") == ["idle"], 15, "State=idle")
    finally:
        pid = pid or _owner_pid(clients)  # a failure above may leave an activated daemon behind
        if pid:
            os.kill(pid, signal.SIGTERM)
            try:
                wait_until(lambda: not Path(f"/proc/{pid}").exists(), 15, "the activated sttd to exit")
            except AssertionError:
                os.kill(pid, signal.SIGKILL)
                raise
        bus.stop()
    text = log.read_text()
    assert "ready on the session bus" in text and "stopped" in text
    assert not _leaks_python(text), text


# --------------------------------------------------------------------- sttctl


def test_sttctl_every_subcommand_and_its_exit_code(tmp_path: Path, sttd: Sttd, clients: Clients) -> None:
    listener = Listener(sttd)
    try:
        first = listener.seen[0]
        assert first["type"] == "properties"
        assert {"state", "enabled", "language", "transcript", "source", "last_error", "level"} <= set(first)

        wait_until(lambda: sttd.status()["shortcuts"] != "binding", 10, "sttd to look for the shortcuts portal")
        status = sttd.ctl("status", "--json")
        assert status.returncode == 0
        assert json.loads(status.stdout) == {
            "state": "idle",
            "language": "",
            "enabled": True,
            "source": "",
            "transcript": "",
            "last_error": "",
            "engine": "openai",
            "model": "gpt-live-transcribe",
            "price": "$0.017 per minute",
            "profile": "",
            "output": "none",
            "output_reason": '[output] mode = "none"',
            "shortcuts": "unavailable (no desktop portal (org.freedesktop.portal.Desktop) on the session bus)",
        }
        text = sttd.ctl("status")
        assert text.returncode == 0 and "state:      idle" in text.stdout
        assert "model:      gpt-live-transcribe ($0.017 per minute)" in text.stdout.splitlines()
        assert 'output:     none ([output] mode = "none")' in text.stdout.splitlines()
        nothing = sttd.ctl("undo")
        assert nothing.returncode == 1 and "nothing that sttd inserted is left to undo" in nothing.stderr

        assert sttd.ctl("lang").stdout == "auto\n"
        assert sttd.ctl("lang", "de").returncode == 0
        assert sttd.ctl("lang").stdout == "de\n"
        bad = sttd.ctl("lang", "deutsch")
        assert (bad.returncode, bad.stdout) == (1, "")
        assert bad.stderr == (
            "sttctl: 'deutsch' is not an ISO-639-1 language code (like 'en' or 'de') or '' for automatic\n"
        )
        assert sttd.ctl("lang", "").returncode == 0
        assert sttd.ctl("lang").stdout == "auto\n"

        devices = sttd.ctl("devices")
        assert devices.returncode == 0
        assert "* mic\tRemapped Monitor of Null Output" in devices.stdout.splitlines()

        assert sttd.ctl("disable").returncode == 0
        refused = sttd.ctl("start")
        assert refused.returncode == 1 and "disabled" in refused.stderr
        assert "(disabled)" in sttd.ctl("status").stdout
        assert sttd.ctl("enable").returncode == 0

        for args, state in ((("start",), "listening"), (("toggle",), "idle"), (("toggle",), "listening")):
            done = sttd.ctl(*args)
            assert done.returncode == 0, done.stderr
            sttd.wait_state(state)
        assert sttd.ctl("cancel").returncode == 0
        sttd.wait_state("idle")
        for args in (("stop",), ("cancel",), ("send",), ("purge",)):  # idle: nothing to do, no error
            assert sttd.ctl(*args).returncode == 0
        listener.wait_for(lambda e: e["type"] == "triggered" and e["name"] == "purge", 10, "Triggered purge")

        # The Waybar adapter from docs/desktop.md reads `status --json` as well.
        adapter = _waybar_adapter(tmp_path)
        shown = subprocess.run(
            ["sh", "-c", f"{command('sttctl')} status --json | python3 {adapter}"],
            env=sttd.env,
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.splitlines()
        assert json.loads(shown[0])["alt"] == "idle"
    finally:
        listener.close()

    # `listen --json`: one JSON object per line, every event in order.
    listener.drain()
    types = [e["type"] for e in listener.seen]
    assert "transcript" not in types
    assert [e["name"] for e in listener.seen if e["type"] == "triggered"] == ["send", "purge"]
    states = [e["state"] for e in listener.seen if e["type"] == "properties" and "state" in e]
    assert states[0] == "idle" and states[-1] == "idle" and "listening" in states
    assert [e["enabled"] for e in listener.seen if e["type"] == "properties" and "enabled" in e][1:] == [False, True]


def test_sttctl_listen_prints_transcripts_and_follows_restarts(setup: Setup, sttd: Sttd) -> None:
    text = subprocess.Popen([command("sttctl"), "listen"], env=sttd.env, stdout=subprocess.PIPE, text=True)
    printed: list[str] = []

    def read() -> None:
        assert text.stdout is not None
        printed.extend(text.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    listener = Listener(sttd)
    try:
        # The plain listener prints nothing until something happens, so its
        # subscription is proven by what it prints: send until it has.
        def sent() -> bool:
            assert sttd.ctl("send").returncode == 0
            listener.wait_for(lambda e: e["type"] == "triggered", 10, "Triggered")
            return bool(printed)

        wait_until(sent, 15, "sttctl listen to print a send", interval=0.2)
        assert sttd.terminate() == 0
        listener.wait_for(lambda e: e == {"type": "daemon", "running": False}, 10, "sttd leaving the bus")
        again = setup.daemon("again")
        try:
            listener.wait_for(lambda e: e == {"type": "daemon", "running": True}, 10, "sttd coming back")
            back = listener.wait_for(
                lambda e: e["type"] == "properties" and "enabled" in e and e is not listener.seen[0],
                10,
                "the state again",
            )
            assert back["state"] == "idle"
            assert again.ctl("purge").returncode == 0
            listener.wait_for(
                lambda e: e["type"] == "triggered" and e["name"] == "purge", 10, "Triggered from the new daemon"
            )
            wait_until(lambda: printed[-1:] == ["[purge] \n"], 10, "sttctl listen to print the purge")
        finally:
            again.kill()
    finally:
        listener.close()
        text.send_signal(signal.SIGINT)
        text.wait(10)
        reader.join(10)
    assert text.returncode == 0
    assert printed[0] == "[send] \n"
    assert printed[-1] == "[purge] \n"


def test_sttctl_exit_codes_without_a_daemon(session_bus: SessionBus) -> None:
    env = {**os.environ, **session_bus.env()}
    runs = {
        args: subprocess.Popen(
            [command("sttctl"), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args in [
            ("start",),
            ("stop",),
            ("toggle",),
            ("cancel",),
            ("send",),
            ("purge",),
            ("status",),
            ("status", "--json"),
            ("lang",),
            ("lang", "de"),
            ("enable",),
            ("disable",),
            ("listen",),
            ("listen", "--json"),
            ("devices",),
        ]
    }
    usage = {
        args: subprocess.Popen(
            [command("sttctl"), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args in [(), ("bogus",), ("lang", "de", "fr"), ("status", "--xml"), ("start", "now"), ("--json",)]
    }
    for args, process in runs.items():
        out, err = process.communicate(timeout=30)
        assert process.returncode == 3, (args, out, err)
        assert err.startswith("sttctl: cannot reach sttd") and err.endswith("is sttd running?\n"), (args, err)
        assert not _leaks_python(err)
    for args, process in usage.items():
        out, err = process.communicate(timeout=30)
        assert process.returncode == 2, (args, out, err)
        assert "usage: sttctl" in err
    no_bus = {**env, "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/sttd-test-bus"}
    done = sttctl(no_bus, "status")
    assert done.returncode == 3 and "is sttd running?" in done.stderr


class _Broken:
    """A controller whose every action fails the way a bug would: the D-Bus layer's last line of defence."""

    dictation = core.Dictation(enabled=True, language="", triggers=core.Triggers(r"\bsend\b", r"\bpurge\b"))
    source = ""

    def start(self) -> None:
        raise RuntimeError("boom in /secret/internal/path.py")

    def set_enabled(self, enabled: bool) -> None:
        raise ZeroDivisionError("division by zero")

    async def list_sources(self) -> list[Any]:
        raise KeyError("sources")


def test_an_unexpected_failure_is_answered_as_failed_without_a_traceback(session_bus: SessionBus) -> None:
    loop = asyncio.new_event_loop()
    served = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        bus, interface = await dbus_service.connect(_Broken())  # type: ignore[arg-type]
        await dbus_service.own_name(bus)
        interface.serve()
        served.set()
        await stop.wait()
        bus.disconnect()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        assert served.wait(10), "the interface was not exported"
        clients = Clients({**os.environ, **session_bus.env()})
        for done, member in (
            (clients.gdbus_call(f"{IFACE}.Start"), "Start"),
            (clients.dbus_send(f"{IFACE}.Toggle"), "Toggle"),
            (clients.gdbus_call(f"{IFACE}.ListSources"), "ListSources"),
            (clients.gdbus_call(f"{PROPS}.Set", IFACE, "Enabled", "<false>"), "Enabled"),
        ):
            assert error_name(done) == f"{ERROR}Failed", done
            assert f"{member} failed: " in done.stderr and "(details in sttd's log)" in done.stderr, done.stderr
            assert "secret" not in done.stderr and "boom" not in done.stderr
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def test_a_second_sttd_exits_at_once_and_the_first_keeps_serving(setup: Setup, sttd: Sttd, clients: Clients) -> None:
    second = Sttd(setup.tmp / "second", setup.env, setup.config)
    assert second.process.wait(15) == 1
    assert f"another sttd already owns {NAME} on this session bus" in second.log
    assert not _leaks_python(second.log)
    assert clients.busctl_get("State") == ["idle"]


# ------------------------------------------------------- completion, Waybar


def _complete(line: str) -> list[str]:
    """What bash offers for ``line`` (the cursor at its end) with completion/sttctl.bash sourced."""
    script = (
        f"source {REPO / 'completion' / 'sttctl.bash'}\n"
        "complete -p sttctl >&2\n"
        'read -ra COMP_WORDS <<<"$1"; [[ $1 == *" " ]] && COMP_WORDS+=("")\n'
        "COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMP_LINE=$1; COMP_POINT=${#1}\n"
        '_sttctl sttctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
        # compgen on the same word list, as a user's own function would call it
        'compgen -W "$_sttctl_commands" -- "${COMP_WORDS[COMP_CWORD]}" | sed "s/^/compgen:/"\n'
    )
    done = subprocess.run(
        [require("bash"), "--norc", "--noprofile", "-c", script, "bash", line],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert done.stderr.strip() == "complete -F _sttctl sttctl"
    offered = [w for w in done.stdout.splitlines() if w and not w.startswith("compgen:")]
    if line.count(" ") == 1:  # completing the subcommand: the function agrees with compgen on the list
        assert [w for w in offered if not w.startswith("-")] == [
            w.removeprefix("compgen:") for w in done.stdout.splitlines() if w.startswith("compgen:")
        ]
    return offered


def test_bash_completion_offers_subcommands_options_and_languages() -> None:
    subcommands = [name for name, _ in COMMANDS]
    assert sorted(_complete("sttctl ")) == sorted(subcommands)
    assert _complete("sttctl st") == ["start", "stop", "status"]
    assert _complete("sttctl t") == ["toggle"]
    assert _complete("sttctl -") == ["--help", "--version"]
    assert _complete("sttctl status ") == ["--json"]
    assert _complete("sttctl status -") == ["--json", "--help"]
    assert _complete("sttctl status --json ") == []
    assert _complete("sttctl listen --") == ["--json", "--help"]
    assert _complete("sttctl start ") == []
    assert _complete("sttctl lang d") == ["da", "de", "dv", "dz"]
    assert sorted(_complete("sttctl lang ")) == sorted(ISO_639_1)
    assert _complete("sttctl lang de ") == []
    assert _complete("sttctl nonsense ") == []
    assert _complete("sttctl start -") == ["--profile", "--lang", "--help"]
    assert _complete("sttctl toggle --profile email --lang d") == ["da", "de", "dv", "dz"]
    assert _complete("sttctl start --profile ") == []  # a name from the config: nothing to guess
    assert _complete("sttctl shape --") == ["--config", "--profile", "--lang", "--help"]
    assert _complete("sttctl model ") == ["download", "list"]
    assert _complete("sttctl model list ") == []


def _waybar_adapter(tmp_path: Path) -> Path:
    """The adapter script of docs/desktop.md, exactly as documented."""
    doc = (REPO / "docs" / "desktop.md").read_text()
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", doc, re.DOTALL) if "Waybar adapter" in block]
    path = tmp_path / "sttd-waybar"
    path.write_text(code)
    return path


def test_the_documented_waybar_adapter_turns_listen_lines_into_waybar_json(tmp_path: Path) -> None:
    adapter = _waybar_adapter(tmp_path)
    lines = [
        {
            "type": "properties",
            "state": "idle",
            "enabled": True,
            "language": "",
            "transcript": "",
            "source": "",
            "last_error": "",
            "level": 0.0,
        },
        {"type": "properties", "state": "connecting"},
        {"type": "properties", "source": "mic"},  # nothing Waybar shows changes: no line
        {"type": "properties", "state": "listening"},
        {"type": "properties", "level": 0.4},
        {"type": "transcript", "text": "hello", "final": True, "item_id": "i1"},
        {"type": "properties", "transcript": "hello"},
        {"type": "daemon", "running": False},
    ]
    done = subprocess.run(
        ["python3", str(adapter)],
        input="".join(json.dumps(line) + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    shown = [json.loads(line) for line in done.stdout.splitlines()]
    assert [s["alt"] for s in shown] == ["idle", "connecting", "listening", "listening", "stopped"]
    assert all(set(s) == {"text", "alt", "class", "tooltip"} for s in shown)
    assert "pending: hello" in shown[3]["tooltip"]
