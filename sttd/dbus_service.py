# mypy: disable-error-code="name-defined,untyped-decorator,valid-type,no-redef"
# dbus-next takes D-Bus signatures ("s", "a(ssb)") as annotations, which mypy cannot read as types.
"""The D-Bus face of sttd: ``io.github.sttd.Sttd1`` on the session bus.

This layer only translates. Method calls go to a :class:`Controller` (the
daemon); core outputs come back through :meth:`SttdInterface.publish` and
leave as signals and ``PropertiesChanged``. Every failure a caller can cause
is answered with a typed ``io.github.sttd.Sttd1.Error.<Name>``; an
unexpected one with ``...Error.Failed`` and a pointer to the log, never a
Python traceback. Arguments or property values of the wrong D-Bus type are
refused with ``org.freedesktop.DBus.Error.InvalidArgs`` naming the expected
type.

Calls run as tasks (``async`` handlers) that wait until
:meth:`SttdInterface.serve`: with bus activation, dbus-daemon delivers the
activating call (``sttctl start``) even before the reply to the name
request, and it must not meet a half-started daemon.

Whatever a caller sends is checked before any work: string arguments over
:data:`MAX_STRING_CHARS` (a language over :data:`MAX_LANGUAGE_CHARS`) are
refused with ``...Error.InvalidArgument``, and a caller's value appears in
logs and errors only as a short escaped excerpt. Everything that leaves on
the bus as an error (replies, the ``Error`` signal, ``LastError``) passes
through :func:`sttd.redact.redact`.

At shutdown :meth:`SttdInterface.shutting_down` answers every call in flight.

The contract's names and limits, the :class:`Controller` protocol and the
error mapping are in :mod:`sttd.dbus_contract`; getting on the bus and
staying there (:func:`export`, :func:`stay_exported`) in
:mod:`sttd.dbus_connection`. Both are re-exported here.

No ``from __future__ import annotations`` here: dbus-next reads the D-Bus
signatures from the annotations and cannot read a postponed ``None``.
"""

import asyncio
import logging
import xml.etree.ElementTree as ET
from typing import Any

from dbus_next import DBusError, Message, MessageType, PropertyAccess
from dbus_next import introspection as intr
from dbus_next.aio import MessageBus
from dbus_next.constants import ErrorType
from dbus_next.service import ServiceInterface, dbus_property, method, signal

from . import core
from .bus import Bus
from .dbus_connection import (
    RECONNECT_DELAYS_S,
    _connect_bus,
    _export_on,
    export,
    own_name,
    stay_exported,
    wait_for_disconnect,
)
from .dbus_contract import (
    BUS_NAME,
    ERROR_PREFIX,
    INTERFACE,
    INVALID_ARGUMENT,
    MAX_LANGUAGE_CHARS,
    MAX_OUTWARD_CHARS,
    MAX_STRING_CHARS,
    OBJECT_PATH,
    PROPERTIES,
    SHUTDOWN_REPLY_S,
    SHUTTING_DOWN,
    Controller,
    _dbus_errors,
    _too_long,
    outward,
)
from .dbus_signals import WireSignals

__all__ = [
    "BUS_NAME",
    "ERROR_PREFIX",
    "INTERFACE",
    "INVALID_ARGUMENT",
    "MAX_LANGUAGE_CHARS",
    "MAX_OUTWARD_CHARS",
    "MAX_STRING_CHARS",
    "OBJECT_PATH",
    "PROPERTIES",
    "RECONNECT_DELAYS_S",
    "SHUTDOWN_REPLY_S",
    "SHUTTING_DOWN",
    "Controller",
    "SttdInterface",
    "connect",
    "export",
    "outward",
    "own_name",
    "stay_exported",
    "wait_for_disconnect",
]

logger = logging.getLogger(__name__)


class _AnnotatedProperty(intr.Property):  # type: ignore[misc]
    """dbus-next 0.2.3 cannot annotate; every property here emits PropertiesChanged with its value."""

    def to_xml(self) -> ET.Element:
        element: ET.Element = super().to_xml()
        ET.SubElement(
            element, "annotation", {"name": "org.freedesktop.DBus.Property.EmitsChangedSignal", "value": "true"}
        )
        return element


_TYPE_NAMES = {"b": " (boolean)", "s": " (string)", "d": " (double)"}

