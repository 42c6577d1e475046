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

Calls run as tasks (``async`` handlers) that wait until :func:`export` has
handed the interface to the daemon: with bus activation, dbus-daemon
delivers the activating call (``sttctl start``) even before the reply to
the name request, and it must not meet a half-started daemon.

No ``from __future__ import annotations`` here: dbus-next reads the D-Bus
signatures from the annotations and cannot read a postponed ``None``.
"""

import asyncio
import functools
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from dbus_next import DBusError, Message, MessageType, PropertyAccess
from dbus_next import introspection as intr
from dbus_next.aio import MessageBus
from dbus_next.constants import ErrorType, NameFlag, RequestNameReply
from dbus_next.service import ServiceInterface, dbus_property, method, signal

from . import core
from .errors import SttdError

if TYPE_CHECKING:  # sttd.audio loads numpy and libpulse: too slow for sttctl, which imports this module
    from .audio import SourceInfo

logger = logging.getLogger(__name__)

BUS_NAME = "io.github.sttd.Sttd1"
OBJECT_PATH = "/io/github/sttd/Sttd1"
INTERFACE = "io.github.sttd.Sttd1"
ERROR_PREFIX = f"{INTERFACE}.Error."
PROPERTIES = "org.freedesktop.DBus.Properties"
LEVEL_STATES = frozenset({core.State.LISTENING, core.State.SPEAKING, core.State.PROCESSING})
"""The states in which ``Level`` moves; in every other it is 0 and emits nothing."""


class Controller(Protocol):
    """What the D-Bus layer needs from the daemon."""

    @property
    def dictation(self) -> core.Dictation: ...

    @property
    def source(self) -> str: ...

    @property
    def engine(self) -> str: ...

    async def start(self) -> None: ...

    def stop(self) -> None: ...

    def cancel(self) -> None: ...

    async def toggle(self) -> None: ...

    def set_language(self, code: str) -> None: ...

    def set_enabled(self, enabled: bool) -> None: ...

    def send(self) -> None: ...

    def purge(self) -> None: ...

    async def list_sources(self) -> "list[SourceInfo]": ...


F = TypeVar("F", bound=Callable[..., Any])


def _dbus_errors(fn: F) -> F:
    """Turn sttd's errors into typed D-Bus errors and hide everything else's traceback."""

    def convert(name: str, exc: Exception) -> DBusError:
        if isinstance(exc, SttdError):
            logger.info("%s refused: %s", name, exc)
            return DBusError(ERROR_PREFIX + exc.dbus_name, str(exc))
        logger.exception("%s failed", name)
        return DBusError(ERROR_PREFIX + "Failed", f"{name} failed: {exc.__class__.__name__} (details in sttd's log)")

    if _is_coroutine(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any) -> Any:
            try:
                return await fn(*args)
            except DBusError:
                raise
            except Exception as exc:
                raise convert(fn.__name__, exc) from None

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        try:
            return fn(*args)
        except DBusError:
            raise
        except Exception as exc:
            raise convert(fn.__name__, exc) from None

    return wrapper  # type: ignore[return-value]


class _DropAnsweredErrors(logging.Filter):
    """dbus-next 0.2.3 answers a ``DBusError`` raised by an ``async`` method, then lets it
    escape into the event loop, which logs it with a traceback ("Exception in callback
    ...done"). The caller already has its answer; the log should not look like a crash."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, DBusError) and "_make_method_handler" in record.getMessage())


_ANSWERED_ERRORS = _DropAnsweredErrors()


