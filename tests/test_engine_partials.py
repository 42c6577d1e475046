"""LocalAgreement-2 and the speech tracker of the engine's partial text (no model, no I/O)."""

from __future__ import annotations

import numpy as np

from sttd.engine.partials import Agreement, SpeechTracker, final_delta
from sttd.engine.vad import WINDOW


def hear_all(hypotheses: list[str]) -> tuple[Agreement, list[str]]:
    agreement, deltas = Agreement(), []
    for hypothesis in hypotheses:
        agreement, delta = agreement.hear(hypothesis)
        deltas.append(delta)
    return agreement, deltas


def test_a_word_is_sent_once_two_successive_decodes_agree_on_it() -> None:
    agreement, deltas = hear_all(
        [
            "Please.",
            "Please remember",
            "Please remember to buy",
            "Please remember to buy milk on",
            "Please remember to buy milk on the way home.",
        ]
    )
    # "Please." and "Please" differ: punctuation counts, so a word is sent only when it has settled.
    assert deltas == ["", "", "Please remember", " to buy", " milk on"]
    assert agreement.text == "Please remember to buy milk on"
    assert "".join(deltas) == agreement.text


def test_text_only_grows_when_whisper_changes_its_mind_about_a_sent_word() -> None:
    agreement, deltas = hear_all(["The wether is", "The wether is nice", "The weather is nice", "The weather is nice"])
    assert deltas == ["", "The wether is", "", ""]  # nothing more: the new agreement does not continue what was sent
    agreement, delta = agreement.hear("The wether is nice today")
    assert delta == ""  # "The wether is" vs the last "The weather is": no agreement on anything new yet
    agreement, delta = agreement.hear("The wether is nice today")
    assert delta == " nice today"
    assert agreement.text == "The wether is nice today"


def test_the_final_adds_what_it_has_beyond_the_sent_text_or_nothing_when_it_disagrees() -> None:
    assert final_delta("", "Hello world.") == "Hello world."
    assert final_delta("Hello", "Hello world.") == " world."
    assert final_delta("Hello world.", "Hello world.") == ""
    assert final_delta("Hello wor", "Hello world.") is None  # not at a word boundary
    assert final_delta("Hello there", "Hello world.") is None


def test_the_tracker_says_where_speech_was_last_heard_and_scores_whole_windows_only() -> None:
    tracker = SpeechTracker(None, 0.5)
    tracker.feed(np.zeros(WINDOW * 3, dtype=np.float32))
    assert (tracker.position, tracker.last_speech) == (WINDOW * 3, None)
    tone = 0.1 * np.sin(np.arange(WINDOW * 2) * 0.3).astype(np.float32)
    tracker.feed(tone[: WINDOW // 2])
    assert tracker.position == WINDOW * 3  # half a window waits for the rest
    tracker.feed(tone[WINDOW // 2 :])
    tracker.feed(np.zeros(WINDOW, dtype=np.float32))
    assert (tracker.position, tracker.last_speech) == (WINDOW * 6, WINDOW * 5)


def test_the_tracker_uses_the_probes_scores_when_it_has_one() -> None:
    scores = iter([np.array([0.1, 0.9, 0.2], dtype=np.float32), np.array([0.6], dtype=np.float32)])

    def probe(windows: np.ndarray) -> np.ndarray:
        return next(scores)

    tracker = SpeechTracker(probe, 0.5)
    tracker.feed(np.zeros(WINDOW * 3, dtype=np.float32))
    assert tracker.last_speech == WINDOW * 2
    tracker.feed(np.zeros(WINDOW, dtype=np.float32))
    assert tracker.last_speech == WINDOW * 4


def test_letter_case_alone_is_not_a_disagreement_and_the_newest_spelling_is_sent() -> None:
    _, deltas = hear_all(["please remember", "Please remember to", "Please remember to buy"])
    assert deltas == ["", "Please remember", " to"]
