"""What the dictation core announces: the outputs :meth:`sttd.core.Dictation.take_outputs` returns.

Plain frozen dataclasses, no I/O; the daemon fans them out to D-Bus signals and
properties, hooks and outputs. :mod:`sttd.core` re-exports every name here, so
``core.Triggered`` and the like keep working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only for annotations: the state machine (and its states) lives in sttd.core, which imports this.
    from .core import State


@dataclass(frozen=True)
class StateChanged:
    state: State


@dataclass(frozen=True)
class TranscriptEmitted:
    """Partial (``final=False``: the utterance so far) or final text of one utterance."""

    text: str
    final: bool
    item_id: str


@dataclass(frozen=True)
class TextCommitted:
    """Final text that joined the pending text (trigger words removed): what hooks and outputs type."""

    text: str
    item_id: str
    separator: str = " "
    """What goes between the text before it and this one (shaping: none before punctuation, after a break)."""


@dataclass(frozen=True)
class PendingTextChanged:
    text: str


@dataclass(frozen=True)
class Triggered:
    """``name`` is ``send`` or ``purge`` (or a voice command: ``undo``, ``stop``, ``cancel``); ``text`` is
    what was sent or dropped (for ``undo``, the text taken back; for ``stop`` and ``cancel``, "")."""

    name: str
    text: str


@dataclass(frozen=True)
class ErrorRaised:
    code: str
    message: str


@dataclass(frozen=True)
class LastErrorChanged:
    message: str


@dataclass(frozen=True)
class LanguageChanged:
    language: str


@dataclass(frozen=True)
class EnabledChanged:
    enabled: bool


@dataclass(frozen=True)
class ProfileChanged:
    """A dictation with options began (or ended: ``profile`` "", ``output`` None)."""

    profile: str
    output: str | None
    """The output mode of this dictation's text; None: ``[output] mode``."""


@dataclass(frozen=True)
class ActionRequested:
    """A voice command the daemon carries out: ``stop``, ``cancel`` (the core cannot end a session),
    or the phrase of a command hook (``[commands] hooks``), to be run with ``text``."""

    action: str
    text: str = ""


@dataclass(frozen=True)
class UndoRequested:
    """Text that had joined the pending text was taken back (:meth:`Dictation.undo`): the outputs that
    inserted it should remove it from the window (the window-output issue's ``Undo``). Not emitted when
    ``undo`` only dropped words said with it, which were never delivered."""

    text: str


Output = (
    StateChanged
    | TranscriptEmitted
    | TextCommitted
    | PendingTextChanged
    | Triggered
    | ErrorRaised
    | LastErrorChanged
    | LanguageChanged
    | EnabledChanged
    | ProfileChanged
    | ActionRequested
    | UndoRequested
)
