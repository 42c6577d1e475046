"""``python -m bench``: sttd's latency, CPU and memory, side by side with what a user would run instead.

Everything runs on this machine with real components: a throwaway PulseAudio
with a virtual microphone fed by ``paplay``, a private session bus, the
installed ``sttd`` as a subprocess, and the test Realtime server in a thread
of this process (:class:`bench.harness.TimedServer`). See bench/README.md for
the method and the goals.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import floor, report
from .harness import (
    REPO,
    cpu_seconds,
    memory_kb,
    run_ns,
    sleep_until,
    wakeups,
)
from .measurements import deliveries, drop, engine, start_and_stop, streaming
from .plan import CLIENTS, FULL, SMOKE, Plan, log
from .rig import BaselineClient, Daemon, Rig, SttdClient

__all__ = ["main"]


@dataclass
class Results:
    meta: dict[str, Any]
    clients: dict[str, dict[str, Any]] = field(default_factory=lambda: {c: {} for c in CLIENTS})
    sttd: dict[str, Any] = field(default_factory=dict)
    chunk_ms: dict[str, dict[str, Any]] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)
    floor: dict[str, Any] = field(default_factory=dict)
    """What the platform costs (``bench.floor``), one sweep per run."""
    goals: list[dict[str, Any]] = field(default_factory=list)


def _meta(plan: Plan) -> dict[str, Any]:
    def version(argv: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
            return out.splitlines()[0] if out else ""
        return ""

    import openai
    import websockets

    import sttd

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": "smoke" if plan.smoke else "full",
        "commit": version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "uncommitted_changes": bool(version(["git", "-C", str(REPO), "status", "--porcelain", "--", "sttd"])),
        "sttd": sttd.__version__,
        "python": platform.python_version(),
        "openai": openai.__version__,
        "websockets": websockets.__version__,
        "pulseaudio": version(["pulseaudio", "--version"]),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "plan": asdict(plan),
    }


def run(plan: Plan, keep: bool = False, with_engine: bool = True) -> Results:
    """The whole benchmark; the work directory (logs, wavs) is removed unless ``keep`` or a failure."""
    results = Results(_meta(plan))
    started = time.monotonic()
    phases: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(name: str) -> Iterator[None]:
        t = time.monotonic()
        yield
        phases[name] = round(time.monotonic() - t, 1)

    directory = Path(tempfile.mkdtemp(prefix="sttd-bench-", dir="/tmp"))  # unix socket paths must stay short
    rig = Rig(plan, directory)
    try:
        daemon = Daemon(rig, "sttd", chunk_ms=plan.main_chunk_ms)
        sttd = SttdClient(daemon)
        c = results.clients
        with phase("sttd"):
            _sttd(rig, daemon, sttd, results)
        # sttd is idle from here while the baselines run: its idle CPU is measured meanwhile.
        time.sleep(0.5)
        idle0 = (time.monotonic(), run_ns(daemon.pid), cpu_seconds(daemon.pid), wakeups(daemon.pid))
        for kind in ("openai", "legacy"):
            with phase(kind):
                baseline = BaselineClient(rig, kind)
                c[kind]["streaming"] = streaming(rig, baseline, kind)
                for delay in plan.handshake_delays_ms:
                    c[kind][f"start_handshake_{delay}ms"] = start_and_stop(
                        rig, baseline, delay, plan.start_reps_baseline
                    )
                c[kind]["drop"] = drop(rig, baseline)
        sleep_until(idle0[0] + plan.idle_min_s)
        idle1 = (time.monotonic(), run_ns(daemon.pid), cpu_seconds(daemon.pid), wakeups(daemon.pid))
        minutes = (idle1[0] - idle0[0]) / 60
        memory = memory_kb(daemon.pid)
        results.sttd["idle"] = {
            "seconds": round(idle1[0] - idle0[0], 1),
            "cpu_ms_per_min": round((idle1[1] - idle0[1]) / 1e6 / minutes, 3),
            "cpu_ms_per_min_ticks": round((idle1[2] - idle0[2]) * 1000 / minutes, 1),
            "wakeups_per_min": round((idle1[3] - idle0[3]) / minutes, 1),
        }
        results.sttd["memory"] = {
            "rss_peak_mb": round(memory.get("VmHWM", 0) / 1024, 1),
            "rss_idle_mb": round(memory.get("VmRSS", 0) / 1024, 1),
        }
        results.chunk_ms[str(plan.main_chunk_ms)] = c["sttd"]["streaming"]
        with phase("chunk_ms"):
            for chunk in plan.chunk_variants:
                daemon.reload(chunk_ms=chunk)
                results.chunk_ms[str(chunk)] = streaming(rig, sttd, f"sttd-{chunk}ms")
            # The default model: sttd's own voice detection runs on every frame as well.
            daemon.reload(chunk_ms=report.SAME_FRAME_MS, own_vad=True)
            results.sttd["streaming_own_vad"] = streaming(rig, sttd, f"sttd-{report.SAME_FRAME_MS}ms-own-vad")
        daemon.terminate()
        with phase("floor"):  # sttd is gone and nothing plays: the floors have the machine to themselves
            results.floor = floor.measure(rig.sound.env, plan.floor_s, plan.floor_frames_ms)
        if with_engine:  # the offline engine's figures have no goal: measured in the first run only
            with phase("engine"):
                results.engine = engine(rig)
        results.meta["protocol_violations"] = rig.server.violations
    except BaseException:
        log(f"failed; logs and recordings are in {directory}")
        keep = True
        raise
    finally:
        rig.close()
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
    results.meta["duration_s"] = round(time.monotonic() - started, 1)
    results.meta["phases_s"] = phases
    results.goals = report.goals(results)
    return results


def _sttd(rig: Rig, daemon: Daemon, sttd: SttdClient, results: Results) -> None:
    """Everything measured on the main sttd (``[audio] chunk_ms`` = the plan's main one)."""
    plan, c = rig.plan, results.clients["sttd"]
    c["streaming"] = streaming(rig, sttd, f"sttd-{plan.main_chunk_ms}ms")
    for delay in plan.handshake_delays_ms:
        c[f"start_handshake_{delay}ms"] = start_and_stop(rig, sttd, delay, plan.start_reps)
    c["drop"] = drop(rig, sttd)
    # Pre-roll: the microphone stays open while idle (after a reload, from the end of the next dictation).
    daemon.reload(preroll_ms=plan.preroll_ms)
    sttd.start()
    sttd.stop()
    results.sttd["start_with_preroll"] = start_and_stop(rig, sttd, 0, plan.preroll_reps)
    daemon.reload(preroll_ms=0)
    results.sttd["transcripts"] = deliveries(rig, daemon)
    daemon.reload(hooks=False)
    results.sttd["transcripts_without_hooks"] = deliveries(rig, daemon, hooks=False)
    daemon.reload(hooks=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0] if __doc__ else "")
    parser.add_argument("--smoke", action="store_true", help="tiny durations, one repetition (for CI: seconds)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="where the results go")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, recordings) in /tmp")
    parser.add_argument("--runs", type=int, help="whole runs; every goal counts its worst (default 3, smoke 1)")
    args = parser.parse_args(argv)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Launched in the background (`python -m bench &`): SIGINT is ignored, and the baselines
        # would inherit that and sit out every stop until they are killed. They get the default back.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    plan = SMOKE if args.smoke else FULL
    runs = args.runs or (1 if plan.smoke else 3)
    all_results = []
    for n in range(runs):
        log(f"run {n + 1} of {runs}")
        all_results.append(run(plan, keep=args.keep, with_engine=n == 0))
    results = all_results[0]
    per_run = [r.goals for r in all_results]
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    data = asdict(results)
    data["goals"] = report.combined(per_run)
    data["floor"] = floor.combined([r.floor for r in all_results])
    data["other_runs"] = [asdict(r) for r in all_results[1:]]
    data["meta"]["runs"] = runs
    data["meta"]["duration_s"] = round(sum(r.meta["duration_s"] for r in all_results), 1)
    json_path = args.out / f"{stamp}-{plan_name(plan)}.json"
    json_path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    md_path = args.out / ("latest.md" if not plan.smoke else "smoke.md")
    md_path.write_text(report.markdown(data), encoding="utf-8")
    log(f"wrote {json_path} and {md_path} in {data['meta']['duration_s']} s")
    return 0


def plan_name(plan: Plan) -> str:
    return "smoke" if plan.smoke else "full"
