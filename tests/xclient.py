"""A tiny X11 client that takes the keyboard focus and reports every key it receives.

Run it with ``DISPLAY`` set: ``python -m tests.xclient`` (or as a script). It
prints one JSON object per line on stdout, flushed at once:

* ``{"type": "ready", "window": <id>}`` once it has the input focus;
* ``{"type": "key", "char": "é", "keysym": "eacute"}`` for every key press
  (``char`` is what the key types, as the X input method and the keymap of
  that instant make it: "" for a modifier, "\\r" for Return).

It uses Tk, which ships with CPython (Debian: python3-tk). There is no window
manager on a bare Xvfb, so it sets the input focus itself, and takes it back
if it ever loses it.
"""

from __future__ import annotations

import json
import sys
import tkinter
from typing import Any


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")  # ASCII: whatever the locale
    sys.stdout.flush()


def main() -> int:
    root = tkinter.Tk(className="sttd-xclient")
    root.title("sttd test client")
    root.geometry("320x80+0+0")
    state = {"ready": False}

    def grab_focus() -> None:
        if root.winfo_ismapped():
            root.focus_force()
        if not state["ready"]:
            root.after(100, grab_focus)

    def on_focus_in(event: tkinter.Event[Any]) -> None:
        if not state["ready"]:
            state["ready"] = True
            _emit({"type": "ready", "window": root.winfo_id()})

    def on_focus_out(event: tkinter.Event[Any]) -> None:
        root.after(50, root.focus_force)

    def on_key(event: tkinter.Event[Any]) -> None:
        _emit({"type": "key", "char": event.char, "keysym": event.keysym})

    root.bind("<KeyPress>", on_key)
    root.bind("<FocusIn>", on_focus_in)
    root.bind("<FocusOut>", on_focus_out)
    root.after(50, grab_focus)
    root.mainloop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
