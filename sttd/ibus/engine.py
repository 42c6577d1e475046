"""The IBus engine (PyGObject): run by ``sttd-ibus`` under a Python that has ``gi`` and IBus 1.0.

One process serves every input context: IBus creates a :class:`SttdEngine`
per context, and the :class:`Hub` sends the daemon's text to the one that
has the focus. The hub listens on the session bus to ``Transcript``,
``Committed``, ``Triggered`` and ``State`` of ``io.github.sttd.Sttd1``
(it works whether sttd starts before or after it), owns
``io.github.sttd.Ibus1`` while an engine is enabled, and exports ``Undo()``
there for the daemon. Keys always pass through (:meth:`SttdEngine.do_process_key_event`
returns False).

Imports only the standard library, ``gi`` and :mod:`sttd.ibus`: it runs
under the system's Python, outside sttd's virtualenv.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import gi

gi.require_version("IBus", "1.0")
from gi.repository import Gio, GLib, GObject, IBus  # noqa: E402

from . import BUS_NAME, COMPONENT_NAME, ENGINE_NAME, INTERFACE, OBJECT_PATH  # noqa: E402
from .compose import SPACINGS, Action, Commit, Composer, Erase, PressReturn, Show, UndoRefused  # noqa: E402

logger = logging.getLogger("sttd.ibus")

STTD_NAME = "io.github.sttd.Sttd1"
STTD_PATH = "/io/github/sttd/Sttd1"
STTD_ERROR = "io.github.sttd.Sttd1.Error."
STOPPED_STATES = ("idle", "error")
"""After these, no final text will replace what the preedit shows."""
KEYCODES = {IBus.KEY_BackSpace: 14, IBus.KEY_Return: 28}
"""evdev key codes (X key code minus 8) of the keys the engine presses itself."""

_INTROSPECTION = f"""
<node>
  <interface name="{INTERFACE}">
    <method name="Undo">
      <arg name="removed" direction="out" type="s"/>
    </method>
  </interface>
</node>
"""


class Hub:
    """The engine process's link to sttd, and the one :class:`Composer` of the focused context."""

    def __init__(self, spacing: str) -> None:
        self.composer = Composer(spacing)  # type: ignore[arg-type]
        self.focused: SttdEngine | None = None
        self._enabled: set[int] = set()
        self._owner = 0
        self.session = Gio.bus_get_sync(Gio.BusType.SESSION, None)
        subscribe = self.session.signal_subscribe
        flags = Gio.DBusSignalFlags.NONE
        # No sender filter: the signals are recognised by path and interface, whoever owns the name now.
        subscribe(None, STTD_NAME, None, STTD_PATH, None, flags, self._on_sttd_signal)
        props = "org.freedesktop.DBus.Properties"
        subscribe(None, props, "PropertiesChanged", STTD_PATH, STTD_NAME, flags, self._on_properties)
        info = Gio.DBusNodeInfo.new_for_xml(_INTROSPECTION)
        self.session.register_object(OBJECT_PATH, info.interfaces[0], self._on_method_call, None, None)

    # -- engines

    def enabled(self, engine: SttdEngine) -> None:
        self._enabled.add(id(engine))
        if not self._owner:
            self._owner = Gio.bus_own_name_on_connection(self.session, BUS_NAME, Gio.BusNameOwnerFlags.NONE, None, None)
            logger.info("enabled: owning %s", BUS_NAME)

    def disabled(self, engine: SttdEngine) -> None:
        self._enabled.discard(id(engine))
        if self.focused is engine:
            self.focused = None
        if not self._enabled and self._owner:
            Gio.bus_unown_name(self._owner)
            self._owner = 0
            logger.info("disabled: released %s", BUS_NAME)

    def focus_in(self, engine: SttdEngine) -> None:
        if self.focused is not engine:
            self.focused = engine
            self.composer.focus_changed()
            engine.show_preedit("")

    def focus_out(self, engine: SttdEngine) -> None:
        if self.focused is engine:
            self.focused = None
            self.composer.focus_changed()

    # -- the daemon

    def _on_sttd_signal(self, _conn: Any, _sender: str, _path: str, _iface: str, name: str, params: Any) -> None:
        args = params.unpack()
        engine = self.focused
        if engine is None:
            return
        if name == "Transcript":
            text, final, item_id = args
            if not self.composer.preedit:
                engine.refresh_context(self.composer)
            self.apply(self.composer.transcript(text, final, item_id))
        elif name == "Committed":
            text, item_id = args
            if not self.composer.preedit:
                engine.refresh_context(self.composer)
            self.apply(self.composer.committed(text, item_id))
        elif name == "Triggered" and args[0] in ("send", "purge"):
            self.apply(self.composer.triggered(args[0]))

    def _on_properties(self, _conn: Any, _sender: str, _path: str, _iface: str, _name: str, params: Any) -> None:
        _interface, changed, _invalidated = params.unpack()
        if changed.get("State") in STOPPED_STATES and self.focused is not None:
            self.apply(self.composer.stopped())

    def _on_method_call(
        self, _conn: Any, _sender: str, _path: str, _iface: str, method: str, _params: Any, invocation: Any
    ) -> None:
        if method != "Undo":
            invocation.return_dbus_error("org.freedesktop.DBus.Error.UnknownMethod", f"no method {method}")
            return
        try:
            if self.focused is None:
                raise UndoRefused("NothingToUndo", "no window has the sttd input method's focus")
            self.apply(self.composer.undo())
        except UndoRefused as refused:
            invocation.return_dbus_error(STTD_ERROR + refused.name, str(refused))
            return
        invocation.return_value(GLib.Variant("(s)", (self.composer.undone,)))

    def apply(self, actions: list[Action]) -> None:
        engine = self.focused
        if engine is None:
            return
        for action in actions:
            match action:
                case Show(text):
                    engine.show_preedit(text)
                case Commit(text):
                    engine.show_preedit("")
                    engine.commit_text(IBus.Text.new_from_string(text))
                case Erase(count):
                    for _ in range(count):
                        engine.press(IBus.KEY_BackSpace)
                case PressReturn():
                    engine.press(IBus.KEY_Return)


