"""The shaping step (sttd.shaping), as tables of what the recognizer wrote -> what the writer gets.

Each row runs one or more successive final utterances through a real
:class:`sttd.core.Dictation` (so spacing across utterances is what PendingText
and the outputs get) and compares the pending text and the commands fired.
"""

from __future__ import annotations

import logging
import subprocess
import textwrap
from pathlib import Path

import pytest

from sttd import config, core, shaping
from sttd import protocol as p
from sttd.errors import ConfigError

from .daemon import command


def dictate(cfg_text: str, utterances: list[str], language: str = "en") -> tuple[str, list[tuple[str, str]]]:
    """Dictate ``utterances`` with the config ``cfg_text``: (pending text, [(command, its text), ...])."""
    cfg = config.parse(cfg_text)
    dictation = core.Dictation(enabled=True, language=language, shaper=shaping.shaper_for(cfg, language))
    for number, text in enumerate(utterances):
        dictation.server_event(p.TranscriptionCompleted(f"item{number}", text))
    fired = [(o.name, o.text) for o in dictation.take_outputs() if isinstance(o, core.Triggered)]
    return dictation.pending_text, fired


SPOKEN = "[shaping]\nspoken_punctuation = true\n"

ENGLISH = [
    # punctuation words
    (["hello comma world period"], "Hello, world."),
    (["is it ready question mark yes exclamation mark"], "Is it ready? Yes!"),
    (["dear Anna colon thanks semicolon bye full stop"], "Dear Anna: thanks; bye."),
    (["first line new line second line"], "First line\nSecond line"),
    (["one new paragraph two"], "One\n\nTwo"),
    (["he said open quote hi close quote period"], 'He said "hi".'),
    (["see open paren below close paren"], "See (below)"),
    (["well ellipsis"], "Well…"),
    (["an e hyphen mail"], "An e-mail"),
    # the recognizer's own punctuation beside a spoken mark is dropped
    (["Hello, comma, world, period."], "Hello, world."),
    (["Really. Question mark."], "Really?"),
    # case does not matter, and a word containing a punctuation word is left alone
    (["the COMMANDER spoke Comma loudly"], "The COMMANDER spoke, loudly"),
    (["a periodic table and a comma-separated list"], "A periodic table and a comma-separated list"),
    # across utterances: no space before punctuation, none after a break, capitals after a sentence end
    (["hello", "comma world", "period", "and then"], "Hello, world. And then"),
    (["first", "new line", "second"], "First\nSecond"),
    (["it works", "question mark"], "It works?"),
]


@pytest.mark.parametrize(("utterances", "expected"), ENGLISH)
def test_english_spoken_punctuation(utterances: list[str], expected: str) -> None:
    assert dictate(SPOKEN, utterances) == (expected, [])


GERMAN = [
    (["hallo Komma Welt Punkt"], "Hallo, Welt."),
    (["wirklich Fragezeichen ja Ausrufezeichen"], "Wirklich? Ja!"),
    (["Liste Doppelpunkt eins Strichpunkt zwei"], "Liste: eins; zwei"),
    (["erste Zeile neue Zeile zweite"], "Erste Zeile\nZweite"),
    (["er sagt Anführungszeichen auf hallo Anführungszeichen zu"], "Er sagt „hallo“"),
    (["der Punktestand bleibt"], "Der Punktestand bleibt"),  # "Punkt" inside a longer word
    # English words are not German punctuation
    (["comma period"], "Comma period"),
]


@pytest.mark.parametrize(("utterances", "expected"), GERMAN)
def test_german_spoken_punctuation(utterances: list[str], expected: str) -> None:
    assert dictate(SPOKEN, utterances, "de") == (expected, [])


FRENCH = [
    (["bonjour virgule ça va point d'interrogation"], "Bonjour, ça va?"),
    (["bonjour virgule ça va point d\u2019interrogation"], "Bonjour, ça va?"),  # a typographic apostrophe
    (["oui point nouvelle ligne merci point d'exclamation"], "Oui.\nMerci!"),
    (["note deux points rien point virgule fin"], "Note: rien; fin"),
    (["il dit ouvrez les guillemets salut fermez les guillemets"], "Il dit «salut»"),
    (["un pointage"], "Un pointage"),
]


@pytest.mark.parametrize(("utterances", "expected"), FRENCH)
def test_french_spoken_punctuation(utterances: list[str], expected: str) -> None:
    assert dictate(SPOKEN, utterances, "fr") == (expected, [])


RULES = """
[shaping]
replacements = { "open ai" = "OpenAI", "gee pee tee" = "GPT", "gee pee tee four" = "GPT-4", "sttd" = "STTD" }
filler_words = ["um", "uh", "you know"]
"""

