"""The fake Realtime service's doors, driven by a plain websockets client (no sttd daemon):
the websocket handshake and the client-secret token endpoint.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .openai_models import validate_client_secret_response
from .realtime_client import open_client, post_token, run
from .realtime_server import FakeRealtimeServer

# --------------------------------------------------------------- handshake


def test_handshake_requires_a_known_key_and_the_transcription_intent(realtime_server: FakeRealtimeServer) -> None:
    async def status(url: str, headers: dict[str, str]) -> int:
        try:
            async with connect(url, additional_headers=headers):
                return 101
        except InvalidStatus as exc:
            body = json.loads(exc.response.body or b"{}")
            assert "error" in body
            return exc.response.status_code

    bearer = {"Authorization": f"Bearer {realtime_server.api_key}"}

    async def go() -> list[int]:
        return [
            await status(realtime_server.url, {}),
            await status(realtime_server.url, {"Authorization": "Bearer sk-wrong"}),
            await status(realtime_server.url.replace("intent=transcription", "intent=conversation"), bearer),
            await status(realtime_server.url.replace("/v1/realtime", "/v1/other"), bearer),
            await status(realtime_server.url, bearer),
        ]

    assert run(go) == [401, 401, 400, 404, 101]
    assert realtime_server.connection_count == 1
    assert realtime_server.handshake_count == 5
    assert [h["status"] for h in realtime_server.handshakes()] == [401, 401, 400, 404, 101]


def test_beta_header_is_refused_with_close_4000(realtime_server: FakeRealtimeServer) -> None:
    async def go() -> tuple[dict[str, Any], ConnectionClosed]:
        headers = {"Authorization": f"Bearer {realtime_server.api_key}", "OpenAI-Beta": "realtime=v1"}
        async with connect(realtime_server.url, additional_headers=headers) as ws:
            error = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            return error, closed.value

    error, closed = run(go)
    assert error["error"]["code"] == "beta_api_removed"
    assert closed.rcvd is not None and closed.rcvd.code == 4000
    assert realtime_server.server_events("session.created") == []


def test_refused_and_delayed_handshakes(realtime_server: FakeRealtimeServer) -> None:
    realtime_server.refuse_handshakes(503, times=2)

    async def go() -> tuple[list[int], float]:
        statuses = []
        for _ in range(2):
            with pytest.raises(InvalidStatus) as refused:
                await open_client(realtime_server)
            statuses.append(refused.value.response.status_code)
        client = await open_client(realtime_server)
        await client.ws.close()
        realtime_server.configure(handshake_delay_s=0.4)
        began = time.monotonic()
        client = await open_client(realtime_server)
        elapsed = time.monotonic() - began
        await client.ws.close()
        realtime_server.refuse_handshakes(403)
        for _ in range(2):
            with pytest.raises(InvalidStatus) as refused:
                await open_client(realtime_server)
            statuses.append(refused.value.response.status_code)
        return statuses, elapsed

    statuses, elapsed = run(go)
    assert statuses == [503, 503, 403, 403]
    assert elapsed >= 0.4
    assert realtime_server.connection_count == 2


# ------------------------------------------------------------ token endpoint


def test_token_endpoint_issues_tokens_the_handshake_accepts(realtime_server: FakeRealtimeServer) -> None:
    status, reply = post_token(realtime_server, realtime_server.api_key)
    assert status == 200
    validate_client_secret_response(reply)
    assert reply["value"].startswith("ek_")
    assert 590 <= reply["expires_at"] - time.time() <= 601
    manual = {"session": {"type": "transcription", "audio": {"input": {"turn_detection": None}}}}
    status, manual_reply = post_token(realtime_server, realtime_server.api_key, manual)
    assert status == 200

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        client = await open_client(realtime_server, None, key=reply["value"])
        await client.ws.close()
        manual_client = await open_client(realtime_server, None, key=manual_reply["value"])
        await manual_client.ws.close()
        return client.received[0], manual_client.received[0]

    created, manual_created = run(go)
    assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert manual_created["session"]["audio"]["input"]["turn_detection"] is None
    assert [s.auth for s in realtime_server.sessions()] == ["token", "token"]
    assert [r["status"] for r in realtime_server.token_requests()] == [200, 200]


def test_token_endpoint_refusals_and_expiry(realtime_server: FakeRealtimeServer) -> None:
    assert post_token(realtime_server, "sk-wrong")[0] == 401
    status, token = post_token(realtime_server, realtime_server.api_key)
    assert status == 200
    assert post_token(realtime_server, token["value"])[0] == 401  # a token cannot mint tokens
    realtime_server.refuse_tokens(500, times=1)
    assert post_token(realtime_server, realtime_server.api_key)[0] == 500
    assert post_token(realtime_server, realtime_server.api_key)[0] == 200
    realtime_server.refuse_tokens(401)
    assert post_token(realtime_server, realtime_server.api_key)[0] == 401
    assert post_token(realtime_server, realtime_server.api_key)[0] == 401
    realtime_server.configure(refuse_token_status=None)
    bad_body = {"session": {"type": "transcription", "x": 1}}
    assert post_token(realtime_server, realtime_server.api_key, bad_body)[0] == 400
    assert "session.x" in realtime_server.take_violations()[0]
    realtime_server.expire_tokens()

    async def go() -> int:
        with pytest.raises(InvalidStatus) as refused:
            await open_client(realtime_server, None, key=token["value"])
        return refused.value.response.status_code

    assert run(go) == 401
