# mypy: disable-error-code="name-defined,untyped-decorator,valid-type,no-redef,misc"
# dbus-next takes D-Bus signatures ("s", "a(sa{sv})") as annotations, which mypy cannot read as types.
"""A GlobalShortcuts portal backend for tests: what a desktop (GNOME, KDE) implements.

Run as ``python -m tests.portal_backend --name NAME``: it owns ``NAME`` on the
session bus and exports ``org.freedesktop.impl.portal.GlobalShortcuts`` at
``/org/freedesktop/portal/desktop``, the interface the real
``xdg-desktop-portal`` frontend calls. Each session it creates is an object
with ``org.freedesktop.impl.portal.Session`` (``Close``, signal ``Closed``) at
the session handle the frontend chose. ``BindShortcuts`` accepts every
shortcut with the application's preferred trigger as its trigger description
(the desktop "has the last word": here it says yes).

A test-only interface ``io.github.sttd.test.PortalBackend`` at the same path
presses and releases keys: ``Press(s id)`` / ``Release(s id)`` emit
``Activated`` / ``Deactivated`` for every open session that bound ``id``
(with a timestamp the test may set: ``PressAt(s id, t ms)``, ``ReleaseAt``),
``Bound() -> a(ss)`` lists ``(id, trigger)`` of the open sessions, and
``Sessions() -> u`` counts them. It prints ``ready`` on stdout once it owns
its name.

No ``from __future__ import annotations``: dbus-next reads the signatures
from the annotations.
"""

import argparse
import asyncio
import logging
import signal as signals
import sys
import time
from typing import Any

from dbus_next import BusType, Variant
from dbus_next.aio import MessageBus
from dbus_next.constants import PropertyAccess
from dbus_next.service import ServiceInterface, dbus_property, method, signal

DESKTOP_PATH = "/org/freedesktop/portal/desktop"
IMPL = "org.freedesktop.impl.portal.GlobalShortcuts"
TEST_IFACE = "io.github.sttd.test.PortalBackend"

# ruff: noqa: F722, F821


class Session(ServiceInterface):
    def __init__(self, backend: "Backend", path: str) -> None:
        super().__init__("org.freedesktop.impl.portal.Session")
        self._backend = backend
        self.path = path
        self.shortcuts: dict[str, str] = {}
        self.descriptions: dict[str, str] = {}

    @method()
    def Close(self) -> None:
        self._backend.close_session(self.path)

    @signal()
    def Closed(self) -> None:
        return None


class Backend(ServiceInterface):
    def __init__(self, bus: MessageBus) -> None:
        super().__init__(IMPL)
        self._bus = bus
        self.sessions: dict[str, Session] = {}

    def close_session(self, path: str) -> None:
        session = self.sessions.pop(path, None)
        if session is not None:
            self._bus.unexport(path, session)

    @method()
    def CreateSession(self, handle: "o", session_handle: "o", app_id: "s", options: "a{sv}") -> "ua{sv}":
        session = Session(self, session_handle)
        self.sessions[session_handle] = session
        self._bus.export(session_handle, session)
        return [0, {"session_handle": Variant("s", session_handle)}]

    @method()
    def BindShortcuts(
        self, handle: "o", session_handle: "o", shortcuts: "a(sa{sv})", parent_window: "s", options: "a{sv}"
    ) -> "ua{sv}":
        session = self.sessions.get(session_handle)
        if session is None:
            return [2, {}]
        session.shortcuts.clear()
        for shortcut_id, props in shortcuts:
            trigger = props.get("preferred_trigger")
            session.shortcuts[shortcut_id] = str(trigger.value) if trigger is not None else ""
            description = props.get("description")
            session.descriptions[shortcut_id] = str(description.value) if description is not None else ""
        return [0, {"shortcuts": Variant("a(sa{sv})", self._listed(session))}]

    @method()
    def ListShortcuts(self, handle: "o", session_handle: "o") -> "ua{sv}":
        session = self.sessions.get(session_handle)
        if session is None:
            return [2, {}]
        return [0, {"shortcuts": Variant("a(sa{sv})", self._listed(session))}]

    @staticmethod
    def _listed(session: Session) -> list[Any]:
        return [
            [
                sid,
                {"description": Variant("s", session.descriptions[sid]), "trigger_description": Variant("s", trigger)},
            ]
            for sid, trigger in session.shortcuts.items()
        ]

    @dbus_property(access=PropertyAccess.READ)
    def version(self) -> "u":
        return 1

    @signal()
    def Activated(self, session_handle: str, shortcut_id: str, timestamp: int, options: Any) -> "osta{sv}":
        return [session_handle, shortcut_id, timestamp, options]

    @signal()
    def Deactivated(self, session_handle: str, shortcut_id: str, timestamp: int, options: Any) -> "osta{sv}":
        return [session_handle, shortcut_id, timestamp, options]

    @signal()
    def ShortcutsChanged(self, session_handle: str, shortcuts: Any) -> "oa(sa{sv})":
        return [session_handle, shortcuts]

    def emit(self, pressed: bool, shortcut_id: str, stamp: int) -> int:
        count = 0
        for path, session in list(self.sessions.items()):
            if shortcut_id in session.shortcuts:
                (self.Activated if pressed else self.Deactivated)(path, shortcut_id, stamp, {})
                count += 1
        return count


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class Control(ServiceInterface):
    """The test's hand on the keyboard."""

    def __init__(self, backend: Backend) -> None:
        super().__init__(TEST_IFACE)
        self._backend = backend

    @method()
    def Press(self, shortcut_id: "s") -> "u":
        return self._backend.emit(True, shortcut_id, _now_ms())

    @method()
    def Release(self, shortcut_id: "s") -> "u":
        return self._backend.emit(False, shortcut_id, _now_ms())

    @method()
    def PressAt(self, shortcut_id: "s", stamp: "t") -> "u":
        return self._backend.emit(True, shortcut_id, stamp)

    @method()
    def ReleaseAt(self, shortcut_id: "s", stamp: "t") -> "u":
        return self._backend.emit(False, shortcut_id, stamp)

    @method()
    def Now(self) -> "t":
        return _now_ms()

    @method()
    def Bound(self) -> "a(ss)":
        return [[sid, trigger] for s in self._backend.sessions.values() for sid, trigger in s.shortcuts.items()]

    @method()
    def Sessions(self) -> "u":
        return len(self._backend.sessions)


async def _main(name: str) -> None:
    # The frontend asks for properties on request and session paths this backend has no object at;
    # dbus-next answers them correctly but logs a traceback each time.
    logging.getLogger().setLevel(logging.CRITICAL)
    bus = await MessageBus(bus_type=BusType.SESSION).connect()
    backend = Backend(bus)
    bus.export(DESKTOP_PATH, backend)
    bus.export(DESKTOP_PATH, Control(backend))
    await bus.request_name(name)
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signals.SIGTERM, signals.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    done = asyncio.ensure_future(bus.wait_for_disconnect())
    await asyncio.wait([done, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    bus.disconnect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True, help="the bus name to own (the .portal file's DBusName)")
    args = parser.parse_args(argv)
    asyncio.run(_main(args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
