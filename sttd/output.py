"""Built-in text outputs (``[output] mode``): type, copy to the clipboard, or print.

:class:`TextOutput` decides what each dictation event does in the configured
mode and runs the tools through a :class:`Runner` that :mod:`sttd.hooks`
provides, with the same process handling as the hook commands (no shell, the
text on stdin and never on the command line, a timeout that kills the
process group, failures logged and reported).

==============  ===========================  =====================  ================
event           ``type``                     ``clipboard``          ``stdout``
==============  ===========================  =====================  ================
``transcript``  types the text, after a      copies the text        prints the text,
                space unless it starts a     accumulated since the  spaced like
                message                      last send or purge     ``type``
``send``        presses Return               copies the sent text   prints a newline
                                             if it differs
``purge``       nothing (typed text stays)   forgets the text       nothing
==============  ===========================  =====================  ================

The typing tool comes from the session's environment: ``wtype`` on Wayland
(``WAYLAND_DISPLAY``), ``xdotool`` on X11 (``DISPLAY`` without
``WAYLAND_DISPLAY``), ``ydotool`` when its daemon's socket exists and neither
fits. The clipboard tool is ``wl-copy`` on Wayland, ``xclip`` (or ``xsel``)
on X11. Tools are looked up for every event, so installing one takes effect
without a restart.

Typing characters that are not on the keyboard map with xdotool
---------------------------------------------------------------

xdotool types a character missing from the keymap (``é`` on a US layout) by
binding it to a spare keycode, pressing that key and unbinding it a few
milliseconds later. A client reads the keymap only when it handles the key
event, so a busy client sees the key after the unbinding and gets nothing:
characters are lost under load. And xdotool 3.20160805 (Debian 12) binds a
single keysym, which X reads as its lower case: ``Ü`` comes out as ``ü``. So
before typing, sttd binds the text's non-ASCII characters itself, each with
its lower and upper case, to spare keycodes (``python -m sttd.output
x11-keymap``, a child process: Xlib ends the process that meets a broken
display connection), xdotool then finds them on the map and presses Shift
where needed, and sttd unbinds them once typing has been idle for
:data:`KEYMAP_RELEASE_S`. One spare keycode is always left for xdotool. Any
character that still is not on the map (more distinct characters than spare
keycodes) is typed by xdotool's own binding, upper case ones with an explicit
Shift.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Literal, Protocol

from .errors import NothingToUndoError, OutputError
from .window import WTYPE_SETTLE_MS, Choice, Paster, choose_auto, wayland_globals

logger = logging.getLogger(__name__)

Mode = Literal["none", "type", "clipboard", "stdout", "ibus", "paste", "auto"]
Event = Literal["transcript", "send", "purge"]
Which = Callable[[str], str | None]

UTF8_LOCALE = "C.UTF-8"
"""xdotool decodes its input with the C library's multibyte functions: it needs a UTF-8 locale."""
KEYMAP_RELEASE_S = 2.0
"""How long typing must have been idle before the characters sttd bound to spare keycodes are unbound."""
TYPING_S_PER_CHAR = 0.05
"""Typing takes time (xdotool: 12 ms a key): a typing command's timeout grows by this much per character."""


class Runner(Protocol):
    """Runs one command for an output (``sttd.hooks`` provides it)."""

    async def __call__(
        self, argv: Sequence[str], stdin: str = "", *, env: Mapping[str, str] | None = None, timeout_s: float = 0
    ) -> str | None:
        """Run ``argv`` with ``stdin``; its output when it exits with 0, else None (the failure is reported).

        ``timeout_s`` raises the configured timeout for a command that needs longer.
        """
        ...


# ------------------------------------------------------------------ typing


class Typer:
    """One typing tool."""

    name = ""

    async def type_text(self, text: str, run: Runner) -> bool:
        raise NotImplementedError

    async def press_return(self, run: Runner) -> bool:
        raise NotImplementedError

    async def erase(self, count: int, run: Runner) -> bool:
        """Press BackSpace ``count`` times (undo)."""
        raise NothingToUndoError(f"{self.name} cannot take text back")

    async def idle(self, run: Runner) -> None:
        """Typing has been idle for a while (or sttd is stopping): undo temporary changes."""


