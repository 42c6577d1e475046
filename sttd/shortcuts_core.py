"""What the desktop's shortcut presses and releases mean to sttd: no I/O, events in, actions out.

The GlobalShortcuts portal (:mod:`sttd.shortcuts`) reports ``Activated``
(press) and ``Deactivated`` (release) per shortcut id. :class:`PushToTalk`
turns them into daemon actions:

* ``push-to-talk`` press: :data:`START` at once (so the first word is
  recorded). Its release after at least the hold threshold: :data:`STOP`.
  A release sooner than that was a *tap*: listening goes on (latched, like
  ``toggle``) until the next press, which stops it.
* ``toggle``, ``cancel``, ``send``: their action on press; releases mean nothing.

Portals on some desktops deliver a press or release twice, or out of order,
or lose a release. So: a press while held and a release while not held are
ignored; an event whose portal timestamp is older than the last one seen for
push-to-talk is stale and ignored; and a hold lasts at most ``max_hold_s``
(:attr:`PushToTalk.deadline`): past it, the dictation is stopped as if the
key had been released. When the portal goes away mid-hold
(:meth:`PushToTalk.lost`), the release can never come: stop now.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from .errors import SttdError

logger = logging.getLogger(__name__)

PUSH_TO_TALK = "push-to-talk"
TOGGLE = "toggle"
CANCEL = "cancel"
SEND = "send"


@dataclass(frozen=True)
class ShortcutSpec:
    id: str
    description: str
    config_key: str
    """The ``[shortcuts]`` key holding its preferred trigger."""


SHORTCUTS = (
    ShortcutSpec(PUSH_TO_TALK, "Hold to dictate (a short tap toggles dictation)", "push_to_talk"),
    ShortcutSpec(TOGGLE, "Start or stop dictation", "toggle"),
    ShortcutSpec(CANCEL, "Stop dictation and drop what is not transcribed", "cancel"),
    ShortcutSpec(SEND, "Send the dictated text", "send"),
)
"""Every shortcut sttd binds, in the order it binds them (the portal contract ids)."""


class Action(enum.StrEnum):
    START = "start"
    STOP = "stop"
    TOGGLE = "toggle"
    CANCEL = "cancel"
    SEND = "send"


START, STOP = Action.START, Action.STOP
_PRESS_ONLY = {TOGGLE: Action.TOGGLE, CANCEL: Action.CANCEL, SEND: Action.SEND}


class ShortcutsUnavailableError(SttdError):
    """The desktop offers no GlobalShortcuts portal (or sttd has not bound its shortcuts there)."""

    dbus_name = "ShortcutsUnavailable"


class Phase(enum.StrEnum):
    IDLE = "idle"
    HELD = "held"
    """Pressed: dictating while the key is down."""
    LATCHED = "latched"
    """A tap turned dictation on; the next press turns it off."""
    UNLATCHING = "unlatching"
    """The press that ended a latched dictation is still down: its release means nothing."""


class PushToTalk:
    """The push-to-talk state machine (and the press-only shortcuts). Times are seconds, monotonic."""

    def __init__(self, hold_threshold_s: float, max_hold_s: float) -> None:
        self.hold_threshold_s = hold_threshold_s
        self.max_hold_s = max_hold_s
        self._phase = Phase.IDLE
        self._pressed_at = 0.0
        self._pressed_stamp = 0
        self._last_stamp = 0

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def deadline(self) -> float | None:
        """When :meth:`expire` must be called (a hold whose release may have been lost), if at all."""
        return self._pressed_at + self.max_hold_s if self._phase is Phase.HELD else None

    def _stale(self, stamp: int) -> bool:
        """An event older than one already seen (0: the portal gave no timestamp)."""
        if not stamp:
            return False
        if stamp < self._last_stamp:
            return True
        self._last_stamp = stamp
        return False

    def pressed(self, shortcut_id: str, now: float, stamp: int = 0, active: bool = False) -> list[Action]:
        """A press of ``shortcut_id``; ``active`` tells whether a dictation is running (or flushing)."""
        if shortcut_id in _PRESS_ONLY:
            if shortcut_id == CANCEL:
                self._phase = Phase.IDLE
            return [_PRESS_ONLY[shortcut_id]]
        if shortcut_id != PUSH_TO_TALK or self._stale(stamp):
            return []
        match self._phase:
            case Phase.HELD | Phase.UNLATCHING:
                return []  # the same press again
            case Phase.LATCHED if active:
                self._phase = Phase.UNLATCHING
                return [STOP]
            case _:  # idle, or latched while the dictation ended some other way
                self._phase = Phase.HELD
                self._pressed_at, self._pressed_stamp = now, stamp
                return [START]

    def released(self, shortcut_id: str, now: float, stamp: int = 0) -> list[Action]:
        if shortcut_id != PUSH_TO_TALK or self._stale(stamp):
            return []
        # The portal's timestamps are the key's own times; arrival times are the fallback.
        held_s = (stamp - self._pressed_stamp) / 1000 if stamp and self._pressed_stamp else now - self._pressed_at
        match self._phase:
            case Phase.HELD if held_s < self.hold_threshold_s:
                self._phase = Phase.LATCHED
                return []
            case Phase.HELD:
                self._phase = Phase.IDLE
                return [STOP]
            case Phase.UNLATCHING:
                self._phase = Phase.IDLE
                return []
            case _:
                return []  # a release already seen, or of a press never seen

    def expire(self, now: float) -> list[Action]:
        """The clock reached :attr:`deadline` (or passed it): a hold that long lost its release."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return []
        logger.info("push-to-talk held for over %.0f s: stopping (the release was lost?)", self.max_hold_s)
        self._phase = Phase.IDLE
        return [STOP]

    def lost(self) -> list[Action]:
        """The portal went away: a held key will never be released, so stop; a latched dictation goes on."""
        self._last_stamp = 0  # a new portal counts from its own base
        if self._phase is Phase.HELD:
            self._phase = Phase.IDLE
            return [STOP]
        if self._phase is Phase.UNLATCHING:
            self._phase = Phase.IDLE
        return []
