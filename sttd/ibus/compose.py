"""What the IBus engine shows and commits, as plain Python (no GObject, no I/O).

:class:`Composer` turns the daemon's signals into input-method actions:
partial text becomes *preedit* (provisional, underlined text the engine may
replace at will), final text is *committed*, a purge or a stopped dictation
drops the preedit, and :meth:`Composer.undo` says how to take the last
commit back. It also spaces utterances the way a writer expects
(:func:`join`): one space between words, none before closing punctuation,
none after an opening bracket or at the start of a line, and none at all
between characters of scripts written without spaces (CJK, Thai, ...) or
when spacing is ``"none"``.

The engine (:mod:`sttd.ibus.engine`) runs this under the system's Python:
keep it standard-library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Spacing = Literal["auto", "space", "none"]
SPACINGS: tuple[Spacing, ...] = ("auto", "space", "none")

NO_SPACE_BEFORE = frozenset(".,;:!?)]}%…»”’、。，．！？；：）」』】〉》")  # noqa: RUF001 - these characters on purpose
"""Characters that attach to the word before them."""
NO_SPACE_AFTER = frozenset("([{¿¡«“‘「『【〈《/-\n\t ")  # noqa: RUF001
"""Characters after which the next word follows directly."""


def unspaced(char: str) -> bool:
    """A character of a script written without spaces between words (Han, Kana, Hangul is spaced; Thai, ...)."""
    if not char:
        return False
    code = ord(char)
    return (
        0x3000 <= code <= 0x30FF  # CJK punctuation, Hiragana, Katakana
        or 0x3400 <= code <= 0x9FFF  # CJK ideographs (and extension A)
        or 0xF900 <= code <= 0xFAFF
        or 0xFF00 <= code <= 0xFFEF  # full-width forms
        or 0x20000 <= code <= 0x3FFFF
        or 0x0E00 <= code <= 0x0EFF  # Thai, Lao
        or 0x1000 <= code <= 0x109F  # Myanmar
        or 0x1780 <= code <= 0x17FF  # Khmer
        or 0x0F00 <= code <= 0x0FFF  # Tibetan
    )


def join(before: str, text: str, spacing: Spacing = "auto") -> str:
    """``text`` as it should be inserted after ``before`` (the character left of the cursor, "" at the start).

    Leading and trailing whitespace of ``text`` is dropped; a single space is
    put in front when a writer would put one there.
    """
    text = text.strip()
    if not text or not before or spacing == "none":
        return text
    first = text[0]
    if before in NO_SPACE_AFTER or before.isspace() or first in NO_SPACE_BEFORE:
        return text
    if spacing == "auto" and (unspaced(before) or unspaced(first)):
        return text
    return " " + text


@dataclass(frozen=True)
class Show:
    """Show ``text`` as preedit ("" hides it)."""

    text: str


@dataclass(frozen=True)
class Commit:
    """Commit ``text`` (replacing any preedit)."""

    text: str


@dataclass(frozen=True)
class Erase:
    """Press BackSpace ``count`` times: take back the last commit."""

    count: int


@dataclass(frozen=True)
class PressReturn:
    """Press Return (the send trigger)."""


Action = Show | Commit | Erase | PressReturn


class UndoRefused(Exception):
    """Undo cannot be done; ``name`` is the D-Bus error name (``NothingToUndo``, ``UserTyped``)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class Composer:
    """The engine's dictation state for the focused input context.

    Events in (the daemon's signals, the user's keys), :data:`Action` lists out.
    """

    def __init__(self, spacing: Spacing = "auto") -> None:
        self.spacing: Spacing = spacing
        self.preedit = ""
        """The preedit shown now (as shown, with its leading space)."""
        self._item = ""
        """The utterance the preedit belongs to."""
        self._before = ""
        """The character left of the cursor as far as the engine knows ("" = start of a line or unknown)."""
        self._last_commit = ""
        """The text the engine itself committed last (for undo)."""
        self._typed_since = False
        """The user typed a key since that commit."""
        self.undone = ""
        """What the last :meth:`undo` took back."""

    # -- context

    def set_before(self, char: str) -> None:
        """The application told us (surrounding text) which character is left of the cursor."""
        self._before = char[-1:] if char else ""

    def focus_changed(self) -> Action | None:
        """Another input context has the focus: its context is unknown, and nothing there is ours to undo."""
        self._before = ""
        self._last_commit = ""
        self._typed_since = False
        return self._hide()

    def key_typed(self, char: str) -> None:
        """The user pressed a key (it passes through): ``char`` is what it types ("" for none, "\\n" for Return)."""
        self._typed_since = True
        if char in ("\n", "\r"):
            self._before = ""
        elif char:
            self._before = char[-1]

    # -- the daemon's signals

    def transcript(self, text: str, final: bool, item_id: str) -> list[Action]:
        """A ``Transcript`` signal: partial and final text both show as preedit until committed.

        The final text may still end in a trigger word: what to commit comes
        with :meth:`committed` (or the trigger with :meth:`triggered`).
        """
        self._item = item_id
        return self._show(join(self._before, text, self.spacing))

    def committed(self, text: str, item_id: str) -> list[Action]:
        """A ``Committed`` signal: final text (trigger words removed) that joined the pending text."""
        actions: list[Action] = []
        inserted = join(self._before, text, self.spacing)
        if inserted:
            self.preedit = ""
            actions.append(Commit(inserted))
            self._last_commit = inserted
            self._typed_since = False
            self._before = inserted[-1]
        else:
            actions += self._show("")
        self._item = ""
        return actions

    def triggered(self, name: str) -> list[Action]:
        """A ``Triggered`` signal: ``send`` drops the trigger's preedit and presses Return; ``purge`` drops it."""
        actions = self._show("")
        if name == "send":
            actions.append(PressReturn())
            self._before = ""
            self._last_commit = ""
        return actions

    def stopped(self) -> list[Action]:
        """The dictation ended (``State`` idle or error, e.g. after ``Cancel``): no final will replace the preedit."""
        return self._show("")

    # -- undo

    def undo(self) -> list[Action]:
        """Take back what the engine inserted last (:attr:`undone` says what). Raises :class:`UndoRefused`."""
        if self.preedit:
            self.undone = self.preedit
            return self._show("")
        if not self._last_commit:
            raise UndoRefused("NothingToUndo", "nothing that sttd inserted is left to undo")
        if self._typed_since:
            raise UndoRefused("UserTyped", "you typed after sttd's text: not deleting what you typed")
        # One BackSpace per code point committed (the text is committed as the daemon sent it).
        count = len(self._last_commit)
        self.undone = self._last_commit
        self._last_commit = ""
        self._before = ""
        return [Erase(count)]

    # -- internals

    def _show(self, text: str) -> list[Action]:
        if text == self.preedit:
            return []
        self.preedit = text
        return [Show(text)]

    def _hide(self) -> Action | None:
        actions = self._show("")
        return actions[0] if actions else None
