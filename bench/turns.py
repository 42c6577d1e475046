"""``python -m bench.turns``: sttd's own turns with gpt-live-transcribe, timed as a user meets them.

A real :class:`sttd.realtime.RealtimeSession` (the one the daemon runs, with
its :class:`sttd.vad.VoiceDetector`) streams espeak-ng sentences with pauses
on a -50 dBFS noise floor (the stimulus of ``bench.vad``) to the test
Realtime server over a real websocket on 127.0.0.1, frame by frame *in real
time* (``--chunk-ms`` frames, each fed at the wall-clock instant a
microphone would deliver it). No sound server and no daemon: what is timed
is the session and its voice detection. Measured, per sentence:

* **end of speech → commit sent**: from the instant the sentence's last
  voiced sample was spoken (the wall time its frame was fed, less the time
  from that sample to the end of the frame) to the moment the session wrote
  ``input_audio_buffer.commit`` on the socket, *minus*
  ``silence_duration_ms`` (the silence sttd must hear before it may commit).
  Goal: ≤ 40 ms at p99.
* **speech onset → first partial**: from the instant the first voiced
  sample was spoken to the first ``Transcript(final=false)`` for that
  sentence. The test server sends one word per ``live_word_ms`` (250 ms)
  of speech it hears, so this figure is bounded below by that pacing: it
  shows sttd adds nothing to it, not how fast OpenAI's model is.
* **CPU of the session thread per audio minute**: ``time.thread_time`` of the
  event-loop thread (voice detection, JSON, base64, websocket writes; the
  server runs in its own thread and is not counted), over the audio's length.

The worst of ``--runs`` runs is what counts for a goal. Writes
bench/results/turns.json (``--out``). About 45 s per run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sttd import core
from sttd import protocol as p
from sttd.credentials import ApiKey, CredentialSource
from sttd.realtime import RealtimeSession, SessionOptions
from tests.realtime_server import FakeRealtimeServer

from .harness import RATE, REPO
from .measure import summary
from .vad import SENTENCES, stimulus

COMMIT_GOAL_MS = 40.0
LIVE = p.SessionSettings(model="gpt-live-transcribe", turn_detection=p.TurnDetection("client_vad"))


class _Recorder:
    """The session's listener: the core behind it, every partial with the time it came."""

    def __init__(self) -> None:
        self.core = core.Dictation(enabled=True, language="", triggers=core.Triggers(r"\bsend\b", r"\bpurge\b"))
        self.core.start()
        self.partials: list[tuple[float, str]] = []
        self.finals: list[str] = []
        self.ready = asyncio.Event()

    def session_ready(self) -> None:
        self.core.session_ready()
        self.ready.set()

    def session_event(self, event: p.ServerEvent) -> None:
        self.core.server_event(event)
        now = time.monotonic()
        for output in self.core.take_outputs():
            if isinstance(output, core.TranscriptEmitted):
                if output.final:
                    self.finals.append(output.text)
                else:
                    self.partials.append((now, output.item_id))

    def session_reconnecting(self, reason: str) -> None:
        raise RuntimeError(f"the bench's connection dropped: {reason}")


async def one_run(signal: np.ndarray, chunk_ms: int, server: FakeRealtimeServer) -> dict[str, Any]:
    recorder = _Recorder()
    options = SessionOptions(url=server.url, settings=LIVE)
    session = RealtimeSession(options, CredentialSource(ApiKey(server.api_key, "bench")), listener=recorder)
    commits: list[float] = []
    send_commit = session._commit  # instrumented: the instant each commit is written

    async def timed_commit(ws: Any) -> None:
        await send_commit(ws)
        commits.append(time.monotonic())

    session._commit = timed_commit  # type: ignore[method-assign]
    task = asyncio.create_task(session.run())
    await asyncio.wait_for(recorder.ready.wait(), 10)
    data = signal.tobytes()
    frame = RATE * chunk_ms // 1000 * 2
    fed: list[float] = []
    cpu0 = time.thread_time()
    t0 = time.monotonic()
    for n, at in enumerate(range(0, len(data), frame)):
        delay = t0 + (n + 1) * chunk_ms / 1000 - time.monotonic()  # a frame exists once it was spoken
        if delay > 0:
            await asyncio.sleep(delay)
        session.send_audio(data[at : at + frame])
        fed.append(time.monotonic())
    cpu = time.thread_time() - cpu0
    session.finish()
    await asyncio.wait_for(task, 30)
    return {"cpu_s": cpu, "fed": fed, "commits": commits, "partials": recorder.partials, "finals": recorder.finals}


