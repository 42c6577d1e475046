"""``python -m bench.vad``: what sttd's own voice detection (sttd.vad) costs and how late it decides.

No sound server, no daemon: :class:`sttd.vad.VoiceDetector` is fed the
frames a microphone would deliver (24 kHz s16le, ``--chunk-ms`` each) of
espeak-ng sentences in several voices and speeds, with pauses, on a -50 dBFS
noise floor (bench/stimuli.py). It measures

* CPU: process time spent in ``feed`` per minute of audio, over ``--runs``
  runs (worst reported), and per frame (p50 / p99 / max);
* decision latency: where the voice really ended (its last sample louder
  than espeak's silence, before the noise floor was added) to the stop,
  minus ``silence_duration_ms``. *In audio* is ``audio_end_ms``; *at the
  frame* is the end of the frame whose ``feed`` returned the stop, which is
  the earliest moment a commit can be sent when frames arrive in real time;
* turns: every sentence must give exactly one SpeechStarted/SpeechStopped pair;
* the gate: how many windows the model scored, and the decisions with the
  gate off (``gate_off_differs`` lists the events that differ).

``--realtime`` instead feeds the frames at real time (each one when it is
due, as a microphone would) for ``--seconds`` of the stimulus and reports
process CPU (all threads) per audio minute, minus that of the same paced loop
without a detector: what a user pays, including the cost of running cold
every frame. Writes bench/results/vad.json (``--out``; vad-realtime.json with
``--realtime``). About 10 s on 2 cores; ``--realtime`` takes ``--seconds`` per run plus 10 s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sttd.vad import SpeechStarted, SpeechStopped, VadSettings, VoiceDetector, preload
from tests.bus import require
from tests.sound import wav_samples

from .harness import RATE, REPO
from .measure import summary
from .stimuli import VOICE_LEVEL, noise

SENTENCES = (
    ("en-us", 175, "please remember to buy milk on the way home"),
    ("en-gb", 150, "the weather is lovely today"),
    ("en-us+f3", 200, "we will meet in the library after lunch"),
    ("en-us", 140, "can you call me back tomorrow morning"),
    ("en-gb+m3", 185, "the children are playing in the garden"),
    ("en-us+f2", 165, "turn off the lights in the kitchen before you go to bed"),
    ("en-us", 175, "yes"),
    ("en-gb", 190, "send it"),
)
PAUSES_S = (0.8, 1.1, 1.5, 0.9, 1.3, 1.0, 1.2, 1.4)
CPU_GOAL_S = 0.3
LATENCY_GOAL_MS = 40.0


def _voice(voice: str, speed: int, text: str, directory: Path) -> np.ndarray:
    """espeak-ng in ``voice`` at ``speed`` words a minute, 24 kHz, leading and trailing silence cut."""
    raw, wav = directory / "raw.wav", directory / "voice.wav"
    subprocess.run([require("espeak-ng"), "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True, timeout=30)
    subprocess.run(
        [require("sox"), str(raw), "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer", str(wav)],
        check=True,
        timeout=30,
    )
    samples = wav_samples(wav)
    loud = np.flatnonzero(np.abs(samples) > VOICE_LEVEL)
    return samples[loud[0] : loud[-1] + 1]


def stimulus(rounds: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The sentences ``rounds`` times over with pauses, on the noise floor; (first, last) voiced sample of each."""
    rng = np.random.default_rng(12)
    with tempfile.TemporaryDirectory() as tmp:
        voices = [_voice(voice, speed, text, Path(tmp)) for voice, speed, text in SENTENCES]
    pieces: list[np.ndarray] = [np.zeros(int(0.5 * RATE))]
    bounds = []
    at = pieces[0].size
    for _ in range(rounds):
        for samples, pause in zip(voices, PAUSES_S, strict=True):
            bounds.append((at, at + samples.size - 1))
            pieces += [samples.astype(np.float64), np.zeros(int(pause * RATE))]
            at += samples.size + int(pause * RATE)
    signal = np.concatenate(pieces)
    signal = np.clip(np.round(signal + noise(signal.size, rng)), -32768, 32767).astype("<i2")
    return signal, bounds


def one_run(signal: np.ndarray, chunk_ms: int, settings: VadSettings, gate: bool = True) -> dict[str, Any]:
    """Feed ``signal`` in frames of ``chunk_ms``; CPU, per-frame cost and every event with its frame's end."""
    detector = VoiceDetector(settings, gate=gate)
    data = signal.tobytes()
    frame = RATE * chunk_ms // 1000 * 2
    events: list[tuple[SpeechStarted | SpeechStopped, float]] = []
    per_frame_us = []
    cpu0 = time.process_time()
    for at in range(0, len(data), frame):
        t0 = time.thread_time_ns()
        got = detector.feed(data[at : at + frame])
        per_frame_us.append((time.thread_time_ns() - t0) / 1000)
        frame_end_ms = (at + frame) / 2 * 1000 / RATE
        events.extend((event, frame_end_ms) for event in got)
    cpu = time.process_time() - cpu0
    return {"cpu_s": cpu, "per_frame_us": per_frame_us, "events": events, "windows_scored": detector.windows_scored}


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of each of this process's threads (utime + stime), by thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path("/proc/self/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        out[task.name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def paced_run(signal: np.ndarray, chunk_ms: int, settings: VadSettings | None) -> dict[str, Any]:
    """Feed ``signal`` at real time (``settings`` None: the same loop without a detector); CPU of all threads."""
    detector = VoiceDetector(settings) if settings is not None else None
    data = signal.tobytes()
    frame = RATE * chunk_ms // 1000 * 2
    threads0, cpu0, began = _thread_cpu(), time.process_time(), time.monotonic()
    for i, at in enumerate(range(0, len(data), frame)):
        time.sleep(max(0.0, began + i * chunk_ms / 1000 - time.monotonic()))
        chunk = data[at : at + frame]
        if detector is not None:
            detector.feed(chunk)
    cpu = time.process_time() - cpu0
    threads = {tid: cpu_s - threads0.get(tid, 0.0) for tid, cpu_s in _thread_cpu().items()}
    return {"cpu_s": cpu, "threads_cpu_s": sorted((round(c, 2) for c in threads.values()), reverse=True)}


