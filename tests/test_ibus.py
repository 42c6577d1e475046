"""The IBus input method, for real: Xvfb, ibus-daemon, ``sttd-ibus`` started by it, a GTK window receiving.

Through the daemon (speech into the virtual microphone, the test Realtime
server transcribing), and with signals sent on the bus by the test where
exact sequences matter (spacing, purge, stop).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .bus import SessionBus, wait_until
from .daemon import running_sttd
from .ibus_desktop import IbusDesktop, ibus_desktop
from .realtime_server import FakeRealtimeServer
from .sound import SoundServer, speech_wav

STTD_PATH = "/io/github/sttd/Sttd1"


def _emit(desktop: IbusDesktop, signal: str, *args: str) -> None:
    """Send one of sttd's signals on the bus (gdbus: GVariant text for the arguments)."""
    subprocess.run(
        ["gdbus", "emit", "--session", "--object-path", STTD_PATH, "--signal", f"io.github.sttd.Sttd1.{signal}", *args],
        env=desktop.env,
        check=True,
        timeout=10,
        capture_output=True,
    )


def _undo(desktop: IbusDesktop) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "gdbus",
            "call",
            "--session",
            "-d",
            "io.github.sttd.Ibus1",
            "-o",
            "/io/github/sttd/Ibus1",
            "-m",
            "io.github.sttd.Ibus1.Undo",
        ],
        env=desktop.env,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def _q(text: str) -> str:
    """A GVariant string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def test_spoken_words_show_as_preedit_then_are_committed_and_the_users_keys_pass(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    first = "we are testing live dictation on the linux desktop today"
    second = "Ünïcödé — 東京"
    realtime_server.script([first, second])
    (tmp_path / "sttd").mkdir()
    with (
        ibus_desktop(tmp_path / "desktop", session_bus) as desktop,
        running_sttd(tmp_path / "sttd", session_bus, pulse_server, realtime_server, '[output]\nmode = "auto"') as sttd,
    ):
        # auto: the input method is enabled, so it is the output.
        wait_until(lambda: sttd.status()["output"] == "ibus", 10, "Output to be ibus")
        assert sttd.status()["output_reason"] == "the sttd input method is enabled in IBus"
        assert sttd.ctl("start").returncode == 0
        sttd.wait_state("listening")
        pulse_server.play(speech_wav(first, tmp_path / "first.wav"), wait=False)
        desktop.wait_text(first)
        # The words were shown while they were spoken: some preedit held part of the sentence.
        partial = [p for p in desktop.preedits if p and p != first]
        assert partial, desktop.preedits
        assert all(first.startswith(p) for p in partial), partial
        # The user's own keys reach the window while the engine stays selected.
        desktop.type_keys(" ok")
        desktop.wait_text(f"{first} ok")
        # They typed after sttd's text: undo refuses rather than delete theirs.
        refused = sttd.ctl("undo")
        assert refused.returncode == 1
        assert "you typed after" in refused.stderr
        pulse_server.play(speech_wav("and now some other words", tmp_path / "second.wav"), wait=False)
        desktop.wait_text(f"{first} ok {second}")
        assert sttd.ctl("stop").returncode == 0
        sttd.wait_state("idle")
        # Undo through the daemon: the engine erases exactly its last commit.
        undone = sttd.ctl("undo")
        assert undone.returncode == 0, undone.stderr
        desktop.wait_text(f"{first} ok")


def test_spacing_purge_stop_and_undo_act_on_the_preedit_and_the_last_commit(
    tmp_path: Path, session_bus: SessionBus
) -> None:
    with ibus_desktop(tmp_path / "desktop", session_bus) as desktop:
        _emit(desktop, "Transcript", _q("Hello"), "false", _q("a"))
        desktop.wait_for(lambda e: e["type"] == "preedit" and e["text"] == "Hello", 10, "the preedit")
        _emit(desktop, "Transcript", _q("Hello there"), "true", _q("a"))
        _emit(desktop, "Committed", _q("Hello there"), _q("a"))
        desktop.wait_text("Hello there")
        # No space before punctuation, one before the next word, none doubled.
        _emit(desktop, "Committed", _q(", and"), _q("b"))
        _emit(desktop, "Committed", _q(" more "), _q("c"))
        desktop.wait_text("Hello there, and more")
        # A purge drops what was only shown.
        _emit(desktop, "Transcript", _q("never mind purge"), "false", _q("d"))
        desktop.wait_for(lambda e: e["type"] == "preedit" and "never mind" in e["text"], 10, "the purge preedit")
        _emit(desktop, "Triggered", _q("purge"), _q("never mind"))
        wait_until(lambda: desktop.preedits[-1] == "", 10, "the preedit to go")
        # A dictation that stops (Cancel) leaves no preedit behind.
        _emit(desktop, "Transcript", _q("half a"), "false", _q("e"))
        wait_until(lambda: desktop.preedits[-1] == " half a", 10, "the preedit")
        subprocess.run(
            [
                "gdbus",
                "emit",
                "--session",
                "--object-path",
                STTD_PATH,
                "--signal",
                "org.freedesktop.DBus.Properties.PropertiesChanged",
                _q("io.github.sttd.Sttd1"),
                "{'State': <'idle'>}",
                "@as []",
            ],
            env=desktop.env,
            check=True,
            timeout=10,
            capture_output=True,
        )
        wait_until(lambda: desktop.preedits[-1] == "", 10, "the preedit to go after Cancel")
        # Undo takes back exactly the last utterance, once.
        assert _undo(desktop).returncode == 0
        desktop.wait_text("Hello there, and")
        again = _undo(desktop)
        assert "io.github.sttd.Sttd1.Error.NothingToUndo" in again.stderr
        assert desktop.text == "Hello there, and"
        # The send trigger presses Return in the window.
        _emit(desktop, "Triggered", _q("send"), _q("Hello there, and"))
        desktop.wait_text("Hello there, and\n")
