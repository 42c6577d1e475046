"""Dictation from one end to the other, as a user runs it.

A real PulseAudio with a virtual microphone, espeak-ng speech played into it,
``sttd`` and ``sttctl`` started as installed console scripts on a private
session bus, and the test Realtime server standing in for OpenAI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .bus import SessionBus
from .daemon import Listener, Sttd, sttctl, write_config
from .realtime_server import FakeRealtimeServer
from .sound import SoundServer, pcm, speech_wav, wav_samples, xcorr_similarity


@pytest.fixture
def sttd(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> Iterator[Sttd]:
    config = write_config(tmp_path / "config.toml", realtime_server.url)
    env = {**session_bus.env(), "PULSE_SERVER": pulse_server.server, "OPENAI_API_KEY": realtime_server.api_key}
    daemon = Sttd(tmp_path, env, config)
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.kill()


def test_speech_in_the_microphone_comes_out_as_a_transcript_signal(
    tmp_path: Path, sttd: Sttd, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    realtime_server.script(["Hello world."])
    wav = speech_wav("hello world, this is a dictation test", tmp_path / "speech.wav")
    listener = Listener(sttd)
    try:
        assert sttd.ctl("start").returncode == 0
        sttd.wait_state("listening")
        pulse_server.play(wav)

        final = listener.wait_for(lambda e: e["type"] == "transcript" and e["final"], 20, "a final Transcript")
        assert final["text"] == "Hello world."
        assert final["item_id"]
        assert sttd.status()["transcript"] == "Hello world."

        stop = sttd.ctl("stop")
        assert stop.returncode == 0, stop.stderr
        sttd.wait_state("idle")
    finally:
        listener.close()

    played = wav_samples(wav)
    received = pcm(realtime_server.audio())
    assert xcorr_similarity(played, received) >= 0.95
    assert sttd.terminate() == 0
    assert "Traceback" not in sttd.log
    # The transcript is never logged above DEBUG, and the key never at all.
    assert realtime_server.api_key not in sttd.log
    for line in sttd.log.splitlines():
        if "Hello world." in line:
            assert " DEBUG " in line, line


def test_stop_in_the_middle_of_a_sentence_still_delivers_it(
    tmp_path: Path, sttd: Sttd, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    realtime_server.script(["the whole sentence"])
    wav = speech_wav("this sentence is cut short by stop while it is still being spoken", tmp_path / "long.wav")
    listener = Listener(sttd)
    try:
        assert sttd.ctl("start").returncode == 0
        sttd.wait_state("listening")
        player = pulse_server.play(wav, wait=False)
        realtime_server.wait_for_server_event("input_audio_buffer.speech_started", timeout=15)
        assert sttd.ctl("stop").returncode == 0
        final = listener.wait_for(lambda e: e["type"] == "transcript" and e["final"], 15, "the flushed sentence")
        assert final["text"] == "the whole sentence"
        sttd.wait_state("idle")
        player.kill()
    finally:
        listener.close()
    commits = realtime_server.client_events("input_audio_buffer.commit")
    assert len(commits) == 1  # flushed once, never after a server commit


def test_sigterm_while_idle_exits_cleanly(sttd: Sttd) -> None:
    assert sttd.terminate() == 0
    assert "stopped" in sttd.log


def test_a_second_daemon_on_the_same_bus_exits_at_once(tmp_path: Path, sttd: Sttd) -> None:
    second = Sttd(tmp_path / "second", {}, tmp_path / "config.toml")
    code = second.process.wait(15)
    assert code != 0
    assert "already owns io.github.sttd.Sttd1" in second.log


def test_sttctl_says_is_sttd_running_when_it_is_not(tmp_path: Path, session_bus: SessionBus) -> None:
    result = sttctl({**os.environ, **session_bus.env()}, "status")
    assert result.returncode == 3
    assert "is sttd running?" in result.stderr


def test_set_language_is_validated_and_persisted(tmp_path: Path, sttd: Sttd) -> None:
    assert sttd.ctl("lang", "de").returncode == 0
    assert sttd.ctl("lang").stdout.strip() == "de"
    bad = sttd.ctl("lang", "german")
    assert bad.returncode == 1
    assert "ISO-639-1" in bad.stderr
    assert '"language": "de"' in (tmp_path / "state" / "sttd" / "state.json").read_text()
