"""Partial text while the person speaks: LocalAgreement-2 over successive decodes, and where speech was heard. No I/O.

The engine re-decodes the uncommitted audio of a live-model session every
second or so (see :mod:`sttd.engine.session`). Each decode is a hypothesis
of the whole utterance so far; Whisper often changes its mind about the
last word or two. :class:`Agreement` sends a word only once two successive
hypotheses agree on it and on everything before it (the LocalAgreement-2
policy of whisper_streaming; letter case aside, punctuation included), so the
text a client shows only grows.

:func:`final_delta` joins that up with the committed turn's final decode:
what the final adds to the sent text, or ``None`` when the final disagrees
with it (the client then replaces the partial text with ``completed``).

:class:`SpeechTracker` says where in a stream speech was last heard, from
Silero VAD scores (or, with no model, a plain energy check), so partial
decodes run only while someone speaks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .vad import WINDOW, FloatArray, SpeechProbe

ENERGY_RMS = 0.01
"""Without a Silero probe, a window this loud (≈ -40 dBFS RMS) counts as speech."""


@dataclass(frozen=True)
class Agreement:
    """What has been sent of one utterance's partial text, and the last hypothesis to compare the next with."""

    sent: tuple[str, ...] = ()
    """Words already sent as deltas, in order."""
    last: tuple[str, ...] = ()
    """The previous decode's words."""

    @property
    def text(self) -> str:
        """The concatenation of every delta sent so far."""
        return " ".join(self.sent)

    def hear(self, hypothesis: str) -> tuple[Agreement, str]:
        """The state after one more decode, and the delta to send for it ("" for none)."""
        words = tuple(hypothesis.split())
        agreed = _common_prefix(self.last, words)
        done = len(self.sent)
        # Text never shrinks: when Whisper now disagrees with a word already sent, send nothing more
        # until two decodes agree again on something that continues what was sent.
        new = words[done:agreed] if agreed >= done and _keys(words[:done]) == _keys(self.sent) else ()
        delta = (" " if self.sent and new else "") + " ".join(new)
        return Agreement(self.sent + new, words), delta


def _keys(words: tuple[str, ...]) -> tuple[str, ...]:
    # Whisper capitalises a sentence's first word one decode and not the next; that is not a change of mind.
    return tuple(w.casefold() for w in words)


def _common_prefix(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """How many leading words ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(_keys(a), _keys(b), strict=False):
        if x != y:
            break
        n += 1
    return n


def final_delta(sent: str, transcript: str) -> str | None:
    """What the final ``transcript`` adds to the ``sent`` partial text, or None when it does not continue it."""
    if not sent:
        return transcript
    if transcript == sent:
        return ""
    if transcript.startswith(sent) and transcript[len(sent)].isspace():
        return transcript[len(sent) :]
    return None


class SpeechTracker:
    """Where speech was last heard in one stream of 16 kHz audio, scored per 512-sample window."""

    def __init__(self, probe: SpeechProbe | None, threshold: float) -> None:
        self._probe = probe
        self._threshold = threshold
        self._pending = np.zeros(0, dtype=np.float32)
        self.position = 0
        """Samples scored so far (the end of the last whole window)."""
        self.last_speech: int | None = None
        """Stream position just after the last window that was speech; None before any."""

    def feed(self, samples: FloatArray) -> None:
        """Score the whole windows that ``samples`` complete."""
        self._pending = np.concatenate([self._pending, samples])
        n = self._pending.size // WINDOW
        if n == 0:
            return
        windows = self._pending[: n * WINDOW].reshape(n, WINDOW)
        self._pending = self._pending[n * WINDOW :].copy()
        if self._probe is not None:
            speech = self._probe(windows) >= self._threshold
        else:
            speech = np.sqrt(np.mean(np.square(windows), axis=1)) >= ENERGY_RMS
        voiced = np.nonzero(speech)[0]
        if voiced.size:
            self.last_speech = self.position + (int(voiced[-1]) + 1) * WINDOW
        self.position += n * WINDOW