def spoken_at(sample: int, fed: list[float], chunk_ms: int) -> float:
    """The wall time a sample was spoken: its frame's feed time less the rest of that frame."""
    per_frame = RATE * chunk_ms // 1000
    index = min(sample // per_frame, len(fed) - 1)
    frame_end = (index + 1) * per_frame
    return fed[index] - (frame_end - sample) / RATE


def figures(run: dict[str, Any], bounds: list[tuple[int, int]], chunk_ms: int, silence_ms: int) -> dict[str, Any]:
    commit_ms, partial_ms = [], []
    for (_, last), commit in zip(bounds, run["commits"], strict=False):
        commit_ms.append((commit - spoken_at(last + 1, run["fed"], chunk_ms)) * 1000 - silence_ms)
    # The n-th sentence's partials are those of the n-th distinct item id.
    first_partial: dict[str, float] = {}
    for at, item in run["partials"]:
        first_partial.setdefault(item, at)
    onsets = [spoken_at(first, run["fed"], chunk_ms) for first, _ in bounds]
    for onset, at in zip(onsets, first_partial.values(), strict=False):
        partial_ms.append((at - onset) * 1000)
    audio_min = len(run["fed"]) * chunk_ms / 60000
    return {
        "sentences": len(bounds),
        "commits": len(run["commits"]),
        "finals": len(run["finals"]),
        "end_of_speech_to_commit_minus_silence_ms": summary(commit_ms),
        "onset_to_first_partial_ms": summary(partial_ms),
        "session_thread_cpu_s_per_audio_min": round(run["cpu_s"] / audio_min, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.turns", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="times the eight sentences are said (about 40 s)")
    parser.add_argument("--chunk-ms", type=int, default=40)
    parser.add_argument("--sentences", type=int, default=0, help="only the first N sentences (0: all)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "turns.json")
    args = parser.parse_args(argv)

    signal, bounds = stimulus(args.rounds)
    texts = [text for _, _, text in SENTENCES] * args.rounds
    if args.sentences:
        bounds, texts = bounds[: args.sentences], texts[: args.sentences]
        signal = signal[: bounds[-1][1] + RATE]  # a second of the pause after the last one
    silence_ms = LIVE.turn_detection.silence_duration_ms
    runs = []
    for n in range(args.runs):
        with FakeRealtimeServer(script=texts) as server:
            run = asyncio.run(one_run(signal, args.chunk_ms, server))
            server.assert_no_violations()
        runs.append(figures(run, bounds, args.chunk_ms, silence_ms))
        print(f"run {n + 1}: {json.dumps(runs[-1])}", file=sys.stderr)
    worst_commit = max(r["end_of_speech_to_commit_minus_silence_ms"]["p99"] for r in runs)
    result = {
        "bench": "turns",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0))},
        "chunk_ms": args.chunk_ms,
        "silence_duration_ms": silence_ms,
        "runs": runs,
        "worst": {
            "end_of_speech_to_commit_minus_silence_p99_ms": worst_commit,
            "onset_to_first_partial_p99_ms": max(r["onset_to_first_partial_ms"]["p99"] for r in runs),
            "session_thread_cpu_s_per_audio_min": max(r["session_thread_cpu_s_per_audio_min"] for r in runs),
        },
        "goals": {"end_of_speech_to_commit_minus_silence_p99_ms": COMMIT_GOAL_MS},
        "met": {"end_of_speech_to_commit": worst_commit <= COMMIT_GOAL_MS},
        "complete": all(r["commits"] == r["sentences"] == r["finals"] for r in runs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["worst"]), file=sys.stderr)
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
