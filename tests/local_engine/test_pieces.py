"""The offline engine's pieces on their own: the resampler and the VAD state machine."""

from __future__ import annotations

import numpy as np
import pytest

from sttd.engine.resample import Resampler, resample
from sttd.engine.vad import WINDOW, InputBuffer, SpeechStart, SpeechStop, VadSettings

from .harness import RATE

# ------------------------------------------------------------------ pieces


def test_the_resampler_keeps_speech_frequencies_and_removes_what_would_alias() -> None:
    t = np.arange(RATE) / RATE

    def gain(hz: float) -> float:
        out = resample((np.sin(2 * np.pi * hz * t) * 16000).astype(np.int16))
        return float(np.sqrt(np.mean(out[400:-400] ** 2)) * np.sqrt(2) / (16000 / 32768))

    assert all(abs(gain(hz) - 1) < 0.01 for hz in (100, 1000, 3000, 5000))
    assert all(gain(hz) < 0.002 for hz in (9000, 10000, 11500))
    noise = (np.random.default_rng(1).standard_normal(48000) * 3000).astype(np.int16)
    whole = resample(noise)
    r, parts, data, at = Resampler(), [], noise.tobytes(), 0
    for size in np.random.default_rng(2).integers(0, 3001, 200):
        parts.append(r.process_bytes(data[at : at + size]))
        at += int(size)
    parts.append(r.process_bytes(data[at:]))
    assert len(whole) == 32000
    assert np.allclose(np.concatenate(parts), whole, atol=1e-6)


class ScriptedProbe:
    """Speech probabilities from a list, one per window."""

    def __init__(self, probs: list[float]) -> None:
        self.probs = list(probs)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        out = self.probs[: len(windows)]
        del self.probs[: len(windows)]
        return np.asarray(out + [0.0] * (len(windows) - len(out)), dtype=np.float32)


def test_the_vad_state_machine() -> None:
    # 10 windows silence, 20 speech with dips (one inside the hysteresis band, some below it), then silence.
    probs = [0.1] * 10 + [0.9] * 5 + [0.4] * 3 + [0.9] * 5 + [0.2] * 4 + [0.9] * 3 + [0.0] * 30
    settings = VadSettings(threshold=0.5, prefix_padding_ms=96, silence_duration_ms=320)
    buffer = InputBuffer(ScriptedProbe(probs), settings)
    decisions = []
    for _ in range(len(probs)):
        decisions += buffer.append(np.zeros(WINDOW, dtype=np.float32))
    start, stop = decisions
    assert isinstance(start, SpeechStart) and isinstance(stop, SpeechStop)
    assert start.start == (10 - 3) * WINDOW  # 96 ms = 3 windows of prefix
    # Speech ends after window 29; 320 ms = 10 windows of silence later the turn is cut.
    assert stop.end == (30 + 10) * WINDOW
    assert stop.start == start.start and stop.audio.size == stop.end - start.start
    # Idle again: only the prefix is kept.
    assert buffer.buffered_ms == pytest.approx(96)