def _typing_timeout(text: str) -> float:
    return 5 + TYPING_S_PER_CHAR * len(text)


class Xdotool(Typer):
    """``xdotool`` (X11), with the text's non-ASCII characters bound to spare keycodes first (see the module)."""

    name = "xdotool"
    env: ClassVar[dict[str, str]] = {"LC_ALL": UTF8_LOCALE}

    def __init__(self) -> None:
        self.bound: list[list[int]] = []
        """``[keycode, lower keysym, upper keysym]`` sttd bound and has not unbound yet."""

    async def type_text(self, text: str, run: Runner) -> bool:
        pairs = keysym_pairs(text)
        if pairs:
            # Should this fail (it is reported), xdotool still types, binding characters itself.
            answer = await run((*_KEYMAP_HELPER, "bind"), json.dumps({"keysyms": pairs}))
            if answer is not None:
                try:
                    self.bound += json.loads(answer.strip().splitlines()[-1])["bound"]
                except (ValueError, KeyError, IndexError, TypeError):
                    logger.warning("x11-keymap: unexpected answer %r", answer[:200])
        for shifted, chunk in xdotool_chunks(text):
            if shifted:
                keys = tuple(f"shift+U{ord(c):04X}" for c in chunk)
                argv: tuple[str, ...] = ("xdotool", "key", "--clearmodifiers", *keys)
                ok = await run(argv, env=self.env, timeout_s=_typing_timeout(chunk))
            else:
                argv = ("xdotool", "type", "--clearmodifiers", "--file", "-")
                ok = await run(argv, chunk, env=self.env, timeout_s=_typing_timeout(chunk))
            if ok is None:
                return False
        return True

    async def press_return(self, run: Runner) -> bool:
        return await run(("xdotool", "key", "--clearmodifiers", "Return"), env=self.env) is not None

    async def erase(self, count: int, run: Runner) -> bool:
        argv = ("xdotool", "key", "--clearmodifiers", "--repeat", str(count), "BackSpace")
        return await run(argv, env=self.env, timeout_s=_typing_timeout(" " * count)) is not None

    async def idle(self, run: Runner) -> None:
        if self.bound:
            bound, self.bound = self.bound, []
            await run((*_KEYMAP_HELPER, "release"), json.dumps({"bound": bound}))


def xdotool_chunks(text: str) -> list[tuple[bool, str]]:
    """Split ``text`` into runs typed as text (False) and runs of non-ASCII capitals pressed with Shift (True).

    Shift+keysym gives the capital whether the keymap has it (at the shifted
    level) or xdotool has to bind it itself (as a single, lower-cased keysym).
    """
    chunks: list[tuple[bool, str]] = []
    for char in text:
        shifted = not char.isascii() and char != char.lower()
        if chunks and chunks[-1][0] == shifted:
            chunks[-1] = (shifted, chunks[-1][1] + char)
        else:
            chunks.append((shifted, char))
    return chunks


def keysym(char: str) -> int:
    """The X keysym of a character, as xdotool computes it (``U+00E9`` is 0xe9, ``U+0152`` is 0x1000152)."""
    code = ord(char)
    return code if 0x20 <= code <= 0x7E or 0xA0 <= code <= 0xFF else 0x1000000 | code


def keysym_pairs(text: str) -> list[list[int]]:
    """``[lower, upper]`` keysyms of each distinct non-ASCII character of ``text``, in order of appearance."""
    pairs: list[list[int]] = []
    for char in text:
        if char.isascii() or not char.isprintable():
            continue
        lower, upper = char.lower(), char.upper()
        lower = lower if len(lower) == 1 else char
        upper = upper if len(upper) == 1 else char
        pair = [keysym(lower), keysym(upper)]
        if pair not in pairs:
            pairs.append(pair)
    return pairs


