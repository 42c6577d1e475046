"""Window outputs on a real headless sway (wtype, paste, undo) and ``auto``'s choice in each kind of session.

sttd runs as installed, from speech in the virtual microphone to the test
Realtime server; the receiver is a ``foot`` terminal recording its input
bytes (:mod:`tests.sway_desktop`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .bus import SessionBus, wait_until
from .daemon import Sttd, daemon_env, write_config
from .ibus_desktop import start_xvfb
from .realtime_server import FakeRealtimeServer
from .sound import SoundServer, speech_wav
from .sway_desktop import SwayDesktop, sway_desktop


@pytest.fixture
def sway() -> Iterator[SwayDesktop]:
    with sway_desktop() as desktop:
        yield desktop


def _sttd(
    tmp: Path, bus: SessionBus, sound: SoundServer, service: FakeRealtimeServer, env: dict[str, str], output: str
) -> Sttd:
    tmp.mkdir(parents=True, exist_ok=True)
    config = write_config(tmp / "config.toml", service.url, extra=f"[output]\n{output}\n")
    daemon = Sttd(tmp, {**daemon_env(bus, sound, service), "DISPLAY": "", "WAYLAND_DISPLAY": "", **env}, config)
    try:
        daemon.wait_ready()
    except BaseException:
        daemon.kill()
        raise
    return daemon


def _wayland(sway: SwayDesktop) -> dict[str, str]:
    return {"XDG_RUNTIME_DIR": sway.env["XDG_RUNTIME_DIR"], "WAYLAND_DISPLAY": "wayland-1"}


def _say(daemon: Sttd, sound: SoundServer, tmp: Path, name: str) -> None:
    sound.play(speech_wav(f"this is utterance {name}", tmp / f"{name}.wav"))


def test_wtype_types_successive_utterances_byte_exact_and_undo_erases_the_last(
    tmp_path: Path,
    session_bus: SessionBus,
    pulse_server: SoundServer,
    realtime_server: FakeRealtimeServer,
    sway: SwayDesktop,
) -> None:
    said = ["Grüße aus Köln", "Ünïcödé — 東京", "ça va, Ørsted? ß"]
    realtime_server.script([*said, "Scratch that.", "Nachtrag"])
    output = 'mode = "auto"\n[commands]\nundo = ["scratch that"]'
    daemon = _sttd(tmp_path, session_bus, pulse_server, realtime_server, _wayland(sway), output)
    try:
        status = daemon.status()
        assert (status["output"], status["output_reason"]) == (
            "type:wtype",
            "the Wayland compositor offers the virtual-keyboard protocol",
        )
        assert daemon.ctl("start").returncode == 0
        daemon.wait_state("listening")
        expected = ""
        for number, text in enumerate(said):
            _say(daemon, pulse_server, tmp_path, str(number))
            expected += (" " if expected else "") + text
            sway.wait_text(expected)
        # Said "scratch that": one BackSpace (the terminal passes DEL on to cat) per character of the last utterance.
        _say(daemon, pulse_server, tmp_path, "scratch")
        expected += "\x7f" * len(" " + said[-1])
        sway.wait_text(expected)
        _say(daemon, pulse_server, tmp_path, "after")
        expected += " Nachtrag"
        sway.wait_text(expected)
        assert daemon.ctl("stop").returncode == 0
        daemon.wait_state("idle")
        # sttctl undo likewise.
        undone = daemon.ctl("undo")
        assert undone.returncode == 0, undone.stderr
        sway.wait_text(expected + "\x7f" * len(" Nachtrag"))
        again = daemon.ctl("undo")
        assert again.returncode == 1 and "nothing" in again.stderr
    finally:
        daemon.kill()
    assert "Traceback" not in daemon.log


def test_paste_mode_pastes_and_gives_the_previous_clipboard_back(
    tmp_path: Path,
    session_bus: SessionBus,
    pulse_server: SoundServer,
    realtime_server: FakeRealtimeServer,
    sway: SwayDesktop,
) -> None:
    sway.copy("my own clipboard — ü")
    wait_until(lambda: sway.run("wl-paste", "--no-newline").stdout == "my own clipboard — ü".encode(), 10, "the copy")
    realtime_server.script(["Pasted: Ærø 東京"])
    # foot pastes with ctrl+shift+v, as terminals do.
    daemon = _sttd(
        tmp_path,
        session_bus,
        pulse_server,
        realtime_server,
        _wayland(sway),
        'mode = "paste"\npaste_keys = "ctrl+shift+v"',
    )
    try:
        assert daemon.status()["output"] == "paste"
        assert daemon.ctl("start").returncode == 0
        daemon.wait_state("listening")
        _say(daemon, pulse_server, tmp_path, "paste")
        sway.wait_text("Pasted: Ærø 東京")
        wait_until(
            lambda: sway.run("wl-paste", "--no-newline").stdout == "my own clipboard — ü".encode(),
            10,
            "the previous clipboard to be back",
        )
        assert daemon.ctl("stop").returncode == 0
    finally:
        daemon.kill()
    assert sway.text() == "Pasted: Ærø 東京"  # pasted once, nothing else
    assert "Traceback" not in daemon.log


def test_auto_uses_xdotool_on_x11_and_the_clipboard_without_a_typing_tool(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    xvfb, display = start_xvfb(tmp_path)
    try:
        x11 = _sttd(tmp_path / "x11", session_bus, pulse_server, realtime_server, {"DISPLAY": display}, 'mode = "auto"')
        try:
            status = x11.status()
            assert (status["output"], status["output_reason"]) == ("type:xdotool", "an X11 session with xdotool")
        finally:
            x11.kill()
        # The same session with only xclip on PATH: the clipboard.
        tools = tmp_path / "tools"
        tools.mkdir()
        os.symlink("/usr/bin/xclip", tools / "xclip")
        env = {"DISPLAY": display, "PATH": str(tools)}
        bare = _sttd(tmp_path / "bare", session_bus, pulse_server, realtime_server, env, 'mode = "auto"')
        try:
            status = bare.status()
            assert (status["output"], status["output_reason"]) == ("clipboard", "X11 without xdotool")
        finally:
            bare.kill()
    finally:
        xvfb.terminate()
        xvfb.wait(5)
