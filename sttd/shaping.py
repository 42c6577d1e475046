"""Words as a writer wants them: replacements, fillers, voice commands, spoken punctuation, spacing. No I/O.

A recognizer returns what it heard; this step turns it into text to send.
Every final utterance goes through :meth:`Shaper.final` before the voice
commands act and before it joins the pending text, the hooks and the
outputs; partials go through :meth:`Shaper.partial` for display. The steps,
in order:

1. **replacements** (``[shaping] replacements``): whole words or phrases,
   case-insensitive, the longest first; the replacement is written as given;
2. **filler words** (``[shaping] filler_words``) are removed, with the comma
   the recognizer put beside them;
3. **voice commands** (``[commands]``, finals only): a phrase that ends the
   utterance (``position = "end"``) or occurs in it (``"anywhere"``) is taken
   out and its action reported (:class:`CommandMatch`);
4. **spoken punctuation** (``[shaping] spoken_punctuation``): "comma",
   "period", "new line", ... in the dictation's language (English, German,
   French; English when the language is automatic) become the marks, never
   inside a longer word ("commander" stays); the recognizer's own mark next
   to a spoken one is dropped, so "world, period." is "world.";
5. **capitalisation** (with spoken punctuation): the first letter of a
   message and after a sentence end;
6. **spacing**: a space between successive utterances, none before
   punctuation or after a line break, none at all for languages written
   without spaces (Japanese, Chinese, Thai, ...).

Every phrase is matched as whole words: not preceded or followed by a
letter, digit, hyphen or apostrophe. Phrases are literal text (not regular
expressions), so matching is linear in the utterance whatever the config.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .config import Config

NO_SPACE_LANGUAGES = frozenset({"ja", "zh", "th", "lo", "km", "my", "bo"})
"""Languages written without spaces between words: successive utterances are joined as they are."""

RECOGNIZER_MARKS = ",.;:!?…"
"""Punctuation a recognizer adds by itself, dropped next to a spoken mark."""
SENTENCE_ENDS = ".?!…"
TRAILING = " \t\n.,!?;:…\"'"
"""Stripped from the text said before a voice command (the recognizer's comma or period next to it)."""
ACTIONS = ("purge", "cancel", "undo", "stop", "send")
"""The built-in command actions, in the order they are looked for: dropping wins over sending."""


class Kind(enum.Enum):
    """How a punctuation mark sits between words."""

    CLOSE = "close"
    """Attached to the word before, a space after: ``,`` ``.`` ``)``."""
    OPEN = "open"
    """A space before, attached to the word after: ``(`` and opening quotes."""
    BREAK = "break"
    """No space on either side: line and paragraph breaks."""
    JOIN = "join"
    """Attached on both sides: a hyphen."""


_C, _O, _B, _J = Kind.CLOSE, Kind.OPEN, Kind.BREAK, Kind.JOIN
_NO_SPACE_BEFORE = (_C, _B, _J)
_NO_SPACE_AFTER = (_O, _B, _J)

PUNCTUATION: dict[str, dict[str, tuple[str, Kind]]] = {
    "en": {
        "comma": (",", _C),
        "period": (".", _C),
        "full stop": (".", _C),
        "question mark": ("?", _C),
        "exclamation mark": ("!", _C),
        "exclamation point": ("!", _C),
        "colon": (":", _C),
        "semicolon": (";", _C),
        "ellipsis": ("…", _C),
        "new line": ("\n", _B),
        "newline": ("\n", _B),
        "new paragraph": ("\n\n", _B),
        "open paren": ("(", _O),
        "open parenthesis": ("(", _O),
        "open bracket": ("(", _O),
        "close paren": (")", _C),
        "close parenthesis": (")", _C),
        "close bracket": (")", _C),
        "open quote": ('"', _O),
        "close quote": ('"', _C),
        "end quote": ('"', _C),
        "hyphen": ("-", _J),
    },
    "de": {
        "komma": (",", _C),
        "punkt": (".", _C),
        "fragezeichen": ("?", _C),
        "ausrufezeichen": ("!", _C),
        "doppelpunkt": (":", _C),
        "semikolon": (";", _C),
        "strichpunkt": (";", _C),
        "neue zeile": ("\n", _B),
        "zeilenumbruch": ("\n", _B),
        "neuer absatz": ("\n\n", _B),
        "klammer auf": ("(", _O),
        "klammer zu": (")", _C),
        "anführungszeichen auf": ("„", _O),
        "anführungszeichen zu": ("“", _C),
        "bindestrich": ("-", _J),
    },
    "fr": {
        "virgule": (",", _C),
        "point": (".", _C),
        "point final": (".", _C),
        "point d'interrogation": ("?", _C),
        "point d'exclamation": ("!", _C),
        "deux points": (":", _C),
        "deux-points": (":", _C),
        "point virgule": (";", _C),
        "point-virgule": (";", _C),
        "points de suspension": ("…", _C),
        "à la ligne": ("\n", _B),
        "nouvelle ligne": ("\n", _B),
        "nouveau paragraphe": ("\n\n", _B),
        "ouvrez la parenthèse": ("(", _O),
        "fermez la parenthèse": (")", _C),
        "ouvrez les guillemets": ("«", _O),
        "fermez les guillemets": ("»", _C),
        "trait d'union": ("-", _J),
    },
}
"""Spoken punctuation per language (lower case; an apostrophe matches ' and the typographic one)."""


def punctuation_for(language: str) -> dict[str, tuple[str, Kind]]:
    """The spoken punctuation of ``language``: English for automatic ("") and for languages without a table."""
    return PUNCTUATION.get(language, PUNCTUATION["en"]) if language not in NO_SPACE_LANGUAGES else {}


def kind_of(mark: str) -> Kind | None:
    """How a mark of the user's own sits between words, judged by its characters; None: like a word."""
    if "\n" in mark:
        return Kind.BREAK
    if len(mark) > 1:
        return None  # a smiley, an abbreviation: spaced like a word
    if mark in "([{«„\u201c\u2018¿¡":
        return Kind.OPEN
    if mark in "-/":
        return Kind.JOIN
    return Kind.CLOSE


# ------------------------------------------------------------------ phrases


def phrase_key(phrase: str) -> str:
    """How phrases are compared: lower case, whitespace normalised, one kind of apostrophe."""
    return " ".join(phrase.replace("\u2019", "'").lower().split())


_EDGE = "\\w'\u2019-"


def phrase_regex(phrases: Iterable[str]) -> re.Pattern[str] | None:
    """One pattern matching any of ``phrases`` as whole words, the longest first; None when there are none."""
    keys = sorted({key for key in map(phrase_key, phrases) if key}, key=lambda k: (-len(k), k))
    if not keys:
        return None
    words = [r"\s+".join(re.escape(word).replace("'", "['\u2019]") for word in key.split()) for key in keys]
    return re.compile(rf"(?<![{_EDGE}])(?:{'|'.join(words)})(?![{_EDGE}])", re.IGNORECASE)


class Matcher(Protocol):
    """Finds a command's phrase: :class:`Phrases`, or a legacy ``[triggers]`` regex (:class:`sttd.triggers.Pattern`)."""

    def spans(self, text: str) -> list[tuple[int, int]]: ...


class Phrases:
    """Literal phrases, matched as whole words, case-insensitively."""

    def __init__(self, phrases: Iterable[str]) -> None:
        self.phrases = tuple(phrases)
        self._regex = phrase_regex(self.phrases)

    def spans(self, text: str) -> list[tuple[int, int]]:
        if self._regex is None:
            return []
        return [m.span() for m in self._regex.finditer(text)]


# ------------------------------------------------------------------ commands


@dataclass(frozen=True)
class CommandMatch:
    action: str
    """``send``, ``purge``, ``undo``, ``stop``, ``cancel``, or the phrase of a command hook (lower case)."""
    said: str
    """The words that fired it, as the recognizer wrote them."""
    remainder: str
    """The rest of the utterance, without the command (and the recognizer's punctuation next to it)."""


class Commands:
    """Voice commands: which phrase fires which action, and where in an utterance it counts.

    With ``position="end"`` a command counts only when it ends the utterance
    (trailing punctuation aside), so "I will send you the file" stays text.
    Actions are looked for in the order given (purge before send: when both
    are said, dropping is the safe choice).
    """

    def __init__(self, table: Sequence[tuple[str, Matcher]], position: str = "end") -> None:
        self.table = tuple(table)
        self.at_end = position == "end"

    def match(self, text: str) -> CommandMatch | None:
        stripped = text.rstrip(TRAILING)
        for action, matcher in self.table:
            spans = matcher.spans(stripped)
            if not spans:
                continue
            start, end = spans[-1]
            if self.at_end and end != len(stripped):
                continue
            remainder = " ".join((stripped[:start] + " " + stripped[end:]).split()).rstrip(TRAILING)
            return CommandMatch(action, stripped[start:end], remainder)
        return None


NO_COMMANDS = Commands(())


# ------------------------------------------------------------------ the rules


@dataclass(frozen=True)
class Rules:
    """``[shaping]`` as the shaper takes it."""

    spoken_punctuation: bool = False
    replacements: Mapping[str, str] = field(default_factory=dict)
    filler_words: tuple[str, ...] = ()
    punctuation: Mapping[str, str] = field(default_factory=dict)
    """Words of one's own -> their mark, over the language's table; "" takes a word out of it."""


@dataclass(frozen=True)
class Shaped:
    """One final utterance, shaped."""

    shown: str
    """The whole utterance as a display shows it (the Transcript signal): commands left in."""
    text: str
    """What joins the pending text: the utterance without its command ("" when nothing is left)."""
    separator: str
    """What goes between the text before and :attr:`text`: " " or ""."""
    command: CommandMatch | None


class Shaper:
    """The shaping step for one language with one set of rules and commands."""

    def __init__(self, rules: Rules = Rules(), language: str = "", commands: Commands = NO_COMMANDS) -> None:
        self.rules = rules
        self.language = language
        self.commands = commands
        self._replacements = {phrase_key(k): v for k, v in rules.replacements.items() if phrase_key(k)}
        self._replace = phrase_regex(self._replacements)
        self._fillers = _filler_regex(rules.filler_words)
        marks: dict[str, tuple[str, Kind | None]] = {phrase_key(k): v for k, v in punctuation_for(language).items()}
        for word, mark in rules.punctuation.items():
            if mark:
                marks[phrase_key(word)] = (mark, kind_of(mark))
            else:
                marks.pop(phrase_key(word), None)
        self._marks = marks
        self._punctuation = phrase_regex(self._marks) if rules.spoken_punctuation else None

    def partial(self, text: str, before: str = "") -> str:
        """A partial utterance as a display shows it (no command acts on a partial)."""
        return self._finish(self._words(text), before)

    def final(self, text: str, before: str = "") -> Shaped:
        """A final utterance, to follow ``before`` (the pending text; "" at the start of a message)."""
        words = self._words(text)
        shown = self._finish(words, before)
        command = self.commands.match(words)
        rest = self._finish(command.remainder, before) if command is not None else shown
        return Shaped(shown, rest, self.separator(before, rest), command)

    def separator(self, before: str, text: str) -> str:
        """The space between ``before`` and ``text``: none at the start, before punctuation, after a break."""
        if not before or not text or self.language in NO_SPACE_LANGUAGES:
            return ""
        if _unspaced(before[-1]) and _unspaced(text[0]):
            return ""  # automatic language, and both sides are in a script written without spaces
        if text[0] in ",.;:!?…)»\n" or before[-1] in "\n(«„" or before[-1].isspace():
            return ""
        return " "

    # -- the steps

    def _words(self, text: str) -> str:
        text = " ".join(text.split())
        if self._replace is not None:
            text = self._replace.sub(lambda m: self._replacements[phrase_key(m.group())], text)
        if self._fillers is not None:
            text = _drop_fillers(self._fillers, text)
        return text

    def _finish(self, text: str, before: str) -> str:
        if self._punctuation is None or not text:
            return text
        text = self._punctuate(text)
        return capitalise(text, sentence_start=_sentence_ended(before))

    def _punctuate(self, text: str) -> str:
        assert self._punctuation is not None
        pieces: list[tuple[Kind | None, str]] = []
        position = 0
        for m in self._punctuation.finditer(text):
            mark, kind = self._marks[phrase_key(m.group())]
            before = text[position : m.start()].strip()
            if kind is None:  # a word of the user's own: it stands for itself
                pieces += [(None, piece) for piece in (before, mark) if piece]
                position = m.end()
                continue
            if kind is Kind.CLOSE or kind is Kind.JOIN:
                # The spoken mark wins over the one the recognizer heard in the pause before it.
                before = before.rstrip(RECOGNIZER_MARKS).rstrip()
            if before:
                pieces.append((None, before))
            elif kind is Kind.CLOSE and pieces and pieces[-1][1] == mark:
                position = m.end()
                continue  # "period period" once only
            pieces.append((kind, mark))
            # ... and over the one it wrote right after the spoken word ("comma," "period.").
            rest = text[m.end() :]
            position = m.end() + len(rest) - len(rest.lstrip(RECOGNIZER_MARKS))
        tail = text[position:].strip()
        if tail:
            pieces.append((None, tail))
        out = ""
        previous: Kind | None = None
        for piece_kind, piece in pieces:
            attached = piece_kind in (Kind.CLOSE, Kind.BREAK, Kind.JOIN) or previous in (
                Kind.OPEN,
                Kind.BREAK,
                Kind.JOIN,
            )
            out += piece if not out or attached else " " + piece
            previous = piece_kind
        return out


_UNSPACED = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x0F00, 0x0FFF),  # Tibetan
    (0x3000, 0x30FF),  # CJK punctuation, Hiragana, Katakana
    (0x3400, 0x4DBF),  # CJK Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0xFF00, 0xFFEF),  # full-width forms
)


