"""The offline engine's supervisor: an engine that cannot load its model or cannot start, and one whose
supervisor goes away.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from sttd.config import LocalConfig
from sttd.engine.supervisor import EngineError, EngineProcess

from ..openai_models import server_event_problems
from .harness import in_thread

# ------------------------------------------------------------ the supervisor


def test_an_engine_that_cannot_load_its_model_refuses_sessions_clearly(tmp_path: Path) -> None:
    async def body(stop: asyncio.Event, ready: Callable[[Any], None]) -> None:
        process = EngineProcess(LocalConfig(model=str(tmp_path)), log_level="INFO")  # a directory without a model
        async with process as ep:
            ready((ep, process))
            await stop.wait()
        ready((ep, process))

    (ep, process), stop = in_thread(body)
    try:

        async def client() -> tuple[list[dict[str, Any]], int | None, str | None]:
            ws = await connect(ep.url, additional_headers={"Authorization": f"Bearer {ep.api_key}"})
            events = []
            with pytest.raises(ConnectionClosed):
                while True:
                    events.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            return events, ws.close_code, ws.close_reason

        deadline = time.monotonic() + 30
        while True:
            events, code, reason = asyncio.run(client())
            if code == 4000 or time.monotonic() > deadline:
                break
        assert code == 4000
        assert reason is not None and "cannot load the model" in reason
        error = events[-1]
        assert error["type"] == "error" and error["error"]["code"] == "model_unavailable"
        assert all(server_event_problems(e) == [] for e in events)
    finally:
        stop()
    assert process.returncode == 0
    with pytest.raises(ProcessLookupError):
        os.killpg(ep.pid, 0)  # the whole process group is gone


def test_an_engine_that_cannot_start_is_an_engine_error(tmp_path: Path) -> None:
    process = EngineProcess(LocalConfig(model="base.en"), unix_socket=str(tmp_path / "no" / "such" / "dir.sock"))

    async def main() -> None:
        with pytest.raises(EngineError, match=r"exited with code 1 before it was ready: .*cannot listen"):
            await process.start()

    asyncio.run(main())


def test_the_engine_exits_when_its_supervisor_goes_away(tmp_path: Path) -> None:
    engine = subprocess.Popen(
        [sys.executable, "-m", "sttd.engine", "--model", str(tmp_path), "--exit-with-stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert engine.stdout is not None and engine.stdin is not None
        assert json.loads(engine.stdout.readline())["url"].startswith("ws://127.0.0.1:")
        engine.stdin.close()  # what a supervisor's death does
        assert engine.wait(15) == 0
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