class Wtype(Typer):
    """``wtype`` (Wayland compositors with the virtual-keyboard protocol: sway, Hyprland, ...): stdin ``-``.

    wtype uploads a keymap of its own holding every character it types, and
    waits :data:`~sttd.window.WTYPE_SETTLE_MS` before the first key (sway may
    drop a key sent at once after the keymap switch).
    """

    name = "wtype"
    settle: ClassVar[tuple[str, ...]] = ("-s", str(WTYPE_SETTLE_MS))

    async def type_text(self, text: str, run: Runner) -> bool:
        return await run(("wtype", *self.settle, "-"), text, timeout_s=_typing_timeout(text)) is not None

    async def press_return(self, run: Runner) -> bool:
        return await run(("wtype", *self.settle, "-k", "Return")) is not None

    async def erase(self, count: int, run: Runner) -> bool:
        keys = [arg for _ in range(count) for arg in ("-k", "BackSpace")]
        return await run(("wtype", *self.settle, *keys), timeout_s=_typing_timeout(" " * count)) is not None


class Ydotool(Typer):
    """``ydotool`` (any session, through ``ydotoold`` and /dev/uinput). It types ASCII only.

    Return is typed as a newline, which the 0.1 and the 1.0 command lines both
    understand (their ``key`` syntaxes differ).
    """

    name = "ydotool"

    async def type_text(self, text: str, run: Runner) -> bool:
        return await run(("ydotool", "type", "--file", "-"), text, timeout_s=_typing_timeout(text)) is not None

    async def press_return(self, run: Runner) -> bool:
        return await run(("ydotool", "type", "--file", "-"), "\n") is not None


def ydotool_socket(environ: Mapping[str, str]) -> Path | None:
    """The ``ydotoold`` socket, if one exists (``YDOTOOL_SOCKET``, the runtime dir, /tmp)."""
    candidates = [environ.get("YDOTOOL_SOCKET", "")]
    if environ.get("XDG_RUNTIME_DIR"):
        candidates.append(os.path.join(environ["XDG_RUNTIME_DIR"], ".ydotool_socket"))
    candidates.append("/tmp/.ydotool_socket")
    for candidate in candidates:
        if candidate and Path(candidate).is_socket():
            return Path(candidate)
    return None


_NO_DISPLAY = (
    "WAYLAND_DISPLAY and DISPLAY are unset in sttd's environment (under systemd, run "
    "`systemctl --user import-environment WAYLAND_DISPLAY DISPLAY` from the session)"
)


def find_typer(environ: Mapping[str, str], which: Which = shutil.which) -> type[Typer]:
    """The typing tool for this session. Raises :class:`OutputError` naming what to install."""
    wayland, x11 = environ.get("WAYLAND_DISPLAY"), environ.get("DISPLAY")
    if wayland and which("wtype"):
        return Wtype
    if x11 and not wayland and which("xdotool"):
        return Xdotool
    if which("ydotool") and ydotool_socket(environ) is not None:
        return Ydotool
    prefix = 'output.mode = "type"'
    if wayland:
        # Not xdotool, even with XWayland's DISPLAY: it would reach X11 windows only.
        raise OutputError(
            f"{prefix}: cannot type on Wayland: install wtype (wlroots compositors such as sway), "
            "or ydotool and run ydotoold (GNOME, KDE)"
        )
    if x11:
        raise OutputError(f"{prefix}: cannot type on X11: install xdotool")
    fallback = "start ydotoold (ydotool is installed)" if which("ydotool") else "install ydotool and run ydotoold"
    raise OutputError(f"{prefix}: no display to type into: {_NO_DISPLAY}; or {fallback}")


