"""What the input method shows and commits (sttd.ibus.compose: no I/O)."""

from __future__ import annotations

import pytest

from sttd.ibus.compose import Commit, Composer, Erase, PressReturn, Show, UndoRefused, join


@pytest.mark.parametrize(
    ("before", "text", "spacing", "inserted"),
    [
        ("", "Hello", "auto", "Hello"),
        ("o", "world", "auto", " world"),
        ("o", "  world  ", "auto", " world"),
        (" ", "world", "auto", "world"),
        ("o", ", and", "auto", ", and"),
        ("o", "?", "auto", "?"),
        ("(", "aside", "auto", "aside"),
        ("\n", "Next", "auto", "Next"),
        ("京", "大阪", "auto", "大阪"),
        ("o", "東京", "auto", "東京"),
        ("京", "Tokyo", "space", " Tokyo"),
        ("o", "world", "none", "world"),
        ("o", "", "auto", ""),
    ],
)
def test_join_spaces_like_a_writer(before: str, text: str, spacing: str, inserted: str) -> None:
    assert join(before, text, spacing) == inserted  # type: ignore[arg-type]


def test_partials_replace_the_preedit_and_the_commit_clears_it() -> None:
    c = Composer()
    assert c.transcript("Hel", False, "a") == [Show("Hel")]
    assert c.transcript("Hel", False, "a") == []  # unchanged: nothing to redraw
    assert c.transcript("Hello", True, "a") == [Show("Hello")]
    assert c.committed("Hello", "a") == [Commit("Hello")]
    assert c.preedit == ""
    assert c.transcript("again", False, "b") == [Show(" again")]


def test_send_presses_return_and_the_next_line_starts_without_a_space() -> None:
    c = Composer()
    c.committed("one", "a")
    assert c.triggered("send") == [PressReturn()]
    assert c.committed("two", "b") == [Commit("two")]


def test_undo_drops_the_preedit_first_then_the_last_commit_and_refuses_after_user_keys() -> None:
    c = Composer()
    c.committed("Grüße", "a")
    c.transcript("und", False, "b")
    assert c.undo() == [Show("")]
    assert c.undo() == [Erase(5)]
    with pytest.raises(UndoRefused) as nothing:
        c.undo()
    assert nothing.value.name == "NothingToUndo"
    c.committed("again", "c")
    c.key_typed("x")
    with pytest.raises(UndoRefused) as typed:
        c.undo()
    assert typed.value.name == "UserTyped"


def test_keys_the_user_types_set_the_spacing_context() -> None:
    c = Composer()
    c.committed("word", "a")
    c.key_typed(" ")
    assert c.committed("next", "b") == [Commit("next")]
    c.key_typed("\n")
    assert c.committed("line", "c") == [Commit("line")]
