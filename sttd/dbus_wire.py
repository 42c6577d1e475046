"""sttd's own signals on the wire: the header marshalled once, each body written directly.

dbus-next builds every signal as a ``Message`` (checking each name), wraps each
changed property in a ``Variant`` (parsing its signature) and marshals it all
in Python: 60-260 µs a signal on a cold cache here. A turn sends several in a
row (``State`` twice, the partial ``Transcript`` signals, the final one,
``Committed``, ``PendingText``), and the final ``Transcript`` of a turn waited
about a millisecond behind the others. A signal's header is the same for every
send but for the body's length and the serial, so :class:`SignalTemplate`
marshals it once, with dbus-next, and patches those two; :class:`Body` writes
the few types sttd's signals carry (``s``, ``b``, ``d``, ``a{sv}`` of those,
an empty ``as``) in the D-Bus wire format, little endian, as dbus-next would.

Only what this module can write exactly is written here: a type it does not
know raises :class:`Unsupported`, and the caller sends that signal the
ordinary way. Strings come from :func:`sttd.protocol.carriable` or from sttd
itself, and a string D-Bus cannot carry (a NUL, a lone surrogate) raises too.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from dbus_next import Message

__all__ = ["Body", "SignalTemplate", "Unsupported"]

_LENGTH_AT, _SERIAL_AT, _FIELDS_LENGTH_AT, _FIXED_HEADER = 4, 8, 12, 16
"""The fixed header is ``yyyyuua(yv)``: endianness, type, flags, version, body length, serial, then the fields."""
_ZEROS = bytes(8)


class Unsupported(ValueError):
    """A value this module does not marshal: send the message through dbus-next instead."""


class SignalTemplate:
    """One signal (path, interface, member, signature) whose header is marshalled once."""

    def __init__(self, path: str, interface: str, member: str, signature: str, sample: list[object]) -> None:
        """``sample``: any body of ``signature``, for dbus-next to marshal the header around once."""
        message = Message.new_signal(path, interface, member, signature, sample)
        message.serial = 1
        wire = message._marshall()
        if wire[:1] != b"l":
            raise ValueError("dbus-next marshalled a big-endian message")
        (fields,) = struct.unpack_from("<I", wire, _FIELDS_LENGTH_AT)
        end = _FIXED_HEADER + fields
        end += -end % 8  # the body starts 8-aligned
        self._header = bytes(wire[:end])

    def message(self, serial: int, body: Body) -> bytearray:
        """The whole message with ``serial`` and ``body``."""
        data = bytearray(self._header)
        struct.pack_into("<II", data, _LENGTH_AT, len(body.data), serial)
        data += body.data
        return data


class Body:
    """A message body written value by value; alignment counts from the body's start (8-aligned in the message)."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = bytearray()

    def _align(self, n: int) -> None:
        pad = -len(self.data) % n
        if pad:
            self.data += _ZEROS[:pad]

    def string(self, text: str) -> Body:
        if "\0" in text:
            raise Unsupported("a D-Bus string cannot hold a NUL")
        try:
            encoded = text.encode("utf-8")
        except UnicodeEncodeError:
            raise Unsupported("a D-Bus string cannot hold a lone surrogate") from None
        self._align(4)
        self.data += struct.pack("<I", len(encoded))
        self.data += encoded
        self.data += b"\0"
        return self

    def boolean(self, value: bool) -> Body:
        self._align(4)
        self.data += b"\1\0\0\0" if value else b"\0\0\0\0"
        return self

    def double(self, value: float) -> Body:
        self._align(8)
        self.data += struct.pack("<d", value)
        return self

    def value(self, signature: str, value: object) -> Body:
        """One ``s``, ``b`` or ``d`` value."""
        if signature == "s" and isinstance(value, str):
            return self.string(value)
        if signature == "b" and isinstance(value, bool):
            return self.boolean(value)
        if signature == "d" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return self.double(float(value))
        raise Unsupported(f"no fast path for {signature!r} = {type(value).__name__}")

    def variants(self, entries: Iterable[tuple[str, str, object]]) -> Body:
        """An ``a{sv}`` of (name, signature, value)."""
        self._align(4)
        at = len(self.data)
        self.data += _ZEROS[:4]  # the array's length, known at the end
        self._align(8)  # dict entries are structs: 8-aligned, also when there are none
        start = len(self.data)
        for name, signature, value in entries:
            self._align(8)
            self.string(name)
            self.data += bytes((len(signature),)) + signature.encode("ascii") + b"\0"
            self.value(signature, value)
        struct.pack_into("<I", self.data, at, len(self.data) - start)
        return self

    def empty_array(self) -> Body:
        """An empty array of 4-aligned elements (``as``): its length, 0."""
        self._align(4)
        self.data += _ZEROS[:4]
        return self
