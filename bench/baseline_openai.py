"""What a user would write instead of sttd: the official SDK's realtime connection, fed by parec.

    python bench/baseline_openai.py --url ws://127.0.0.1:PORT/v1 --api-key KEY [--source mic]

``--url`` is the SDK's ``websocket_base_url`` (it appends ``/realtime``).
The script connects, configures a transcription session, then starts
``parec`` on the microphone and appends its audio in 20 ms frames until
interrupted; transcripts go to stdout. It lets the
SDK reconnect after a lost connection (``on_reconnecting``); a chunk whose
send fails before the SDK has noticed the loss is gone.

The one line that is not what a user would write is the benchmark's time
stamp on stderr (``bench: main <monotonic time>``): when the script's own
code starts, after the interpreter and its imports.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import sys
import time

from openai import AsyncOpenAI
from websockets.exceptions import ConnectionClosed

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
FRAME_BYTES = 960  # 20 ms of 24 kHz s16le


async def main(url: str, api_key: str, source: str) -> None:
    client = AsyncOpenAI(api_key=api_key, websocket_base_url=url)
    async with client.realtime.connect(
        extra_query={"intent": "transcription"}, on_reconnecting=lambda event: None
    ) as conn:
        await conn.session.update(session=SESSION)  # type: ignore[arg-type]
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
            while True:
                chunk = await stdout.readexactly(FRAME_BYTES)
                with contextlib.suppress(ConnectionClosed):  # the receive loop reconnects
                    await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())

        pumping = asyncio.create_task(pump())
        try:
            async for event in conn:
                if event.type == "conversation.item.input_audio_transcription.completed":
                    print(event.transcript, flush=True)
        finally:
            pumping.cancel()
            parec.terminate()
            await parec.wait()


if __name__ == "__main__":
    print(f"bench: main {time.monotonic()}", file=sys.stderr, flush=True)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="websocket base URL, e.g. ws://127.0.0.1:8765/v1")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--source", default="mic")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.url, args.api_key, args.source))