REPLACEMENTS_AND_FILLERS = [
    # whole words, case-insensitive, the longest phrase first
    (["I use open ai"], "I use OpenAI"),
    (["Open AI and gee pee tee four"], "OpenAI and GPT-4"),
    (["gee pee tee is here"], "GPT is here"),
    (["sttds and sttd"], "sttds and STTD"),  # not inside a longer word
    # fillers go with the commas the recognizer put around them
    (["Um, I think, uh, it works"], "I think it works"),
    (["it is, you know, fine"], "it is fine"),
    (["umbrella and uhm"], "umbrella and uhm"),
    (["Uh, the file"], "The file"),
    # spacing across utterances without spoken punctuation: the recognizer's own text, one space between
    (["Hello there.", "How are you?"], "Hello there. How are you?"),
]


@pytest.mark.parametrize(("utterances", "expected"), REPLACEMENTS_AND_FILLERS)
def test_replacements_and_fillers(utterances: list[str], expected: str) -> None:
    assert dictate(RULES, utterances) == (expected, [])


OWN = SPOKEN + 'punctuation = { "smiley" = ":-)", "point" = "", "open brace" = "{", "slash" = "/" }\n'


def test_spoken_punctuation_of_ones_own_and_a_word_turned_off() -> None:
    assert dictate(OWN, ["nice smiley see you period"]) == ("Nice :-) see you.", [])
    assert dictate(OWN, ["either slash or open brace x"]) == ("Either/or {x", [])
    # French without "point" as a full stop: "point de vue" stays words.
    assert dictate(OWN, ["mon point de vue virgule voilà"], "fr") == ("Mon point de vue, voilà", [])


def test_languages_written_without_spaces_join_utterances_as_they_are() -> None:
    assert dictate("", ["こんにちは。", "元気ですか。"], "ja")[0] == "こんにちは。元気ですか。"
    assert dictate("", ["你好。", "再见。"], "zh")[0] == "你好。再见。"
    assert dictate("", ["Hello.", "Bye."], "en")[0] == "Hello. Bye."
    # With the language automatic, the script tells.
    assert dictate("", ["こんにちは。", "元気ですか。"], "")[0] == "こんにちは。元気ですか。"
    assert dictate("", ["สวัสดี", "ครับ"], "")[0] == "สวัสดีครับ"
    assert dictate("", ["東京", "is big"], "")[0] == "東京 is big"


COMMANDS = """
[shaping]
spoken_punctuation = true
[commands]
undo = ["scratch that"]
stop = ["stop dictation"]
cancel = ["never mind"]
hooks = { "Lights Off" = ["lightctl", "off"] }
"""

COMMAND_CASES = [
    (["hello comma world period new line send"], "", [("send", "Hello, world.\n")]),
    (["I will send you the file"], "I will send you the file", []),
    (["Hello world, send."], "", [("send", "Hello world")]),
    (["resend the mail"], "Resend the mail", []),  # a word containing a command word
    (["the sender period"], "The sender.", []),
    (["hello", "purge"], "", [("purge", "Hello")]),
    (["hello", "world", "scratch that"], "Hello", [("undo", "world")]),
    (["hello", "oops scratch that"], "Hello", [("undo", "oops")]),
    (["that is all period stop dictation"], "That is all.", [("stop", "")]),
    (["hello", "forget this never mind"], "Hello", [("cancel", "")]),
    (["hello", "and lights off"], "Hello and", [("lights off", "Hello and")]),
    (["the lights off switch"], "The lights off switch", []),
]


@pytest.mark.parametrize(("utterances", "pending", "fired"), COMMAND_CASES)
def test_voice_commands(utterances: list[str], pending: str, fired: list[tuple[str, str]]) -> None:
    assert dictate(COMMANDS, utterances) == (pending, fired)


def test_position_anywhere_fires_inside_an_utterance_too() -> None:
    anywhere = COMMANDS + 'position = "anywhere"\n'
    assert dictate(anywhere, ["send the file please"]) == ("", [("send", "The file please")])


def test_only_an_undo_of_delivered_text_asks_the_outputs_to_take_it_back() -> None:
    cfg = config.parse(COMMANDS)
    dictation = core.Dictation(enabled=True, language="en", shaper=shaping.shaper_for(cfg, "en"))
    for number, text in enumerate(["hello", "oops scratch that", "scratch that", "scratch that"]):
        dictation.server_event(p.TranscriptionCompleted(f"item{number}", text))
    undone = [o.text for o in dictation.take_outputs() if isinstance(o, core.UndoRequested)]
    assert undone == ["Hello"]  # "oops" was never delivered; the last "scratch that" had nothing left


def test_stop_and_cancel_ask_the_daemon() -> None:
    cfg = config.parse(COMMANDS)
    dictation = core.Dictation(enabled=True, language="en", shaper=shaping.shaper_for(cfg, "en"))
    dictation.server_event(p.TranscriptionCompleted("a", "stop dictation"))
    dictation.server_event(p.TranscriptionCompleted("b", "never mind"))
    asked = [o.action for o in dictation.take_outputs() if isinstance(o, core.ActionRequested)]
    assert asked == ["stop", "cancel"]