def realtime(args: argparse.Namespace, settings: VadSettings, signal: np.ndarray) -> dict[str, Any]:
    """The ``--realtime`` result: CPU per audio minute of paced feeding, above the paced loop alone."""
    signal = signal[: int(args.seconds * RATE)]
    audio_min = signal.size / RATE / 60
    idle = paced_run(signal[: 10 * RATE], args.chunk_ms, None)
    idle_per_min = idle["cpu_s"] / (min(signal.size, 10 * RATE) / RATE / 60)
    runs = [paced_run(signal, args.chunk_ms, settings) for _ in range(args.runs)]
    per_min = [r["cpu_s"] / audio_min - idle_per_min for r in runs]
    return {
        "cpu_s_per_audio_minute": {
            "worst": round(max(per_min), 3),
            "each": [round(c, 3) for c in per_min],
            "paced_loop_alone": round(idle_per_min, 3),
            "goal": CPU_GOAL_S,
        },
        "threads_cpu_s": [r["threads_cpu_s"] for r in runs],
        "goals": {"cpu_met": max(per_min) <= CPU_GOAL_S},
    }


def latencies(
    events: list[tuple[SpeechStarted | SpeechStopped, float]], bounds: list[tuple[int, int]], settings: VadSettings
) -> dict[str, Any]:
    """Each sentence's turn: stop minus (end of voice + silence_duration_ms), in audio and at the frame."""
    starts = [e for e, _ in events if isinstance(e, SpeechStarted)]
    stops = [(e, t) for e, t in events if isinstance(e, SpeechStopped)]
    in_audio, at_frame, onset_error = [], [], []
    for (first, last), start, (stop, frame_end) in zip(bounds, starts, stops, strict=False):
        end_ms = (last + 1) * 1000 / RATE
        in_audio.append(stop.audio_end_ms - end_ms - settings.silence_duration_ms)
        at_frame.append(frame_end - end_ms - settings.silence_duration_ms)
        onset_error.append(start.audio_start_ms + settings.prefix_padding_ms - first * 1000 / RATE)
    return {
        "sentences": len(bounds),
        "speech_started": len(starts),
        "speech_stopped": len(stops),
        "stop_minus_silence_in_audio_ms": summary(in_audio),
        "stop_minus_silence_at_frame_ms": summary(at_frame),
        "onset_error_ms": summary(onset_error),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vad", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="times the sentences are repeated (about 40 s each)")
    parser.add_argument("--chunk-ms", type=int, default=40)
    parser.add_argument("--realtime", action="store_true", help="feed the frames at real time")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio fed with --realtime, per run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    out = args.out or REPO / "bench" / "results" / ("vad-realtime.json" if args.realtime else "vad.json")

    settings = VadSettings()
    signal, bounds = stimulus(args.rounds)
    audio_min = signal.size / RATE / 60
    load0 = time.perf_counter()
    preload()
    load_ms = (time.perf_counter() - load0) * 1000
    if args.realtime:
        return _write(out, _meta(args, settings, signal) | {"mode": "realtime"} | realtime(args, settings, signal))
    runs = [one_run(signal, args.chunk_ms, settings) for _ in range(args.runs)]
    ungated = [e for e, _ in one_run(signal, args.chunk_ms, settings, gate=False)["events"]]
    gated = [e for e, _ in runs[0]["events"]]
    cpu_per_min = [r["cpu_s"] / audio_min for r in runs]
    turns = latencies(runs[0]["events"], bounds, settings)
    same = all([e for e, _ in r["events"]] == [e for e, _ in runs[0]["events"]] for r in runs)
    frames = [us for r in runs for us in r["per_frame_us"]]
    result = _meta(args, settings, signal) | {
        "model_load_ms": round(load_ms, 1),
        "cpu_s_per_audio_minute": {
            "worst": round(max(cpu_per_min), 3),
            "each": [round(c, 3) for c in cpu_per_min],
            "goal": CPU_GOAL_S,
        },
        "feed_cpu_us_per_frame": summary(frames),
        "turns": turns,
        "runs_agree": same,
        "windows": {"scored": runs[0]["windows_scored"], "all": signal.size * 2 // 3 // 512},
        "gate_off_differs": [f"{a} / gated {b}" for a, b in zip(ungated, gated, strict=False) if a != b]
        + ([] if len(ungated) == len(gated) else [f"{len(ungated)} events / gated {len(gated)}"]),
        "goals": {
            "cpu_met": max(cpu_per_min) <= CPU_GOAL_S,
            "latency_at_frame_p99_met": (turns["stop_minus_silence_at_frame_ms"]["p99"] or 1e9) <= LATENCY_GOAL_MS,
            "one_turn_per_sentence": turns["speech_started"] == turns["speech_stopped"] == turns["sentences"],
        },
    }
    return _write(out, result)


def _meta(args: argparse.Namespace, settings: VadSettings, signal: np.ndarray) -> dict[str, Any]:
    return {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "commit": subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip(),
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "settings": settings.__dict__,
            "chunk_ms": args.chunk_ms,
            "audio_s": round(min(signal.size / RATE, args.seconds if args.realtime else 1e9), 1),
            "runs": args.runs,
        }
    }


def _write(out: Path, result: dict[str, Any]) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    json.dump({k: v for k, v in result.items() if k != "meta"}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
