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
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tests.bus import SessionBus
from tests.daemon import Sttd
from tests.sound import SoundServer
from tests.wer import wer

from . import report
from .harness import (
    RATE,
    REPO,
    Probe,
    Reference,
    TimedServer,
    children,
    cpu_seconds,
    finish,
    memory_kb,
    play,
    run_ns,
    sleep_until,
    stop_group,
    wait_for,
    wakeups,
)
from .measure import Piece, align, covered, find, ms, session_position, summary
from .stimuli import Stimulus, clicks, speech, voice

MODEL_DIR = Path(os.environ.get("STTD_TEST_MODEL", REPO / ".cache" / "whisper-base"))
START_SENTENCE = "the quick brown fox jumps over the lazy dog while seven wizards quietly box the jolly fat frogs"
DROP_SENTENCES = ("please write this down", "the meeting moves to thursday at four in the afternoon")
ENGINE_SENTENCES = (
    "please remember to buy milk on the way home",
    "the weather is lovely today",
    "we will meet in the library after lunch",
    "can you call me back tomorrow morning",
    "the children are playing in the garden",
    "turn off the lights in the kitchen before you go to bed",
)
CLIENTS = ("sttd", "openai", "legacy")
LEAD_S = 0.5021
"""Noise floor before the voice in the Start measurement (not a whole number of 5 ms periods: the
voice starts inside one of the microphone's periods, not on a boundary)."""


@dataclass(frozen=True)
class Plan:
    """How long and how often; ``--smoke`` shrinks everything (numbers then mean nothing)."""

    smoke: bool
    cpu_s: float
    """Speech streamed with the client alone on the microphone, for its CPU time."""
    clicks_s: float
    start_reps: int
    start_reps_baseline: int
    preroll_reps: int
    """Start measurements with ``[audio] preroll_ms`` (the microphone kept open while idle)."""
    start_window_s: float
    """Start → Stop in the start measurements (speech keeps going past Stop)."""
    handshake_delays_ms: tuple[int, ...]
    drop_parts: tuple[str | float, ...]
    drop_into_s: float
    """The drop comes this long after the last pause of ``drop_parts``: mid-sentence."""
    turns: int
    idle_min_s: float
    engine_sentences: tuple[str, ...]
    chunk_variants: tuple[int, ...]
    settle: float = 1.0
    """Scales the pauses that let things settle (shorter in the smoke run)."""
    main_chunk_ms: int = 40
    preroll_ms: int = 300


