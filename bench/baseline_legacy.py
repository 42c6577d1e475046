"""The shape sttd grew from: connect first, then open the microphone, and send 4096-sample chunks.

    python bench/baseline_legacy.py --url ws://127.0.0.1:PORT/v1/realtime?intent=transcription --api-key KEY

The old browser module this project started from connected the websocket,
then opened the microphone and sent what its 4096-sample audio buffer
delivered (170 ms at 24 kHz). Here the microphone is ``parec`` and the
protocol is today's (it would be refused otherwise), but the audio path is
the old one. After a lost connection it starts over the same way: connect,
then open the microphone.

As in ``baseline_openai.py``, the one added line is the benchmark's time
stamp on stderr (``bench: main <monotonic time>``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

CHUNK_SAMPLES = 4096
SESSION = {
    "type": "transcription",
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "gpt-4o-mini-transcribe"},
            "turn_detection": {"type": "server_vad"},
        }
    },
}


async def session(url: str, api_key: str, source: str) -> None:
    async with connect(url, additional_headers={"Authorization": f"Bearer {api_key}"}) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": SESSION}))
        parec = await asyncio.create_subprocess_exec(
            "parec",
            "-d",
            source,
            "--raw",
            "--format=s16le",
            "--rate=24000",
            "--channels=1",
            stdout=asyncio.subprocess.PIPE,
        )
        assert parec.stdout is not None
        stdout = parec.stdout

        async def pump() -> None:
            with contextlib.suppress(ConnectionClosed, asyncio.IncompleteReadError):  # the receive loop ends too
                while True:
                    chunk = await stdout.readexactly(CHUNK_SAMPLES * 2)
                    audio = base64.b64encode(chunk).decode()
                    await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))

        pumping = asyncio.create_task(pump())
        try:
            async for message in ws:
                event = json.loads(message)
                if event["type"] == "conversation.item.input_audio_transcription.completed":
                    print(event["transcript"], flush=True)
        finally:
            pumping.cancel()
            parec.terminate()
            await parec.wait()


async def main(url: str, api_key: str, source: str) -> None:
    while True:
        with contextlib.suppress(ConnectionClosed, OSError):
            await session(url, api_key, source)
        await asyncio.sleep(0.5)


if __name__ == "__main__":
    print(f"bench: main {time.monotonic()}", file=sys.stderr, flush=True)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="the Realtime URL, ?intent=transcription included")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--source", default="mic")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.url, args.api_key, args.source))
