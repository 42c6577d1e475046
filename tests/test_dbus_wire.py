"""sttd's hand-written signal bodies are byte for byte the messages dbus-next marshals.

A real client on a real bus reading them is in tests/test_level_signal.py and
every D-Bus test of the daemon (``gdbus``, ``busctl`` and dbus-next clients
all read sttd's signals from this path).
"""

from __future__ import annotations

import pytest
from dbus_next import Message, Variant

from sttd.dbus_contract import INTERFACE, OBJECT_PATH, PROPERTIES
from sttd.dbus_wire import Body, SignalTemplate, Unsupported

TEXTS = [
    "",
    "hello world",
    "naïve café, señor",
    "日本語の音声入力",
    "emoji 😀 and ZWJ 👩‍👩‍👧",
    "x" * 70_000,  # longer than a 16-bit length could say
    "a" * 3,  # lengths that leave each padding 0..3
    "ab",
    "a",
]


def _dbus_next(member: str, signature: str, body: list[object], serial: int, interface: str = INTERFACE) -> bytes:
    message = Message.new_signal(OBJECT_PATH, interface, member, signature, body)
    message.serial = serial
    return bytes(message._marshall())


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("final", [False, True])
def test_a_transcript_signal_is_what_dbus_next_marshals(text: str, final: bool) -> None:
    template = SignalTemplate(OBJECT_PATH, INTERFACE, "Transcript", "sbs", ["", False, ""])
    for serial, item_id in ((1, "item_1"), (77, "i"), (2**32 - 1, "item_" + text[:40])):
        body = Body().string(text).boolean(final).string(item_id)
        assert bytes(template.message(serial, body)) == _dbus_next("Transcript", "sbs", [text, final, item_id], serial)


def test_two_string_signals_are_what_dbus_next_marshals() -> None:
    for member in ("Committed", "Triggered", "Error"):
        template = SignalTemplate(OBJECT_PATH, INTERFACE, member, "ss", ["", ""])
        for a, b in zip(TEXTS, reversed(TEXTS), strict=True):
            body = Body().value("s", a).value("s", b)
            assert bytes(template.message(9, body)) == _dbus_next(member, "ss", [a, b], 9)


CHANGES: list[list[tuple[str, str, object]]] = [
    [("State", "s", "listening")],
    [("PendingText", "s", "日本語 😀")],
    [("PendingText", "s", "")],
    [("Enabled", "b", True)],
    [("Enabled", "b", False)],
    [("Level", "d", 0.0)],
    [("Level", "d", 0.731)],
    [("Level", "d", 1.0)],
    [("Output", "s", "ibus"), ("OutputReason", "s", "the IBus engine is enabled")],
    [("A", "s", "x"), ("B", "b", True), ("C", "d", 0.5), ("D", "s", "yz")],  # each entry re-aligned to 8
    [],
]


@pytest.mark.parametrize("changes", CHANGES)
def test_a_properties_changed_is_what_dbus_next_marshals(changes: list[tuple[str, str, object]]) -> None:
    template = SignalTemplate(OBJECT_PATH, PROPERTIES, "PropertiesChanged", "sa{sv}as", [INTERFACE, {}, []])
    body = Body().string(INTERFACE).variants(changes).empty_array()
    expected = _dbus_next(
        "PropertiesChanged",
        "sa{sv}as",
        [INTERFACE, {name: Variant(kind, value) for name, kind, value in changes}, []],
        5,
        interface=PROPERTIES,
    )
    assert bytes(template.message(5, body)) == expected


@pytest.mark.parametrize(
    ("kind", "value"),
    [("s", "nul\0inside"), ("s", "lone \ud800"), ("s", 3), ("b", 1), ("d", True), ("d", "0.5"), ("i", 3), ("as", [])],
)
def test_what_d_bus_cannot_carry_or_the_wire_path_does_not_write_is_refused(kind: str, value: object) -> None:
    with pytest.raises(Unsupported):
        Body().value(kind, value)
