"""Push-to-talk as the core sees it: presses and releases in, actions out (no I/O); its config."""

from __future__ import annotations

import pytest

from sttd import config
from sttd.errors import ConfigError
from sttd.shortcuts_core import CANCEL, PUSH_TO_TALK, SEND, START, STOP, TOGGLE, Action, Phase, PushToTalk


def ptt() -> PushToTalk:
    return PushToTalk(hold_threshold_s=0.3, max_hold_s=10.0)


def test_a_hold_starts_on_press_and_stops_on_release() -> None:
    core = ptt()
    assert core.pressed(PUSH_TO_TALK, 0.0, 1000) == [START]
    assert core.released(PUSH_TO_TALK, 2.0, 3000) == [STOP]
    assert core.phase is Phase.IDLE


def test_a_tap_latches_and_the_next_press_stops() -> None:
    core = ptt()
    assert core.pressed(PUSH_TO_TALK, 0.0, 1000) == [START]
    assert core.released(PUSH_TO_TALK, 0.1, 1100) == []
    assert core.phase is Phase.LATCHED
    assert core.pressed(PUSH_TO_TALK, 5.0, 6000, active=True) == [STOP]
    assert core.released(PUSH_TO_TALK, 5.5, 6500) == []
    assert core.phase is Phase.IDLE


def test_the_portal_timestamps_measure_the_hold_not_the_arrival() -> None:
    core = ptt()
    core.pressed(PUSH_TO_TALK, 0.0, 1000)
    # Arrived 2 s later (a busy bus), but the key was down for 50 ms: a tap.
    assert core.released(PUSH_TO_TALK, 2.0, 1050) == []
    assert core.phase is Phase.LATCHED


def test_a_latched_dictation_that_ended_otherwise_starts_again_on_press() -> None:
    core = ptt()
    core.pressed(PUSH_TO_TALK, 0.0, 1000)
    core.released(PUSH_TO_TALK, 0.1, 1100)
    assert core.pressed(PUSH_TO_TALK, 9.0, 10000, active=False) == [START]


def test_duplicated_presses_and_releases_are_ignored() -> None:
    core = ptt()
    assert core.pressed(PUSH_TO_TALK, 0.0, 1000) == [START]
    assert core.pressed(PUSH_TO_TALK, 0.0, 1000) == []
    assert core.released(PUSH_TO_TALK, 1.0, 2000) == [STOP]
    assert core.released(PUSH_TO_TALK, 1.0, 2000) == []
    assert core.phase is Phase.IDLE


def test_a_press_older_than_its_release_is_stale() -> None:
    core = ptt()
    assert core.released(PUSH_TO_TALK, 0.0, 2000) == []
    assert core.pressed(PUSH_TO_TALK, 0.01, 1000) == []  # delivered late: the key is already up
    assert core.phase is Phase.IDLE


def test_a_lost_release_stops_at_the_bound() -> None:
    core = ptt()
    core.pressed(PUSH_TO_TALK, 100.0, 1000)
    assert core.deadline == 110.0
    assert core.expire(105.0) == []
    assert core.expire(110.0) == [STOP]
    assert core.deadline is None
    assert core.released(PUSH_TO_TALK, 120.0, 21000) == []  # the late release changes nothing


def test_the_portal_going_away_stops_a_hold_but_not_a_latched_dictation() -> None:
    core = ptt()
    core.pressed(PUSH_TO_TALK, 0.0, 1000)
    assert core.lost() == [STOP]
    core.pressed(PUSH_TO_TALK, 1.0, 5)  # a new portal counts from its own base: not stale
    core.released(PUSH_TO_TALK, 1.1, 50)
    assert core.lost() == []
    assert core.phase is Phase.LATCHED


def test_the_other_shortcuts_act_on_press_only() -> None:
    core = ptt()
    assert core.pressed(TOGGLE, 0.0) == [Action.TOGGLE]
    assert core.pressed(SEND, 0.0) == [Action.SEND]
    assert core.released(TOGGLE, 0.1) == []
    core.pressed(PUSH_TO_TALK, 1.0, 1000)
    assert core.pressed(CANCEL, 1.5) == [Action.CANCEL]
    assert core.released(PUSH_TO_TALK, 2.0, 2000) == []  # cancelled: the release stops nothing
    assert core.pressed("unknown", 0.0) == []


def test_the_shortcuts_config_is_checked_naming_the_key() -> None:
    parsed = config.parse('[shortcuts]\npush_to_talk = "<Ctrl><Alt>d"\nhold_threshold_ms = 0\nenabled = false\n')
    assert parsed.shortcuts.push_to_talk == "<Ctrl><Alt>d"
    assert parsed.shortcuts.hold_threshold_ms == 0 and not parsed.shortcuts.enabled
    for text, key in (
        ("max_hold_s = 0", "shortcuts.max_hold_s"),
        ("hold_threshold_ms = 6000", "shortcuts.hold_threshold_ms"),
        ('toggle = "a\\nb"', "shortcuts.toggle"),
        ("push_to_talk = 3", "shortcuts.push_to_talk"),
        ("pushtotalk = 'x'", "shortcuts.pushtotalk"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            config.parse(f"[shortcuts]\n{text}\n")