def _unspaced(char: str) -> bool:
    """A character of a script written without spaces between words."""
    code = ord(char)
    return any(low <= code <= high for low, high in _UNSPACED)


def _filler_regex(fillers: Iterable[str]) -> re.Pattern[str] | None:
    words = phrase_regex(fillers)
    if words is None:
        return None
    # The recognizer marks the pause around a filler with commas: they go with it ("I, uh, think").
    return re.compile(rf"(?:\s*,)?\s*(?:{words.pattern})(?:\s*,)?", re.IGNORECASE)


def _drop_fillers(regex: re.Pattern[str], text: str) -> str:
    capital = text[:1].isupper()
    dropped = " ".join(regex.sub(" ", text).split())
    if dropped and capital and regex.match(text):
        dropped = dropped[0].upper() + dropped[1:]  # "Um, the file" -> "The file"
    return dropped


def _sentence_ended(before: str) -> bool:
    stripped = before.rstrip(" ")
    return not stripped or stripped[-1] in SENTENCE_ENDS or stripped[-1] == "\n"


_SENTENCE_START = re.compile(r"(?:(?<=[.?!…])[ \t]+|\n\s*)([\"'(«„“]*)(\w)")


def capitalise(text: str, sentence_start: bool) -> str:
    """Upper-case the first letter of each sentence (after ``. ? ! …`` and a space, or a line break)."""

    def upper(m: re.Match[str]) -> str:
        return m.group(0)[: -len(m.group(2))] + m.group(2).upper()

    text = _SENTENCE_START.sub(upper, text)
    if sentence_start:
        m = re.match(r"([\"'(«„“]*)(\w)", text)
        if m is not None:
            text = upper(m) + text[m.end() :]
    return text


