"""sttd's own turns with gpt-live-transcribe: a real session, the real VoiceDetector, real speech, the test server.

The model refuses the service's turn detection, so the session finds each
turn with sttd's voice detection and commits it. The test server enforces the
model's rules (any session.update carrying ``turn_detection`` is a refusal,
and refusals fail the test at teardown) and streams deltas while it hears
speech, the way the live model does.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np
import pytest

from sttd import core
from sttd import protocol as p

from .realtime_server import FakeRealtimeServer
from .session_harness import RATE, Harness, run
from .sound import voiced, xcorr_similarity

LIVE = p.SessionSettings(model="gpt-live-transcribe", turn_detection=p.TurnDetection("client_vad"))
FIRST = "the quick brown fox jumps over the lazy dog"
SECOND = "please send the report before noon tomorrow"


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The two sentences, their leading and trailing silence cut."""
    return voiced((FIRST, SECOND), tmp_path_factory.mktemp("voices"))


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.int16)


def live_harness(server: FakeRealtimeServer) -> Harness:
    return Harness(server, settings=LIVE)


def assert_no_turn_detection_sent(server: FakeRealtimeServer) -> None:
    updates = server.client_events("session.update")
    assert updates, "no session.update"
    for update in updates:
        assert update["session"]["audio"]["input"].get("turn_detection") is None
    assert server.refusals() == []


def dictate(h: Harness, played: np.ndarray, *, finals: int = 0, timeout: float = 10) -> None:
    """Run the session, feed ``played``, wait for ``finals`` final transcripts, then Stop."""

    async def body() -> None:
        task = asyncio.create_task(h.session.run())
        await h.feed(played)
        await h.wait(lambda: len(h.finals()) >= finals, timeout, f"{finals} finals")
        h.core.stop()
        h.session.finish()
        await task
        h.core.finished()

    run(body)


def test_speech_pause_speech_is_two_committed_turns(
    realtime_server: FakeRealtimeServer, voices: dict[str, np.ndarray]
) -> None:
    realtime_server.script([FIRST, SECOND])
    h = live_harness(realtime_server)
    played = np.concatenate([silence(0.3), voices[FIRST], silence(1.2), voices[SECOND], silence(1.0)])

    dictate(h, played, finals=2)
    assert [f.text for f in h.finals()] == [FIRST, SECOND]
    assert len(realtime_server.client_events("input_audio_buffer.commit")) == 2
    turns = realtime_server.turns()
    assert [t.kind for t in turns] == ["client", "client"]
    # Each turn holds its whole sentence: nothing of it went to the other turn or was lost.
    for turn, text in zip(turns, (FIRST, SECOND), strict=True):
        received = np.frombuffer(turn.audio, dtype="<i2")
        assert xcorr_similarity(voices[text], received) > 0.95
    assert realtime_server.audio() == played.astype("<i2").tobytes()
    assert_no_turn_detection_sent(realtime_server)


def test_a_150_ms_click_is_no_turn(realtime_server: FakeRealtimeServer) -> None:
    rng = np.random.default_rng(3)
    click = (rng.normal(0, 0.3, int(0.15 * RATE)) * 32767).clip(-32768, 32767).astype(np.int16)
    h = live_harness(realtime_server)

    dictate(h, np.concatenate([silence(0.5), click, silence(1.5)]))
    assert realtime_server.client_events("input_audio_buffer.commit") == []
    assert h.finals() == []
    assert core.State.SPEAKING not in [o.state for o in h.outputs if isinstance(o, core.StateChanged)]


def test_stop_in_mid_sentence_delivers_the_sentence(
    realtime_server: FakeRealtimeServer, voices: dict[str, np.ndarray]
) -> None:
    realtime_server.script([FIRST])
    h = live_harness(realtime_server)
    voice = voices[FIRST]
    played = np.concatenate([silence(0.3), voice[: int(voice.size * 0.7)]])

    dictate(h, played)
    assert [f.text for f in h.finals()] == [FIRST]
    (turn,) = realtime_server.turns()
    assert turn.audio == played.astype("<i2").tobytes()  # all of it, to the last frame before Stop


def test_a_drop_mid_utterance_loses_no_word(realtime_server: FakeRealtimeServer, voices: dict[str, np.ndarray]) -> None:
    realtime_server.script([FIRST, FIRST, SECOND])
    realtime_server.drop_mid_utterance("abort", after_ms=600)
    h = live_harness(realtime_server)
    played = np.concatenate([silence(0.3), voices[FIRST], silence(1.2), voices[SECOND], silence(1.0)])

    dictate(h, played, finals=2, timeout=15)
    assert h.reconnects
    assert len(h.finals()) == 2
    # The first sentence was cut by the drop: the new connection's first turn holds all of it again.
    completed = [t for t in realtime_server.turns() if t.done and not t.failed]
    for turn, text in zip(completed, (FIRST, SECOND), strict=True):
        assert xcorr_similarity(voices[text], np.frombuffer(turn.audio, dtype="<i2")) > 0.95
    assert_no_turn_detection_sent(realtime_server)


def test_partial_text_arrives_while_the_person_is_still_speaking(
    realtime_server: FakeRealtimeServer, voices: dict[str, np.ndarray]
) -> None:
    realtime_server.script([FIRST])
    h = live_harness(realtime_server)
    voice = voices[FIRST]
    speech_ends_at = 0.0

    async def body() -> None:
        nonlocal speech_ends_at
        task = asyncio.create_task(h.session.run())
        await h.wait(lambda: h.ready == 1, 10, "the session")
        await h.feed(np.concatenate([silence(0.3), voice]), speed=1.0)  # as fast as a person speaks
        speech_ends_at = time.monotonic()
        await h.feed(silence(1.0), speed=1.0)
        await h.wait(lambda: len(h.finals()) == 1, 10, "the final")
        h.core.stop()
        h.session.finish()
        await task

    run(body)
    partials = [(at, o) for at, o in h.timed if isinstance(o, core.TranscriptEmitted) and not o.final]
    assert partials, "no partial transcript"
    assert partials[0][0] < speech_ends_at, "the first partial came only after the speaker stopped"
    texts = [o.text for _, o in partials]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
    assert [f.text for f in h.finals()] == [FIRST]


def test_sttd_reports_speaking_and_processing_from_its_own_detection(
    realtime_server: FakeRealtimeServer, voices: dict[str, np.ndarray]
) -> None:
    realtime_server.script([FIRST])
    h = live_harness(realtime_server)

    dictate(h, np.concatenate([silence(0.3), voices[FIRST], silence(1.0)]), finals=1)
    states = [o.state for o in h.outputs if isinstance(o, core.StateChanged)]
    at = states.index(core.State.LISTENING)
    assert states[at : at + 4] == [
        core.State.LISTENING,
        core.State.SPEAKING,
        core.State.PROCESSING,
        core.State.LISTENING,
    ]
