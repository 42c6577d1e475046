"""Dictating through the offline engine: a live model's partials while the person speaks, and sttd's own
Realtime client against the engine as it runs against OpenAI.

The engine runs under the daemon's own supervisor (:class:`sttd.engine.supervisor.EngineProcess`), with
Whisper base from ``scripts/fetch-test-model``; one engine serves the whole package on each worker
(loading the model costs seconds; see conftest.py). Its speech is espeak-ng speech, and every event it
sends is checked against the ``openai`` package's models.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sttd import core
from sttd import protocol as p
from sttd.engine.partials import final_delta
from sttd.models import model_info

from ..test_session import Harness, dictate, run
from ..wer import wer, words
from .harness import FRAME_BYTES, MANUAL, RATE, SENTENCES, Client, RunningEngine, session, silence, speech, voiced_ms

LIVE_SENTENCE = "please remember to buy milk on the way home and call me back tomorrow morning"
"""About 4.5 s of espeak-ng speech."""


@dataclass
class Streamed:
    """A sentence streamed in real time, then committed: what arrived when."""

    client: Client
    arrivals: list[tuple[float, dict[str, Any]]]
    onset: float
    """When the first voiced sample was sent (monotonic)."""
    committed_at: float
    """When the client sent its commit."""
    cpu_s: float
    """The engine's CPU time over the streaming and the final."""


def engine_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stream_in_real_time(engine: RunningEngine, model: str) -> Streamed:
    """``LIVE_SENTENCE`` at the pace of a microphone (40 ms frames), 0.6 s of silence, then a client commit."""
    lead, said = silence(0.3), speech(LIVE_SENTENCE)
    audio = np.concatenate([lead, said, silence(0.6)])
    onset_s = (len(lead) + voiced_ms(said)[0] * RATE / 1000) / RATE
    times: dict[str, float] = {}
    arrivals: list[tuple[float, dict[str, Any]]] = []
    cpu: list[float] = []

    async def body(c: Client) -> None:
        hint = {"languages": ["en"]} if model_info(model).live else {"language": "en"}
        await c.update(None, model=model, **hint)

        async def receive() -> None:
            while True:
                event = await c.receive(60)
                arrivals.append((time.monotonic(), event))
                if event["type"] == "conversation.item.done":
                    return

        receiver = asyncio.create_task(receive())
        cpu.append(engine_cpu_s(engine.endpoint.pid))
        start = time.monotonic()
        times["onset"] = start + onset_s
        frame = FRAME_BYTES // 2
        for i in range(0, len(audio), frame):
            await c.append(audio[i : i + frame])
            # Pacing, not waiting for an event: the next frame is "captured" 40 ms after this one.
            await asyncio.sleep(max(0.0, start + (i + frame) / RATE - time.monotonic()))
        times["commit"] = time.monotonic()
        await c.send({"type": "input_audio_buffer.commit"})
        await asyncio.wait_for(receiver, 60)
        cpu.append(engine_cpu_s(engine.endpoint.pid))

    c = session(engine, body)
    return Streamed(c, arrivals, times["onset"], times["commit"], cpu[1] - cpu[0])