FULL = Plan(
    smoke=False,
    cpu_s=12.0,
    clicks_s=15.0,
    start_reps=5,
    start_reps_baseline=3,
    preroll_reps=3,
    start_window_s=2.5,
    handshake_delays_ms=(0, 1000),
    drop_parts=(DROP_SENTENCES[0], 0.8, DROP_SENTENCES[1], 0.4),
    drop_into_s=1.2,
    turns=100,
    idle_min_s=60.0,
    engine_sentences=ENGINE_SENTENCES,
    chunk_variants=(20,),
)
SMOKE = Plan(
    smoke=True,
    cpu_s=0.5,
    clicks_s=0.7,
    start_reps=1,
    start_reps_baseline=1,
    preroll_reps=1,
    start_window_s=0.6,
    handshake_delays_ms=(0, 1000),
    drop_parts=("one", 0.2, "two three", 0.1),
    drop_into_s=0.15,
    turns=3,
    idle_min_s=0.0,
    engine_sentences=ENGINE_SENTENCES[1:2],
    chunk_variants=(20,),
    settle=0.3,
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')} {time.monotonic() % 1000:.2f}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the rig


class Rig:
    """Bus, sound server, Realtime server, reference recorder and D-Bus probe for one run."""

    def __init__(self, plan: Plan, directory: Path) -> None:
        self.plan = plan
        self.dir = directory
        self.rng = np.random.default_rng(8)
        self.paplay_latency_s = 0.01
        """Launch of paplay → its first sample in the microphone; measured by the first click run."""
        self._closers: list[Callable[[], None]] = []
        self.daemons: list[Daemon] = []
        self.groups: list[subprocess.Popen[bytes]] = []
        """Process groups started for the baselines."""
        self.bus = SessionBus(directory / "bus")
        self._closers.append(self.bus.stop)
        (directory / "pulse").mkdir()
        self.sound = SoundServer("pulseaudio", directory / "pulse")
        self._closers.append(self.sound.close)
        self.sound.start()
        self.server = TimedServer()
        self.server.start()
        self._closers.append(self.server.stop)
        self._reference: Reference | None = None
        self._closers.append(self._stop_reference)
        self.probe = Probe({**os.environ, **self.bus.env()})
        self._closers.append(self.probe.close)

    def close(self) -> None:
        for daemon in self.daemons:  # before the bus and the sound server they use go away
            if daemon.sttd.process.poll() is None:
                daemon.terminate()
        for group in self.groups:
            stop_group(group, signal.SIGKILL, 5)
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception as exc:  # teardown goes on; the run's result is already written
                log(f"teardown: {exc!r}")

    @property
    def reference(self) -> Reference:
        assert self._reference is not None, "the reference recorder is not running (use Rig.observed)"
        return self._reference

    @contextlib.contextmanager
    def observed(self) -> Iterator[Reference]:
        """Run the reference recorder for the block.

        It asks the microphone for 5 ms periods, so while it runs every client
        gets audio at that pace: CPU is measured without it.
        """
        self._reference = Reference(self.sound.env)
        try:
            yield self._reference
        finally:
            self._stop_reference()

    def _stop_reference(self) -> None:
        if self._reference is not None:
            self._reference.close()
            self._reference = None

    def settle(self, seconds: float) -> None:
        """Let things settle (a pause scaled by the plan)."""
        time.sleep(seconds * self.plan.settle)

    def sessions_since(self, first: int) -> list[int]:
        return list(range(first, self.server.connection_count))

    def window(self, r_lo: int, r_hi: int | None = None) -> tuple[np.ndarray, int]:
        """Reference samples [r_lo, r_hi) (clipped at 0) and where they start."""
        lo = max(0, r_lo)
        return self.reference.samples(lo, r_hi), lo

    def locate(self, stimulus: Stimulus, reference: np.ndarray, base: int) -> int:
        """Where a played stimulus starts in the microphone's stream (its first 250 ms, checked sample by sample)."""
        head = stimulus.samples[: RATE // 4]
        lag = find(head, reference)
        got = reference[lag : lag + len(head)]
        if lag < 0 or len(got) < len(head) or np.max(np.abs(got.astype(np.int32) - head)) > 2:
            raise RuntimeError(f"{stimulus.path.name} is not in the microphone's stream as played")
        return base + lag

    def pieces(
        self, sessions: list[int], reference: np.ndarray, base: int, since: float = 0.0
    ) -> dict[int, list[Piece]]:
        """Each session's audio placed in the reference (from the first frame that arrived after ``since``)."""
        found = {}
        for s in sessions:
            start = next((a.start // 2 for a in self.server.arrivals(s) if a.t >= since), None)
            found[s] = [] if start is None else align(self.server.session_pcm(s), reference, base, start)
        return found


class Daemon:
    """``sttd`` (the installed console script) with its own config, hooks log and state."""

    def __init__(self, rig: Rig, name: str, *, chunk_ms: int = 40, local_model: Path | None = None) -> None:
        self.rig = rig
        self.dir = rig.dir / name
        self.dir.mkdir()
        self.hooks_log = self.dir / "hooks.log"
        self.hooks_log.touch()
        self.config = self.dir / "config.toml"
        self.local_model = local_model
        self.chunk_ms = chunk_ms
        self.preroll_ms = 0
        self.hooks = True
        self.write_config()
        env = {
            **rig.bus.env(),
            "PULSE_SERVER": rig.sound.server,
            "OPENAI_API_KEY": rig.server.api_key if local_model is None else "",
            "HF_HUB_OFFLINE": "1",
        }
        self.sttd = Sttd(self.dir, env, self.config, extra_args=("--log-level", "INFO"))
        rig.daemons.append(self)
        self.sttd.wait_ready(30)

    def write_config(self) -> None:
        # The hook records its own start: bash's $EPOCHREALTIME (CLOCK_REALTIME, microseconds).
        stamp = 'printf "%s %s\\n" "$STTD_ITEM_ID" "$EPOCHREALTIME" >> "$0"'
        text = f'[realtime]\nurl = "{self.rig.server.url}"\n'
        text += 'engine = "local"\n' if self.local_model else 'engine = "openai"\n'
        # The service's turn detection, as the SDK baseline uses: the figures compare like with like.
        # sttd's own turns (gpt-live-transcribe, the default) are measured by bench/turns.py and bench/vad.py.
        text += 'model = "gpt-transcribe"\n'
        text += f"\n[audio]\nchunk_ms = {self.chunk_ms}\npreroll_ms = {self.preroll_ms}\n"
        if self.hooks:
            text += f'\n[hooks]\ntranscript = ["bash", "-c", \'{stamp}\', "{self.hooks_log}"]\n'
        if self.local_model:
            text += f'\n[local]\nmodel = "{self.local_model}"\n'
        self.config.write_text(text, encoding="utf-8")

    def reload(self, chunk_ms: int | None = None, preroll_ms: int | None = None, hooks: bool | None = None) -> None:
        """SIGHUP with a changed configuration; returns once sttd says it reloaded."""
        self.chunk_ms = self.chunk_ms if chunk_ms is None else chunk_ms
        self.preroll_ms = self.preroll_ms if preroll_ms is None else preroll_ms
        self.hooks = self.hooks if hooks is None else hooks
        self.write_config()
        count = self.sttd.log.count("configuration reloaded")
        self.sttd.process.send_signal(signal.SIGHUP)
        wait_for(lambda: self.sttd.log.count("configuration reloaded") > count, 10, "sttd to reload")

    @property
    def pid(self) -> int:
        return self.sttd.process.pid

    def hook_stamps(self) -> dict[str, float]:
        stamps = {}
        for line in self.hooks_log.read_text().splitlines():
            item, _, real = line.partition(" ")
            if real:
                stamps[item] = float(real.replace(",", "."))
        return stamps

    def terminate(self) -> None:
        try:
            code = self.sttd.terminate(20)
        except subprocess.TimeoutExpired:
            self.sttd.kill()
            code = -9
        if code != 0:
            log(f"sttd exited with {code}; see {self.sttd.log_path}")


# --------------------------------------------------------------------------- clients


class Client:
    """What the measurements drive: something that starts and stops sending the microphone."""

    label = ""

    def start(self, at: float = 0.0) -> float:
        """Start (at ``at`` if given); returns the time the start was asked for."""
        raise NotImplementedError

    def stop(self) -> float:
        """Stop and wait until stopped; returns the time the stop was asked for."""
        raise NotImplementedError

    def pids(self) -> dict[str, int]:
        raise NotImplementedError

    def transcripts(self, since: float) -> int:
        raise NotImplementedError


class SttdClient(Client):
    label = "sttd"

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.probe = daemon.rig.probe

    def start(self, at: float = 0.0) -> float:
        sleep_until(at - self.probe.lag)  # the probe takes a moment to pass the call on
        return float(self.probe.call("Start")["t_sent"])

    def stop(self) -> float:
        mark = self.probe.mark()
        t = float(self.probe.call("Stop")["t_sent"])
        self.probe.wait_state("idle", 20, mark)
        return t

    def pids(self) -> dict[str, int]:
        return {"sttd": self.daemon.pid}

    def transcripts(self, since: float) -> int:
        return sum(1 for e in self.probe.since(0, "transcript") if e["final"] and e["t"] >= since)


class BaselineClient(Client):
    """``bench/baseline_<kind>.py`` in a process group of its own; started per dictation, stopped by SIGINT."""

    def __init__(self, rig: Rig, kind: str) -> None:
        self.rig = rig
        self.label = kind
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.out = self.err = Path()

    def start(self, at: float = 0.0) -> float:
        sleep_until(at)
        url = self.rig.server.url
        if self.label == "openai":
            url = url.split("/realtime")[0]
        argv = [sys.executable, str(REPO / "bench" / f"baseline_{self.label}.py"), "--url", url]
        argv += ["--api-key", self.rig.server.api_key, "--source", "mic"]
        self.runs += 1
        self.out = self.rig.dir / f"{self.label}-{self.runs}.out"
        self.err = self.rig.dir / f"{self.label}-{self.runs}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            t = time.monotonic()
            self.proc = subprocess.Popen(
                argv, env=self.rig.sound.env, stdout=out, stderr=err, start_new_session=True, cwd=REPO
            )
        self.rig.groups.append(self.proc)
        return t

    def stop(self) -> float:
        t = time.monotonic()
        if self.proc is not None:
            stop_group(self.proc, signal.SIGINT, 10)
        return t

    def pids(self) -> dict[str, int]:
        assert self.proc is not None
        found = {"python": self.proc.pid}
        for kid in children(self.proc.pid):
            found["parec"] = kid
        return found

    def main_time(self) -> float | None:
        found = re.search(r"bench: main ([0-9.]+)", self.err.read_text(errors="replace"))
        return float(found.group(1)) if found else None

    def transcripts(self, since: float) -> int:
        return len(self.out.read_text(errors="replace").splitlines())


def wait_first_audio(rig: Rig, first_session: int, timeout: float, what: str) -> int:
    """Wait until a session opened since ``first_session`` received audio; its index."""

    def found() -> int | None:
        for s in rig.sessions_since(first_session):
            if rig.server.first_arrival(s) is not None:
                return s + 1  # truthy even for session 0
        return None

    return int(wait_for(found, timeout, f"{what}: first audio at the server")) - 1


def wait_silent(rig: Rig, seconds: float = 0.3) -> None:
    """Let the microphone be silent (digital zeros) for a moment, so a new session starts on silence."""
    rig.settle(seconds)


# --------------------------------------------------------------------------- 1. streaming: capture → wire, CPU


def streaming(rig: Rig, client: Client, name: str) -> dict[str, Any]:
    """One session: first speech with the client alone on the microphone (CPU), then clicks (latency).

    Latency: clicks at random intervals, with the reference recorder telling
    when each entered the microphone and the server when its frame arrived.
    """
    plan = rig.plan
    log(f"{name}: streaming {plan.cpu_s:.0f} s of speech (CPU), then {plan.clicks_s:.0f} s of clicks (latency)")
    talk = speech(rig.dir / "cpu.wav", _talk(plan.cpu_s), rig.rng)
    stim = clicks(rig.dir / f"clicks-{name}.wav", plan.clicks_s, rig.rng)
    first = rig.server.connection_count
    client.start()
    wait_first_audio(rig, first, 20, name)
    rig.settle(0.5)  # past start-up: the steady state
    pids = client.pids()
    # schedstat (ns) of the living threads; /proc/PID/stat's ticks (10 ms, dead threads included) as a check.
    ns0 = {k: run_ns(p) for k, p in pids.items()}
    ticks0 = {k: cpu_seconds(p) for k, p in pids.items()}
    main0 = {k: run_ns(p, main_only=True) for k, p in pids.items()}
    player, t_cpu = play(rig.sound.env, talk.path)
    finish(player, talk.seconds + 15)
    wall = time.monotonic() - t_cpu
    cpu = {k: (run_ns(p) - ns0[k]) / 1e9 / wall * 60 for k, p in pids.items()}
    ticks = {k: (cpu_seconds(p) - ticks0[k]) / wall * 60 for k, p in pids.items()}
    main = {k: (run_ns(p, main_only=True) - main0[k]) / 1e9 / wall * 60 for k, p in pids.items()}
    memory = {k: memory_kb(p) for k, p in pids.items()}
    with rig.observed() as reference:
        rig.settle(0.3)
        t_observed, r_lo = time.monotonic(), reference.position
        player, t_launch = play(rig.sound.env, stim.path)
        finish(player, stim.seconds + 15)
        rig.settle(0.4)  # the last frames
        client.stop()
        window, base = rig.window(r_lo - RATE)
        timeline = reference.timeline()
    p0 = rig.locate(stim, window, base)
    sessions = rig.sessions_since(first)
    pieces = rig.pieces(sessions, window, base, since=t_observed)
    arrivals = {s: rig.server.arrivals(s) for s in sessions}
    net, raw, paplay = [], [], []
    for onset in stim.marks:
        r = p0 + onset
        entered = timeline.entered_at(r)
        paplay.append((entered - t_launch - onset / RATE) * 1000)
        for s in sessions:
            q = session_position(pieces[s], r)
            if q is None:
                continue
            arrival = next((a for a in arrivals[s] if a.start <= 2 * q < a.end), None)
            if arrival is not None:
                net.append((arrival.t - entered) * 1000)
                raw.append((arrival.t - t_launch - onset / RATE) * 1000)
            break
    frames = [ms((a.end - a.start) / 2) for s in sessions for a in rig.server.arrivals(s)]
    if paplay:
        rig.paplay_latency_s = float(np.median(paplay)) / 1000
    return {
        "capture_to_wire_ms": summary(net),
        "capture_to_wire_raw_ms": summary(raw),
        "paplay_latency_ms": summary(paplay),
        "clicks": len(stim.marks),
        "clicks_received": len(net),
        "frame_ms": summary(frames),
        "cpu_measured_s": round(wall, 1),
        "cpu_s_per_audio_min": round(sum(cpu.values()), 3),
        "cpu_s_per_audio_min_by_process": {k: round(v, 3) for k, v in cpu.items()},
        "cpu_s_per_audio_min_ticks": round(sum(ticks.values()), 3),
        "cpu_s_per_audio_min_main_thread": {k: round(v, 3) for k, v in main.items()},
        "rss_peak_mb": round(sum(m.get("VmHWM", 0) for m in memory.values()) / 1024, 1),
        "rss_peak_mb_by_process": {k: round(m.get("VmHWM", 0) / 1024, 1) for k, m in memory.items()},
    }


def _talk(seconds: float) -> list[str | float]:
    """Sentences with pauses, about ``seconds`` long (about 2.5 s a sentence)."""
    if seconds < 3:
        return [seconds]  # the smoke run: the noise floor alone
    parts: list[str | float] = []
    total = 0.0
    while total < seconds:
        parts += [ENGINE_SENTENCES[len(parts) // 2 % len(ENGINE_SENTENCES)], 0.6]
        total += 3.1
    return parts


# --------------------------------------------------------------------------- 2. Start: first audio, lost speech; Stop


def start_and_stop(rig: Rig, client: Client, delay_ms: int, reps: int) -> dict[str, Any]:
    """Speech that begins together with Start; Stop while it goes on.

    The noise floor plays for half a second before the voice, so the very
    first sample a session received can be placed: that is when recording
    began.
    """
    log(f"{client.label}: Start with speech, handshake delay {delay_ms} ms, {reps}x")
    rig.server.configure(handshake_delay_s=delay_ms / 1000)
    stim = speech(rig.dir / "start.wav", [LEAD_S * rig.plan.settle, START_SENTENCE, 0.2], rig.rng)
    runs: list[dict[str, Any]] = []
    with rig.observed():
        try:
            for _ in range(reps):
                wait_silent(rig)
                first = rig.server.connection_count
                mark = rig.probe.mark()
                r_lo = rig.reference.position
                player, t_launch = play(rig.sound.env, stim.path)
                # Start when the voice reaches the microphone.
                t_start = client.start(at=t_launch + rig.paplay_latency_s + stim.marks[0] / RATE)
                sleep_until(t_start + rig.plan.start_window_s)
                # Never stop before audio arrived (a slow client in the short smoke window).
                with contextlib.suppress(TimeoutError):
                    session = wait_first_audio(rig, first, 10, client.label)
                    sleep_until((rig.server.first_arrival(session) or 0.0) + 0.5 * rig.plan.settle)
                t_stop = client.stop()
                player.kill()
                finish(player, 5)
                runs.append(_start_run(rig, client, stim, first, mark, r_lo, t_start, t_stop))
        finally:
            rig.server.configure(handshake_delay_s=0.0)

    out: dict[str, Any] = {
        "start_to_first_audio_ms": summary([r["start_to_first_audio_ms"] for r in runs]),
        "start_to_recording_ms": summary([r["start_to_recording_ms"] for r in runs]),
        "speech_lost_at_start_ms": summary([r["lost_at_start_ms"] for r in runs]),
        "speech_lost_after_start_ms": summary([r["lost_after_start_ms"] for r in runs]),
        "voice_onset_minus_start_ms": summary([r["voice_onset_minus_start_ms"] for r in runs]),
        "runs": runs,
    }
    if isinstance(client, SttdClient):
        out["stop_to_final_transcript_ms"] = summary([r["stop_to_final_ms"] for r in runs])
        out["stop_to_idle_ms"] = summary([r["stop_to_idle_ms"] for r in runs])
    else:
        out["script_main_to_first_audio_ms"] = summary([r["main_to_first_audio_ms"] for r in runs])
    return out


def _start_run(
    rig: Rig, client: Client, stim: Stimulus, first: int, mark: int, r_lo: int, t_start: float, t_stop: float
) -> dict[str, Any]:
    reference, base = rig.window(r_lo - RATE // 2)
    timeline = rig.reference.timeline()
    p0 = rig.locate(stim, reference, base)
    onset = p0 + stim.marks[0]
    # What was said from the voice onset until shortly before Stop (frames in flight at Stop do not count).
    until = timeline.position_at(t_stop) - RATE // 4
    sessions = rig.sessions_since(first)
    arrivals = [t for s in sessions if (t := rig.server.first_arrival(s)) is not None]
    mask = np.zeros(max(0, until - onset), dtype=bool)
    recording = None
    for pieces in rig.pieces(sessions, reference, base).values():
        mask |= covered(pieces, onset, until)
        if pieces and recording is None:
            recording = timeline.entered_at(pieces[0].r0 - pieces[0].s0)  # the session's first sample
    if mask.any():
        got = int(np.argmax(mask))
        lost_at_start, lost_after = ms(got), ms(int((~mask[got:]).sum()))
    else:
        lost_at_start, lost_after = ms(len(mask)), 0.0
    run: dict[str, Any] = {
        "start_to_first_audio_ms": round((min(arrivals) - t_start) * 1000, 1) if arrivals else None,
        "start_to_recording_ms": round((recording - t_start) * 1000, 1) if recording is not None else None,
        "lost_at_start_ms": round(lost_at_start, 1),
        "lost_after_start_ms": round(lost_after, 1),
        "voice_onset_minus_start_ms": round((timeline.entered_at(onset) - t_start) * 1000, 1),
        "sessions": len(sessions),
    }
    if isinstance(client, SttdClient):
        finals = [e for e in rig.probe.since(mark, "transcript") if e["final"] and e["t"] >= t_stop]
        idles = [e for e in rig.probe.since(mark, "state") if e["value"] == "idle" and e["t"] >= t_stop]
        run["stop_to_final_ms"] = round((finals[0]["t"] - t_stop) * 1000, 1) if finals else None
        run["stop_to_idle_ms"] = round((idles[0]["t"] - t_stop) * 1000, 1) if idles else None
    elif isinstance(client, BaselineClient):
        main = client.main_time()
        run["main_to_first_audio_ms"] = round((min(arrivals) - main) * 1000, 1) if arrivals and main else None
    return run


# --------------------------------------------------------------------------- 3. a dropped connection


def drop(rig: Rig, client: Client) -> dict[str, Any]:
    """Two sentences; the connection is aborted in the middle of the second. What never reached the server?"""
    log(f"{client.label}: connection dropped mid-sentence")
    parts: list[str | float] = list(rig.plan.drop_parts)
    stim = speech(rig.dir / "drop.wav", parts, rig.rng)
    pause_end = sum(len(voice(p)) if isinstance(p, str) else p * RATE for p in parts[:2])
    wait_silent(rig)
    first = rig.server.connection_count
    with rig.observed() as reference:
        client.start()
        wait_first_audio(rig, first, 20, client.label)
        rig.settle(0.3)
        r_lo = reference.position
        player, t_launch = play(rig.sound.env, stim.path)
        t_drop = t_launch + rig.paplay_latency_s + pause_end / RATE + rig.plan.drop_into_s
        sleep_until(t_drop)
        rig.server.drop()
        t_dropped = time.monotonic()
        finish(player, stim.seconds + 15)
        with contextlib.suppress(TimeoutError):  # a client that does not come back loses the rest

            def back() -> bool:
                return any(rig.server.first_arrival(s) is not None for s in rig.sessions_since(first)[1:])

            wait_for(back, 10, f"{client.label} to send audio again")
        rig.settle(1.0)  # what waited is sent
        client.stop()
        rig.settle(0.2)
        window, base = rig.window(r_lo - RATE)
    p0 = rig.locate(stim, window, base)
    sessions = rig.sessions_since(first)
    mask = np.zeros(len(stim.samples), dtype=bool)
    for pieces in rig.pieces(sessions, window, base).values():
        mask |= covered(pieces, p0, p0 + len(stim.samples))
    later = [t for s in sessions[1:] if (t := rig.server.first_arrival(s)) is not None]
    return {
        "audio_lost_ms": round(ms(int((~mask).sum())), 1),
        "played_ms": round(ms(len(mask)), 1),
        "sessions": len(sessions),
        "drop_to_audio_again_ms": round((min(later) - t_dropped) * 1000, 1) if later else None,
        "final_transcripts": client.transcripts(t_launch),
    }


# --------------------------------------------------------------------------- 4. transcripts: D-Bus signal, hook


def deliveries(rig: Rig, daemon: Daemon, hooks: bool = True) -> dict[str, Any]:
    """Turns completed by the server one after another; when did the signal and the hook get each?"""
    plan = rig.plan
    log(f"sttd: {plan.turns} transcripts → D-Bus signal{' and hook' if hooks else ' (no hook configured)'}")
    client = SttdClient(daemon)
    first = rig.server.connection_count
    mark = rig.probe.mark()
    client.start()
    wait_first_audio(rig, first, 20, "sttd")
    items = []
    for k in range(plan.turns):
        items.append(rig.server.force_turn(f"benchmark turn number {k}"))
        time.sleep(float(rig.rng.uniform(0.04, 0.08)))

    def finals() -> dict[str, float]:
        return {e["item_id"]: e["t"] for e in rig.probe.since(mark, "transcript") if e["final"]}

    wait_for(lambda: set(items) <= set(finals()), 15, "every final Transcript signal")
    if hooks:
        wait_for(lambda: set(items) <= set(daemon.hook_stamps()), 15, "every hook to run")
    client.stop()
    sent, got, hooked = rig.server.completions(), finals(), daemon.hook_stamps()
    signal_ms = [(got[i] - sent[i][0]) * 1000 for i in items]
    if not hooks:
        return {"completed_to_signal_ms": summary(signal_ms, 2)}
    hook_ms = [(hooked[i] - sent[i][1]) * 1000 for i in items]
    return {
        "completed_to_signal_ms": summary(signal_ms, 2),
        "completed_to_hook_started_ms": summary(hook_ms, 2),
        "hook_spawn_floor_ms": summary(_hook_floor(rig), 2),
    }


def _hook_floor(rig: Rig, times: int = 20) -> list[float]:
    """The same bash stamp started straight from Python: what starting the hook costs without sttd."""
    path = rig.dir / "hook-floor.log"
    argv = ["bash", "-c", 'printf "%s %s\\n" "$STTD_ITEM_ID" "$EPOCHREALTIME" >> "$0"', str(path)]
    found = []
    for k in range(times if not rig.plan.smoke else 3):
        t = time.time()
        subprocess.run(argv, env={**os.environ, "STTD_ITEM_ID": str(k)}, check=True, timeout=10)
        found.append(t)
    stamps = [float(line.split()[1].replace(",", ".")) for line in path.read_text().splitlines()]
    return [(s - t) * 1000 for s, t in zip(stamps, found, strict=True)]


# --------------------------------------------------------------------------- 5. the offline engine


def engine(rig: Rig) -> dict[str, Any]:
    """sttd with the local engine: each sentence's end of voice → its final Transcript; WER; RSS."""
    if not (MODEL_DIR / "model.bin").exists():
        raise RuntimeError(f"no model in {MODEL_DIR}: run scripts/fetch-test-model")
    log(f"local engine: {len(rig.plan.engine_sentences)} sentences")
    t0 = time.monotonic()
    daemon = Daemon(rig, "engine", local_model=MODEL_DIR)
    try:
        wait_for(lambda: " loaded in " in daemon.sttd.log, 120, "the local engine to load its model")
        loaded_s = time.monotonic() - t0
        engine_pid = children(daemon.pid)[0]
        client = SttdClient(daemon)
        mark = rig.probe.mark()
        client.start()
        rig.probe.wait_state("listening", 60, mark)
        cpu0, t_cpu0 = cpu_seconds(engine_pid), time.monotonic()
        latencies, rates, heard = [], [], []
        with rig.observed() as reference:
            for i, sentence in enumerate(rig.plan.engine_sentences):
                stim = speech(rig.dir / f"engine-{i}.wav", [sentence, 1.5], rig.rng, floor=False)  # as test_engine
                mark = rig.probe.mark()
                r_lo = reference.position
                player, _ = play(rig.sound.env, stim.path)
                final = rig.probe.wait(lambda e: e["kind"] == "transcript" and e["final"], 30, "a final", mark)
                player.kill()  # the rest is silence
                finish(player, 5)
                window, base = rig.window(r_lo - RATE // 2)
                end_of_voice = rig.locate(stim, window, base) + stim.marks[1]
                latencies.append((final["t"] - reference.timeline().entered_at(end_of_voice)) * 1000)
                rates.append(wer(sentence, final["text"]))
                heard.append(final["text"])
        cpu = (cpu_seconds(engine_pid) - cpu0) / (time.monotonic() - t_cpu0) * 60
        client.stop()
        engine_memory, sttd_memory = memory_kb(engine_pid), memory_kb(daemon.pid)
    finally:
        daemon.terminate()
    return {
        "end_of_speech_to_final_ms": summary(latencies, 0),
        "wer": round(float(np.mean(rates)), 3),
        "sentences": len(rates),
        "heard": heard,
        "engine_rss_mb": round(engine_memory.get("VmRSS", 0) / 1024, 1),
        "engine_rss_peak_mb": round(engine_memory.get("VmHWM", 0) / 1024, 1),
        "sttd_rss_peak_mb": round(sttd_memory.get("VmHWM", 0) / 1024, 1),
        "engine_cpu_s_per_audio_min": round(cpu, 2),
        "start_to_model_loaded_s": round(loaded_s, 1),
    }


# --------------------------------------------------------------------------- the run


@dataclass
class Results:
    meta: dict[str, Any]
    clients: dict[str, dict[str, Any]] = field(default_factory=lambda: {c: {} for c in CLIENTS})
    sttd: dict[str, Any] = field(default_factory=dict)
    chunk_ms: dict[str, dict[str, Any]] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)
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


def run(plan: Plan, keep: bool = False) -> Results:
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
        daemon.terminate()
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
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    results = run(plan, keep=args.keep)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    data = asdict(results)
    json_path = args.out / f"{stamp}-{plan_name(plan)}.json"
    json_path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    md_path = args.out / ("latest.md" if not plan.smoke else "smoke.md")
    md_path.write_text(report.markdown(data), encoding="utf-8")
    log(f"wrote {json_path} and {md_path} in {results.meta['duration_s']} s")
    return 0


def plan_name(plan: Plan) -> str:
    return "smoke" if plan.smoke else "full"
