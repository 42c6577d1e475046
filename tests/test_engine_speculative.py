"""Speculative finals of the local engine: decoded when a pause begins, used only if no speech came after.

No model: a session of the engine runs against a stand-in transcriber whose
"transcript" says how many bursts of tone the audio holds, so a final that
missed speech after its cut would show it. The worker's priorities are
checked on the real Transcriber's queue.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Future
from typing import Any, cast

import numpy as np
import pytest

from sttd.engine.decoding import Piece, Request
from sttd.engine.session import Session, SessionContext
from sttd.engine.transcriber import DRAFT, FINAL, SPECULATIVE, Speculation, Transcriber
from sttd.engine.whisper_model import ModelSettings
from sttd.protocol import ServerEvents

RATE_IN = 24000
RATE = 16000


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE_IN)) / RATE_IN
    return (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)


def quiet(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE_IN), dtype=np.float32)


def bursts(audio: np.ndarray) -> str:
    """What the stand-in "hears": the number of tone bursts (runs of loud 32 ms windows)."""
    n = audio.size // 512
    loud = np.sqrt(np.mean(np.square(audio[: n * 512].reshape(n, 512)), axis=1)) > 0.05
    runs = int(np.sum(loud[1:] & ~loud[:-1]) + (1 if loud.size and loud[0] else 0))
    return f"{runs} bursts"


def energy_probe(windows: np.ndarray) -> np.ndarray:
    return (np.sqrt(np.mean(np.square(windows), axis=1)) > 0.05).astype(np.float32) * 0.9


class StandIn:
    """The transcriber's interface, deciding whether a speculation gets to start."""

    settings = ModelSettings(model="base.en")

    def __init__(self, *, starts: bool = True) -> None:
        self.starts = starts
        self.finals: list[Request] = []
        self.speculations: list[Speculation] = []

    async def transcribe(self, request: Request) -> AsyncIterator[Piece]:
        if not request.draft:
            self.finals.append(request)
        yield Piece(bursts(request.audio), "en")

    def speculate(self, request: Request) -> Speculation:
        future: asyncio.Future[tuple[str, str] | None] = asyncio.get_running_loop().create_future()
        speculation = Speculation(request, future)
        self.speculations.append(speculation)
        if self.starts and speculation.claim():
            future.set_result((bursts(request.audio), "en"))
        return speculation


class Socket:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def send(self, message: str) -> None:
        self.events.append(json.loads(message))


def run_session(model: str, pieces: list[np.ndarray | None], *, starts: bool = True) -> tuple[list[str], StandIn]:
    """Stream ``pieces`` (None: a client commit) in 40 ms frames; the transcripts of the turns, and the stand-in."""
    standin = StandIn(starts=starts)

    async def body() -> list[str]:
        context = SessionContext(cast(Transcriber, standin), lambda: energy_probe, frozenset({"en"}), ServerEvents())
        ws = Socket()
        session = Session(context, cast(Any, ws), "sess_test")
        hint: dict[str, Any] = {"languages": ["en"]} if model == "gpt-live-transcribe" else {"language": "en"}
        audio_input = {"format": {"type": "audio/pcm", "rate": RATE_IN}, "transcription": {"model": model, **hint}}
        await session.update({"type": "transcription", "audio": {"input": audio_input}})
        for piece in pieces:
            if piece is None:
                await session.commit()
                continue
            frame = RATE_IN * 40 // 1000
            for i in range(0, piece.size, frame):
                await session.append((piece[i : i + frame] * 32767).astype("<i2").tobytes())
                await asyncio.sleep(0)  # let the draft tasks run
        while not session.turns.empty():
            await session._transcribe(session.turns.get_nowait())
        return [e["transcript"] for e in ws.events if e["type"].endswith("transcription.completed")]

    return asyncio.run(body()), standin


def test_a_live_turn_whose_pause_was_silent_gets_the_final_decoded_ahead() -> None:
    transcripts, standin = run_session("gpt-live-transcribe", [quiet(0.3), tone(1.0), quiet(0.5), None])
    assert transcripts == ["1 bursts"]
    assert standin.finals == [], "the final was decoded again after the commit"


