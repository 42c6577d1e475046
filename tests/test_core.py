"""The dictation core, driven by calls and read through its outputs."""

from __future__ import annotations

import pytest

from sttd import core
from sttd import protocol as p
from sttd.errors import DisabledError, InvalidLanguageError


def dictation(**kwargs: object) -> core.Dictation:
    triggers = core.Triggers(r"\bsend\b", r"\bpurge\b", str(kwargs.pop("position", "end")))
    return core.Dictation(enabled=bool(kwargs.pop("enabled", True)), language="", triggers=triggers)


def states(outputs: list[core.Output]) -> list[str]:
    return [str(o.state) for o in outputs if isinstance(o, core.StateChanged)]


def finals(outputs: list[core.Output]) -> list[str]:
    return [o.text for o in outputs if isinstance(o, core.TranscriptEmitted) and o.final]


def turn(d: core.Dictation, item: str, prev: str | None, text: str) -> None:
    d.server_event(p.SpeechStarted(item, 0))
    d.server_event(p.SpeechStopped(item, 1000))
    d.server_event(p.Committed(item, prev))
    d.server_event(p.TranscriptionDelta(item, text[:3]))
    d.server_event(p.TranscriptionCompleted(item, text))


def test_a_dictation_walks_the_contract_states() -> None:
    d = dictation()
    assert d.start()
    d.session_ready()
    turn(d, "i1", None, "hello world")
    d.stop()
    d.finished()
    assert states(d.take_outputs()) == [
        "connecting",
        "listening",
        "speaking",
        "processing",
        "listening",
        "processing",
        "idle",
    ]


def test_start_is_refused_while_disabled_and_a_noop_while_running() -> None:
    d = dictation(enabled=False)
    with pytest.raises(DisabledError):
        d.start()
    d.set_enabled(True)
    assert d.start()
    assert not d.start()


def test_partials_carry_the_utterance_so_far() -> None:
    d = dictation()
    d.start()
    d.server_event(p.Committed("i1", None))
    d.server_event(p.TranscriptionDelta("i1", "Hel"))
    d.server_event(p.TranscriptionDelta("i1", "lo  wor"))
    partials = [o.text for o in d.take_outputs() if isinstance(o, core.TranscriptEmitted) and not o.final]
    assert partials == ["Hel", "Hello wor"]


def test_out_of_order_completions_are_released_in_spoken_order() -> None:
    d = dictation()
    d.start()
    d.session_ready()
    for item, prev in [("a", None), ("b", "a"), ("c", "b")]:
        d.server_event(p.Committed(item, prev))
    d.server_event(p.TranscriptionCompleted("c", "third"))
    d.server_event(p.TranscriptionCompleted("b", "second"))
    assert finals(d.take_outputs()) == []
    d.server_event(p.TranscriptionCompleted("a", "first"))
    assert finals(d.take_outputs()) == ["first", "second", "third"]
    assert d.state is core.State.LISTENING


def test_a_failed_transcription_does_not_hold_back_later_ones() -> None:
    d = dictation()
    d.start()
    d.server_event(p.Committed("a", None))
    d.server_event(p.Committed("b", "a"))
    d.server_event(p.TranscriptionCompleted("b", "second"))
    d.server_event(p.TranscriptionFailed("a", "oops", "model error"))
    out = d.take_outputs()
    assert finals(out) == ["second"]
    assert any(isinstance(o, core.ErrorRaised) for o in out)


def test_whitespace_is_normalised() -> None:
    d = dictation()
    d.start()
    turn(d, "a", None, "  hello \n  world ")
    assert finals(d.take_outputs()) == ["hello world"]
    assert d.pending_text == "hello world"


def test_send_after_an_utterance_sends_exactly_the_pending_text() -> None:
    d = dictation()
    d.start()
    turn(d, "a", None, "hello world")
    turn(d, "b", "a", "Send.")
    out = d.take_outputs()
    assert core.Triggered("send", "hello world") in out
    assert d.pending_text == ""


def test_send_at_the_end_of_an_utterance_types_the_rest_first() -> None:
    d = dictation()
    d.start()
    turn(d, "a", None, "hello world, send!")
    out = [o for o in d.take_outputs() if isinstance(o, core.TextCommitted | core.Triggered)]
    assert out == [core.TextCommitted("hello world", "a"), core.Triggered("send", "hello world")]


