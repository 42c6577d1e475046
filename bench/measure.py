"""Placing received audio in the microphone's stream, and summarising numbers.

The virtual microphone hands every reader the same samples (bit for bit on
PulseAudio: no resampling, no volume change), so a server session's audio is
found in the reference recording by cross-correlation and then confirmed
sample by sample. A session is a run of *pieces* (stretches copied from the
reference without a break); more than one when the client skipped or
resent audio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .harness import RATE

TOLERANCE = 2
"""Largest sample difference still counted as the same sample."""
ANCHOR = RATE // 2
"""Samples correlated to find where a piece starts (500 ms)."""


@dataclass(frozen=True)
class Piece:
    """``session[s0:s1]`` is ``reference[r0 : r0 + s1 - s0]``."""

    s0: int
    s1: int
    r0: int

    @property
    def r1(self) -> int:
        return self.r0 + self.s1 - self.s0


def find(segment: np.ndarray, reference: np.ndarray) -> int:
    """Where ``segment`` best matches ``reference`` (normalised cross-correlation: loud passages do not win).

    -1 when the reference is shorter than the segment.
    """
    n, m = len(segment), len(reference)
    if m < n or n == 0:
        return -1
    a = segment.astype(np.float64)
    b = reference.astype(np.float64)
    size = 1 << (n + m - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)[: m - n + 1]
    energy = np.concatenate([[0.0], np.cumsum(b * b)])
    window = energy[n:] - energy[: m - n + 1]
    own = max(float(np.dot(a, a)), 1.0)
    # Windows much quieter than the segment cannot match it; the floor keeps FFT noise in silence from winning.
    norm = np.sqrt(np.maximum(window, 1e-3 * own) * own)
    return int(np.argmax(corr / norm))


def _first_mismatch(a: np.ndarray, b: np.ndarray) -> int:
    bad = np.flatnonzero(np.abs(a.astype(np.int32) - b.astype(np.int32)) > TOLERANCE)
    return int(bad[0]) if bad.size else len(a)


def align(session: np.ndarray, reference: np.ndarray, r_base: int = 0, start: int = 0) -> list[Piece]:
    """The pieces of ``session[start:]`` found in ``reference`` (which starts at stream position ``r_base``).

    Digital silence before the first sound cannot be placed and is left out;
    so is audio the reference does not hold (searched for in 100 ms steps).
    """
    pieces: list[Piece] = []
    i, n = start, len(session)
    while i < n:
        sound = np.flatnonzero(session[i:])
        if not sound.size:
            break
        j = i + int(sound[0])
        anchor = session[j : j + ANCHOR]
        if len(anchor) < 48:
            break
        lag = find(anchor, reference)
        if (
            lag < 0
            or lag + len(anchor) > len(reference)
            or _first_mismatch(anchor, reference[lag : lag + len(anchor)]) < len(anchor)
        ):
            i = j + RATE // 10  # not found as is: try 100 ms further on
            continue
        # Grow backwards (down to i) and forwards while the samples agree.
        back = min(j - i, lag)
        before = session[j - back : j][::-1]
        start = j - _first_mismatch(before, reference[lag - back : lag][::-1])
        ahead = min(n - j, len(reference) - lag)
        end = j + _first_mismatch(session[j : j + ahead], reference[lag : lag + ahead])
        pieces.append(Piece(start, end, r_base + lag - (j - start)))
        i = end
    return pieces


def covered(pieces: list[Piece], lo: int, hi: int) -> np.ndarray:
    """Which stream positions in [lo, hi) some piece holds."""
    mask = np.zeros(max(0, hi - lo), dtype=bool)
    for piece in pieces:
        a, b = max(lo, piece.r0), min(hi, piece.r1)
        if a < b:
            mask[a - lo : b - lo] = True
    return mask


def session_position(pieces: list[Piece], r: int) -> int | None:
    """Where stream position ``r`` is in the session (the first piece that holds it)."""
    for piece in pieces:
        if piece.r0 <= r < piece.r1:
            return piece.s0 + r - piece.r0
    return None


def ms(samples: float) -> float:
    return samples * 1000 / RATE


def summary(values: list[float], digits: int = 1) -> dict[str, Any]:
    """p50, p99, mean, min, max and n of a list of numbers (None and NaN left out; None for each when empty)."""
    data = np.asarray([v for v in values if v is not None and v == v], dtype=np.float64)  # None, NaN dropped
    if not data.size:
        return {"n": 0, "p50": None, "p99": None, "mean": None, "min": None, "max": None}
    return {
        "n": int(data.size),
        "p50": round(float(np.percentile(data, 50)), digits),
        "p99": round(float(np.percentile(data, 99)), digits),
        "mean": round(float(data.mean()), digits),
        "min": round(float(data.min()), digits),
        "max": round(float(data.max()), digits),
    }
