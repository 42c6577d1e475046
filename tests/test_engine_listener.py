"""What a stranger can hold of the offline engine's listener: half-open handshakes, and its sessions.

The engine runs as ``sttd-engine`` does (``python -m sttd.engine``) with a
short handshake timeout and a small session cap, so the bounds show within
seconds; its model loads in the background (sessions open before that).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from .local_engine.harness import MODEL_DIR

HANDSHAKE_TIMEOUT_S = 3.0
MAX_SESSIONS = 3


@dataclass(frozen=True)
class Engine:
    url: str
    api_key: str
    host: str
    port: int


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    if not (MODEL_DIR / "model.bin").exists():
        pytest.fail(f"no test model in {MODEL_DIR}: run scripts/fetch-test-model (scripts/test does)")
    argv = [sys.executable, "-m", "sttd.engine", "--model", str(MODEL_DIR), "--exit-with-stdin"]
    argv += ["--handshake-timeout", str(HANDSHAKE_TIMEOUT_S), "--max-sessions", str(MAX_SESSIONS)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        assert process.stdout is not None and process.stdin is not None
        line = json.loads(process.stdout.readline())
        host, port = line["url"].split("/")[2].rsplit(":", 1)
        yield Engine(line["url"], line["api_key"], host, int(port))
        process.stdin.close()
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def open_session(engine: Engine, timeout: float = 2.0) -> ClientConnection:
    """A session, as the user waits for it: connected and ``session.created`` within ``timeout``."""

    async def opened() -> ClientConnection:
        ws = await connect(engine.url, additional_headers={"Authorization": f"Bearer {engine.api_key}"})
        created = json.loads(await ws.recv())
        assert created["type"] == "session.created"
        return ws

    return await asyncio.wait_for(opened(), timeout)


async def closed_by_peer(reader: asyncio.StreamReader, deadline: float) -> float:
    """When the engine closed a half-open connection (it must, before ``deadline``)."""
    try:
        data = await asyncio.wait_for(reader.read(4096), max(0.01, deadline - time.monotonic()))
    except ConnectionResetError:
        data = b""
    assert data == b"", f"the engine answered a half-sent request: {data[:80]!r}"
    return time.monotonic()


def test_200_half_open_handshakes_neither_block_a_real_client_nor_stay_past_the_timeout(engine: Engine) -> None:
    async def main() -> None:
        began = time.monotonic()  # the engine's clock for each starts later, when it accepts it
        pairs = await asyncio.gather(*(asyncio.open_connection(engine.host, engine.port) for _ in range(200)))
        opened = time.monotonic()
        for _, writer in pairs:
            writer.write(b"GET /v1/realtime?intent=tr")
        await asyncio.gather(*(writer.drain() for _, writer in pairs))
        ws = await open_session(engine, 2.0)
        await ws.close()
        deadline = opened + HANDSHAKE_TIMEOUT_S + 3.0
        closed = await asyncio.gather(*(closed_by_peer(reader, deadline) for reader, _ in pairs))
        for _, writer in pairs:
            writer.close()
        # Dropped by the handshake timeout, not before it.
        assert min(closed) - began >= HANDSHAKE_TIMEOUT_S - 0.1
        # And the engine still serves.
        await (await open_session(engine)).close()

    asyncio.run(main())


def test_sessions_over_the_cap_get_503_at_once_and_a_freed_slot_is_served(engine: Engine) -> None:
    async def main() -> None:
        sessions = [await open_session(engine) for _ in range(MAX_SESSIONS)]
        started = time.monotonic()
        with pytest.raises(InvalidStatus) as info:
            await connect(engine.url, additional_headers={"Authorization": f"Bearer {engine.api_key}"})
        assert time.monotonic() - started < 1.0
        response = info.value.response
        error: dict[str, Any] = json.loads(response.body)["error"]
        assert (response.status_code, error["code"]) == (503, "too_many_sessions")
        # Strangers do not take slots: a wrong key is told so, not "too many".
        with pytest.raises(InvalidStatus) as info:
            await connect(engine.url, additional_headers={"Authorization": "Bearer sk-wrong"})
        assert info.value.response.status_code == 401
        await sessions.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the slot frees when the engine has seen the close
            try:
                sessions.append(await open_session(engine))
                break
            except InvalidStatus:
                assert time.monotonic() < deadline, "a closed session's slot was never freed"
                await asyncio.sleep(0.05)
        for ws in sessions:
            await ws.close()

    asyncio.run(main())