def find_copier(environ: Mapping[str, str], which: Which = shutil.which) -> tuple[str, ...]:
    """The argv that copies its stdin to the clipboard. Raises :class:`OutputError` naming what to install."""
    wayland, x11 = environ.get("WAYLAND_DISPLAY"), environ.get("DISPLAY")
    prefix = 'output.mode = "clipboard"'
    if wayland:
        if which("wl-copy"):
            return ("wl-copy", "--type", "text/plain;charset=utf-8")
        raise OutputError(f"{prefix}: cannot copy on Wayland: install wl-clipboard (wl-copy)")
    if x11:
        if which("xclip"):
            return ("xclip", "-selection", "clipboard", "-in")
        if which("xsel"):
            return ("xsel", "--clipboard", "--input")
        raise OutputError(f"{prefix}: cannot copy on X11: install xclip")
    raise OutputError(f"{prefix}: no clipboard: {_NO_DISPLAY}")


# ------------------------------------------------------------------ the output


class TextOutput:
    """One ``[output] mode`` and what it remembers between events."""

    def __init__(
        self,
        mode: Mode,
        *,
        environ: Mapping[str, str] | None = None,
        which: Which = shutil.which,
        paste_keys: str = "ctrl+v",
        ibus_active: Callable[[], bool] = lambda: False,
    ) -> None:
        self.mode = mode
        self._environ = environ
        self._which = which
        self._ibus_active = ibus_active
        self._paster = Paster(paste_keys, which)
        self.paste_keys = paste_keys
        self._wayland: dict[str, frozenset[str] | None] = {}
        """The compositor's globals per Wayland socket, asked once."""
        self._inserted: tuple[str, Typer] | None = None
        """The text sttd typed or pasted last and the typer that can erase it (for undo)."""
        self._typers: dict[type[Typer], Typer] = {}
        self._mid_message = False
        """Text was typed or printed since the last Return: the next utterance needs a separating space."""
        self._copied = ""
        """The text accumulated on the clipboard since the last send or purge."""
        self._separator = " "
        """What goes before the text being delivered when it follows earlier text (shaping decides)."""

    @property
    def environ(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    @property
    def needs_idle(self) -> bool:
        """:meth:`idle` has something to undo."""
        return any(isinstance(t, Xdotool) and t.bound for t in self._typers.values())

    def choice(self) -> Choice:
        """The output in use now and why (the D-Bus ``Output`` property)."""
        mode = self.mode
        if mode == "auto":
            return choose_auto(self.environ, self._ibus_active(), self._which, self._probe)
        if mode == "ibus":
            active = self._ibus_active()
            why = "the sttd input method is enabled in IBus" if active else "the sttd input method is not enabled"
            return Choice("ibus", why)
        if mode == "type":
            try:
                return Choice(f"type:{find_typer(self.environ, self._which).name}", '[output] mode = "type"')
            except OutputError as exc:
                return Choice("none", str(exc))
        if mode == "none":
            return Choice("none", '[output] mode = "none"')
        return Choice(mode, f'[output] mode = "{mode}"')

    def _probe(self, environ: Mapping[str, str]) -> frozenset[str] | None:
        key = f"{environ.get('XDG_RUNTIME_DIR', '')}/{environ.get('WAYLAND_DISPLAY', '')}"
        if key not in self._wayland:
            self._wayland[key] = wayland_globals(environ)
        return self._wayland[key]

    def describe(self) -> str:
        """What this mode will use, for the log ("typing with xdotool"). Raises :class:`OutputError`."""
        if self.mode in ("auto", "ibus"):
            choice = self.choice()
            return f"{choice.output} ({choice.why})"
        if self.mode == "paste":
            return self._paster.describe(self.environ)
        if self.mode == "type":
            return f"typing with {find_typer(self.environ, self._which).name}"
        if self.mode == "clipboard":
            return f"copying with {find_copier(self.environ, self._which)[0]}"
        if self.mode == "stdout":
            return "printing to standard output"
        return "no built-in output"

    async def deliver(self, event: Event, text: str, run: Runner, separator: str = " ") -> bool:
        """Do what the mode does for ``event``; False when a command failed. Raises :class:`OutputError`.

        ``separator`` goes before a transcript's text when it follows earlier text.
        """
        self._separator = separator
        if self.mode == "type":
            return await self._type(event, text, run)
        if self.mode == "clipboard":
            return await self._clipboard(event, text, run)
        if self.mode == "stdout":
            return self._stdout(event, text)
        if self.mode == "paste":
            return await self._paste(event, text, run)
        if self.mode == "auto":
            output = self.choice().output
            if output.startswith("type:"):
                return await self._type(event, text, run)
            if output == "clipboard":
                return await self._clipboard(event, text, run)
        # "ibus": the input method shows and commits the text itself (it listens to the D-Bus signals).
        return True

    async def undo(self, run: Runner) -> str:
        """Take back the text sttd typed or pasted last: as many BackSpaces as characters. Raises
        :class:`~sttd.errors.NothingToUndoError`.

        sttd cannot see the keyboard in these modes: the IBus input method is
        the one that knows whether the user typed since (and refuses then).
        """
        if self._inserted is None:
            raise NothingToUndoError("nothing that sttd typed is left to undo")
        text, typer = self._inserted
        self._inserted = None
        if not await typer.erase(len(text), run):
            raise OutputError(f"undo: {typer.name} could not press BackSpace")
        return text

    async def idle(self, run: Runner) -> None:
        for typer in self._typers.values():
            await typer.idle(run)

    def _typer(self) -> Typer:
        kind = find_typer(self.environ, self._which)
        if kind not in self._typers:
            self._typers[kind] = kind()
        return self._typers[kind]

    def _separated(self, text: str) -> str:
        separated = f"{self._separator}{text}" if self._mid_message else text
        self._mid_message = True
        return separated

    async def _type(self, event: Event, text: str, run: Runner) -> bool:
        if event == "transcript" and text:
            typer = self._typer()
            typed = self._separated(text)
            ok = await typer.type_text(typed, run)
            self._inserted = (typed, typer) if ok else None
            return ok
        if event == "send":
            typer = self._typer()
            self._mid_message = False
            self._inserted = None
            return await typer.press_return(run)
        return True

    async def _paste(self, event: Event, text: str, run: Runner) -> bool:
        if event == "transcript" and text:
            pasted = self._separated(text)
            self._paster.keys = self.paste_keys
            await self._paster.paste(pasted, self.environ)
            self._inserted = (pasted, self._typer())
            return True
        if event == "send":
            self._mid_message = False
            self._inserted = None
            return await self._typer().press_return(run)
        return True

    def _stdout(self, event: Event, text: str) -> bool:
        if event == "transcript" and text:
            _print(self._separated(text))
        elif event == "send":
            self._mid_message = False
            _print("\n")
        return True

    async def _clipboard(self, event: Event, text: str, run: Runner) -> bool:
        if event == "transcript" and text:
            copier = find_copier(self.environ, self._which)
            self._copied = f"{self._copied}{self._separator}{text}" if self._copied else text
            return await run(copier, self._copied) is not None
        copied, self._copied = self._copied, ""
        if event == "send" and text and text != copied:
            return await run(find_copier(self.environ, self._which), text) is not None
        return True


def _print(text: str) -> None:
    # Synchronous: a terminal or the journal takes it at once.
    stream = sys.stdout
    try:
        if stream is None:
            raise OSError("standard output is closed")
        stream.write(text)
        stream.flush()
    except (OSError, ValueError) as exc:
        raise OutputError(f'output.mode = "stdout": cannot write to standard output: {exc}') from None


# ------------------------------------------------------ the X keymap helper

_KEYMAP_HELPER = (sys.executable, "-m", "sttd.output", "x11-keymap")


def main(argv: list[str] | None = None) -> int:
    """``python -m sttd.output x11-keymap bind|release|list``: see :mod:`sttd.x11keymap`."""
    from .x11keymap import main as keymap_main

    return keymap_main(argv)


if __name__ == "__main__":
    sys.exit(main())
