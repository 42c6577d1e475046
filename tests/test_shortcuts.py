"""Push-to-talk and the other desktop shortcuts, through the real ``xdg-desktop-portal``.

The frontend runs on the test's private bus with the test backend
(:mod:`tests.portal_backend`) standing in for the desktop; the test presses
and releases keys through the backend, and sttd (the installed console
script) hears them from the frontend exactly as on GNOME or KDE. A real
PulseAudio with a virtual microphone carries espeak-ng speech; the fake
Realtime service transcribes it.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .bus import SessionBus, wait_until
from .daemon import Listener, Sttd, command, running_sttd
from .portal import Portal
from .realtime_server import FakeRealtimeServer
from .sound import SoundServer, pcm, speech_wav, wav_samples, xcorr_similarity

PTT = "push-to-talk"


@pytest.fixture
def portal(tmp_path: Path, session_bus: SessionBus) -> Iterator[Portal]:
    desk = Portal(tmp_path / "portal", session_bus)
    try:
        yield desk
    finally:
        desk.close()


def wait_bound(sttd: Sttd, timeout: float = 15) -> None:
    wait_until(lambda: sttd.status()["shortcuts"] == "bound", timeout, "the shortcuts to be bound", interval=0.05)


def wait_logged(sttd: Sttd, text: str, count: int = 1, timeout: float = 10) -> None:
    wait_until(lambda: sttd.log.count(text) >= count, timeout, f"{text!r} in the log ({count}x)", interval=0.02)


def recording(sound: SoundServer) -> bool:
    return len(sound.source_outputs()) == 1


def finals(listener: Listener) -> list[str]:
    return [text for text in listener.finals() if text]


def test_hold_speak_release_is_one_dictation_with_no_word_lost_across_a_slow_handshake(
    tmp_path: Path,
    portal: Portal,
    session_bus: SessionBus,
    pulse_server: SoundServer,
    realtime_server: FakeRealtimeServer,
) -> None:
    sentence = "holding the key while i speak"
    realtime_server.configure(handshake_delay_s=1.0)
    realtime_server.script([sentence])
    wav = speech_wav(sentence, tmp_path / "held.wav")
    with running_sttd(tmp_path, session_bus, pulse_server, realtime_server) as sttd:
        wait_bound(sttd)
        shortcuts = sttd.ctl("shortcuts")
        assert shortcuts.returncode == 0, shortcuts.stderr
        listed = {line.split("\t")[0]: line.split("\t")[1] for line in shortcuts.stdout.splitlines()}
        assert listed == {PTT: "<Super>space", "toggle": "(no key)", "cancel": "(no key)", "send": "(no key)"}
        assert "shortcuts:  bound" in sttd.ctl("status").stdout
        listener = Listener(sttd)
        try:
            assert portal.press(PTT) == 1
            wait_until(lambda: recording(pulse_server), 10, "the microphone to open on the press")
            pulse_server.play(wav)  # the handshake takes 1 s: speech begins before the session is open
            portal.release(PTT)
            listener.wait_for(lambda e: e["type"] == "transcript" and e["final"], 20, "the final transcript")
            sttd.wait_state("idle")
            assert finals(listener) == [sentence]
        finally:
            listener.close()
    assert realtime_server.handshake_count == 1
    assert xcorr_similarity(wav_samples(wav), pcm(realtime_server.audio())) >= 0.95


def test_a_tap_toggles_and_the_next_press_stops_and_toggle_and_cancel_act_on_press(
    tmp_path: Path,
    portal: Portal,
    session_bus: SessionBus,
    pulse_server: SoundServer,
    realtime_server: FakeRealtimeServer,
) -> None:
    with running_sttd(
        tmp_path, session_bus, pulse_server, realtime_server, "[shortcuts]\nhold_threshold_ms = 400"
    ) as sttd:
        wait_bound(sttd)
        now = portal.now()
        portal.press_at(PTT, now)
        portal.release_at(PTT, now + 60)  # the key was down 60 ms, by the desktop's clock
        wait_logged(sttd, f"shortcut {PTT} released")
        sttd.wait_state("listening")
        assert sttd.status()["state"] == "listening"  # still: the tap latched it
        later = portal.now()
        portal.press_at(PTT, later)
        sttd.wait_state("idle")
        portal.release_at(PTT, later + 2000)
        wait_logged(sttd, f"shortcut {PTT} released", count=2)
        assert sttd.status()["state"] == "idle"
        # The other shortcuts act on their press.
        portal.press("toggle")
        sttd.wait_state("listening")
        portal.press("cancel")
        sttd.wait_state("idle")
    assert realtime_server.handshake_count == 2


def test_a_press_during_the_previous_flush_starts_recording_at_once(
    tmp_path: Path,
    portal: Portal,
    session_bus: SessionBus,
    pulse_server: SoundServer,
    realtime_server: FakeRealtimeServer,
) -> None:
    first, second = "the first thing i say", "and straight after that"
    realtime_server.configure(turn_delays={1: 4.0})  # the first dictation's flush waits for this transcript
    realtime_server.script([first, second])
    wavs = [speech_wav(text, tmp_path / f"{n}.wav") for n, text in enumerate((first, second))]
    with running_sttd(tmp_path, session_bus, pulse_server, realtime_server) as sttd:
        wait_bound(sttd)
        listener = Listener(sttd)
        try:
            portal.press(PTT)
            wait_until(lambda: recording(pulse_server), 10, "the microphone to open")
            pulse_server.play(wavs[0])
            portal.release(PTT)
            sttd.wait_state("processing")
            wait_until(lambda: not recording(pulse_server), 10, "the first dictation to let go of the microphone")
            portal.press(PTT)  # again, while the first is still being flushed
            wait_until(lambda: recording(pulse_server), 10, "the microphone to open for the second")
            assert sttd.status()["state"] == "processing"  # recording although the first is not done
            assert finals(listener) == []
            pulse_server.play(wavs[1])
            portal.release(PTT)
            wait_until(lambda: len(finals(listener)) == 2, 30, "both transcripts")
            sttd.wait_state("idle")
        finally:
            listener.close()
    assert finals(listener) == [first, second]
    assert realtime_server.handshake_count == 2
    assert xcorr_similarity(wav_samples(wavs[1]), pcm(realtime_server.audio(session=1))) >= 0.95


def test_duplicated_stale_and_lost_releases_never_leave_sttd_listening(
    tmp_path: Path,
    portal: Portal,
    session_bus: SessionBus,
    pulse_server: SoundServer,
    realtime_server: FakeRealtimeServer,
) -> None:
    with running_sttd(tmp_path, session_bus, pulse_server, realtime_server, "[shortcuts]\nmax_hold_s = 2") as sttd:
        wait_bound(sttd)
        # Every event twice, as some desktops send them.
        now = portal.now()
        portal.press_at(PTT, now)
        portal.press_at(PTT, now)
        sttd.wait_state("listening")
        portal.release_at(PTT, now + 1000)
        portal.release_at(PTT, now + 1000)
        sttd.wait_state("idle")
        # A release overtaken by the next press: the press is older than what was seen, so it is dropped.
        later = portal.now()
        portal.release_at(PTT, later + 500)
        portal.press_at(PTT, later)
        wait_logged(sttd, f"shortcut {PTT} pressed (portal time {later})")
        assert sttd.status()["state"] == "idle"
        assert realtime_server.handshake_count == 1
        # The release never comes: the hold ends at max_hold_s.
        portal.press_at(PTT, later + 1000)
        sttd.wait_state("listening")
        sttd.wait_state("idle", timeout=15)
        assert "held for over 2 s" in sttd.log


def test_a_restarted_portal_gets_the_shortcuts_again(
    tmp_path: Path,
    portal: Portal,
    session_bus: SessionBus,
    pulse_server: SoundServer,
    realtime_server: FakeRealtimeServer,
) -> None:
    with running_sttd(tmp_path, session_bus, pulse_server, realtime_server) as sttd:
        wait_bound(sttd)
        portal.restart_frontend()
        wait_until(lambda: portal.sessions() == 2, 15, "sttd to bind again with the new portal", interval=0.05)
        wait_bound(sttd)
        now = portal.now()
        portal.press_at(PTT, now)
        sttd.wait_state("listening")
        portal.release_at(PTT, now + 1000)  # a hold (by the desktop's clock), not a tap
        sttd.wait_state("idle")
        assert "desktop portal restarted: binding the shortcuts again" in sttd.log
        assert sttd.terminate() == 0
        assert "Traceback" not in sttd.log and "never retrieved" not in sttd.log


@pytest.mark.parametrize("desktop", ["none", "without-global-shortcuts"])
def test_without_the_portal_sttd_runs_and_says_why(
    tmp_path: Path,
    session_bus: SessionBus,
    pulse_server: SoundServer,
    realtime_server: FakeRealtimeServer,
    desktop: str,
) -> None:
    portal = (
        Portal(tmp_path / "portal", session_bus, "org.freedesktop.impl.portal.Inhibit") if desktop != "none" else None
    )
    try:
        with running_sttd(tmp_path, session_bus, pulse_server, realtime_server) as sttd:
            wait_until(lambda: sttd.status()["shortcuts"].startswith("unavailable ("), 15, "the shortcut status")
            reason = {"none": "no desktop portal", "without-global-shortcuts": "has no GlobalShortcuts"}[desktop]
            assert reason in sttd.status()["shortcuts"]
            assert "shortcuts:  unavailable (" in sttd.ctl("status").stdout
            listing = sttd.ctl("shortcuts")
            assert listing.returncode == 1 and "unavailable" in listing.stderr
            advice = [line for line in sttd.log.splitlines() if "sttctl hold" in line]
            assert len(advice) == 1 and " INFO " in advice[0], advice
            assert sttd.ctl("start").returncode == 0  # dictation itself is untouched
            sttd.wait_state("listening")
            assert sttd.ctl("stop").returncode == 0
            sttd.wait_state("idle")
    finally:
        if portal is not None:
            portal.close()


def test_sttctl_hold_starts_at_once_and_stops_on_sigterm_or_closed_stdin(
    tmp_path: Path, sttd: Sttd, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    sentences = ["held by a compositor binding", "let go by closing the pipe"]
    realtime_server.script(sentences)
    listener = Listener(sttd)
    try:
        for n, sentence in enumerate(sentences):
            wav = speech_wav(sentence, tmp_path / f"hold{n}.wav")
            hold = subprocess.Popen([command("sttctl"), "hold"], env=sttd.env, stdin=subprocess.PIPE)
            try:
                wait_until(lambda: recording(pulse_server), 10, "sttctl hold to start dictating")
                pulse_server.play(wav)
                assert hold.stdin is not None
                if n == 0:
                    hold.send_signal(signal.SIGTERM)  # the key's release binding
                else:
                    hold.stdin.close()
                assert hold.wait(15) == 0
            finally:
                if hold.poll() is None:
                    hold.kill()
                    hold.wait()
            wait_until(lambda count=n + 1: len(finals(listener)) == count, 20, f"transcript {n + 1}")
            sttd.wait_state("idle")
    finally:
        listener.close()
    assert finals(listener) == sentences
