"""Server voice activity detection: Silero VAD per 32 ms window, and the input buffer it cuts into turns.

:class:`InputBuffer` is the Realtime ``input_audio_buffer`` of one session,
kept at 16 kHz (what Whisper and Silero take). With turn detection on, each
complete 512-sample window (32 ms) is scored by a :data:`SpeechProbe` and a
small state machine turns the scores into :class:`SpeechStart` and
:class:`SpeechStop` decisions the way the service's ``server_vad`` does:

* speech starts at the first window whose probability is at least
  ``threshold``; the turn's audio starts ``prefix_padding_ms`` before it;
* while speaking, a window below ``threshold - 0.15`` (Silero's own
  hysteresis) starts a silence, a window at or above ``threshold`` ends it;
  a silence of ``silence_duration_ms`` ends the speech, and the turn's audio
  ends there (so it includes that silence, as ``audio_end_ms`` does on the
  service);
* while not speaking, only ``prefix_padding_ms`` of audio is kept;
* a turn longer than :data:`MAX_TURN_S` is cut, so continuous noise cannot
  grow a buffer without bound (without turn detection, the buffer keeps at
  most :data:`MAX_BUFFER_S`).

Times are in 16 kHz samples of the session's audio timeline (``ms = samples
// 16``). Durations are measured in whole windows, so ``silence_duration_ms``
is honoured to within 32 ms. No I/O; the probe is injected, so the state
machine is testable without a model.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

RATE = 16000
WINDOW = 512
"""Samples per VAD window: 32 ms at 16 kHz, the size Silero VAD is trained on."""
CONTEXT = 64
"""Samples of the previous window Silero VAD (v5/v6) prepends to each window."""
SAMPLES_PER_MS = RATE // 1000
MAX_TURN_S = 120.0
MAX_BUFFER_S = 900.0
"""Without turn detection, audio older than this is dropped from an uncommitted buffer."""
HYSTERESIS = 0.15

FloatArray = npt.NDArray[np.float32]
SpeechProbe = Callable[[FloatArray], FloatArray]
"""Scores windows: ``(n, 512)`` float32 at 16 kHz in, ``n`` speech probabilities out, in order.
Stateful: consecutive calls continue one stream."""


@dataclass(frozen=True)
class VadSettings:
    """``turn_detection`` of type ``server_vad``."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


@dataclass(frozen=True)
class SpeechStart:
    start: int
    """First sample of the turn, prefix padding included."""


@dataclass(frozen=True, eq=False)
class SpeechStop:
    """Speech ended: the turn is cut out of the buffer at once (later windows may trim the buffer)."""

    end: int
    """Sample after the turn's last one (the trailing silence included)."""
    start: int
    """The turn's first sample."""
    audio: FloatArray
    silence_start: int | None = None
    """Where the silence that ended it began (None: cut at :data:`MAX_TURN_S`)."""


Decision = SpeechStart | SpeechStop


class SileroProbe:
    """Silero VAD as bundled with faster-whisper, run one stream at a time.

    faster-whisper's model takes ``(n, 576)`` windows (64 samples of context
    then 512 new ones) and carries an LSTM state ``h``/``c`` from one window
    to the next within a call; here the state and the context are carried
    across calls too, so the probabilities are exactly those of the whole
    stream scored at once. One ONNX session (single-threaded, as
    faster-whisper configures it) is shared by every stream.
    """

    def __init__(self, session: Any) -> None:
        self._session = session
        self.reset()

    @classmethod
    def load(cls) -> SileroProbe:
        from faster_whisper.vad import get_vad_model  # type: ignore[import-untyped, import-not-found, unused-ignore]

        session = get_vad_model().session
        names = sorted(i.name for i in session.get_inputs())
        if names != ["c", "h", "input"]:
            raise RuntimeError(f"unsupported Silero VAD model in faster_whisper (inputs {names})")
        return cls(session)

    def fork(self) -> SileroProbe:
        """A fresh stream on the same model."""
        return SileroProbe(self._session)

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)

    def __call__(self, windows: FloatArray) -> FloatArray:
        if len(windows) == 0:
            return np.zeros(0, dtype=np.float32)
        flat = windows.reshape(-1)
        contexts = np.concatenate([self._context, flat])
        # Row i's context is the last CONTEXT samples before window i.
        starts = np.arange(len(windows)) * WINDOW
        index = starts[:, None] + np.arange(CONTEXT + WINDOW)[None, :]
        batch = contexts[index].astype(np.float32)
        out, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        self._context = flat[-CONTEXT:].copy()
        return np.asarray(out, dtype=np.float32).reshape(-1)


class _Chunks:
    """Audio as a list of arrays: appending and dropping the front cost O(chunk), not O(buffer)."""

    def __init__(self) -> None:
        self._chunks: deque[FloatArray] = deque()
        self.size = 0

    def append(self, samples: FloatArray) -> None:
        if samples.size:
            self._chunks.append(samples)
            self.size += samples.size

    def drop(self, count: int) -> None:
        count = min(count, self.size)
        self.size -= count
        while count > 0:
            head = self._chunks[0]
            if head.size <= count:
                self._chunks.popleft()
                count -= head.size
            else:
                self._chunks[0] = head[count:]
                count = 0

    def peek(self, count: int) -> FloatArray:
        """A copy of the first ``count`` samples, leaving them in place."""
        joined = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.float32)
        self._chunks = deque([joined] if joined.size else [])
        return joined[: min(count, joined.size)].copy()

    def take(self, count: int) -> FloatArray:
        count = min(count, self.size)
        joined = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.float32)
        self._chunks = deque([joined[count:]] if count < joined.size else [])
        self.size = joined.size - count
        return joined[:count].astype(np.float32, copy=True)

    def clear(self) -> None:
        self._chunks.clear()
        self.size = 0