def test_speech_after_the_speculative_cut_is_in_the_final() -> None:
    # A pause long enough to decode ahead, then more speech, committed 0.1 s after it (too soon for another).
    pieces = [quiet(0.3), tone(1.0), quiet(0.4), tone(0.6), quiet(0.1), None]
    transcripts, standin = run_session("gpt-live-transcribe", pieces)
    assert transcripts == ["2 bursts"]
    assert len(standin.finals) == 1


def test_a_speculation_that_had_not_started_never_runs_and_the_final_is_decoded() -> None:
    transcripts, standin = run_session("gpt-live-transcribe", [quiet(0.3), tone(1.0), quiet(0.5), None], starts=False)
    assert transcripts == ["1 bursts"]
    assert len(standin.finals) == 1
    assert standin.speculations and not any(s.claim() for s in standin.speculations)


def test_server_vad_turns_use_the_decode_of_their_own_pause_only() -> None:
    # Two turns: the first with a short pause inside it (speech resumed after a speculation), the second plain.
    pieces = [quiet(0.3), tone(1.0), quiet(0.3), tone(0.5), quiet(0.8), tone(0.7), quiet(0.8)]
    transcripts, standin = run_session("gpt-4o-mini-transcribe", pieces)
    assert transcripts == ["2 bursts", "1 bursts"]
    assert standin.finals == []


def test_the_worker_runs_committed_finals_then_speculative_ones_then_drafts() -> None:
    transcriber = Transcriber(ModelSettings(model="/nonexistent"))
    loaded: Future[None] = Future()
    loaded.set_result(None)
    transcriber._loaded = loaded  # no model: only the queue is under test
    gate = threading.Event()
    transcriber._executor.submit(gate.wait)
    ran: list[int] = []
    done = threading.Event()
    for priority in (DRAFT, SPECULATIVE, FINAL, DRAFT):

        def work(p: int = priority) -> None:
            ran.append(p)
            if len(ran) == 4:
                done.set()

        transcriber._submit(priority, work, lambda: None)
    gate.set()
    assert done.wait(10)
    assert ran == [FINAL, SPECULATIVE, DRAFT, DRAFT]
    transcriber.close()


def test_a_speculation_abandoned_before_it_starts_is_skipped() -> None:
    async def body() -> tuple[bool, tuple[str, str] | None]:
        transcriber = Transcriber(ModelSettings(model="/nonexistent"))
        loaded: Future[None] = Future()
        loaded.set_result(None)
        transcriber._loaded = loaded
        gate = threading.Event()
        transcriber._executor.submit(gate.wait)
        speculation = transcriber.speculate(Request(np.zeros(RATE, dtype=np.float32), language="en"))
        started = speculation.abandon()
        gate.set()
        result = await asyncio.wait_for(speculation.result, 10)
        transcriber.close()
        return started, result

    started, result = asyncio.run(body())
    assert not started and result is None


@pytest.mark.parametrize("resumed", [False, True])
def test_the_vad_reports_where_the_pause_that_ended_a_turn_began(resumed: bool) -> None:
    from sttd.engine.vad import WINDOW, InputBuffer, SpeechStop, VadSettings

    probs = [0.9] * 10 + [0.0] * 5 + ([0.9] * 2 if resumed else []) + [0.0] * 20
    buffer = InputBuffer(lambda w: np.asarray([probs.pop(0) for _ in w], dtype=np.float32), VadSettings())
    pauses = []
    stops = []
    for _ in range(len(probs)):
        stops += [d for d in buffer.append(np.zeros(WINDOW, dtype=np.float32)) if isinstance(d, SpeechStop)]
        if buffer.pause is not None:
            pauses.append(buffer.pause[0])
    (stop,) = stops
    assert stop.silence_start == (12 + 5 if resumed else 10) * WINDOW
    assert pauses[0] == 10 * WINDOW and pauses[-1] == stop.silence_start
