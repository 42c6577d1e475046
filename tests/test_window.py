"""``auto``'s decision table (sttd.window.choose_auto), with the session's facts given."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from sttd.window import VIRTUAL_KEYBOARD, choose_auto


def _which(*present: str):  # type: ignore[no-untyped-def]
    return lambda tool: f"/usr/bin/{tool}" if tool in present else None


def _probe(*offered: str):  # type: ignore[no-untyped-def]
    def probe(environ: Mapping[str, str]) -> frozenset[str] | None:
        return frozenset(offered)

    return probe


ALL = ("wtype", "xdotool", "wl-copy", "xclip")
WAYLAND = {"WAYLAND_DISPLAY": "wayland-1", "XDG_RUNTIME_DIR": "/run/user/1000", "DISPLAY": ":0"}


@pytest.mark.parametrize(
    ("environ", "ibus", "tools", "offered", "output"),
    [
        (WAYLAND, True, ALL, (VIRTUAL_KEYBOARD,), "ibus"),
        (WAYLAND, False, ALL, (VIRTUAL_KEYBOARD, "wl_seat"), "type:wtype"),
        # GNOME / KDE: no virtual keyboard; XWayland's DISPLAY must not pick xdotool.
        (WAYLAND, False, ALL, ("wl_seat",), "clipboard"),
        (WAYLAND, False, ("xdotool", "wl-copy"), (VIRTUAL_KEYBOARD,), "clipboard"),
        ({"DISPLAY": ":0"}, False, ALL, (), "type:xdotool"),
        ({"DISPLAY": ":0"}, False, ("xclip",), (), "clipboard"),
        ({}, False, ALL, (), "none"),
    ],
)
def test_auto_picks_what_works_in_the_session(
    environ: dict[str, str], ibus: bool, tools: tuple[str, ...], offered: tuple[str, ...], output: str
) -> None:
    choice = choose_auto(environ, ibus, _which(*tools), _probe(*offered))
    assert choice.output == output
    assert choice.why
