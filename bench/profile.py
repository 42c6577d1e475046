"""``python -m bench.profile``: where sttd's CPU goes while it streams, thread by thread.

The rig of the main run (private bus and PulseAudio, the test Realtime server
in a thread), one sttd, one dictation of speech with pauses. Each sttd
thread's CPU (schedstat) and its wake-ups (context switches) are counted over
the audio, per audio minute. ``--perf FILE`` records on-CPU samples with
``perf record -e cpu-clock`` (C and kernel frames, per thread). ``--py-spy FILE`` instead samples sttd with py-spy
(``--native``: C frames too) into a collapsed-stack file; the CPU figures are
then taken with py-spy attached, so read them from a run without it.

CPU time is counted, not wall time, so a busy machine changes the figures
little; the wake-ups do not depend on load at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .harness import _read, _tasks, finish, memory_kb, play
from .measurements import _talk, streaming, wait_first_audio
from .plan import FULL, SMOKE, log
from .rig import Daemon, Rig, SttdClient
from .stimuli import speech


def threads(pid: int) -> dict[str, tuple[int, int, int]]:
    """Per thread name (numbered when repeated): schedstat ns, voluntary and involuntary context switches."""
    found: dict[str, tuple[int, int, int]] = {}
    for tid in _tasks(pid):
        name = _read(f"/proc/{pid}/task/{tid}/comm").strip() or tid
        stat = _read(f"/proc/{pid}/task/{tid}/schedstat")
        switches = {
            line.split(":")[0]: int(line.split()[1])
            for line in _read(f"/proc/{pid}/task/{tid}/status").splitlines()
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))
        }
        key, n = name, 1
        while key in found:
            n += 1
            key = f"{name}#{n}"
        found[key] = (
            int(stat.split()[0]) if stat else 0,
            switches.get("voluntary_ctxt_switches", 0),
            switches.get("nonvoluntary_ctxt_switches", 0),
        )
    return found


def profile(
    seconds: float, chunk_ms: int, py_spy: Path | None, native: bool, perf: Path | None = None, own_vad: bool = False
) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="sttd-profile-", dir="/tmp"))
    rig = Rig(SMOKE, directory)
    try:
        daemon = Daemon(rig, "sttd", chunk_ms=chunk_ms)
        if own_vad:
            daemon.reload(own_vad=True)
        client = SttdClient(daemon)
        talk = speech(directory / "talk.wav", _talk(seconds), np.random.default_rng(3))
        first = rig.server.connection_count
        client.start()
        wait_first_audio(rig, first, 20, "sttd")
        time.sleep(0.5)
        spy = None
        if perf is not None:
            argv = ["perf", "record", "-e", "cpu-clock", "-F", "2000", "-g", "-p", str(daemon.pid), "-o", str(perf)]
            spy = subprocess.Popen([*argv, "--", "sleep", str(int(talk.seconds) + 1)], stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        elif py_spy is not None:
            argv = ["py-spy", "record", "--pid", str(daemon.pid), "--format", "raw", "--rate", "250"]
            argv += ["--output", str(py_spy), "--duration", str(int(talk.seconds) + 1), "--threads"]
            argv += ["--native"] if native else []
            spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), *argv[1:]])
            time.sleep(0.5)
        before = threads(daemon.pid)
        player, _ = play(rig.sound.env, talk.path)
        finish(player, talk.seconds + 15)
        after = threads(daemon.pid)
        client.stop()
        if spy is not None:
            spy.wait(30)
        minutes = talk.seconds / 60
        per_thread = {}
        for name, (ns, woke, preempted) in after.items():
            ns0, woke0, preempted0 = before.get(name, (0, 0, 0))
            per_thread[name] = {
                "cpu_s_per_audio_min": round((ns - ns0) / 1e9 / minutes, 3),
                "wakeups_per_audio_s": round((woke - woke0) / talk.seconds, 1),
                "preempted_per_audio_s": round((preempted - preempted0) / talk.seconds, 1),
            }
        return {
            "chunk_ms": chunk_ms,
            "audio_s": round(talk.seconds, 2),
            "cpu_s_per_audio_min": round(sum(t["cpu_s_per_audio_min"] for t in per_thread.values()), 3),
            "threads": per_thread,
            "rss_peak_mb": round(memory_kb(daemon.pid).get("VmHWM", 0) / 1024, 1),
            "frames": sum(len(rig.server.arrivals(s)) for s in rig.sessions_since(first)),
        }
    finally:
        rig.close()
        shutil.rmtree(directory, ignore_errors=True)


def latency(chunk_ms: int, clicks_s: float) -> dict[str, Any]:
    """The main run's capture → wire measurement alone (clicks, the reference recorder), for one sttd."""
    directory = Path(tempfile.mkdtemp(prefix="sttd-latency-", dir="/tmp"))
    rig = Rig(dataclasses.replace(FULL, cpu_s=2.0, clicks_s=clicks_s), directory)
    try:
        daemon = Daemon(rig, "sttd", chunk_ms=chunk_ms)
        result = streaming(rig, SttdClient(daemon), f"sttd-{chunk_ms}ms")
        return {"chunk_ms": chunk_ms, "capture_to_wire_ms": result["capture_to_wire_ms"], "clicks": result["clicks"]}
    finally:
        rig.close()
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="speech to stream (default 12)")
    parser.add_argument("--chunk-ms", type=int, default=20)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--py-spy", type=Path, help="also sample with py-spy into this collapsed-stack file")
    parser.add_argument("--native", action="store_true", help="py-spy: C frames too")
    parser.add_argument("--perf", type=Path, help="instead: perf record (cpu-clock, call graphs) into this file")
    parser.add_argument("--latency", action="store_true", help="instead: capture → wire latency alone (clicks)")
    parser.add_argument("--own-vad", action="store_true", help="sttd's own voice detection (the default model)")
    args = parser.parse_args(argv)
    for _ in range(args.runs):
        if args.latency:
            log(json.dumps(latency(args.chunk_ms, args.seconds)))
            continue
        result = profile(args.seconds, args.chunk_ms, args.py_spy, args.native, args.perf, args.own_vad)
        log(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
