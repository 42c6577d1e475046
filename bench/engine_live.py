"""The offline engine, live: first partial, end of speech → final, CPU per audio minute, WER; 1 and 3 sessions.

Straight at ``sttd-engine`` over its private unix socket (the way sttd
connects), with the Realtime protocol, so the numbers are the engine's own:
each session streams espeak-ng sentences (≤ 5 s) at real time in 40 ms
frames, with 1.5 s of digital silence between them, as
``gpt-live-transcribe`` (no turn detection: the client commits each turn
``silence_duration_ms`` after the voice ends, where sttd's own voice
detection commits) and as ``gpt-4o-mini-transcribe`` (the engine's server
VAD commits). Both engines run in the same invocation:

* **baseline**: ``STTD_ENGINE_PARTIALS=off STTD_ENGINE_SHORT_FINALS=off``,
  the engine before this work (no deltas before the commit; every final
  encodes a full 30 s window);
* **no-lookahead**: ``STTD_ENGINE_SPECULATIVE_FINALS=off``, the live engine
  with finals decoded only once committed;
* **live**: partial drafts from 0.45 s after the onset, finals from a window
  of the turn's own length, decoded ahead when the pause begins.

Figures per mode: speech onset → first delta (live model only), end of voice
→ ``completed`` (p50, p99), engine CPU seconds per minute of audio streamed,
WER of the finals, whether every session's partial text only grew and its
finals came in commit order. Run::

    .venv/bin/python -m bench.engine_live [--sessions 1 3] [--rounds 2]

On a shared machine the timings move with whatever else runs: read them with
the load average printed beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import unix_connect

from sttd.config import LocalConfig
from sttd.engine.supervisor import EngineProcess
from tests.wer import wer

from .measure import summary
from .stimuli import voice

REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = Path(os.environ.get("STTD_TEST_MODEL", REPO / ".cache" / "whisper-base"))
RATE = 24000
FRAME = RATE * 40 // 1000
SILENCE_MS = 500
SENTENCES = (
    "please remember to buy milk on the way home",
    "the weather is lovely today",
    "we will meet in the library after lunch",
    "can you call me back tomorrow morning",
    "the children are playing in the garden",
    "turn off the lights in the kitchen before you go to bed",
)
GAP_S = 1.5
LOG_LEVEL = os.environ.get("BENCH_ENGINE_LOG", "WARNING")
"""The engine's log level (DEBUG: each draft and final with its decode time, relayed to this logger)."""
MODES = {
    "baseline": {"STTD_ENGINE_PARTIALS": "off", "STTD_ENGINE_SHORT_FINALS": "off"},
    "no-lookahead": {"STTD_ENGINE_SPECULATIVE_FINALS": "off"},
    "live": {},
}
"""baseline: the engine before issue 15; no-lookahead: live, but finals decoded only once committed."""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_session(sock: str, key: str, model: str, order: list[str], start_delay: float) -> dict[str, Any]:
    """Stream every sentence once in a session; the events with their arrival times."""
    await asyncio.sleep(start_delay)
    headers = {"Authorization": f"Bearer {key}"}
    url = "ws://localhost/v1/realtime?intent=transcription"
    async with unix_connect(sock, url, additional_headers=headers, max_size=2**24) as ws:
        live = model == "gpt-live-transcribe"
        audio_input: dict[str, Any] = {
            "format": {"type": "audio/pcm", "rate": RATE},
            "transcription": {"model": model, "language": "en"},
        }
        if not live:
            audio_input["turn_detection"] = {"type": "server_vad", "silence_duration_ms": SILENCE_MS}
        await ws.send(
            json.dumps(
                {"type": "session.update", "session": {"type": "transcription", "audio": {"input": audio_input}}}
            )
        )
        events: list[tuple[float, dict[str, Any]]] = []

        async def receive() -> None:
            async for raw in ws:
                events.append((time.monotonic(), json.loads(raw)))

        receiver = asyncio.create_task(receive())
        marks: list[tuple[str, float, float]] = []  # sentence, voice onset, voice end (monotonic)
        t0 = time.monotonic()
        sent = 0
        for text in order:
            pcm = voice(text).astype(np.int16)
            signal = np.concatenate([np.zeros(int(0.3 * RATE), np.int16), pcm, np.zeros(int(GAP_S * RATE), np.int16)])
            onset_at = sent + int(0.3 * RATE)
            end_at = onset_at + pcm.size
            committed = False
            for i in range(0, signal.size, FRAME):
                chunk = signal[i : i + FRAME]
                await ws.send(
                    json.dumps(
                        {"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk.tobytes()).decode()}
                    )
                )
                sent += chunk.size
                due = t0 + sent / RATE
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if live and not committed and sent >= end_at + SILENCE_MS * RATE // 1000:
                    await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
                    committed = True
            marks.append((text, t0 + onset_at / RATE, t0 + end_at / RATE))
        deadline = time.monotonic() + 60
        while sum(e["type"] == "conversation.item.input_audio_transcription.completed" for _, e in events) < len(order):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        receiver.cancel()
    return {"events": events, "marks": marks}


def figures(run: dict[str, Any], live: bool) -> dict[str, Any]:
    """Per sentence: onset → first delta, end of voice → completed, WER; partials grew; finals in order."""
    events, marks = run["events"], run["marks"]
    committed = [e["item_id"] for _, e in events if e["type"] == "input_audio_buffer.committed"]
    completed = [(t, e) for t, e in events if e["type"] == "conversation.item.input_audio_transcription.completed"]
    first_delta: dict[str, float] = {}
    text: dict[str, str] = {}
    for t, e in events:
        if e["type"] == "conversation.item.input_audio_transcription.delta":
            first_delta.setdefault(e["item_id"], t)
            text[e["item_id"]] = text.get(e["item_id"], "") + e.get("delta", "")
    in_order = [e["item_id"] for _, e in completed] == committed[: len(completed)]
    out: dict[str, Any] = {"first_partial_ms": [], "final_ms": [], "wer": [], "in_order": in_order}
    for (sentence, onset, end), (t, e) in zip(marks, completed, strict=False):
        out["final_ms"].append((t - end) * 1000)
        out["wer"].append(wer(sentence, e["transcript"]))
        first = first_delta.get(e["item_id"])
        commit_t = next(
            (
                ct
                for ct, ce in events
                if ce.get("item_id") == e["item_id"] and ce["type"] == "input_audio_buffer.committed"
            ),
            None,
        )
        if live and first is not None and commit_t is not None and first < commit_t:
            out["first_partial_ms"].append((first - onset) * 1000)
    return out


async def measure(mode: str, sessions: int, rounds: int, model: str) -> dict[str, Any]:
    for name, value in MODES[mode].items():
        os.environ[name] = value
    sock_dir = tempfile.mkdtemp(prefix="sttd-b-", dir="/tmp")
    sock = os.path.join(sock_dir, "engine.sock")
    try:
        process = EngineProcess(LocalConfig(model=str(MODEL_DIR)), log_level=LOG_LEVEL, unix_socket=sock)
        async with process as ep:
            # The engine's second stdout line: loaded (and warmed up), so loading is not in the figures.
            problem = await process.model_problem(120)
            if problem is not None:
                raise SystemExit(f"the engine cannot load its model: {problem}")
            results: list[dict[str, Any]] = []
            cpu0, load0 = cpu_seconds(ep.pid), os.getloadavg()[0]
            streamed = 0.0
            for r in range(rounds):
                orders = [list(np.roll(SENTENCES, k + r)) for k in range(sessions)]
                runs = await asyncio.gather(
                    *(one_session(sock, ep.api_key, model, orders[k], 0.37 * k) for k in range(sessions))
                )
                streamed += sum(len(o) * GAP_S + sum(voice(s).size / RATE + 0.3 for s in o) for o in orders)
                results += [figures(run, model == "gpt-live-transcribe") for run in runs]
            cpu = cpu_seconds(ep.pid) - cpu0
    finally:
        for name in MODES[mode]:
            os.environ.pop(name, None)
        os.rmdir(sock_dir)
    flat: dict[str, list[float]] = {"first_partial_ms": [], "final_ms": [], "wer": []}
    for result in results:
        for key in flat:
            flat[key] += result[key]
    return {
        "mode": mode,
        "model": model,
        "sessions": sessions,
        "first_partial_ms": summary(flat["first_partial_ms"], 0),
        "final_ms": summary(flat["final_ms"], 0),
        "wer": round(float(np.mean(flat["wer"])), 3) if flat["wer"] else None,
        "cpu_s_per_audio_min": round(cpu / streamed * 60, 1),
        "finals_in_commit_order": all(r["in_order"] for r in results),
        "load_average": round((load0 + os.getloadavg()[0]) / 2, 2),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| engine | model | sessions | onset → first partial p50 / p99 (ms) | end of voice → final p50 / p99 (ms) "
        "| CPU s per audio min | WER | finals in order | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fp, fm = r["first_partial_ms"], r["final_ms"]
        partial = "—" if not fp["n"] else f"{fp['p50']:.0f} / {fp['p99']:.0f}"
        lines.append(
            f"| {r['mode']} | {r['model']} | {r['sessions']} | {partial} | {fm['p50']:.0f} / {fm['p99']:.0f} "
            f"| {r['cpu_s_per_audio_min']} | {r['wer']} | {'yes' if r['finals_in_commit_order'] else 'NO'} "
            f"| {r['load_average']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_live", description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["gpt-live-transcribe", "gpt-4o-mini-transcribe"])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = []
    for sessions in args.sessions:
        for model in args.models:
            for mode in args.modes:
                row = asyncio.run(measure(mode, sessions, args.rounds, model))
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
