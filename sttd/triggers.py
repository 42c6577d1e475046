"""Voice-trigger patterns: compiled with RE2, checked once, matched in linear time. No I/O.

:class:`Triggers` finds the send and purge words in a final utterance
(re-exported by :mod:`sttd.core`).

A trigger pattern runs against every final utterance, inside the event loop.
Python's ``re`` backtracks, so a pattern like ``(a+)+$`` took 6.8 s on one
27-character utterance and froze the daemon. RE2 (``google-re2``) matches in
time linear in the text for every pattern it accepts, so no pattern can stall
sttd; the price is RE2's syntax: no backreferences (``\\1``) and no
lookaround (``(?=``, ``(?<=``), and ``\\b``/``\\w`` are ASCII-only.

A pattern is also refused when it would fire on everything: one that matches
the empty string (``''``, ``a*``, ``|x``), one that matches every ordinary
utterance (``.``), or one that can match without any text (``\\b``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import re2  # type: ignore[import-untyped]

from .assembler import normalise
from .errors import ConfigError
from .redact import excerpt

if TYPE_CHECKING:
    from . import shaping

MAX_PATTERN_CHARS = 1000
"""Longer patterns are refused: a trigger is a word or a phrase, and RE2's program size grows with the pattern."""

SYNTAX = "RE2 syntax: no backreferences or lookaround"

_PROBES = (
    "x",
    "hello world",
    "Ok.",
    "1234",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "¿Qué tal? Ça va.",
)
"""Unrelated utterances: a pattern matching all of them would match anything anyone says."""


def _options() -> Any:
    options = re2.Options()
    options.case_sensitive = False
    # RE2 writes parse errors to stderr itself; the error sttd raises says it once, with the key.
    options.log_errors = False
    return options


class Pattern:
    """A compiled, checked, case-insensitive trigger pattern."""

    def __init__(self, source: str, regexp: Any) -> None:
        self.source = source
        self._regexp = regexp

    def spans(self, text: str) -> list[tuple[int, int]]:
        """``(start, end)`` of every non-overlapping match in ``text``, leftmost first."""
        return [(int(m.start()), int(m.end())) for m in self._regexp.finditer(text)]

    def last_span(self, text: str) -> tuple[int, int] | None:
        """The last of :meth:`spans`, or None when the pattern does not occur."""
        spans = self.spans(text)
        return spans[-1] if spans else None


def compile_pattern(source: str) -> Pattern:
    """Compile and check a trigger pattern; raise :class:`ConfigError` saying why it cannot be used.

    The message does not name the key: the caller (the config check) does.
    """
    if not source:
        raise ConfigError("must not be empty (it would match every utterance)")
    if len(source) > MAX_PATTERN_CHARS:
        raise ConfigError(f"must be at most {MAX_PATTERN_CHARS} characters, not {len(source)}")
    try:
        regexp = re2.compile(source, _options())
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ConfigError(f"invalid regular expression {excerpt(source)} ({SYNTAX}): {excerpt(reason)}") from None
    pattern = Pattern(source, regexp)
    problem = _fires_on_everything(pattern)
    if problem:
        raise ConfigError(problem)
    return pattern


def _fires_on_everything(pattern: Pattern) -> str | None:
    if pattern.spans(""):
        return "matches every utterance (it matches the empty text)"
    found = [pattern.spans(probe) for probe in _PROBES]
    if all(found):
        return "matches every utterance"
    if any(start == end for spans in found for start, end in spans):
        return "can match without any text (an empty match), so it fires on ordinary utterances"
    return None


def check_pattern(source: str) -> None:
    """What the config adds to :func:`compile_pattern`: no repeated repetition (see :func:`_nested_repeat`)."""
    compile_pattern(source)
    if _nested_repeat(source):
        raise ConfigError(
            f"{excerpt(source)} repeats a repetition (like (a+)+): catastrophic in backtracking engines, "
            "and never needed for a trigger word; write it without the nesting"
        )


def _nested_repeat(source: str) -> bool:
    """Whether an unbounded repeat contains another one: ``(a+)+``, ``(a*)*``, ``(?:a|b+){2,}``.

    RE2 matches these in linear time, so sttd is safe either way; they are
    refused because they are the classic catastrophic-backtracking mistake:
    the same pattern in ``grep -P``, a widget or a future engine would hang,
    and a trigger never needs one. Python's own parser reads the structure
    (a pattern it cannot parse is left to RE2, which accepted it).
    """
    try:
        parsed = re._parser.parse(source)  # type: ignore[attr-defined]
    except (re.error, RecursionError, OverflowError):
        return False
    return _has_nested(parsed.data, inside=False)


_REPEATS = {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}


def _has_nested(items: Any, inside: bool) -> bool:
    """Whether a repeat of more than one is found in ``items`` (parsed pattern) below another one."""
    for op, arg in items:
        name = str(op)
        repeats = False
        if name in _REPEATS:
            high = arg[1]
            repeats = high is re._constants.MAXREPEAT or high > 1  # type: ignore[attr-defined]
            if repeats and inside:
                return True
        if any(_has_nested(child, inside or repeats) for child in _children(name, arg)):
            return True
    return False


def _children(name: str, arg: Any) -> list[Any]:
    if name in _REPEATS:
        return [arg[2].data]
    if name == "SUBPATTERN":
        return [arg[-1].data]
    if name == "BRANCH":
        return [branch.data for branch in arg[1]]
    return []


# ------------------------------------------------------- matching utterances

_TRAILING = " \t\n.,!?;:…\"'"


@dataclass(frozen=True)
class TriggerMatch:
    name: str
    """``send`` or ``purge``."""
    remainder: str
    """The utterance without the trigger word."""


class Triggers:
    """Finds the send and purge words in a final utterance.

    With ``position="end"`` a trigger counts only when it ends the utterance
    (trailing punctuation aside), so "I will send you the file" stays text.
    Purge is checked first: when both are said, dropping is the safe choice.
    A pattern :func:`compile_pattern` refuses raises ConfigError.
    """

    def __init__(self, send: str, purge: str, position: str = "end") -> None:
        # RE2: matching is linear in the utterance, whatever the pattern.
        self._patterns = [("purge", compile_pattern(purge)), ("send", compile_pattern(send))]
        self._at_end = position == "end"

    @property
    def patterns(self) -> list[tuple[str, shaping.Matcher]]:
        return list(self._patterns)

    @property
    def at_end(self) -> bool:
        return self._at_end

    def match(self, text: str) -> TriggerMatch | None:
        stripped = text.rstrip(_TRAILING)
        for name, pattern in self._patterns:
            last = pattern.last_span(stripped)
            if last is None:
                continue
            start, end = last
            if self._at_end and end != len(stripped):
                continue
            remainder = stripped[:start] + stripped[end:]
            return TriggerMatch(name, normalise(remainder).rstrip(_TRAILING))
        return None