def test_the_old_triggers_section_still_works_and_says_so() -> None:
    legacy = "[triggers]\nsend = '\\b(over|out)\\b'\n"
    cfg = config.parse(legacy)
    (note,) = config.legacy_notes(cfg)
    assert "triggers.send" in note and "[commands]" in note
    assert f"note: {note}" in config.check_report(cfg)
    assert config.legacy_notes(config.parse("[triggers]\nsend = '\\bsend\\b'\n")) == []  # the default: nothing to say
    pending, fired = dictate(legacy, ["hello over"])
    assert (pending, fired) == ("", [("send", "hello")])
    assert dictate(legacy, ["hello send"]) == ("hello send", [])  # the regex replaced the send phrase
    assert cfg.commands == config.CommandsConfig()
    assert dictate("[triggers]\nposition = 'anywhere'\n", ["send it now"])[1] == [("send", "it now")]


def test_partials_are_shaped_for_display() -> None:
    cfg = config.parse(SPOKEN + '[commands]\nsend = ["send"]\n')
    dictation = core.Dictation(enabled=True, language="en", shaper=shaping.shaper_for(cfg, "en"))
    dictation.server_event(p.TranscriptionDelta("a", "hello comma "))
    dictation.server_event(p.TranscriptionDelta("a", "world"))
    partials = [o.text for o in dictation.take_outputs() if isinstance(o, core.TranscriptEmitted)]
    assert partials == ["Hello,", "Hello, world"]


def test_shaping_is_logged_at_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="sttd"):
        dictate(SPOKEN, ["secret words period"])
    lines = [r for r in caplog.records if "secret words" in r.getMessage()]
    assert lines and all(r.levelno == logging.DEBUG for r in lines)
    assert "Secret words." in lines[0].getMessage()  # before and after


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[commands]\nsend = [""]', "commands.send"),
        ('[commands]\nsend = ["go"]\npurge = ["Go"]', "commands.purge"),
        ("[commands]\nsend = 'send'", "commands.send"),
        ("[commands]\nposition = 'middle'", "commands.position"),
        ("[shaping]\nreplacements = { a = 1 }", "shaping.replacements"),
        ("[shaping]\nfiller_words = ['']", "shaping.filler_words"),
        ("[shaping]\npunctuation = { ' ' = '!' }", "shaping.punctuation"),
        ("[commands]\nhooks = { x = [] }", "commands.hooks"),
        ("[commands]\nhooks = { send = ['x'] }", "commands.hooks"),
        ("[profiles.email]\nlanguage = 'deutsch'", "profiles.email: realtime.language"),
        ("[profiles.email]\noutput = 'fax'", "profiles.email: output.mode"),
        ("[profiles.email]\ncolour = 'blue'", "profiles.email.colour"),
        ("[profiles.email]\ncommands.sned = ['x']", "profiles.email: commands.sned"),
    ],
)
def test_bad_shaping_commands_and_profiles_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        config.parse(text)
    assert key in str(error.value)


def test_a_profile_sets_only_what_it_names() -> None:
    cfg = config.parse(
        textwrap.dedent(
            """
            [realtime]
            prompt = "general"
            [shaping]
            filler_words = ["um"]
            [profiles.email]
            language = "de"
            output = "stdout"
            commands.send = ["abschicken"]
            shaping.spoken_punctuation = true
            """
        )
    )
    email = cfg.profile("email")
    assert (email.language, email.config.output.mode, email.config.realtime.prompt) == ("de", "stdout", "general")
    assert email.config.commands.send == ("abschicken",) and email.config.commands.purge == ("purge",)
    assert email.config.shaping.filler_words == ("um",) and email.config.shaping.spoken_punctuation
    assert cfg.profile("").config is cfg
    with pytest.raises(ConfigError, match="profiles: email"):
        cfg.profile("work")


def test_sttctl_shape_runs_the_step_on_a_string(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(COMMANDS + '[profiles.de]\nlanguage = "de"\ncommands.send = ["abschicken"]\n')

    def shape(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [command("sttctl"), "shape", "--config", str(path), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    done = shape("hello comma world period new line send")
    assert (done.returncode, done.stdout) == (0, 'text:    "Hello, world.\\n"\nsend:    "Hello, world.\\n"\n')
    done = shape("--profile", "de", "hallo Komma Welt", "Punkt abschicken")
    assert done.stdout.splitlines()[-1] == 'send:    "Hallo, Welt."'
    done = shape("--profile", "nope", "x")
    assert done.returncode == 1 and "no [profiles.'nope']" in done.stderr


def test_sttctl_shape_into_a_reader_that_leaves_exits_quietly(tmp_path: Path) -> None:
    # `sttctl shape ... | head -1`: the reader closes the pipe after one line; sttctl must not
    # print a BrokenPipeError traceback (it did before shape ran inside main's handler).
    path = tmp_path / "config.toml"
    path.write_text(COMMANDS)
    utterances = [f"utterance number {n}" for n in range(3000)]  # far more than a pipe buffer holds
    shaper = subprocess.Popen(
        [command("sttctl"), "shape", "--config", str(path), *utterances],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert shaper.stdout is not None and shaper.stderr is not None
    assert shaper.stdout.readline().startswith(b"text:")
    shaper.stdout.close()
    assert shaper.wait(timeout=30) == 0
    assert shaper.stderr.read() == b""
