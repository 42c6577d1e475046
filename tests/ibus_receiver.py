"""A GTK 3 window with a text view: the application the IBus input method writes into.

Run with the system's Python (it needs ``gi``), ``DISPLAY``,
``GTK_IM_MODULE=ibus`` and ``IBUS_ADDRESS`` set:
``/usr/bin/python3 tests/ibus_receiver.py RECORD``. It appends one JSON
object per line to RECORD, flushed at once:

* ``{"type": "ready"}`` once its text view has the keyboard focus;
* ``{"type": "preedit", "text": ...}`` whenever the input method's preedit changes;
* ``{"type": "text", "text": ...}`` the whole committed text, whenever it changes.

There is no window manager on a bare Xvfb: the window takes the focus itself.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import gi

gi.require_version("Gtk", "3.0")
from gi.repository import GLib, Gtk  # noqa: E402


def main() -> int:
    record = open(sys.argv[1], "a", encoding="utf-8")  # noqa: SIM115 - open for the process's life

    def emit(**item: Any) -> None:
        record.write(json.dumps(item) + "\n")
        record.flush()

    window = Gtk.Window(title="sttd IBus receiver")
    window.set_default_size(400, 200)
    view = Gtk.TextView()
    window.add(view)
    buffer = view.get_buffer()
    ready = {"done": False}

    def on_focus(*_: Any) -> bool:
        if not ready["done"]:
            ready["done"] = True
            emit(type="ready")
        return False

    def take_focus() -> bool:
        if not ready["done"]:
            window.present()
            view.grab_focus()
        return not ready["done"]

    buffer.connect("changed", lambda b: emit(type="text", text=b.get_text(b.get_start_iter(), b.get_end_iter(), True)))
    view.connect("preedit-changed", lambda _view, text: emit(type="preedit", text=text))
    view.connect("focus-in-event", on_focus)
    window.connect("destroy", Gtk.main_quit)
    window.show_all()
    GLib.timeout_add(100, take_focus)
    Gtk.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
