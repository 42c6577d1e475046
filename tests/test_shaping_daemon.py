"""Shaping, voice commands and profiles through the daemon, as a user dictates.

The installed ``sttd`` and ``sttctl`` on a private session bus, a real
PulseAudio microphone (its silence is what is streamed), the test Realtime
server delivering scripted transcripts as forced turns, and hook commands
that record what they were given.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from .bus import SessionBus, require, wait_until
from .daemon import Listener, Sttd, running_sttd
from .hooks.harness import Recorder, hooks_toml
from .realtime_server import FakeRealtimeServer
from .sound import SoundServer

NAME = "io.github.sttd.Sttd1"
PATH = "/io/github/sttd/Sttd1"


def _transcription(update: dict[str, Any]) -> dict[str, Any]:
    transcription: dict[str, Any] = update["session"]["audio"]["input"]["transcription"]
    return transcription


def test_spoken_punctuation_and_send_through_the_daemon(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    rec = Recorder(tmp_path / "rec")
    extra = (
        "[shaping]\nspoken_punctuation = true\n"
        f"[commands]\nhooks = {{ 'lights off' = {rec.toml('lights')} }}\n" + hooks_toml(rec)
    )
    with running_sttd(tmp_path, session_bus, pulse_server, realtime_server, extra) as sttd:
        listener = Listener(sttd)
        try:
            assert sttd.ctl("start").returncode == 0
            sttd.wait_state("listening")
            realtime_server.force_turn("hello comma world period new line send")
            sent = listener.wait_for(lambda e: e["type"] == "triggered", 15, "Triggered send")
            assert (sent["name"], sent["text"]) == ("send", "Hello, world.\n")
            assert [(r["event"], r["stdin"]) for r in rec.wait(2)] == [
                ("transcript", "Hello, world.\n"),
                ("send", "Hello, world.\n"),
            ]
            assert sttd.status()["transcript"] == ""

            # position = "end": a command word in the middle of a sentence is text.
            realtime_server.force_turn("I will send you the file")
            final = listener.wait_for(
                lambda e: e["type"] == "transcript" and e["final"] and "file" in e["text"], 15, "the sentence"
            )
            assert final["text"] == "I will send you the file"
            wait_until(lambda: sttd.status()["transcript"] == "I will send you the file", 10, "the pending text")
            assert [r["event"] for r in rec.wait(3)] == ["transcript", "send", "transcript"]

            # A command hook gets the pending text, which stays pending.
            realtime_server.force_turn("Lights off.")
            hook = rec.wait(4)[3]
            assert (hook["event"], hook["stdin"], hook["argv"]) == ("command", "I will send you the file", ["lights"])
            assert sttd.status()["transcript"] == "I will send you the file"
            assert sttd.ctl("stop").returncode == 0
            sttd.wait_state("idle")
        finally:
            listener.close()
        listener.drain()
        assert [e["name"] for e in listener.seen if e["type"] == "triggered"] == ["send", "lights off"]
        # What the shaping step did is in the log, at DEBUG only.
        shaped = [line for line in sttd.log.splitlines() if "shaped" in line and "Hello, world." in line]
        assert shaped and all(" DEBUG " in line for line in shaped)


PROFILE = """  # goes on in [realtime] (tests.daemon.write_config)
prompt = "general words"
[commands]
stop = ["stop dictation"]
[profiles.email]
language = "de"
prompt = "E-Mail an Anna"
output = "stdout"
commands.send = ["abschicken"]
"""


def test_a_profile_holds_for_one_dictation_and_a_plain_start_uses_the_defaults(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    rec = Recorder(tmp_path / "rec")
    with running_sttd(tmp_path, session_bus, pulse_server, realtime_server, PROFILE + hooks_toml(rec)) as sttd:
        started = sttd.ctl("start", "--profile", "email")
        assert started.returncode == 0, started.stderr
        sttd.wait_state("listening")
        status = sttd.status()
        assert (status["profile"], status["language"]) == ("email", "de")
        assert "profile:    email" in sttd.ctl("status").stdout
        (update,) = realtime_server.client_events("session.update")
        assert _transcription(update)["languages"] == ["de"]
        assert _transcription(update)["prompt"] == "E-Mail an Anna"

        realtime_server.force_turn("Hallo Anna, abschicken.")
        assert [(r["event"], r["stdin"], r["language"]) for r in rec.wait(2)] == [
            ("transcript", "Hallo Anna", "de"),
            ("send", "Hallo Anna", "de"),
        ]
        # The profile's output (stdout): sttd printed the text on its standard output (the test's log file).
        wait_until(lambda: _printed(sttd, "Hallo Anna"), 10, "the text on sttd's standard output")

        # Said aloud, a stop command ends the dictation; the profile goes with it.
        realtime_server.force_turn("stop dictation")
        sttd.wait_state("idle")
        status = sttd.status()
        assert (status["profile"], status["language"]) == ("", "")

        assert sttd.ctl("start").returncode == 0
        sttd.wait_state("listening")
        update = realtime_server.wait_for_client_event("session.update", 2, timeout=10)[-1]
        assert "languages" not in _transcription(update)  # automatic again: the profile's "de" is gone
        assert _transcription(update)["prompt"] == "general words"
        realtime_server.force_turn("plain words abschicken")
        records = rec.wait(3)
        assert (records[2]["event"], records[2]["stdin"]) == ("transcript", "plain words abschicken")
        realtime_server.force_turn("send")
        assert [(r["event"], r["stdin"]) for r in rec.wait(4)[3:]] == [("send", "plain words abschicken")]
        assert sttd.ctl("stop").returncode == 0
        sttd.wait_state("idle")
        assert not _printed(sttd, "plain words")  # the default output, "none", printed nothing


def _printed(sttd: Sttd, text: str) -> bool:
    """Whether sttd printed ``text`` (the stdout output) rather than logged it (log lines begin with the time)."""
    return any(line.startswith(text) for line in sttd.log.splitlines())


def test_start_with_refuses_bad_options_by_name(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    with running_sttd(tmp_path, session_bus, pulse_server, realtime_server, PROFILE) as sttd:
        unknown = sttd.ctl("start", "--profile", "work")
        assert unknown.returncode == 1 and "profile" in unknown.stderr and "email" in unknown.stderr
        bad_language = sttd.ctl("start", "--lang", "deutsch")
        assert bad_language.returncode == 1 and "option language" in bad_language.stderr
        gdbus = [require("gdbus"), "call", "--session", "--dest", NAME, "--object-path", PATH, "--method"]
        for options, named in (("{'colour': <'blue'>}", "colour"), ("{'language': <7>}", "language")):
            done = subprocess.run(
                [*gdbus, f"{NAME}.StartWith", options],
                env=sttd.env,
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
            assert done.returncode != 0
            assert f"{NAME}.Error.InvalidOption" in done.stderr and named in done.stderr, done.stderr
        assert sttd.status()["state"] == "idle"
        assert sttd.status()["profile"] == ""

        # The hotkey's command: toggle with a profile and a language of its own starts, and stops.
        assert sttd.ctl("toggle", "--profile", "email", "--lang", "fr").returncode == 0
        sttd.wait_state("listening")
        assert (sttd.status()["profile"], sttd.status()["language"]) == ("email", "fr")
        assert sttd.ctl("toggle", "--profile", "email").returncode == 0
        sttd.wait_state("idle")
        assert (sttd.status()["profile"], sttd.status()["language"]) == ("", "")