def test_send_in_the_middle_is_text_unless_anywhere() -> None:
    d = dictation()
    d.start()
    turn(d, "a", None, "I will send you the file")
    assert d.pending_text == "I will send you the file"
    d2 = dictation(position="anywhere")
    d2.start()
    turn(d2, "a", None, "I will send you the file")
    assert core.Triggered("send", "I will you the file") in d2.take_outputs()


def test_purge_drops_the_pending_text_without_sending() -> None:
    d = dictation()
    d.start()
    turn(d, "a", None, "hello world")
    turn(d, "b", "a", "purge")
    out = d.take_outputs()
    assert core.Triggered("purge", "hello world") in out
    assert not any(isinstance(o, core.Triggered) and o.name == "send" for o in out)
    assert d.pending_text == ""


def test_cancel_discards_transcripts_still_owed() -> None:
    d = dictation()
    d.start()
    d.server_event(p.Committed("a", None))
    d.server_event(p.Committed("b", "a"))
    d.server_event(p.TranscriptionCompleted("b", "held back"))
    d.stop()
    d.finished(discard=True)
    assert finals(d.take_outputs()) == []
    assert d.state is core.State.IDLE


def test_a_reconnect_forgets_what_the_new_session_will_transcribe_again() -> None:
    d = dictation()
    d.start()
    d.session_ready()
    d.server_event(p.Committed("a", None))
    d.server_event(p.Committed("b", "a"))
    d.server_event(p.TranscriptionCompleted("b", "held back"))
    d.session_reconnecting("connection lost")
    assert finals(d.take_outputs()) == []  # b's audio is resent from a on: no duplicate, no reordering
    assert d.state is core.State.RECONNECTING
    assert d.last_error == "connection lost"
    d.session_ready()
    assert d.state is core.State.LISTENING and d.last_error == ""
    turn(d, "a2", None, "first")
    turn(d, "b2", "a2", "held back")
    assert finals(d.take_outputs()) == ["first", "held back"]


def test_a_fatal_session_error_ends_in_error_with_the_message() -> None:
    d = dictation()
    d.start()
    d.session_failed("credentials", "the service refused the credentials (close 3000)")
    d.finished()
    out = d.take_outputs()
    assert d.state is core.State.ERROR
    assert core.ErrorRaised("credentials", "the service refused the credentials (close 3000)") in out
    assert not d.stop()  # Stop acknowledges the error: back to idle, the reason kept
    assert d.state is core.State.IDLE and "3000" in d.last_error
    assert d.start()  # a new Start tries again


def test_language_is_validated() -> None:
    d = dictation()
    assert d.set_language("de")
    assert not d.set_language("de")
    with pytest.raises(InvalidLanguageError):
        d.set_language("german")
    assert d.language == "de"


def test_live_deltas_before_the_commit_do_not_hold_back_earlier_turns() -> None:
    # A live model streams the second utterance while the first is still being transcribed.
    d = dictation()
    d.start()
    d.session_ready()
    d.server_event(p.Committed("item_1", None))
    d.server_event(p.TranscriptionDelta("item_2", "second "))
    d.server_event(p.TranscriptionDelta("item_2", "one"))
    d.server_event(p.TranscriptionCompleted("item_1", "First one."))
    outputs = d.take_outputs()
    partials = [o.text for o in outputs if isinstance(o, core.TranscriptEmitted) and not o.final]
    finals = [o.text for o in outputs if isinstance(o, core.TranscriptEmitted) and o.final]
    assert partials == ["second", "second one"]
    assert finals == ["First one."]
    d.server_event(p.Committed("item_2", "item_1"))
    d.server_event(p.TranscriptionCompleted("item_2", "Second one."))
    assert [o.text for o in d.take_outputs() if isinstance(o, core.TranscriptEmitted)] == ["Second one."]
    assert d.pending_text == "First one. Second one."


def test_deltas_for_items_never_committed_are_bounded_and_block_nothing() -> None:
    d = dictation()
    d.start()
    d.session_ready()
    for n in range(1000):
        d.server_event(p.TranscriptionDelta(f"ghost_{n}", "x" * 100))
    d.server_event(p.Committed("item_1", None))
    d.server_event(p.TranscriptionCompleted("item_1", "Real words."))
    assert d.pending_text == "Real words."
    assert d.outstanding == 0