class InputBuffer:
    """One session's input audio buffer at 16 kHz, with optional server VAD."""

    def __init__(self, probe: SpeechProbe | None, vad: VadSettings | None = VadSettings()) -> None:
        self._probe = probe
        self._vad = vad
        self._audio = _Chunks()
        self.start = 0
        """Timeline position of the buffer's first sample."""
        self.total = 0
        """Samples appended in this session."""
        self._pending = np.zeros(0, dtype=np.float32)
        self._speaking = False
        self._turn_start = 0
        self._silence_start: int | None = None
        self.dropped = 0
        """Samples dropped because a buffer without turn detection reached MAX_BUFFER_S."""

    @property
    def vad(self) -> VadSettings | None:
        return self._vad

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def buffered_ms(self) -> float:
        return self._audio.size / SAMPLES_PER_MS

    @property
    def committable_ms(self) -> float:
        """What a client commit would commit, as the service counts it.

        With turn detection on and no speech in progress, the buffer holds only
        the prefix padding kept for the next turn: the service does not count
        it (its VAD just committed everything else), so a client commit right
        after a VAD commit is refused as too small rather than making an empty
        turn of the padding.
        """
        if self._vad is not None and self._probe is not None and not self._speaking:
            return 0.0
        return self.buffered_ms

    @property
    def pause(self) -> tuple[int, int] | None:
        """With speech in progress and a silence begun in it: ``(silence start, end of the windows scored)``."""
        if not self._speaking or self._silence_start is None:
            return None
        return self._silence_start, self.total - self._pending.size

    def peek(self, upto: int) -> tuple[int, FloatArray]:
        """``(start, audio)``: a copy of the buffer up to timeline position ``upto``, which stays buffered."""
        return self.start, self._audio.peek(max(0, upto - self.start))

    def set_vad(self, vad: VadSettings | None) -> None:
        """Change turn detection; speech in progress is forgotten when it changes."""
        if vad != self._vad:
            self._vad = vad
            self._reset_detection()

    def append(self, samples: FloatArray) -> list[Decision]:
        """Add 16 kHz samples; returns what the VAD decided, in order."""
        self._audio.append(samples)
        self.total += samples.size
        if self._vad is None or self._probe is None:
            excess = self._audio.size - int(MAX_BUFFER_S * RATE)
            if excess > 0:
                self._drop_before(self.start + excess)
                self.dropped += excess
            return []
        self._pending = np.concatenate([self._pending, samples])
        n = self._pending.size // WINDOW
        if n == 0:
            return []
        windows = self._pending[: n * WINDOW].reshape(n, WINDOW)
        first = self.total - self._pending.size  # timeline position of windows[0]
        self._pending = self._pending[n * WINDOW :].copy()
        probs = self._probe(windows)
        decisions: list[Decision] = []
        for i, prob in enumerate(probs):
            decision = self._window(first + i * WINDOW, float(prob), self._vad)
            if decision is not None:
                decisions.append(decision)
        return decisions

    def _window(self, at: int, prob: float, vad: VadSettings) -> Decision | None:
        end = at + WINDOW
        prefix = vad.prefix_padding_ms * SAMPLES_PER_MS
        if not self._speaking:
            if prob >= vad.threshold:
                self._speaking = True
                self._silence_start = None
                self._turn_start = max(self.start, at - prefix)
                self._drop_before(self._turn_start)
                return SpeechStart(self._turn_start)
            self._drop_before(end - prefix)
            return None
        if prob >= vad.threshold:
            self._silence_start = None
        elif prob < max(vad.threshold - HYSTERESIS, 0.01) and self._silence_start is None:
            self._silence_start = at
        silent = (
            self._silence_start is not None and end - self._silence_start >= vad.silence_duration_ms * SAMPLES_PER_MS
        )
        if silent or end - self._turn_start >= MAX_TURN_S * RATE:
            silence_start = self._silence_start if silent else None
            self._speaking = False
            self._silence_start = None
            start, audio = self._cut(end)
            return SpeechStop(end, start, audio, silence_start)
        return None

    def _drop_before(self, position: int) -> None:
        cut = min(max(0, position - self.start), self._audio.size)
        if cut:
            self._audio.drop(cut)
            self.start += cut

    def _cut(self, upto: int) -> tuple[int, FloatArray]:
        start = self.start
        cut = min(max(0, upto - self.start), self._audio.size)
        audio = self._audio.take(cut)
        self.start += cut
        return start, audio

    def take(self) -> tuple[int, FloatArray]:
        """A client commit: remove and return ``(start, audio)`` of everything buffered.

        Speech in progress goes with it; detection starts afresh with the next window.
        """
        self._speaking = False
        self._silence_start = None
        self._pending = np.zeros(0, dtype=np.float32)
        return self._cut(self.total)

    def clear(self) -> None:
        """``input_audio_buffer.clear``: drop everything buffered, speech in progress included."""
        self._audio.clear()
        self.start = self.total
        self._reset_detection()

    def _reset_detection(self) -> None:
        self._speaking = False
        self._silence_start = None
        self._pending = np.zeros(0, dtype=np.float32)
        reset = getattr(self._probe, "reset", None)
        if callable(reset):
            reset()
