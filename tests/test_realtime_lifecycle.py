"""The fake Realtime service as a whole (no sttd daemon): violations fail its context, shutdown is clean,
and its command line serves a real client.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from sttd.protocol import ClientEvents

from .realtime_client import MS, ROOT, Client, open_client, run, settings, silence, tone
from .realtime_server import running_server

# ---------------------------------------------------- lifecycle and the CLI


def test_violations_fail_running_server_and_shutdown_is_clean() -> None:
    before = set(threading.enumerate())
    with pytest.raises(AssertionError, match="Unknown parameter: 'bogus'"), running_server() as server:

        async def go() -> ConnectionClosed:
            client = await open_client(server)
            await client.send({"type": "input_audio_buffer.clear", "bogus": 1})
            await client.until("error")
            with pytest.raises(ConnectionClosed) as closed:
                await client.recv()  # the server stops while the client is connected
            return closed.value

        async def stop_later() -> ConnectionClosed:
            task = asyncio.create_task(go())
            await server.wait_for_server_event_async("error")
            await asyncio.to_thread(server.stop)
            return await task

        closed = run(stop_later)
        assert closed.rcvd is not None and closed.rcvd.code == 1001
    assert set(threading.enumerate()) <= before


def test_command_line_server(tmp_path: Path) -> None:
    dump = tmp_path / "dump.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.realtime_server", "--script", "from the cli", "--dump", str(dump)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        info = json.loads(process.stdout.readline())

        async def go() -> str:
            headers = {"Authorization": f"Bearer {info['api_key']}"}
            async with connect(info["url"], additional_headers=headers) as ws:
                ev = ClientEvents()
                await ws.send(json.dumps(ev.session_update(settings("manual"))))
                append = {"type": "input_audio_buffer.append", "audio": base64.b64encode(tone(300)).decode()}
                await ws.send(json.dumps(append))
                await ws.send(json.dumps(ev.commit()))
                while True:
                    event = json.loads(await ws.recv())
                    if event["type"].endswith("transcription.completed"):
                        return str(event["transcript"])

        assert run(go) == "from the cli"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
        assert process.returncode == 0, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    summary = json.loads(dump.read_text())
    assert summary["violations"] == []
    assert summary["turns"][0]["transcript"] == "from the cli"
    assert summary["sessions"][0]["audio_bytes"] == 300 * MS


def test_forced_speech_then_client_commit_uses_the_speech_item() -> None:
    with running_server(energy_vad=False) as server:

        async def go() -> tuple[str, dict[str, Any], Client]:
            client = await open_client(server)
            await client.append(silence(200))
            await server.wait_for_async(lambda: len(server.audio()) >= 200 * MS)
            item = await asyncio.to_thread(server.force_speech_started)
            started = await client.until("input_audio_buffer.speech_started")
            assert (started["item_id"], started["audio_start_ms"]) == (item, 0)
            await client.send(client.ev.commit())
            committed = await client.until("input_audio_buffer.committed")
            await client.until("conversation.item.done")
            await client.ws.close()
            return item, committed, client

        item, committed, client = run(go)
        assert committed["item_id"] == item
        assert "input_audio_buffer.speech_stopped" not in client.types()
        assert server.turns()[0].transcript == ""  # silence, as committed
