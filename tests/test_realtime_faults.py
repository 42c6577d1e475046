"""The fake Realtime service's faults on demand, driven by a plain websockets client (no sttd daemon):
drops, closes, failed and delayed turns, error events, and the faults of a hostile peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from .realtime_client import COMPLETED, DELTA, LIVE, MS, Client, model_settings, open_client, run, silence, tone
from .realtime_server import MAX_DURATION_MESSAGE, FakeRealtimeServer, running_server

# ------------------------------------------------------------ session faults


def test_drop_mid_utterance_aborts_without_close_frame(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.drop_mid_utterance("abort", after_ms=200)

    async def go() -> ConnectionClosedError:
        client = await open_client(realtime_server)
        with pytest.raises(ConnectionClosedError) as dropped:
            for i in range(0, 2000, 40):  # like a microphone: read what arrives between frames
                await client.append((silence(100) + tone(1000) + silence(900))[i * MS : (i + 40) * MS])
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.001):
                        await client.recv()
            while True:
                await client.recv()
        assert "input_audio_buffer.speech_started" in client.types()
        return dropped.value

    dropped = run(go)
    assert dropped.rcvd is None  # no close frame: the TCP connection was aborted
    assert realtime_server.server_events("input_audio_buffer.committed") == []
    info = realtime_server.wait_for_session_closed()
    assert info.close_code == 1006
    assert 300 * MS <= len(info.audio) < 1100 * MS


def test_drop_mid_utterance_with_close_1011_then_reconnect(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.drop_mid_utterance("close_1011", after_ms=100)
    realtime_server.script(["after reconnect"])

    async def go() -> tuple[ConnectionClosed, str]:
        client = await open_client(realtime_server)
        with pytest.raises(ConnectionClosed) as closed:
            await client.append(tone(600))
            while True:
                await client.recv()
        again = await open_client(realtime_server)  # one-shot: the second connection works
        await again.append(tone(300) + silence(700))
        done = await again.until("conversation.item.input_audio_transcription.completed")
        await again.ws.close()
        return closed.value, done["transcript"]

    closed, transcript = run(go)
    assert closed.rcvd is not None and closed.rcvd.code == 1011
    assert transcript == "after reconnect"
    assert realtime_server.connection_count == 2


def test_failed_out_of_order_and_delayed_turns() -> None:
    options: dict[str, Any] = {
        "fail_turns": {3},
        "out_of_order_turns": {1},
        "completion_delay_s": 0.05,
        "turn_delays": {2: 0.3},
    }
    with running_server(script=["one", "two", "three"], **options) as server:

        async def go() -> tuple[Client, float]:
            client = await open_client(server)
            began = time.monotonic()
            await client.append(tone(300) + silence(600) + tone(300) + silence(600) + tone(300) + silence(600))
            while "conversation.item.input_audio_transcription.failed" not in client.types():
                await client.recv()
            elapsed = time.monotonic() - began
            await client.ws.close()
            return client, elapsed

        client, elapsed = run(go)
        commits = [e["item_id"] for e in client.received if e["type"] == "input_audio_buffer.committed"]
        finished = [
            (e["item_id"], e.get("transcript"))
            for e in client.received
            if e["type"].endswith((".completed", ".failed"))
        ]
        # turn 2 completes before turn 1; turn 3 (failed) after both; the chain stays in spoken order
        assert finished == [(commits[1], "two"), (commits[0], "one"), (commits[2], None)]
        failed = next(e for e in client.received if e["type"].endswith(".failed"))
        assert failed["error"]["code"] == "transcription_failed"
        assert elapsed >= 0.35
        assert [t.failed for t in server.turns()] == [False, False, True]


def test_session_max_duration_closes_1001_with_the_service_message() -> None:
    with running_server(session_max_s=0.3) as server:

        async def go() -> tuple[dict[str, Any], ConnectionClosed]:
            client = await open_client(server)
            error = await client.until("error")
            with pytest.raises(ConnectionClosed) as closed:
                await client.recv()
            return error, closed.value

        error, closed = run(go)
        assert error["error"]["message"] == MAX_DURATION_MESSAGE
        assert closed.rcvd is not None
        assert (closed.rcvd.code, closed.rcvd.reason) == (1001, MAX_DURATION_MESSAGE)
        assert server.wait_for_session_closed().close_code == 1001


@pytest.mark.parametrize("code", [3000, 4000, 1011])
def test_close_on_demand_and_on_connect(realtime_server: FakeRealtimeServer, code: int) -> None:
    async def go() -> tuple[ConnectionClosed, dict[str, Any], ConnectionClosed]:
        client = await open_client(realtime_server)
        await asyncio.to_thread(realtime_server.close_sessions, code, "closed by test")
        with pytest.raises(ConnectionClosed) as on_demand:
            await client.recv()
        realtime_server.close_on_connect(code, "refused at connect")
        async with connect(
            realtime_server.url, additional_headers={"Authorization": f"Bearer {realtime_server.api_key}"}
        ) as ws:
            error = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed) as on_connect:
                await ws.recv()
        client = await open_client(realtime_server)  # one-shot
        await client.ws.close()
        return on_demand.value, error, on_connect.value

    on_demand, error, on_connect = run(go)
    assert on_demand.rcvd is not None and (on_demand.rcvd.code, on_demand.rcvd.reason) == (code, "closed by test")
    assert error["type"] == "error"
    assert on_connect.rcvd is not None and on_connect.rcvd.code == code


def test_error_events_on_demand(realtime_server: FakeRealtimeServer) -> None:
    async def go() -> dict[str, Any]:
        client = await open_client(realtime_server)
        await asyncio.to_thread(realtime_server.send_error, "rate_limit_exceeded", "slow down", event_id="x1")
        error = await client.until("error")
        await client.ws.close()
        return error

    error = run(go)
    assert error["error"] == {
        "type": "server_error",
        "code": "rate_limit_exceeded",
        "message": "slow down",
        "event_id": "x1",
        "param": None,
    }


# ---------------------------------------------------- faults for hostile peers


@pytest.mark.parametrize(
    ("code", "reason", "delay_s"), [(1001, MAX_DURATION_MESSAGE, 0.0), (1011, "Internal server error", 0.3)]
)
def test_close_after_update(realtime_server: FakeRealtimeServer, code: int, reason: str, delay_s: float) -> None:
    realtime_server.close_after_update(code, reason, delay_s, times=2)

    async def one() -> tuple[float, ConnectionClosed]:
        client = await open_client(realtime_server, model_settings(LIVE))
        updated_at = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await client.recv()
        return time.monotonic() - updated_at, closed.value

    async def go() -> list[tuple[float, ConnectionClosed]]:
        results = [await one(), await one()]
        third = await open_client(realtime_server, model_settings(LIVE))  # times=2: the third stays open
        await third.ws.close()
        return results

    for elapsed, closed in run(go):
        assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (code, reason)
        assert delay_s - 0.05 <= elapsed < delay_s + 1.0  # the server's clock starts as it sends session.updated
    assert [realtime_server.wait_for_session_closed(i).close_code for i in range(3)] == [code, code, 1000]


def test_flood_deltas_for_unknown_items(realtime_server: FakeRealtimeServer) -> None:
    async def go() -> list[dict[str, Any]]:
        client = await open_client(realtime_server, model_settings(LIVE))
        await asyncio.to_thread(realtime_server.flood_deltas, 200, "ghost")
        began = time.monotonic()
        while client.types().count(DELTA) < 100:
            await client.recv()
        elapsed = time.monotonic() - began
        await asyncio.to_thread(realtime_server.stop_flood)
        assert 0.3 <= elapsed < 3, elapsed
        await client.ws.close()
        return client.received

    received = run(go)
    ghosts = [e["item_id"] for e in received if e["type"] == DELTA]
    assert all(i.startswith("ghost_") for i in ghosts) and len(set(ghosts)) == len(ghosts)
    assert realtime_server.flood_count >= 100
    assert realtime_server.server_events(DELTA) == []  # counted, not kept


def test_errors_echo_the_clients_key_on_demand_and_on_commit() -> None:
    with running_server(extra_api_keys=["sk-proj-other-key-123"]) as server:

        async def go() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
            client = await open_client(server, model_settings(LIVE), key="sk-proj-other-key-123")
            await asyncio.to_thread(server.echo_key_in_errors)
            await asyncio.to_thread(server.send_error, "rate_limit_exceeded", "slow down")
            on_demand = await client.until("error")
            await client.append(tone(300))
            commit = client.ev.commit()
            await client.send(commit)
            on_commit = await client.until("error")
            done = await client.until(COMPLETED)  # the commit still goes through
            await client.append(tone(300))
            await client.send(client.ev.commit())  # commit_errors=1: no error this time
            await client.until(COMPLETED)
            on_commit["commit_id"] = commit["event_id"]
            await client.ws.close()
            return on_demand, on_commit, done

        on_demand, on_commit, done = run(go)
        assert on_demand["error"]["message"] == "slow down (request authorized with sk-proj-other-key-123)"
        assert "sk-proj-other-key-123" in on_commit["error"]["message"]
        assert on_commit["error"]["event_id"] == on_commit.pop("commit_id")
        assert done["transcript"] == "utterance 1"
        assert len(server.server_events("error")) == 2


def test_peak_concurrent_connections_and_the_timeline(realtime_server: FakeRealtimeServer) -> None:
    async def go() -> None:
        first = await open_client(realtime_server, model_settings(LIVE))
        second = await open_client(realtime_server, model_settings(LIVE))
        await second.ws.close()
        await realtime_server.wait_for_async(lambda: realtime_server.open_connections == 1)
        third = await open_client(realtime_server, model_settings(LIVE))
        await first.ws.close()
        await third.ws.close()

    run(go)
    realtime_server.wait_for(lambda: realtime_server.open_connections == 0)
    assert realtime_server.max_concurrent_connections == 2
    assert realtime_server.connection_count == 3
    timeline = realtime_server.connection_timeline()
    assert [c.open for c in timeline] == [1, 2, 1, 2, 1, 0]
    assert [c.total for c in timeline][:4] == [1, 2, 2, 3]
    assert all(a.t <= b.t for a, b in itertools.pairwise(timeline))


@pytest.mark.parametrize("model", [LIVE, "gpt-4o-mini-transcribe"])
def test_never_commit_accepts_audio_and_sends_nothing(realtime_server: FakeRealtimeServer, model: str) -> None:
    realtime_server.never_commit()
    td = "client_vad" if model == LIVE else "server_vad"

    async def go() -> Client:
        client = await open_client(realtime_server, model_settings(model, td))
        for _ in range(3):
            await client.append(tone(800) + silence(800))
            await client.send(client.ev.commit())
        await client.send(client.ev.clear())
        cleared = await client.recv()  # nothing came before the answer to clear
        assert cleared["type"] == "input_audio_buffer.cleared"
        await client.ws.close()
        return client

    run(go)
    assert len(realtime_server.audio()) == 3 * 1600 * MS
    assert realtime_server.turns() == []
    assert [e["type"] for e in realtime_server.server_events()][2:] == ["input_audio_buffer.cleared"]
