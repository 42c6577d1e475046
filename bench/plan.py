"""What a bench run does and for how long: the full plan and the CI smoke plan."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .harness import (
    REPO,
)

MODEL_DIR = Path(os.environ.get("STTD_TEST_MODEL", REPO / ".cache" / "whisper-base"))
START_SENTENCE = "the quick brown fox jumps over the lazy dog while seven wizards quietly box the jolly fat frogs"
DROP_SENTENCES = ("please write this down", "the meeting moves to thursday at four in the afternoon")
ENGINE_SENTENCES = (
    "please remember to buy milk on the way home",
    "the weather is lovely today",
    "we will meet in the library after lunch",
    "can you call me back tomorrow morning",
    "the children are playing in the garden",
    "turn off the lights in the kitchen before you go to bed",
)
CLIENTS = ("sttd", "openai", "legacy")
LEAD_S = 0.5021
"""Noise floor before the voice in the Start measurement (not a whole number of 5 ms periods: the
voice starts inside one of the microphone's periods, not on a boundary)."""


@dataclass(frozen=True)
class Plan:
    """How long and how often; ``--smoke`` shrinks everything (numbers then mean nothing)."""

    smoke: bool
    cpu_s: float
    """Speech streamed with the client alone on the microphone, for its CPU time."""
    clicks_s: float
    start_reps: int
    start_reps_baseline: int
    preroll_reps: int
    """Start measurements with ``[audio] preroll_ms`` (the microphone kept open while idle)."""
    start_window_s: float
    """Start → Stop in the start measurements (speech keeps going past Stop)."""
    handshake_delays_ms: tuple[int, ...]
    drop_parts: tuple[str | float, ...]
    drop_into_s: float
    """The drop comes this long after the last pause of ``drop_parts``: mid-sentence."""
    turns: int
    idle_min_s: float
    engine_sentences: tuple[str, ...]
    chunk_variants: tuple[int, ...]
    settle: float = 1.0
    """Scales the pauses that let things settle (shorter in the smoke run)."""
    main_chunk_ms: int = 40
    preroll_ms: int = 300
    floor_s: float = 6.0
    """Audio per platform floor (``bench.floor``): parec, a bare loop, + a TCP write, + websockets."""
    floor_frames_ms: tuple[int, ...] = (20, 40)


FULL = Plan(
    smoke=False,
    cpu_s=12.0,
    clicks_s=15.0,
    start_reps=5,
    start_reps_baseline=3,
    preroll_reps=3,
    start_window_s=2.5,
    handshake_delays_ms=(0, 1000),
    drop_parts=(DROP_SENTENCES[0], 0.8, DROP_SENTENCES[1], 0.4),
    drop_into_s=1.2,
    turns=100,
    idle_min_s=60.0,
    engine_sentences=ENGINE_SENTENCES,
    chunk_variants=(20,),
)
SMOKE = Plan(
    smoke=True,
    cpu_s=0.5,
    clicks_s=0.7,
    start_reps=1,
    start_reps_baseline=1,
    preroll_reps=1,
    start_window_s=0.6,
    handshake_delays_ms=(0, 1000),
    drop_parts=("one", 0.2, "two three", 0.1),
    drop_into_s=0.15,
    turns=3,
    idle_min_s=0.0,
    engine_sentences=ENGINE_SENTENCES[1:2],
    chunk_variants=(20,),
    settle=0.3,
    floor_s=0.2,
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')} {time.monotonic() % 1000:.2f}] {message}", file=sys.stderr, flush=True)
