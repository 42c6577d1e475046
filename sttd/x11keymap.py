"""The X keymap helper of the xdotool output (``python -m sttd.output x11-keymap bind|release|list``).

Binds the text's non-ASCII characters to spare keycodes before xdotool types
them and unbinds them afterwards (see :mod:`sttd.output`). It runs in a
child process of its own: Xlib ends the process that meets a broken display
connection.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from .errors import OutputError


def _x11_keymap(command: str, request: dict[str, Any]) -> dict[str, Any]:
    """Bind keysym pairs to spare keycodes (``bind``), undo that (``release``), or ``list`` keysyms on ``$DISPLAY``.

    Runs in a child process of its own (``python -m sttd.output x11-keymap
    bind|release``, the request as JSON on stdin, the answer as JSON on
    stdout): Xlib exits the process on a broken display connection.
    """
    import ctypes
    import ctypes.util

    x11 = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
    dpy_t, keysym_p, int_p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulong), ctypes.POINTER(ctypes.c_int)
    x11.XOpenDisplay.restype, x11.XOpenDisplay.argtypes = dpy_t, [ctypes.c_char_p]
    x11.XDisplayKeycodes.argtypes = [dpy_t, int_p, int_p]
    x11.XGetKeyboardMapping.restype = keysym_p
    x11.XGetKeyboardMapping.argtypes = [dpy_t, ctypes.c_ubyte, ctypes.c_int, int_p]
    x11.XChangeKeyboardMapping.argtypes = [dpy_t, ctypes.c_int, ctypes.c_int, keysym_p, ctypes.c_int]
    x11.XSync.argtypes = [dpy_t, ctypes.c_int]
    x11.XCloseDisplay.argtypes = [dpy_t]
    x11.XFree.argtypes = [ctypes.c_void_p]
    handler_t = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
    ignore = handler_t(lambda display, event: 0)  # a refused change must not end the helper
    x11.XSetErrorHandler(ignore)

    display = x11.XOpenDisplay(None)
    if not display:
        raise OutputError(f"cannot open display {os.environ.get('DISPLAY', '')!r}")
    try:
        low, high, per = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        x11.XDisplayKeycodes(display, ctypes.byref(low), ctypes.byref(high))
        count = high.value - low.value + 1
        syms = x11.XGetKeyboardMapping(display, low.value, count, ctypes.byref(per))
        table = {low.value + i: [int(syms[i * per.value + j]) for j in range(per.value)] for i in range(count)}
        x11.XFree(syms)

        def change(code: int, keysyms: list[int]) -> None:
            array = (ctypes.c_ulong * len(keysyms))(*keysyms)
            x11.XChangeKeyboardMapping(display, code, len(keysyms), array, 1)

        bound: list[list[int]] = []
        present = {sym for row in table.values() for sym in row if sym}
        if command == "list":
            return {"keysyms": sorted(present)}
        if command == "bind":
            spare = [code for code, row in sorted(table.items()) if not any(row)][:-1]  # one left for xdotool
            for lower, upper in request["keysyms"]:
                if lower in present and upper in present:
                    continue
                if not spare:
                    break
                code = spare.pop(0)
                change(code, [lower] if lower == upper else [lower, upper])
                present |= {lower, upper}
                bound.append([code, lower, upper])
        elif command == "release":
            for code, lower, upper in request["bound"]:
                row = table.get(code, [])
                if row and row[0] == lower and (lower == upper or row[1] == upper):  # still ours
                    change(code, [0])
        else:
            raise OutputError(f"unknown keymap command {command!r}")
        x11.XSync(display, 0)
    finally:
        x11.XCloseDisplay(display)
    return {"bound": bound}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "x11-keymap":
        print("usage: python -m sttd.output x11-keymap bind|release|list < request.json", file=sys.stderr)
        return 2
    try:
        answer = _x11_keymap(args[1], json.load(sys.stdin))
    except (OSError, OutputError, ValueError, KeyError, TypeError) as exc:
        print(f"x11-keymap: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer))
    return 0