def _is_coroutine(fn: Callable[..., Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)


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
    "Error": ("code", "message"),
    "ListSources": ("sources",),
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
        self._source = controller.source
        self._signatures: tuple[dict[str, str], dict[str, str]] | None = None
        self._ready = asyncio.Event()

    def serve(self) -> None:
        """Let calls through to the controller (see the module docstring).

        Called by :func:`export` in the daemon's start-up step; the waiting
        calls resume only once that step is over.
        """
        self._ready.set()

    async def _serving(self) -> None:
        if not self._ready.is_set():
            await self._ready.wait()

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
    async def ListSources(self) -> "a(ssb)":
        await self._serving()
        sources = await self._controller.list_sources()
        return [[str(s.name), str(s.description), bool(s.is_default)] for s in sources]

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
    def LastError(self) -> "s":
        return self._dictation.last_error

    @dbus_property(access=PropertyAccess.READ)
    @_dbus_errors
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
    def Error(self, code: str, message: str) -> "ss":
        return [code, message]

    # -- from the daemon

    def publish(self, output: core.Output) -> None:
        """Announce one core output on the bus."""
        match output:
            case core.StateChanged(state):
                if state not in LEVEL_STATES:
                    # Before the State change, so no Level update follows a state without sound.
                    self.set_level(0.0)
                self.emit_properties_changed({"State": str(state)})
            case core.TranscriptEmitted(text, final, item_id):
                self.Transcript(text, final, item_id)
            case core.PendingTextChanged(text):
                self.emit_properties_changed({"PendingText": text})
            case core.Triggered(name, text):
                self.Triggered(name, text)
            case core.ErrorRaised(code, message):
                self.Error(code, message)
            case core.LastErrorChanged(message):
                self.emit_properties_changed({"LastError": message})
            case core.LanguageChanged(language):
                self.emit_properties_changed({"Language": language})
            case core.EnabledChanged(enabled):
                self.emit_properties_changed({"Enabled": enabled})

    def set_level(self, level: float) -> None:
        """The daemon rate-limits this to at most 10 updates a second while listening."""
        level = float(level)
        if level != self._level:
            self._level = level
            self.emit_properties_changed({"Level": level})

    def source_changed(self, source: str) -> None:
        """Announce ``Source`` when it differs from what was last announced."""
        if source != self._source:
            self._source = source
            self.emit_properties_changed({"Source": source})

    def engine_changed(self, engine: str) -> None:
        self.emit_properties_changed({"Engine": engine})

    def check_arguments(self, message: Message) -> bool:
        """A bus message handler: refuse calls whose arguments have the wrong D-Bus type.

        dbus-next would answer a wrong method signature with ``UnknownMethod``
        and a wrongly typed ``Enabled`` with ``InvalidSignature``; the D-Bus
        specification's answer to both is ``InvalidArgs``. Returns False to
        let every other message through.
        """
        if message.message_type != MessageType.METHOD_CALL or message.path != OBJECT_PATH:
            return False
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


async def export(controller: Controller) -> tuple[MessageBus, SttdInterface]:
    """Connect to the session bus, export the interface and own the name.

    Raises :class:`SttdError` when another sttd already owns the name; the
    name is requested without queueing, so a second daemon exits at once.
    """
    bus, interface = await connect(controller)
    await own_name(bus)
    interface.serve()
    return bus, interface


async def connect(controller: Controller) -> tuple[MessageBus, SttdInterface]:
    """Connect to the session bus and export the interface, without owning the name yet.

    Calls wait until :meth:`SttdInterface.serve` is called.
    """
    try:
        bus = await MessageBus().connect()
    except (OSError, ValueError, DBusError) as exc:
        raise SttdError(f"cannot connect to the session bus: {exc}") from None
    logging.getLogger("asyncio").addFilter(_ANSWERED_ERRORS)  # idempotent
    interface = SttdInterface(controller)
    bus.add_message_handler(interface.check_arguments)
    bus.export(OBJECT_PATH, interface)
    return bus, interface


async def own_name(bus: MessageBus) -> None:
    """Own :data:`BUS_NAME`; from here on the bus delivers calls (and activating ones).

    Raises :class:`SttdError` (and disconnects) when another sttd owns it:
    the name is requested without queueing, so a second daemon exits at once.
    """
    reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
    if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        bus.disconnect()
        raise SttdError(f"another sttd already owns {BUS_NAME} on this session bus")
