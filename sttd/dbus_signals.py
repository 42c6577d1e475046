# mypy: disable-error-code="misc"
# dbus-next is untyped (Any to mypy).
"""Sending sttd's signals and property changes through :mod:`sttd.dbus_wire`.

:class:`WireSignals` is what :class:`~sttd.dbus_service.SttdInterface` emits
through: on a :class:`~sttd.bus.Bus` each message is written from a header
marshalled once and a body written directly; a value the wire module does not
write, or a bus before its Hello, gets dbus-next's own message, in the same
order on the same writer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from dbus_next import Variant
from dbus_next.service import ServiceInterface

from .bus import Bus
from .dbus_contract import PROPERTIES
from .dbus_wire import Body, SignalTemplate, Unsupported

__all__ = ["WireSignals"]


class WireSignals:
    """The signals of one exported ``interface`` at ``path``."""

    def __init__(self, interface: ServiceInterface, path: str) -> None:
        self._interface = interface
        self._path = path
        self._templates: dict[tuple[str, str], SignalTemplate] = {}
        self._property_types: dict[str, str] = {
            prop.name: prop.signature for prop in ServiceInterface._get_properties(interface)
        }
        self._signal_types: dict[str, tuple[str, list[str]]] = {
            sig.name: (sig.signature, [t.signature for t in sig.signature_tree.types])
            for sig in ServiceInterface._get_signals(interface)
        }
        """Each signal's signature and its arguments' types, as its ``@signal`` declares them."""

    def signal(self, member: str, *args: object) -> None:
        """Emit the interface's own signal ``member`` with ``args``."""
        signature, types = self._signal_types[member]
        self._send(self._interface.name, member, signature, _body(types, args), lambda: list(args))

    def properties_changed(self, changed: Mapping[str, object]) -> None:
        """``PropertiesChanged`` for the properties in ``changed`` (unknown names are left out, as dbus-next does)."""
        types = self._property_types
        entries = [(name, types[name], value) for name, value in changed.items() if name in types]
        body: Body | None
        try:
            body = Body().string(self._interface.name).variants(entries).empty_array()
        except Unsupported:
            body = None

        def ordinary() -> list[object]:
            return [self._interface.name, {name: Variant(kind, value) for name, kind, value in entries}, []]

        self._send(PROPERTIES, "PropertiesChanged", "sa{sv}as", body, ordinary)

    def _send(
        self, interface: str, member: str, signature: str, body: Body | None, ordinary: Callable[[], list[object]]
    ) -> None:
        for bus in list(ServiceInterface._get_buses(self._interface)):
            if body is not None and isinstance(bus, Bus):
                template = self._templates.get((interface, member))
                if template is None:
                    template = SignalTemplate(self._path, interface, member, signature, ordinary())
                    self._templates[(interface, member)] = template
                if bus.send_marshalled(template, body):
                    continue
            bus._interface_signal_notify(self._interface, interface, member, signature, ordinary())


def _body(types: Sequence[str], args: Sequence[object]) -> Body | None:
    """The arguments written by :mod:`sttd.dbus_wire`; None when it cannot write one (dbus-next then does)."""
    if len(types) != len(args):
        return None
    body = Body()
    try:
        for kind, value in zip(types, args, strict=True):
            body.value(kind, value)
    except Unsupported:
        return None
    return body
