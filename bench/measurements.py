"""Each measurement of a bench run, one function per figure family (see bench/README.md)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from typing import Any

import numpy as np

from tests.wer import wer

from .harness import (
    RATE,
    children,
    cpu_seconds,
    finish,
    memory_kb,
    play,
    run_ns,
    sleep_until,
    wait_for,
)
from .measure import covered, ms, session_position, summary
from .plan import ENGINE_SENTENCES, LEAD_S, MODEL_DIR, START_SENTENCE, log
from .rig import BaselineClient, Client, Daemon, Rig, SttdClient
from .stimuli import Stimulus, clicks, speech, voice

MAX_VOICE_LATE_MS = 50.0
"""A Start run whose voice reached the microphone more than this after Start is rejected (the rig was late)."""


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
    audio = talk.seconds  # per minute of audio, not of wall time (paplay's start and end are not audio)
    cpu = {k: (run_ns(p) - ns0[k]) / 1e9 / audio * 60 for k, p in pids.items()}
    ticks = {k: (cpu_seconds(p) - ticks0[k]) / audio * 60 for k, p in pids.items()}
    main = {k: (run_ns(p, main_only=True) - main0[k]) / 1e9 / audio * 60 for k, p in pids.items()}
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
        "cpu_audio_s": round(audio, 1),
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

    kept = [r for r in runs if not r["rejected"]] or runs  # all rejected (the smoke run): keep them, flagged
    out: dict[str, Any] = {
        "start_to_first_audio_ms": summary([r["start_to_first_audio_ms"] for r in runs]),
        "start_to_recording_ms": summary([r["start_to_recording_ms"] for r in runs]),
        "speech_lost_at_start_ms": summary([r["lost_at_start_ms"] for r in kept]),
        "speech_lost_from_voice_onset_ms": summary([r["lost_from_voice_onset_ms"] for r in kept]),
        "speech_lost_after_start_ms": summary([r["lost_after_start_ms"] for r in runs]),
        "rejected_runs": sum(1 for r in runs if r["rejected"]),
        "voice_onset_minus_start_ms": summary([r["voice_onset_minus_start_ms"] for r in runs]),
        "runs": runs,
    }
    if isinstance(client, SttdClient):
        out["stop_to_final_transcript_ms"] = summary([r["stop_to_final_ms"] for r in runs])
        out["stop_to_idle_ms"] = summary([r["stop_to_idle_ms"] for r in runs])
    else:
        out["script_main_to_first_audio_ms"] = summary([r["main_to_first_audio_ms"] for r in runs])
        out["speech_lost_at_start_from_ready_ms"] = summary([r.get("lost_at_start_from_ready_ms") for r in kept])
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
    at_start = timeline.position_at(t_start)
    since_start = np.zeros(max(0, until - at_start), dtype=bool)
    recording = None
    for pieces in rig.pieces(sessions, reference, base).values():
        mask |= covered(pieces, onset, until)
        since_start |= covered(pieces, at_start, until)
        if pieces and recording is None:
            recording = timeline.entered_at(pieces[0].r0 - pieces[0].s0)  # the session's first sample
    if mask.any():
        got = int(np.argmax(mask))
        lost_at_start, lost_after = ms(got), ms(int((~mask[got:]).sum()))
    else:
        lost_at_start, lost_after = ms(len(mask)), 0.0
    first_held = at_start + int(np.argmax(since_start)) if since_start.any() else until
    voice_late_ms = (timeline.entered_at(onset) - t_start) * 1000
    run: dict[str, Any] = {
        "start_to_first_audio_ms": round((min(arrivals) - t_start) * 1000, 1) if arrivals else None,
        "start_to_recording_ms": round((recording - t_start) * 1000, 1) if recording is not None else None,
        # From Start, not from the voice onset (whose offset from Start varies by several ms):
        # what of the microphone's stream from the Start instant on no session holds, up to the first held sample.
        "lost_at_start_ms": round(ms(first_held - at_start), 1),
        "lost_from_voice_onset_ms": round(lost_at_start, 1),
        "lost_after_start_ms": round(lost_after, 1),
        "voice_onset_minus_start_ms": round(voice_late_ms, 1),
        "rejected": voice_late_ms > MAX_VOICE_LATE_MS,
        "sessions": len(sessions),
    }
    if isinstance(client, SttdClient):
        finals = [e for e in rig.probe.since(mark, "transcript") if e["final"] and e["t"] >= t_stop]
        idles = [e for e in rig.probe.since(mark, "state") if e["value"] == "idle" and e["t"] >= t_stop]
        run["stop_to_final_ms"] = round((finals[0]["t"] - t_stop) * 1000, 1) if finals else None
        run["stop_to_idle_ms"] = round((idles[0]["t"] - t_stop) * 1000, 1) if idles else None
    elif isinstance(client, BaselineClient):
        # The baselines' own ready point (their code starts; interpreter and imports left out), beside the launch.
        main = client.main_time()
        run["main_to_first_audio_ms"] = round((min(arrivals) - main) * 1000, 1) if arrivals and main else None
        if main is not None:
            at_ready = timeline.position_at(main)
            held = np.zeros(max(0, until - at_ready), dtype=bool)
            for pieces in rig.pieces(sessions, reference, base).values():
                held |= covered(pieces, at_ready, until)
            run["lost_at_start_from_ready_ms"] = round(ms(int(np.argmax(held)) if held.any() else len(held)), 1)
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

    def transcribed() -> list[Any]:
        return [u for u in rig.server.turns() if u.session in sessions]

    with contextlib.suppress(TimeoutError):  # the last turn's transcript may still be on its way
        wait_for(lambda: all(u.done for u in transcribed()), 5, f"{client.label}'s turns to be transcribed")
    pieces = rig.pieces(sessions, window, base)
    held = np.zeros(len(stim.samples), dtype=bool)
    mask = np.zeros(len(stim.samples), dtype=bool)
    for s, found in pieces.items():
        held |= covered(found, p0, p0 + len(stim.samples))
        # Only audio in a turn the server transcribed counts: what an aborted session held is lost.
        for turn in transcribed():
            if turn.session == s and turn.done and not turn.failed:
                lo, hi = turn.audio_start_ms * RATE // 1000, turn.audio_end_ms * RATE // 1000
                mask |= covered(_clip(found, lo, hi), p0, p0 + len(stim.samples))
    voiced = _voice_mask(parts, len(stim.samples))
    later = [t for s in sessions[1:] if (t := rig.server.first_arrival(s)) is not None]
    return {
        "audio_lost_ms": round(ms(int((voiced & ~mask).sum())), 1),
        "audio_lost_at_server_ms": round(ms(int((voiced & ~held).sum())), 1),
        "voice_played_ms": round(ms(int(voiced.sum())), 1),
        "played_ms": round(ms(len(mask)), 1),
        "sessions": len(sessions),
        "drop_to_audio_again_ms": round((min(later) - t_dropped) * 1000, 1) if later else None,
        "final_transcripts": client.transcripts(t_launch),
    }


def _clip(pieces: list[Any], lo: int, hi: int) -> list[Any]:
    """The parts of a session's pieces that lie in session samples [lo, hi)."""
    clipped = []
    for p in pieces:
        a, b = max(p.s0, lo), min(p.s1, hi)
        if a < b:
            clipped.append(type(p)(a, b, p.r0 + a - p.s0))
    return clipped


def _voice_mask(parts: list[str | float], n: int) -> np.ndarray:
    """Which samples of a :func:`speech` stimulus are a sentence (the pauses and the noise floor are not)."""
    mask = np.zeros(n, dtype=bool)
    at = 0
    for part in parts:
        length = len(voice(part)) if isinstance(part, str) else int(part * RATE)
        if isinstance(part, str):
            mask[at : at + length] = True
        at += length
    return mask


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