_ARG_NAMES = {
    "Transcript": ("text", "final", "item_id"),
    "Triggered": ("name", "text"),
    "Committed": ("text", "item_id"),
    "Error": ("code", "message"),
    "ListSources": ("sources",),
    "ListShortcuts": ("shortcuts",),
}


# The member names below are the D-Bus contract, hence CamelCase; the string
# annotations are D-Bus signatures, which dbus-next reads from them.
# ruff: noqa: F821


class SttdInterface(ServiceInterface):  # type: ignore[misc]
    """``io.github.sttd.Sttd1``; see dbus/io.github.sttd.Sttd1.xml."""

    def __init__(self, controller: Controller) -> None:
        super().__init__(INTERFACE)
        self._controller = controller
        self._level = 0.0
        self._wire = WireSignals(self, OBJECT_PATH)
        """How every signal and property change goes out (see :mod:`sttd.dbus_signals`)."""
        self._source = controller.source
        self._signatures: tuple[dict[str, str], dict[str, str]] | None = None
        self._ready = asyncio.Event()
        self._calls: set[asyncio.Task[Any]] = set()
        """The calls in flight (their tasks), answered by :meth:`shutting_down`."""
        self._closing = False
        self._bus: MessageBus | None = None

    @property
    def closing(self) -> bool:
        """:meth:`shutting_down` was called: calls are refused with ``ShuttingDown``."""
        return self._closing

    @property
    def bus(self) -> MessageBus | None:
        """The bus connection the interface was last exported on (by :func:`export`)."""
        return self._bus

    async def shutting_down(self, timeout: float = SHUTDOWN_REPLY_S) -> None:
        """Refuse new calls and answer those in flight with ``ShuttingDown``; wait until the answers are sent.

        The daemon calls this once, when it begins to stop and before it
        disconnects; properties can still be read meanwhile. Returns within
        about ``timeout`` seconds even if the bus does not take the replies.
        """
        self._closing = True
        self._ready.set()  # calls still waiting for serve() run, and are refused
        calls = list(self._calls)
        for task in calls:
            task.cancel()
        if calls:
            await asyncio.wait(calls, timeout=timeout)
        for bus in list(ServiceInterface._get_buses(self)):
            if isinstance(bus, Bus) and not await bus.flush(timeout):
                logger.warning("the session bus did not take sttd's last replies within %.0f s", timeout)

    def disconnect(self) -> None:
        """Leave the bus (every connection the interface is exported on)."""
        for bus in {*ServiceInterface._get_buses(self), *([self._bus] if self._bus else [])}:
            bus.disconnect()

    def serve(self) -> None:
        """Let calls through to the controller (see the module docstring).

        Called by :func:`export` in the daemon's start-up step; the waiting
        calls resume only once that step is over.
        """
        self._ready.set()

    async def _serving(self) -> None:
        if not self._ready.is_set():
            await self._ready.wait()
        if self._closing:
            raise DBusError(SHUTTING_DOWN, "sttd is shutting down")

    @property
    def _dictation(self) -> core.Dictation:
        return self._controller.dictation

    def introspect(self) -> intr.Interface:
        interface = super().introspect()
        interface.properties = [_AnnotatedProperty(p.name, p.signature, p.access) for p in interface.properties]
        # dbus-next names no out-argument; clients (and d-feet) read these names.
        for member in [*interface.signals, *interface.methods]:
            names = _ARG_NAMES.get(member.name, ())
            args = member.args if isinstance(member, intr.Signal) else member.out_args
            for arg, name in zip(args, names, strict=False):
                arg.name = name
        return interface

    # -- methods

    @method()
    @_dbus_errors
    async def Start(self) -> None:
        await self._serving()
        await self._controller.start()

    # StartWith, not Start(a{sv}): a method's signature is part of its identity on D-Bus, so
    # changing Start's would break every client (hotkeys, widgets) that calls it without arguments.
    @method()
    @_dbus_errors
    async def StartWith(self, options: "a{sv}") -> None:  # noqa: F722 - a D-Bus signature
        from .options import check_types  # not at import: sttctl imports this module and needs no config

        values = check_types({name: (v.signature, v.value) for name, v in options.items()})
        await self._serving()
        await self._controller.start_with(values)

    @method()
    @_dbus_errors
    async def Stop(self) -> None:
        await self._serving()
        self._controller.stop()

    @method()
    @_dbus_errors
    async def Cancel(self) -> None:
        await self._serving()
        self._controller.cancel()

    @method()
    @_dbus_errors
    async def Toggle(self) -> None:
        await self._serving()
        await self._controller.toggle()

    @method()
    @_dbus_errors
    async def SetLanguage(self, code: "s") -> None:
        await self._serving()
        self._controller.set_language(code)

    @method()
    @_dbus_errors
    async def Send(self) -> None:
        await self._serving()
        self._controller.send()

    @method()
    @_dbus_errors
    async def Purge(self) -> None:
        await self._serving()
        self._controller.purge()

    @method()
    @_dbus_errors
    async def Undo(self) -> None:
        await self._serving()
        await self._controller.undo()

    @method()
    @_dbus_errors
    async def ListSources(self) -> "a(ssb)":
        await self._serving()
        sources = await self._controller.list_sources()
        return [[str(s.name), str(s.description), bool(s.is_default)] for s in sources]

    @method()
    @_dbus_errors
    async def ListShortcuts(self) -> "a(sss)":
        await self._serving()
        return [[str(i), str(d), str(t)] for i, d, t in await self._controller.list_shortcuts()]

    # -- properties

    @dbus_property(access=PropertyAccess.READ)
    @_dbus_errors
    def State(self) -> "s":
        return str(self._dictation.state)

    @dbus_property()
    @_dbus_errors
    def Enabled(self) -> "b":
        return self._dictation.enabled

    @Enabled.setter
    @_dbus_errors
    async def Enabled(self, value: "b") -> None:
        await self._serving()
        self._controller.set_enabled(value)

    @dbus_property(access=PropertyAccess.READ)
    @_dbus_errors
    def Language(self) -> "s":
        return self._dictation.language

    @dbus_property(access=PropertyAccess.READ)
    @_dbus_errors
    def PendingText(self) -> "s":
        return self._dictation.pending_text

    @dbus_property(access=PropertyAccess.READ)
    @_dbus_errors
    def Source(self) -> "s":
        return self._controller.source

    @dbus_property(access=PropertyAccess.READ)
    @_dbus_errors
    def Engine(self) -> "s":
        return self._controller.engine

    @dbus_property(access=PropertyAccess.READ)
    @_dbus_errors
    def Model(self) -> "s":
        return self._controller.model

    @dbus_property(access=PropertyAccess.READ)
    @_dbus_errors
    def Profile(self) -> "s":
        return self._dictation.profile

    @dbus_property(access=PropertyAccess.READ)
    @_dbus_errors
    def Output(self) -> "s":
        return self._controller.output()[0]

    @dbus_property(access=PropertyAccess.READ)
    @_dbus_errors
    def OutputReason(self) -> "s":
        return self._controller.output()[1]

    @dbus_property(access=PropertyAccess.READ)
    @_dbus_errors
    def LastError(self) -> "s":
        return outward(self._dictation.last_error)

    @dbus_property(access=PropertyAccess.READ)
    @_dbus_errors
    def Shortcuts(self) -> "s":
        return self._controller.shortcuts_status

    # Widgets may poll this many times a second: it returns a stored number and does nothing else.
    @dbus_property(access=PropertyAccess.READ)
    def Level(self) -> "d":
        return self._level

    # -- signals

    @signal()
    def Transcript(self, text: str, final: bool, item_id: str) -> "sbs":
        return [text, final, item_id]

    @signal()
    def Triggered(self, name: str, text: str) -> "ss":
        return [name, text]

    @signal()
    def Committed(self, text: str, item_id: str) -> "ss":
        return [text, item_id]

    @signal()
    def Error(self, code: str, message: str) -> "ss":
        return [code, message]

    # -- from the daemon

    def publish(self, output: core.Output) -> None:
        """Announce one core output on the bus."""
        match output:
            case core.StateChanged(state):
                if state not in core.TURN_STATES:
                    # Before the State change, so no Level update follows a state without sound.
                    self.set_level(0.0)
                self.emit_properties_changed({"State": str(state)})
            case core.TranscriptEmitted(text, final, item_id):
                self._wire.signal("Transcript", text, final, item_id)
            case core.TextCommitted(text, item_id):
                self._wire.signal("Committed", text, item_id)
            case core.PendingTextChanged(text):
                self.emit_properties_changed({"PendingText": text})
            case core.Triggered(name, text):
                self._wire.signal("Triggered", name, text)
            case core.ErrorRaised(code, message):
                self._wire.signal("Error", code, outward(message))
            case core.LastErrorChanged(message):
                self.emit_properties_changed({"LastError": outward(message)})
            case core.LanguageChanged(language):
                self.emit_properties_changed({"Language": language})
            case core.EnabledChanged(enabled):
                self.emit_properties_changed({"Enabled": enabled})
            case core.ProfileChanged(profile):
                self.emit_properties_changed({"Profile": profile})

    def write_now(self) -> None:
        """Put the signals and changes announced so far on the bus before the loop runs anything else."""
        for bus in list(ServiceInterface._get_buses(self)):
            if isinstance(bus, Bus):
                bus.write_now()

    def set_level(self, level: float) -> None:
        """The daemon rate-limits this to at most 10 updates a second while listening."""
        level = float(level)
        if level != self._level:
            self._level = level
            self._wire.properties_changed({"Level": level})

    def emit_properties_changed(
        self, changed_properties: dict[str, Any], invalidated_properties: list[str] | None = None
    ) -> None:
        """dbus-next's, through :class:`~sttd.dbus_signals.WireSignals` (none of sttd's properties is invalidated)."""
        if invalidated_properties:
            super().emit_properties_changed(changed_properties, invalidated_properties)
        else:
            self._wire.properties_changed(changed_properties)

    def source_changed(self, source: str) -> None:
        """Announce ``Source`` when it differs from what was last announced."""
        if source != self._source:
            self._source = source
            self.emit_properties_changed({"Source": source})

    def output_changed(self, output: str, why: str) -> None:
        """Announce ``Output`` and ``OutputReason`` (the IBus input method came or went, a reload)."""
        self.emit_properties_changed({"Output": output, "OutputReason": why})

    def engine_changed(self, engine: str) -> None:
        self.emit_properties_changed({"Engine": engine})

    def shortcuts_changed(self, status: str) -> None:
        """Announce ``Shortcuts`` (the portal bound them, went away, came back)."""
        self.emit_properties_changed({"Shortcuts": status})

    def model_changed(self, model: str) -> None:
        """Announce ``Model`` (after a reload that changed ``[realtime] model``)."""
        self.emit_properties_changed({"Model": model})

    def check_arguments(self, message: Message) -> bool:
        """A bus message handler: refuse calls whose arguments have the wrong D-Bus type.

        dbus-next would answer a wrong method signature with ``UnknownMethod``
        and a wrongly typed ``Enabled`` with ``InvalidSignature``; the D-Bus
        specification's answer to both is ``InvalidArgs``. Returns False to
        let every other message through.
        """
        if message.message_type != MessageType.METHOD_CALL or message.path != OBJECT_PATH:
            return False
        refused = _too_long(message.member, message.body)
        if refused:
            logger.info("%s refused: %s", message.member, refused)
            raise DBusError(INVALID_ARGUMENT, refused)
        if self._signatures is None:
            introspection = self.introspect()
            self._signatures = (
                {m.name: m.in_signature for m in introspection.methods},
                {p.name: p.signature for p in introspection.properties},
            )
        methods, types = self._signatures
        if message.interface == INTERFACE:
            expected = methods.get(message.member)
            if expected is not None and message.signature != expected:
                arguments = f"one argument of type '{expected}'" if expected else "no arguments"
                raise DBusError(
                    ErrorType.INVALID_ARGS,
                    f"{message.member} takes {arguments}, not '{message.signature}'",
                )
        elif message.interface == PROPERTIES and message.member == "Set" and message.signature == "ssv":
            interface, name, value = message.body
            if interface == INTERFACE and name in types and value.signature != types[name]:
                raise DBusError(
                    ErrorType.INVALID_ARGS,
                    f"{name} is of type '{types[name]}'{_TYPE_NAMES.get(types[name], '')}, not '{value.signature}'",
                )
        return False


async def connect(controller: Controller) -> tuple[MessageBus, SttdInterface]:
    """Connect to the session bus and export a new interface, without owning the name yet.

    Calls wait until :meth:`SttdInterface.serve` is called. (The daemon's
    way before :func:`export` and :func:`stay_exported`; kept for it.)
    """
    interface = SttdInterface(controller)
    bus = await _connect_bus()
    _export_on(bus, interface)
    return bus, interface
