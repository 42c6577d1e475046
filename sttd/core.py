"""The dictation core: the state machine. No I/O.

The daemon feeds it what happened (a D-Bus call, a session becoming ready, a
parsed server event) and drains :meth:`Dictation.take_outputs` for what
should be announced (state changes, transcripts, triggers, errors). It never
touches a socket, a file or the clock, so every rule here is tested by
calling methods and reading outputs.

The outputs themselves are in :mod:`sttd.events`, transcript assembly in
:mod:`sttd.assembler` and the send/purge words in :mod:`sttd.triggers`; their
names are re-exported here (``core.Triggered``, ``core.TranscriptAssembler``,
``core.Triggers``).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from dataclasses import dataclass

from . import protocol as p
from . import shaping
from .assembler import MAX_EARLY_ITEMS, MAX_ITEM_CHARS, TranscriptAssembler, normalise
from .errors import DisabledError
from .events import (
    ActionRequested,
    EnabledChanged,
    ErrorRaised,
    LanguageChanged,
    LastErrorChanged,
    Output,
    PendingTextChanged,
    ProfileChanged,
    StateChanged,
    TextCommitted,
    TranscriptEmitted,
    Triggered,
    UndoRequested,
)
from .languages import check_language
from .triggers import TriggerMatch, Triggers

logger = logging.getLogger(__name__)


class State(enum.StrEnum):
    """The contract's dictation states, as ``State`` shows them on D-Bus."""

    IDLE = "idle"
    CONNECTING = "connecting"
    LISTENING = "listening"
    SPEAKING = "speaking"
    PROCESSING = "processing"
    RECONNECTING = "reconnecting"
    ERROR = "error"


TURN_STATES = frozenset({State.LISTENING, State.SPEAKING, State.PROCESSING})
"""A dictation's states between turns and within them: changes among them are logged at DEBUG, and the
microphone ``Level`` moves only in them (in every other it is 0)."""
ACTIVE_STATES = frozenset({State.CONNECTING, State.LISTENING, State.SPEAKING, State.PROCESSING, State.RECONNECTING})

__all__ = [
    "ACTIVE_STATES",
    "MAX_EARLY_ITEMS",
    "MAX_ITEM_CHARS",
    "TURN_STATES",
    "ActionRequested",
    "Dictation",
    "DictationOptions",
    "EnabledChanged",
    "ErrorRaised",
    "LanguageChanged",
    "LastErrorChanged",
    "Output",
    "PendingTextChanged",
    "ProfileChanged",
    "State",
    "StateChanged",
    "TextCommitted",
    "TranscriptAssembler",
    "TranscriptEmitted",
    "TriggerMatch",
    "Triggered",
    "Triggers",
    "UndoRequested",
    "normalise",
]


@dataclass(frozen=True)
class DictationOptions:
    """What one Start may choose (StartWith): applies to that dictation only."""

    profile: str = ""
    language: str | None = None
    """None: the language in use (persisted)."""
    output: str | None = None
    """None: ``[output] mode``."""


# ------------------------------------------------------------ the dictation


