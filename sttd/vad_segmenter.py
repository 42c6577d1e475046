"""The decisions of sttd's voice detection: speech probabilities and loudness in, turns out. No model, no I/O.

:class:`Segmenter` turns per-window Silero scores and per-block loudness
into :class:`SpeechStarted` / :class:`SpeechStopped` the way the service's
``server_vad`` does (see :mod:`sttd.vad`, which scores the windows and
re-exports these names). Speech is scored per 32 ms window, so onsets and
``min_speech_ms`` are honoured to within a window; the end of speech is
dated to 4 ms from the loudness, and a stop is decided as soon as the audio
completing its silence arrives, not at the next window boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import protocol as p
from .engine.resample import FloatArray

RATE = 16000
"""The rate Silero VAD scores."""
WINDOW = 512
"""Samples per scored window at :data:`RATE`."""
WINDOW_MS = WINDOW * 1000 // RATE
HYSTERESIS = 0.15
"""Speech ends below ``threshold - HYSTERESIS`` (Silero's own rule), so a score hovering at the threshold
does not flap between speech and silence."""


@dataclass(frozen=True)
class VadSettings:
    """How sttd's voice detection decides (``[turn_detection]`` with ``type = "client_vad"``)."""

    threshold: float = 0.5
    """Speech probability (0..1) at or above which a window is speech."""
    prefix_padding_ms: int = 300
    """A turn's reported start is this long before the onset of its speech (never before 0)."""
    silence_duration_ms: int = 500
    """Silence that ends speech."""
    min_speech_ms: int = 250
    """Speech shorter than this (a click, a cough) is no turn."""

    @classmethod
    def of(cls, turn_detection: p.TurnDetection) -> VadSettings:
        """The settings ``[turn_detection]`` asks for (``min_speech_ms`` stays sttd's own)."""
        td = turn_detection
        return cls(td.threshold, td.prefix_padding_ms, td.silence_duration_ms)

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be within 0..1, not {self.threshold}")
        for name in ("prefix_padding_ms", "silence_duration_ms", "min_speech_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


@dataclass(frozen=True)
class SpeechStarted:
    """Speech has lasted ``min_speech_ms``: a turn began."""

    audio_start_ms: int
    """Where the turn starts: the onset minus ``prefix_padding_ms``, on the timeline of the audio fed."""


@dataclass(frozen=True)
class SpeechStopped:
    """``silence_duration_ms`` of silence followed the speech: the turn is over."""

    audio_end_ms: int
    """Where the turn ends: the end of that silence, which is when it was decided."""


Event = SpeechStarted | SpeechStopped

BLOCK = 64
"""Samples (4 ms at :data:`RATE`) per loudness block: the resolution at which the end of speech is dated."""
QUIET = 10 ** (-25 / 20)
"""A block this far (25 dB) below the loudest block of the speech is quiet."""
MAX_BACKDATE = 5 * WINDOW
"""How far (160 ms) before the model's first silent window a silence may be dated."""
SAMPLES_PER_MS = RATE // 1000


class Segmenter:
    """The decisions, one window at a time: speech probabilities and loudness in, :data:`Event` out.

    * A window at or above ``threshold`` while there is no speech is an onset.
    * While speaking, a window below ``threshold - HYSTERESIS`` starts a
      silence and a window at or above ``threshold`` ends it.
    * Silero's score lags the audio: it falls 60-100 ms after the voice stops.
      So the silence is dated from the end of the last block that was not
      quiet (25 dB below the speech's loudest), at most 160 ms before the
      first silent window. Where nothing is quiet (a noisy room) that is the
      first silent window itself.
    * The speech *lasts* from the onset to the end of its last loud block;
      once that is ``min_speech_ms`` it is a turn (:class:`SpeechStarted`).
      A short speech-like burst scores as speech for up to 100 ms after it
      ends, but is quiet there, so that does not count.
    * ``silence_duration_ms`` after the silence's start the speech is over:
      :class:`SpeechStopped` if it was a turn, otherwise it is forgotten.
      That moment may fall inside a window: the speech ends there if the
      blocks up to it are quiet, whatever the window's score, and as soon as
      they have arrived (:meth:`tail`), not at the next window boundary.

    Positions are samples at :data:`RATE` on the stream's timeline.
    """

    def __init__(self, settings: VadSettings) -> None:
        self._settings = settings
        self._low = max(settings.threshold - HYSTERESIS, 0.01)
        self._silence_samples = settings.silence_duration_ms * SAMPLES_PER_MS
        self._onset: int | None = None
        self._voiced_end = 0
        self._peak = 0.0
        self._silence_start: int | None = None
        self._started = False

    @property
    def in_speech(self) -> bool:
        """Whether a turn is in progress (:class:`SpeechStarted` was returned and no stop yet)."""
        return self._started

    @property
    def idle(self) -> bool:
        """Whether no speech is in progress, not even one that has not lasted ``min_speech_ms`` yet."""
        return self._onset is None

    @property
    def speech_samples(self) -> int:
        """How long the current speech lasts so far (before it is a turn too); 0 without speech."""
        return 0 if self._onset is None else self._voiced_end - self._onset

    def window(self, start: int, prob: float, rms: FloatArray, fed_from: int) -> list[Event]:
        """Take the window at ``start``: its speech probability and its blocks' RMS.

        ``fed_from`` is where the audio of the current :meth:`VoiceDetector.feed` call begins: a stop is
        never placed before it.
        """
        events: list[Event] = []
        # A silence that ends inside this window ends there, whatever the window's score (as in tail()).
        if self._ends_within(start, rms):
            self._append(events, self._stop(fed_from))
        settings = self._settings
        if self._onset is None:
            if prob < settings.threshold:
                return events
            self._onset = self._voiced_end = start
            self._peak = 0.0
        if prob >= settings.threshold:
            self._silence_start = None
        elif prob < self._low and self._silence_start is None:
            self._silence_start = max(self._voiced_end, start - MAX_BACKDATE, self._onset)
        if self._silence_start is None:
            self._hear(start, rms)
        if self._ends_by(start + WINDOW):
            self._append(events, self._stop(fed_from))
        elif not self._started and self.speech_samples >= settings.min_speech_ms * SAMPLES_PER_MS:
            self._started = True
            padded = max(0, self._onset - settings.prefix_padding_ms * SAMPLES_PER_MS)
            events.append(SpeechStarted(padded // SAMPLES_PER_MS))
        return events

    def tail(self, start: int, rms: FloatArray, fed_from: int) -> list[Event]:
        """Take the complete blocks of the window at ``start``, not complete yet: a silence may end inside it.

        It ends there if the blocks up to its end are quiet; otherwise the window's score decides.
        """
        if not self._ends_within(start, rms):
            return []
        return self._append([], self._stop(fed_from))

    @staticmethod
    def _append(events: list[Event], event: Event | None) -> list[Event]:
        if event is not None:
            events.append(event)
        return events

    def _silence_end(self) -> int | None:
        """Where the current silence will have lasted ``silence_duration_ms`` (on a block boundary)."""
        if self._silence_start is None:
            return None
        return -(-(self._silence_start + self._silence_samples) // BLOCK) * BLOCK

    def _ends_within(self, start: int, rms: FloatArray) -> bool:
        """Whether the silence ends within the blocks ``rms`` (from ``start``), all of them quiet up to its end."""
        end = self._silence_end()
        if end is None:
            return False
        upto = (end - start) // BLOCK
        return upto <= rms.size and (upto <= 0 or float(rms[:upto].max()) < self._peak * QUIET)

    def _ends_by(self, heard: int) -> bool:
        end = self._silence_end()
        return end is not None and end <= heard

    def _hear(self, start: int, rms: FloatArray) -> None:
        self._peak = max(self._peak, float(rms.max()))
        loud = np.flatnonzero(rms >= self._peak * QUIET)
        if loud.size:
            self._voiced_end = start + (int(loud[-1]) + 1) * BLOCK

    def _stop(self, fed_from: int) -> SpeechStopped | None:
        """End the speech, whose silence has lasted long enough; the stop if it had become a turn."""
        end = self._silence_end() or 0
        started = self._started
        self._onset = None
        self._silence_start = None
        self._started = False
        return SpeechStopped(max(end, fed_from) // SAMPLES_PER_MS) if started else None