# ------------------------------------------------------------------ from the config


def shaper_for(cfg: Config, language: str) -> Shaper:
    """The shaper of a dictation in ``language`` with ``cfg`` (a profile's config, or the main one).

    ``[triggers]`` (before ``[commands]``) still counts: a send or purge
    pattern changed there is used as the regular expression it is, and its
    ``position = "anywhere"`` applies to every command.
    """
    from .config import TriggersConfig
    from .triggers import compile_pattern

    commands, legacy, default = cfg.commands, cfg.triggers, TriggersConfig()
    table: list[tuple[str, Matcher]] = []
    for action in ACTIONS:
        if action == "send":  # command hooks before send: it is looked for last
            table += [(phrase_key(phrase), Phrases([phrase])) for phrase in commands.hooks]
        pattern = getattr(legacy, action, None)
        if pattern is not None and pattern != getattr(default, action):
            table.append((action, compile_pattern(pattern)))
        else:
            table.append((action, Phrases(getattr(commands, action))))
    position = "anywhere" if legacy.position == "anywhere" else commands.position
    shaping_cfg = cfg.shaping
    rules = Rules(
        shaping_cfg.spoken_punctuation,
        dict(shaping_cfg.replacements),
        shaping_cfg.filler_words,
        dict(shaping_cfg.punctuation),
    )
    return Shaper(rules, language, Commands(table, position))