class Dictation:
    """The dictation state machine.

    Commands (:meth:`start`, :meth:`stop`, ...) come from D-Bus or the
    daemon; session notifications (:meth:`session_ready`, :meth:`server_event`,
    ...) come from the Realtime session. Every change is queued as an
    :data:`Output`; the caller drains them with :meth:`take_outputs`.
    """

    def __init__(
        self,
        *,
        enabled: bool,
        language: str,
        triggers: Triggers | None = None,
        shaper: shaping.Shaper | None = None,
    ) -> None:
        self._state = State.IDLE
        self._enabled = enabled
        self._language = check_language(language)
        self._options = DictationOptions()
        self._shaper = shaper or shaping.Shaper(language=language, commands=_commands(triggers))
        self._assembler = TranscriptAssembler()
        self._pending: list[str] = []
        """The pending utterances, each with the separator before it (the first one's is "")."""
        self._last_error = ""
        self._stopping = False
        self._outputs: list[Output] = []

    # -- read-only views

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, new: State) -> None:
        if new is self._state:
            return
        # Turn-by-turn changes would flood the journal of a daemon left running all day.
        level = logging.DEBUG if {new, self._state} <= TURN_STATES else logging.INFO
        logger.log(level, "state: %s -> %s", self._state, new, extra={"STTD_STATE": str(new)})
        self._state = new
        self._emit(StateChanged(new))

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def language(self) -> str:
        """The language in use: this dictation's (StartWith, a profile) or the persisted one."""
        return self._options.language if self._options.language is not None else self._language

    @property
    def persisted_language(self) -> str:
        """The language SetLanguage chose (what state.json keeps), whatever this dictation uses."""
        return self._language

    @property
    def options(self) -> DictationOptions:
        """The running dictation's options (the defaults when idle)."""
        return self._options

    @property
    def profile(self) -> str:
        return self._options.profile

    @property
    def pending_text(self) -> str:
        return "".join(self._pending)

    @property
    def last_error(self) -> str:
        return self._last_error

    @property
    def active(self) -> bool:
        """Recording or finishing a dictation."""
        return self._state in ACTIVE_STATES

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def outstanding(self) -> int:
        """Committed utterances still waiting for their transcript."""
        return self._assembler.outstanding

    def take_outputs(self) -> list[Output]:
        outputs, self._outputs = self._outputs, []
        return outputs

    def _emit(self, output: Output) -> None:
        self._outputs.append(output)

    # -- commands

    def start(self, options: DictationOptions | None = None) -> bool:
        """Begin a dictation with ``options``; False when one is already running (its options stay).

        Raises :class:`DisabledError`.
        """
        if not self._enabled:
            raise DisabledError("dictation is disabled (sttctl enable turns it back on)")
        if self.active:
            return False
        self._set_options(options or DictationOptions())
        self._stopping = False
        self._set_last_error("")
        self.state = State.CONNECTING
        return True

    def stop(self) -> bool:
        """Ask the running dictation to finish; False when there is none.

        The state shows ``processing`` while the session flushes; the daemon
        calls :meth:`finished` once it is closed.
        """
        if self._state is State.ERROR:
            self.state = State.IDLE  # acknowledged: the error stays in LastError
            return False
        if not self.active:
            return False
        self._stopping = True
        self.state = State.PROCESSING
        return True

    def finished(self, discard: bool = False) -> None:
        """The session is closed (after a stop, a cancel or a fatal error).

        Transcripts already complete but held back behind a lost one are
        delivered, unless ``discard`` (Cancel) drops them.
        """
        finals = self._assembler.abandon_all()
        if not discard:
            self._release(finals)
        self._set_options(DictationOptions())
        self._stopping = False
        if self._state is not State.ERROR:
            self.state = State.IDLE

    def set_language(self, code: str) -> bool:
        """Validate and take a language; True when it changed. Raises InvalidLanguageError."""
        code = check_language(code)
        if code == self._language and self._options.language in (None, code):
            return False
        # Said now, it applies now: also to a dictation begun with a language of its own.
        before, self._language = self.language, code
        self._options = dataclasses.replace(self._options, language=None)
        if self.language != before:
            self._emit(LanguageChanged(self.language))
        return True

    def set_triggers(self, triggers: Triggers) -> None:
        self._shaper = shaping.Shaper(language=self.language, commands=_commands(triggers))

    @property
    def shaper(self) -> shaping.Shaper:
        return self._shaper

    def set_shaper(self, shaper: shaping.Shaper) -> None:
        """The shaping step (and voice commands) for what is transcribed from now on.

        The daemon sets it whenever the config or the language in use changes,
        and for a dictation with a profile once :meth:`start` has taken its options.
        """
        self._shaper = shaper

    def set_enabled(self, enabled: bool) -> bool:
        if enabled == self._enabled:
            return False
        self._enabled = enabled
        self._emit(EnabledChanged(enabled))
        return True

    def send(self) -> None:
        """Send the pending text and start afresh."""
        text = self.pending_text
        self._clear_pending()
        self._emit(Triggered("send", text))

    def purge(self, extra: str = "") -> None:
        """Drop the pending text (plus ``extra``, words said with the trigger, never typed)."""
        text = normalise(" ".join([*self._pending, extra]))
        self._clear_pending()
        self._emit(Triggered("purge", text))

    def undo(self) -> str:
        """Take back the last utterance that joined the pending text; returns it ("" when there is none).

        The core's part of the ``undo`` voice command: the pending text loses
        it, :class:`UndoRequested` asks the outputs to remove it from the window
        where they can (see the window-output issue's Undo), and
        ``Triggered("undo", text)`` tells D-Bus clients.
        """
        text = self.take_back()
        if text:
            self._emit(UndoRequested(text))
        self._emit(Triggered("undo", text))
        return text

    def take_back(self) -> str:
        """Drop the last utterance from the pending text; returns it ("" when there is none)."""
        text = self._pending.pop().lstrip() if self._pending else ""
        if text:
            self._emit(PendingTextChanged(self.pending_text))
        return text

    def undone(self, text: str) -> None:
        """D-Bus ``Undo`` took ``text`` back out of the window (and the pending text): tell the clients."""
        self._emit(Triggered("undo", text))

    # -- session notifications

    def session_ready(self) -> None:
        """A connection is configured and audio is flowing to it."""
        if self._state in (State.CONNECTING, State.RECONNECTING):
            self.state = State.LISTENING
        self._set_last_error("")

    def session_reconnecting(self, reason: str) -> None:
        """The connection was lost; what it owed will not come.

        Transcripts held back behind an unfinished one are dropped, not
        released: the session resends audio from that unfinished turn on,
        so they will be transcribed again, in order, on the new connection.
        """
        self._assembler = TranscriptAssembler()
        if self.active and not self._stopping:
            self.state = State.RECONNECTING
        self._set_last_error(reason)

    def session_failed(self, code: str, message: str) -> None:
        """A failure that retrying will not fix; the dictation ends in ``error``."""
        self._release(self._assembler.abandon_all())
        self._set_last_error(message)
        self._emit(ErrorRaised(code, message))
        self._stopping = False
        self.state = State.ERROR

    def report_problem(self, message: str) -> None:
        """A condition the user should see in ``LastError`` (muted microphone, ...); "" clears it."""
        self._set_last_error(message)

    def server_event(self, event: p.ServerEvent) -> None:
        match event:
            case p.SpeechStarted():
                if self._state in (State.LISTENING, State.PROCESSING) and not self._stopping:
                    self.state = State.SPEAKING
            case p.SpeechStopped():
                if self._state is State.SPEAKING:
                    self.state = State.PROCESSING
            case p.Committed(item_id, previous_item_id):
                self._assembler.committed(item_id, previous_item_id)
                if self._state is State.SPEAKING:
                    self.state = State.PROCESSING
            case p.TranscriptionDelta(item_id, delta):
                partial = self._shaper.partial(self._assembler.delta(item_id, delta), before=self.pending_text)
                self._emit(TranscriptEmitted(partial, False, item_id))
            case p.TranscriptionCompleted(item_id, transcript):
                self._release(self._assembler.completed(item_id, transcript))
            case p.TranscriptionFailed(item_id, code, message):
                self._emit(ErrorRaised(code or "transcription_failed", f"transcription failed: {message}"))
                self._release(self._assembler.failed(item_id))
            case p.ServiceError(type=kind, code=code, message=message):
                self._emit(ErrorRaised(code or kind, message))
        self._back_to_listening()

    # -- internals

    def _back_to_listening(self) -> None:
        if self._state is State.PROCESSING and not self._stopping and self._assembler.outstanding == 0:
            self.state = State.LISTENING

    def _release(self, finals: list[tuple[str, str]]) -> None:
        for item_id, text in finals:
            if text:
                self._final(item_id, text)

    def _final(self, item_id: str, text: str) -> None:
        shaped = self._shaper.final(text, before=self.pending_text)
        if shaped.shown != text or shaped.command is not None:
            action = shaped.command.action if shaped.command else "none"
            logger.debug("shaped %r -> %r (command: %s)", text, shaped.text, action)
        self._emit(TranscriptEmitted(shaped.shown, True, item_id))
        command = shaped.command
        if command is None:
            self._append_pending(shaped.text, item_id, shaped.separator)
        elif command.action == "purge":
            self.purge(command.remainder)
        elif command.action == "cancel":
            # Cancelling drops what was said with it; what was pending before stays.
            self._emit(Triggered("cancel", ""))
            self._emit(ActionRequested("cancel"))
        elif command.action == "undo":
            # "... scratch that": the words said with it are what is taken back; alone, the last utterance.
            if not shaped.text:
                self.undo()
            else:
                self._emit(Triggered("undo", shaped.text))
        else:
            if shaped.text:
                # Typed before the send (or the stop), so the text lands before the Enter.
                self._append_pending(shaped.text, item_id, shaped.separator)
            if command.action == "send":
                self.send()
            elif command.action == "stop":
                self._emit(Triggered("stop", ""))
                self._emit(ActionRequested("stop"))
            else:  # a command hook: it gets the pending text, which stays pending
                self._emit(Triggered(command.action, self.pending_text))
                self._emit(ActionRequested(command.action, self.pending_text))

    def _append_pending(self, text: str, item_id: str, separator: str = "") -> None:
        if not text:
            return
        # The first utterance of a message has nothing before it in the pending text; an output that
        # still shows earlier text (after a purge) separates it with the usual space.
        mid_message = bool(self._pending)
        self._pending.append(separator + text if mid_message else text)
        self._emit(TextCommitted(text, item_id, separator if mid_message else " "))
        self._emit(PendingTextChanged(self.pending_text))

    def _clear_pending(self) -> None:
        had = bool(self._pending)
        self._pending.clear()
        if had:
            self._emit(PendingTextChanged(""))

    def _set_options(self, options: DictationOptions) -> None:
        before, old = self.language, self._options
        self._options = options
        if (options.profile, options.output) != (old.profile, old.output):
            self._emit(ProfileChanged(options.profile, options.output))
        if self.language != before:
            self._emit(LanguageChanged(self.language))

    def _set_last_error(self, message: str) -> None:
        if message != self._last_error:
            self._last_error = message
            self._emit(LastErrorChanged(message))


def _commands(triggers: Triggers | None) -> shaping.Commands:
    """The voice commands of a :class:`Triggers` (the send and purge patterns, as before ``[commands]``)."""
    if triggers is None:
        return shaping.NO_COMMANDS
    return shaping.Commands(triggers.patterns, "end" if triggers.at_end else "anywhere")
