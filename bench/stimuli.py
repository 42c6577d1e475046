"""What the benchmark plays into the virtual microphone.

Every signal carries a noise floor at -50 dBFS (below the test server's VAD
threshold of -35 dBFS): no two stretches of it are alike, so any piece of
audio a server received can be placed exactly in the microphone's stream,
silences included.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.sound import speech_wav, wav_samples, write_wav

from .harness import RATE

NOISE_DBFS = -50.0
VOICE_LEVEL = 300
"""A sample louder than this is voice (espeak-ng's silences are digital zeros)."""


@dataclass(frozen=True)
class Stimulus:
    """A wav file and where its events are, in samples from its start."""

    path: Path
    samples: np.ndarray
    marks: tuple[int, ...] = ()
    """Click onsets (clicks), or voice start and end (speech)."""

    @property
    def seconds(self) -> float:
        return len(self.samples) / RATE


def noise(n: int, rng: np.random.Generator, dbfs: float = NOISE_DBFS) -> np.ndarray:
    return rng.normal(0.0, 32768 * 10 ** (dbfs / 20), n)


def _save(path: Path, samples: np.ndarray, marks: tuple[int, ...]) -> Stimulus:
    clipped = np.clip(np.round(samples), -32768, 32767).astype(np.int16)
    write_wav(path, clipped)
    return Stimulus(path, clipped, marks)


def clicks(path: Path, seconds: float, rng: np.random.Generator) -> Stimulus:
    """Sharp clicks (1 ms, full scale) every 90-160 ms at random, so they fall anywhere in a frame."""
    n = int(seconds * RATE)
    signal = noise(n, rng)
    onsets = []
    at = int(0.3 * RATE)
    burst = np.array([20000, -20000] * 12, dtype=np.float64)
    while at + len(burst) < n - int(0.2 * RATE):
        signal[at : at + len(burst)] = burst
        onsets.append(at)
        at += int(rng.uniform(0.09, 0.16) * RATE)
    return _save(path, signal, tuple(onsets))


_SPEECH: dict[str, np.ndarray] = {}


def voice(text: str) -> np.ndarray:
    """espeak-ng saying ``text`` (``tests.sound.speech_wav``), leading and trailing silence cut."""
    if text not in _SPEECH:
        with tempfile.TemporaryDirectory() as tmp:
            samples = wav_samples(speech_wav(text, Path(tmp) / "speech.wav")).astype(np.float64)
        loud = np.flatnonzero(np.abs(samples) > VOICE_LEVEL)
        _SPEECH[text] = samples[loud[0] : loud[-1] + 1]
    return _SPEECH[text]


def speech(path: Path, parts: list[str | float], rng: np.random.Generator, floor: bool = True) -> Stimulus:
    """Sentences (str) and pauses (float seconds) in a row, on the noise floor unless ``floor`` is false.

    ``marks`` are the first and last voiced samples (none without a sentence).
    """
    pieces = []
    for part in parts:
        pieces.append(np.zeros(int(part * RATE)) if isinstance(part, float) else voice(part))
    signal = np.concatenate(pieces)
    loud = np.flatnonzero(np.abs(signal) > VOICE_LEVEL)
    if floor:
        signal = signal + noise(len(signal), rng)
    return _save(path, signal, (int(loud[0]), int(loud[-1])) if loud.size else ())
