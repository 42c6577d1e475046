"""The Realtime session's whole life against the test server: drops, stops, order, fatal closes, rollover.

Each test drives a real :class:`RealtimeSession` over a real websocket with
the real core behind it, feeding "utterances" that are tone bursts of
distinct pitches, so every transcript can be traced back to the audio it
came from (the test server records the PCM of each committed turn).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import pytest

from sttd import core
from sttd import protocol as p
from sttd.credentials import ApiKey, CredentialSource
from sttd.errors import SessionError
from sttd.realtime import RealtimeSession, SessionOptions

from .realtime_server import FakeRealtimeServer, TurnInfo
from .session_harness import RATE, Harness, run
from .sound import dominant_hz

PITCHES = [300.0, 450.0, 600.0, 750.0, 900.0, 1050.0, 1200.0, 1350.0, 1500.0, 1650.0, 1800.0, 1950.0]


def burst(hz: float, seconds: float = 0.6, gap: float = 0.8) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    tone = (np.sin(2 * np.pi * hz * t) * 0.3 * 32767).astype(np.int16)
    return np.concatenate([tone, np.zeros(int(gap * RATE), dtype=np.int16)])


def pitch_of(turn: TurnInfo) -> float:
    """The pitch of the burst in a turn: the spectrum of its loud 20 ms windows."""
    samples = np.frombuffer(turn.audio, dtype="<i2").astype(np.float64)
    windows = samples[: len(samples) // 480 * 480].reshape(-1, 480)
    loud = windows[np.sqrt((windows**2).mean(axis=1)) > 1000]
    # Each burst is 0.6 s (30 windows): a turn with less lost the start or the end of it.
    assert len(loud) >= 29, f"turn {turn.number} holds {len(loud) * 20} ms of its 600 ms burst"
    return min(PITCHES, key=lambda hz: abs(hz - dominant_hz(loud.ravel())))


def delivered_pitches(h: Harness, server: FakeRealtimeServer) -> list[float]:
    """The pitch behind each final transcript, in the order the finals were emitted."""
    turns = {t.item_id: t for t in server.turns()}
    return [pitch_of(turns[f.item_id]) for f in h.finals()]


async def dictate(h: Harness, samples: np.ndarray, *, stop: bool = True, speed: float = 4.0) -> None:
    task = asyncio.create_task(h.session.run())
    await h.feed(samples, speed)
    if stop:
        h.core.stop()
        h.session.finish()
    await task
    h.core.finished()
    h._drain()


def test_a_dictation_delivers_every_utterance_in_order(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.script(["one", "two", "three"])
    h = Harness(realtime_server)
    run(lambda: dictate(h, np.concatenate([burst(hz) for hz in PITCHES[:3]])))
    assert [f.text for f in h.finals()] == ["one", "two", "three"]
    assert delivered_pitches(h, realtime_server) == PITCHES[:3]
    assert realtime_server.client_events("input_audio_buffer.commit") == []  # the server commits, not us
    assert h.core.state is core.State.IDLE


def test_a_drop_mid_utterance_is_reconnected_and_nothing_said_is_lost(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.configure(drop_mid_utterance="abort", drop_after_ms=300, drop_times=1)
    h = Harness(realtime_server)
    run(lambda: dictate(h, np.concatenate([burst(hz) for hz in PITCHES[:4]])))
    assert realtime_server.connection_count == 2
    assert h.reconnects and h.ready == 2
    assert delivered_pitches(h, realtime_server) == PITCHES[:4]


def test_a_1011_close_mid_utterance_is_recovered_too(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.configure(drop_mid_utterance="close_1011", drop_after_ms=200, drop_times=1)
    h = Harness(realtime_server)
    run(lambda: dictate(h, np.concatenate([burst(hz) for hz in PITCHES[:3]])))
    assert delivered_pitches(h, realtime_server) == PITCHES[:3]


def test_stop_in_the_middle_of_an_utterance_commits_it(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.script(["cut short"])
    h = Harness(realtime_server)
    half = burst(PITCHES[0], seconds=1.5, gap=0)[: int(0.8 * RATE)]
    run(lambda: dictate(h, half))
    assert [f.text for f in h.finals()] == ["cut short"]
    assert len(realtime_server.client_events("input_audio_buffer.commit")) == 1


def test_cancel_in_the_middle_of_an_utterance_drops_it(realtime_server: FakeRealtimeServer) -> None:
    h = Harness(realtime_server)

    async def body() -> None:
        task = asyncio.create_task(h.session.run())
        await h.feed(burst(PITCHES[0], seconds=1.5, gap=0)[: int(0.8 * RATE)])
        await h.wait(lambda: h.core.state is core.State.SPEAKING, 10, "speech")
        h.core.stop()
        h.session.cancel()
        await task
        h.core.finished(discard=True)

    run(body)
    assert h.finals() == []
    assert realtime_server.client_events("input_audio_buffer.commit") == []


def test_out_of_order_completions_are_delivered_in_spoken_order(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.script(["first", "second", "third"])
    realtime_server.configure(out_of_order_turns={1})
    h = Harness(realtime_server)
    run(lambda: dictate(h, np.concatenate([burst(hz) for hz in PITCHES[:3]])))
    completions = realtime_server.server_events("conversation.item.input_audio_transcription.completed")
    turns = {t.item_id: t.number for t in realtime_server.turns()}
    assert [turns[e["item_id"]] for e in completions][:2] == [2, 1]  # the server did answer out of order
    assert [f.text for f in h.finals()] == ["first", "second", "third"]


def test_a_failed_transcription_is_reported_and_dictation_goes_on(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.script(["one", "two"])
    realtime_server.configure(fail_turns={1})
    h = Harness(realtime_server)
    run(lambda: dictate(h, np.concatenate([burst(hz) for hz in PITCHES[:2]])))
    assert [f.text for f in h.finals()] == ["two"]
    assert any("failed" in e.message for e in h.errors())


@pytest.mark.parametrize(("code", "kind"), [(3000, "credentials"), (4000, "refused")])
def test_fatal_closes_end_in_error_without_retrying(realtime_server: FakeRealtimeServer, code: int, kind: str) -> None:
    realtime_server.close_on_connect(code, "nope", times=None)
    h = Harness(realtime_server)

    async def body() -> None:
        task = asyncio.create_task(h.session.run())
        h.session.send_audio(b"\0" * 1920)
        with pytest.raises(SessionError) as info:
            await task
        assert not info.value.retryable
        assert info.value.code == kind
        h.core.session_failed(info.value.code, str(info.value))

    run(body)
    assert realtime_server.handshake_count == 1
    assert h.core.state is core.State.ERROR
    assert str(code) in h.core.last_error


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_at_the_handshake_are_fatal(realtime_server: FakeRealtimeServer, status: int) -> None:
    realtime_server.refuse_handshakes(status)
    h = Harness(realtime_server)
    with pytest.raises(SessionError, match=f"HTTP {status}"):
        run(h.session.run)
    assert realtime_server.handshake_count == 1


def test_server_errors_at_the_handshake_are_retried_with_backoff(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.refuse_handshakes(503, times=2)
    realtime_server.script(["made it"])
    h = Harness(realtime_server)
    run(lambda: dictate(h, burst(PITCHES[0])))
    assert [f.text for f in h.finals()] == ["made it"]
    assert realtime_server.handshake_count == 3


def test_retries_stop_after_max_reconnect_attempts(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.refuse_handshakes(503)
    h = Harness(realtime_server, max_reconnect_attempts=2)
    with pytest.raises(SessionError, match="gave up after 3 failed connection attempts"):
        run(h.session.run)
    assert realtime_server.handshake_count == 3


def test_sessions_ending_every_few_seconds_lose_no_turn(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.configure(session_max_s=2.5)
    h = Harness(realtime_server)
    speech = np.concatenate([burst(hz) for hz in PITCHES])  # ~17 s of audio, fed in real time
    run(lambda: dictate(h, speech, speed=1.5))
    assert len(realtime_server.sessions()) >= 3
    assert delivered_pitches(h, realtime_server) == PITCHES


def test_rollover_before_the_limit_happens_between_turns(realtime_server: FakeRealtimeServer) -> None:
    h = Harness(realtime_server, rollover_after_s=1.0)
    run(lambda: dictate(h, np.concatenate([burst(hz) for hz in PITCHES[:6]]), speed=2.0))
    sessions = realtime_server.sessions()
    assert len(sessions) >= 2
    assert all(s.close_code == 1000 for s in sessions[:-1])  # we closed them, cleanly
    assert delivered_pitches(h, realtime_server) == PITCHES[:6]


def test_ephemeral_tokens_are_fetched_for_each_connection(
    realtime_server: FakeRealtimeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sttd")
    realtime_server.configure(drop_mid_utterance="abort", drop_after_ms=200, drop_times=1)
    h = Harness(realtime_server, token=True)
    run(lambda: dictate(h, np.concatenate([burst(hz) for hz in PITCHES[:2]])))
    sessions = realtime_server.sessions()
    assert [s.auth for s in sessions] == ["token", "token"]
    assert len(realtime_server.token_requests()) == 2
    assert delivered_pitches(h, realtime_server) == PITCHES[:2]
    assert realtime_server.api_key not in caplog.text


def test_a_refusing_token_endpoint_is_fatal(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.refuse_tokens(401)
    h = Harness(realtime_server, token=True)
    with pytest.raises(SessionError, match="token endpoint refused: HTTP 401"):
        run(h.session.run)
    assert realtime_server.handshake_count == 0


def test_manual_turn_detection_commits_only_on_stop(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.script(["push to talk"])
    manual = p.SessionSettings(model="gpt-4o-mini-transcribe", turn_detection=p.TurnDetection("manual"))
    h = Harness(realtime_server, settings=manual)
    run(lambda: dictate(h, np.concatenate([burst(hz) for hz in PITCHES[:2]])))
    assert realtime_server.sessions()[0].config["audio"]["input"]["turn_detection"] is None
    assert len(realtime_server.client_events("input_audio_buffer.commit")) == 1
    assert [f.text for f in h.finals()] == ["push to talk"]


def test_a_refused_semantic_vad_is_said_clearly(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.configure(refuse_semantic_vad=True)
    semantic = p.SessionSettings(model="gpt-4o-mini-transcribe", turn_detection=p.TurnDetection("semantic_vad"))
    h = Harness(realtime_server, settings=semantic)
    with pytest.raises(SessionError, match="refused the session configuration"):
        run(h.session.run)


def test_a_language_change_is_applied_to_the_live_session(realtime_server: FakeRealtimeServer) -> None:
    h = Harness(realtime_server)

    async def body() -> None:
        task = asyncio.create_task(h.session.run())
        await h.wait(lambda: h.ready == 1, 10, "the session")
        await h.session.update(p.SessionSettings(model="gpt-4o-mini-transcribe", language="de"))
        await h.feed(burst(PITCHES[0]))
        h.session.finish()
        await task

    run(body)
    updates = realtime_server.client_events("session.update")
    assert len(updates) == 2
    assert realtime_server.sessions()[0].config["audio"]["input"]["transcription"]["language"] == "de"


def test_a_malformed_server_event_is_skipped(
    realtime_server: FakeRealtimeServer, caplog: pytest.LogCaptureFixture
) -> None:
    realtime_server.script(["still fine"])
    h = Harness(realtime_server)

    async def body() -> None:
        task = asyncio.create_task(h.session.run())
        await h.wait(lambda: h.ready == 1, 10, "the session")
        for bad in ["{not json", "[1, 2]", '{"type": "input_audio_buffer.committed"}']:
            await asyncio.to_thread(realtime_server.send_raw, bad)
        await h.feed(burst(PITCHES[0]))
        h.session.finish()
        await task

    run(body)
    assert [f.text for f in h.finals()] == ["still fine"]
    assert caplog.text.count("skipping a malformed server event") == 3


def test_a_dead_connection_is_noticed_by_pings_and_replaced(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.script(["after the silence"])
    h = Harness(realtime_server, ping_interval_s=0.3, ping_timeout_s=0.3)

    async def body() -> None:
        task = asyncio.create_task(h.session.run())
        await h.wait(lambda: h.ready == 1, 10, "the session")
        await asyncio.to_thread(realtime_server.freeze)
        await h.wait(lambda: h.ready == 2, 10, "a new session after the ping timeout")
        await h.feed(burst(PITCHES[0]))
        h.session.finish()
        await task

    run(body)
    assert h.reconnects
    assert [f.text for f in h.finals()] == ["after the silence"]


def test_audio_beyond_the_backlog_bound_is_dropped_and_counted() -> None:
    from sttd.ledger import AudioLedger

    ledger = AudioLedger(limit_bytes=10 * 1920)
    for i in range(15):
        ledger.add(bytes([i]) * 1920)
    assert ledger.dropped_bytes == 5 * 1920
    first = ledger.next_frame()
    assert first is not None and first[0] == 5  # the oldest were dropped, the newest kept
    assert ledger.next_frame() is first  # not sent yet: still first in line
    ledger.sent(0.0)
    second = ledger.next_frame()
    assert second is not None and second[0] == 6


def test_a_world_readable_key_file_is_warned_about(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    from sttd.credentials import find_api_key

    key = tmp_path / "key"
    key.write_text("sk-file-0123456789\n")
    key.chmod(0o644)
    found = find_api_key(str(key))
    assert found is not None and found.value == "sk-file-0123456789"
    assert "readable by other users" in caplog.text
    assert "sk-file-0123456789" not in caplog.text


def test_many_drops_in_one_dictation_are_each_recovered(realtime_server: FakeRealtimeServer) -> None:
    # Each drop hits the replay of the turn the previous one cut: four failures in a row, within the limit.
    realtime_server.configure(drop_mid_utterance="abort", drop_after_ms=200, drop_times=4)
    h = Harness(realtime_server, max_reconnect_attempts=4)
    run(lambda: dictate(h, np.concatenate([burst(hz) for hz in PITCHES[:5]])))
    assert realtime_server.connection_count == 5
    assert delivered_pitches(h, realtime_server) == PITCHES[:5]


class _Ignore:
    def session_ready(self) -> None: ...

    def session_event(self, event: p.ServerEvent) -> None: ...

    def session_reconnecting(self, reason: str) -> None: ...


def test_a_service_that_never_configures_the_session_is_retried_then_given_up() -> None:
    """Accepts the websocket, then says nothing: a retryable failure, never an unhandled exception."""
    import websockets

    async def body() -> None:
        accepted = 0

        async def silent(ws: Any) -> None:
            nonlocal accepted
            accepted += 1
            await ws.wait_closed()

        async with websockets.serve(silent, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            settings = p.SessionSettings(model="gpt-4o-mini-transcribe")
            opts = SessionOptions(
                url=f"ws://127.0.0.1:{port}/", settings=settings, connect_timeout_s=0.3, backoff_base_s=0.01
            )
            session = RealtimeSession(opts, CredentialSource(ApiKey("sk-x", "test")), listener=_Ignore())
            with pytest.raises(SessionError, match=r"did not answer session\.update"):
                await session.run()
            assert accepted == opts.max_reconnect_attempts + 1

    asyncio.run(asyncio.wait_for(body(), 30))
