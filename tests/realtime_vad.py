"""The test Realtime server's energy VAD: loudness of 20 ms windows against a threshold.

A deliberately simple detector, so a test can predict it exactly: RMS over
20 ms windows; speech when the RMS (full scale = 1.0) is at least
``10 ** ((-60 + 50 * threshold) / 20)``, i.e. -35 dBFS at the default
threshold 0.5 (-60 dBFS at 0, -10 dBFS at 1). ``semantic_vad`` is treated as
``server_vad`` with the default padding and silence.

:class:`Windows` cuts the appended audio into windows on the session's audio
timeline; :class:`Utterance` is the onset/end state machine (speech starts at
a loud window, ends after ``silence_duration_ms`` without one). The server
drives both: with the service's VAD it commits at each end, for a live model
(no turn detection) it only paces the transcript deltas it streams.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sttd.protocol import BYTES_PER_MS, SAMPLE_RATE

VAD_WINDOW_MS = 20
DEFAULT_TURN_DETECTION: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
}


def rms_threshold(threshold: float) -> float:
    """The RMS (full scale 1.0) the energy VAD maps a ``turn_detection.threshold`` to."""
    return float(10 ** ((-60 + 50 * min(max(threshold, 0.0), 1.0)) / 20))


def window_rms(pcm: bytes, window_ms: int = VAD_WINDOW_MS) -> np.ndarray:
    """RMS (full scale 1.0) of each ``window_ms`` window of s16le PCM; the last window may be short."""
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64) / 32768.0
    n = window_ms * SAMPLE_RATE // 1000
    rms = [np.sqrt(np.mean(samples[i : i + n] ** 2)) for i in range(0, samples.size, n)]
    return np.asarray(rms, dtype=np.float64)


def rms(pcm: bytes | bytearray) -> float:
    """RMS (full scale 1.0) of s16le PCM; 0 for no samples."""
    samples = np.frombuffer(bytes(pcm[: len(pcm) // 2 * 2]), dtype="<i2").astype(np.float64) / 32768.0
    return float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0


@dataclass(frozen=True)
class VadParams:
    """What a ``turn_detection`` object means to the energy VAD, in bytes of the audio timeline."""

    threshold: float
    """RMS (full scale 1.0) at or above which a window is speech."""
    prefix_bytes: int
    """Audio kept before the first loud window of an utterance."""
    silence_bytes: int
    """Quiet audio after the last loud window that ends an utterance."""


def vad_params(td: Mapping[str, Any] | None, rms_override: float | None = None) -> VadParams:
    """The detector's parameters for ``td`` (None: the service's defaults, used for live models)."""
    td = td or DEFAULT_TURN_DETECTION
    semantic = td.get("type") == "semantic_vad"
    value = td.get("threshold")
    threshold = rms_threshold(float(value) if isinstance(value, int | float) else 0.5)
    if rms_override is not None:
        threshold = rms_override
    prefix = DEFAULT_TURN_DETECTION["prefix_padding_ms"] if semantic else td.get("prefix_padding_ms")
    silence = DEFAULT_TURN_DETECTION["silence_duration_ms"] if semantic else td.get("silence_duration_ms")
    return VadParams(
        threshold,
        int(prefix if isinstance(prefix, int) else 300) * BYTES_PER_MS,
        int(silence if isinstance(silence, int) else 500) * BYTES_PER_MS,
    )


def has_speech(pcm: bytes, params: VadParams) -> bool:
    """Any window of ``pcm`` at or above the threshold."""
    return bool(np.any(window_rms(pcm) >= params.threshold))


@dataclass(frozen=True)
class Window:
    """One analysed window: bytes ``[start, end)`` of the session's audio timeline."""

    start: int
    end: int
    loud: bool


class Windows:
    """Cuts appended audio into 20 ms windows; a partial window waits for the next append."""

    SIZE = VAD_WINDOW_MS * BYTES_PER_MS

    def __init__(self) -> None:
        self.pending = bytearray()
        self.pos = 0
        """Timeline position of the first byte of ``pending``."""

    def reset(self, pos: int) -> None:
        """Forget unanalysed audio; analysis resumes at ``pos``."""
        self.pending.clear()
        self.pos = pos

    def feed(self, pcm: bytes, params: VadParams) -> Iterator[Window]:
        self.pending.extend(pcm)
        while len(self.pending) >= self.SIZE:
            chunk = bytes(self.pending[: self.SIZE])
            del self.pending[: self.SIZE]
            start = self.pos
            self.pos += self.SIZE
            yield Window(start, self.pos, rms(chunk) >= params.threshold)


class Utterance:
    """Onset/end of speech for live models, and how much speech was heard since :meth:`reset`.

    Speech heard is the span from each onset to its last loud window: the
    silence that ends an utterance does not count, a short pause inside one does.
    """

    def __init__(self) -> None:
        self.speaking = False
        self.segment_start = 0
        self.last_loud_end = 0
        self.before = 0
        """Speech heard in segments that have ended."""

    @property
    def heard(self) -> int:
        """Bytes of speech heard (see the class docstring)."""
        return self.before + (self.last_loud_end - self.segment_start if self.speaking else 0)

    def step(self, window: Window, params: VadParams) -> bool:
        """Take one window; True when it is the onset of speech."""
        onset = False
        if not self.speaking:
            if not window.loud:
                return False
            self.speaking = onset = True
            self.segment_start = window.start
        if window.loud:
            self.last_loud_end = window.end
        elif window.end - self.last_loud_end >= params.silence_bytes:
            self.speaking = False
            self.before += self.last_loud_end - self.segment_start
        return onset

    def reset(self) -> None:
        self.speaking = False
        self.before = 0
