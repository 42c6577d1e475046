"""The interface as every client sees it: introspection, properties, methods, typed errors.

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
import threading
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from sttd import core, dbus_service

from ..bus import SessionBus, require, wait_until
from ..daemon import Sttd, leaks_python
from .clients import ERROR, IFACE, NAME, PATH, PROPS, REPO, Clients, Monitor, Setup, error_name, gvariant


def test_the_gvariant_parser_reads_what_gdbus_prints() -> None:
    assert gvariant("('io.github.sttd.Sttd1', {'State': <'idle'>, 'Level': <0.25>}, @as [])") == (
        "io.github.sttd.Sttd1",
        {"State": "idle", "Level": 0.25},
        [],
    )
    assert gvariant("(\"it's\", true, 'a\\'b\\u00e9')") == ("it's", True, "a'bé")
    assert gvariant("([('mic', 'Mic', true)],)") == ([("mic", "Mic", True)],)
    assert gvariant("(uint32 42,)") == (42,)


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
    assert not leaks_python(again.log), again.log


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