def test_a_live_model_sends_growing_partials_while_the_person_speaks(engine: RunningEngine) -> None:
    streamed = stream_in_real_time(engine, "gpt-live-transcribe")
    deltas = [
        (at, e) for at, e in streamed.arrivals if e["type"] == "conversation.item.input_audio_transcription.delta"
    ]
    early = [e for at, e in deltas if at < streamed.committed_at]
    assert early, "no delta before the client's commit"
    first_ms = (deltas[0][0] - streamed.onset) * 1000
    print(f"\nfirst delta {first_ms:.0f} ms after speech onset; engine CPU {streamed.cpu_s:.2f} s for this turn")
    # The coming item's id comes with the first delta; the commit and everything after carry it.
    kinds = [e["type"] for _, e in streamed.arrivals]
    committed = streamed.client.of("input_audio_buffer.committed")[0]
    assert kinds.index("input_audio_buffer.committed") > kinds.index(deltas[0][1]["type"])
    item = committed["item_id"]
    assert {e["item_id"] for _, e in deltas} == {item}
    completed = streamed.client.of("conversation.item.input_audio_transcription.completed")[0]
    assert completed["item_id"] == item
    # Each delta appends words: the text only grows.
    texts = [e["delta"] for _, e in deltas]
    assert all(t.strip() for t in texts)
    assert not texts[0].startswith(" ") and all(t.startswith(" ") for t in texts[1:])
    # The final is the decode of the whole turn; the deltas lead up to it unless it disagrees with them.
    assert wer(LIVE_SENTENCE, completed["transcript"]) <= 0.15, completed["transcript"]
    at_commit = kinds.index("input_audio_buffer.committed")
    before = "".join(e["delta"] for _, e in streamed.arrivals[:at_commit] if e["type"] == deltas[0][1]["type"])
    if final_delta(before, completed["transcript"]) is None:
        assert "".join(texts) == before  # it disagrees: only completed follows, and the client replaces the text
    else:
        assert "".join(texts) == completed["transcript"]


def test_a_model_that_is_not_live_gets_no_deltas_before_the_commit(engine: RunningEngine) -> None:
    streamed = stream_in_real_time(engine, "gpt-4o-mini-transcribe")
    print(f"\nwithout partials: engine CPU {streamed.cpu_s:.2f} s for this turn")
    kinds = [e["type"] for _, e in streamed.arrivals]
    assert kinds[0] == "input_audio_buffer.committed"
    assert "conversation.item.input_audio_transcription.delta" in kinds
    completed = streamed.client.of("conversation.item.input_audio_transcription.completed")[0]
    assert wer(LIVE_SENTENCE, completed["transcript"]) <= 0.15, completed["transcript"]


# ----------------------------------------------- the Realtime client against it


def test_a_dictation_of_two_sentences_delivers_two_finals_in_order(engine: RunningEngine) -> None:
    audio = np.concatenate([silence(0.3), speech(SENTENCES[0]), silence(1.0), speech(SENTENCES[1]), silence(1.0)])
    h = Harness(engine)  # type: ignore[arg-type]
    run(lambda: dictate(h, audio))
    assert [words(f.text) for f in h.finals()] == [words(SENTENCES[0]), words(SENTENCES[1])]
    assert h.core.state is core.State.IDLE
    assert h.errors() == []


def test_stop_in_the_middle_of_a_sentence_flushes_what_was_said(engine: RunningEngine) -> None:
    sentence = "this sentence is cut short by stop while it is still being spoken"
    said = speech(sentence)
    h = Harness(engine)  # type: ignore[arg-type]
    run(lambda: dictate(h, np.concatenate([silence(0.3), said[: int(len(said) * 0.55)]])))
    finals = h.finals()
    assert len(finals) == 1
    got = words(finals[0].text)
    assert got[:4] == words(sentence)[:4]
    assert len(got) < len(words(sentence))


def test_manual_turn_detection_commits_everything_on_stop(engine: RunningEngine) -> None:
    audio = np.concatenate([silence(0.3), speech(SENTENCES[2]), silence(1.0), speech(SENTENCES[3]), silence(0.3)])
    settings = p.SessionSettings(model="gpt-4o-mini-transcribe", turn_detection=MANUAL)
    h = Harness(engine, settings=settings)  # type: ignore[arg-type]
    run(lambda: dictate(h, audio))
    assert [words(f.text) for f in h.finals()] == [words(" ".join(SENTENCES[2:]))]


def test_a_language_update_mid_session_is_applied(engine: RunningEngine) -> None:
    h = Harness(engine)  # type: ignore[arg-type]

    async def body() -> None:
        task = asyncio.create_task(h.session.run())
        await h.wait(lambda: h.ready == 1, 10, "the session")
        await h.session.update(p.SessionSettings(model="gpt-4o-mini-transcribe", language="en"))
        await h.feed(np.concatenate([speech(SENTENCES[2]), silence(1.0)]))
        h.core.stop()
        h.session.finish()
        await task

    run(body)
    assert [words(f.text) for f in h.finals()] == [words(SENTENCES[2])]
