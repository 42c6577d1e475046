"""Where the core's outputs go: D-Bus signals and properties, hook commands, systemd's status line.

The core queues every change as an output; :meth:`Fanout.publish` drains
them and hands each to the boundaries that care. The D-Bus interface joins
once the daemon has exported it (``interface`` stays None until then, and
outputs still reach hooks and systemd).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import core
from .hooks import HookRunner
from .systemd import Notifier

if TYPE_CHECKING:
    from .dbus_service import SttdInterface

LEVEL_INTERVAL_S = 0.1
"""Level updates go out at most ten times a second."""


class Fanout:
    """Publishes one :class:`~sttd.core.Dictation`'s outputs."""

    def __init__(
        self,
        dictation: core.Dictation,
        hooks: HookRunner,
        notifier: Notifier,
        on_action: Callable[[str, str], None] | None = None,
    ) -> None:
        self.interface: SttdInterface | None = None
        self._on_action = on_action
        self._output: str | None = None
        """The output mode of the dictation whose outputs are being published (None: ``[output] mode``)."""
        self._dictation = dictation
        self._hooks = hooks
        self._notifier = notifier
        self._last_level_at = 0.0

    def publish(self) -> None:
        """Send every queued output where it goes; hooks get final text and triggers only.

        The D-Bus signals are written to the bus before this returns, so no hook
        can be started ahead of them.
        """
        language = self._dictation.language
        said_in = ""  # the utterance a voice trigger in this batch was said in ("" for D-Bus Send/Purge)
        for output in self._dictation.take_outputs():
            if self.interface is not None:
                self.interface.publish(output)
            match output:
                case core.StateChanged():
                    self._notifier.status(self.status_line())
                case core.TranscriptEmitted(final=True, item_id=item_id):
                    said_in = item_id
                case core.TextCommitted(text, item_id, separator):
                    self._hooks.submit(
                        "transcript", text, language=language, item_id=item_id, output=self._output, separator=separator
                    )
                case core.Triggered(name="send", text=text):
                    self._hooks.submit("send", text, language=language, item_id=said_in, output=self._output)
                case core.Triggered(name="purge", text=text):
                    self._hooks.submit("purge", text, language=language, item_id=said_in, output=self._output)
                case core.ProfileChanged(output=mode):
                    # In the order of the outputs: the last words of a dictation still go where it sent its text.
                    self._output = mode
                case core.ActionRequested(action, text):
                    if self._on_action is not None:
                        self._on_action(action, text)
                case core.UndoRequested(text):
                    # A voice "scratch that": the window loses the text too, where the output can take it back.
                    if self._on_action is not None:
                        self._on_action("undo", text)
        if self.interface is not None:
            # Signals go out before any hook starts: the hook worker runs (and forks) only after
            # this returns to the loop, and by then the bus socket holds every signal of the batch.
            self.interface.write_now()

    def problem(self, code: str, message: str) -> None:
        """A hook or the built-in output failed (already logged): the Error signal and LastError tell the user."""
        self._dictation.report_problem(message)
        if self.interface is not None:
            self.interface.publish(core.ErrorRaised(code, message))
        self.publish()

    def level(self, level: float) -> None:
        """The input peak, rate-limited, and only while a dictation listens."""
        now = time.monotonic()
        if self.interface is None or now - self._last_level_at < LEVEL_INTERVAL_S:
            return
        if self._dictation.state in core.TURN_STATES:
            self._last_level_at = now
            self.interface.set_level(round(level, 3))

    def source(self, name: str) -> None:
        if self.interface is not None:
            self.interface.source_changed(name)

    def status_line(self) -> str:
        """What systemd shows after ``Status:``."""
        state = self._dictation.state
        error = f": {self._dictation.last_error}" if state is core.State.ERROR else ""
        return f"{state}{error}" if self._dictation.enabled else f"disabled ({state})"