HUB: Hub | None = None


class SttdEngine(IBus.Engine):  # type: ignore[misc]  # gi is untyped
    """One input context's engine; the :data:`HUB` does the work."""

    __gtype_name__ = "SttdEngine"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._capabilities = 0

    def show_preedit(self, text: str) -> None:
        ibus_text = IBus.Text.new_from_string(text)
        length = len(text)
        if length:
            ibus_text.append_attribute(IBus.AttrType.UNDERLINE, IBus.AttrUnderline.SINGLE, 0, length)
        # CLEAR: a context that loses the focus drops provisional text rather than committing it.
        self.update_preedit_text_with_mode(ibus_text, length, bool(length), IBus.PreeditFocusMode.CLEAR)

    def press(self, keyval: int) -> None:
        keycode = KEYCODES.get(keyval, 0)
        self.forward_key_event(keyval, keycode, 0)
        self.forward_key_event(keyval, keycode, IBus.ModifierType.RELEASE_MASK)

    def refresh_context(self, composer: Composer) -> None:
        """Learn the character left of the cursor from the application, where it reports surrounding text."""
        if self._capabilities & IBus.Capabilite.SURROUNDING_TEXT:
            text, cursor, _anchor = self.get_surrounding_text()
            composer.set_before(text.get_text()[:cursor][-1:])

    def do_set_capabilities(self, caps: int) -> None:
        self._capabilities = caps

    def do_process_key_event(self, keyval: int, keycode: int, state: int) -> bool:
        if HUB is not None and self is HUB.focused and not state & IBus.ModifierType.RELEASE_MASK:
            if keyval in (IBus.KEY_Return, IBus.KEY_KP_Enter):
                HUB.composer.key_typed("\n")
            elif not _is_modifier(keyval):
                code = IBus.keyval_to_unicode(keyval)  # a str ("" for none)
                HUB.composer.key_typed(code if code and not state & IBus.ModifierType.CONTROL_MASK else "")
        return False  # every key reaches the application untouched

    def do_focus_in(self) -> None:
        if HUB is not None:
            HUB.focus_in(self)

    def do_focus_out(self) -> None:
        if HUB is not None:
            HUB.focus_out(self)

    def do_enable(self) -> None:
        # Asking once makes IBus request surrounding text from the client from now on.
        self.get_surrounding_text()
        if HUB is not None:
            HUB.enabled(self)

    def do_disable(self) -> None:
        if HUB is not None:
            HUB.disabled(self)

    def do_reset(self) -> None:
        """The application reset the context (a click elsewhere): the engine's view of it is stale."""
        if HUB is not None and self is HUB.focused:
            HUB.composer.set_before("")

    def do_destroy(self) -> None:
        if HUB is not None:
            HUB.disabled(self)
        IBus.Engine.do_destroy(self)


_MODIFIERS = frozenset(
    getattr(IBus, f"KEY_{name}", 0)
    for name in (
        "Shift_L",
        "Shift_R",
        "Control_L",
        "Control_R",
        "Alt_L",
        "Alt_R",
        "Meta_L",
        "Meta_R",
        "Super_L",
        "Super_R",
        "ISO_Level3_Shift",
        "Caps_Lock",
        "Num_Lock",
    )
)


def _is_modifier(keyval: int) -> bool:
    return keyval in _MODIFIERS


def component(exec_line: str) -> Any:
    """The IBus component this process provides (``sttd.xml`` says the same for ibus-daemon)."""
    comp = IBus.Component(
        name=COMPONENT_NAME,
        description="Dictation (sttd)",
        version="0.1.0",
        license="MIT",
        author="sttd",
        homepage="https://github.com/sttd/sttd",
        command_line=exec_line,
        textdomain="sttd",
    )
    comp.add_engine(
        IBus.EngineDesc(
            name=ENGINE_NAME,
            longname="Dictation (sttd)",
            description="Text you speak, through sttd: shown while you speak, committed when final",
            language="other",
            license="MIT",
            author="sttd",
            icon="audio-input-microphone",
            layout="default",
            symbol="🎤",
            rank=0,
        )
    )
    return comp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sttd-ibus", description="IBus input method for sttd dictation.")
    parser.add_argument("--ibus", action="store_true", help="started by ibus-daemon (from sttd.xml)")
    parser.add_argument(
        "--spacing",
        choices=SPACINGS,
        default="auto",
        help="space between utterances: auto (none for scripts written without spaces), space, none",
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="sttd-ibus: %(levelname)s %(message)s")
    global HUB
    IBus.init()
    bus = IBus.Bus()
    if not bus.is_connected():
        print("sttd-ibus: cannot reach ibus-daemon (is IBus running?)", file=sys.stderr)
        return 1
    try:
        HUB = Hub(args.spacing)
    except GLib.Error as exc:
        print(f"sttd-ibus: cannot reach the session bus: {exc.message}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    bus.connect("disconnected", lambda *_: loop.quit())
    factory = IBus.Factory.new(bus.get_connection())
    factory.add_engine(ENGINE_NAME, GObject.type_from_name("SttdEngine"))
    if args.ibus:
        bus.request_name(COMPONENT_NAME, 0)
    else:
        # Started by hand (or by a user session without the component file): announce ourselves.
        bus.register_component(component(" ".join(sys.argv)))
    logger.info("ready")
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
