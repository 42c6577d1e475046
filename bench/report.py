"""The goals, the list of metrics every run must produce, and the markdown table of a run."""

from __future__ import annotations

from typing import Any

NAMES = {"sttd": "sttd", "openai": "openai SDK + parec", "legacy": "legacy (connect first, 4096)"}
CLIENTS = ("sttd", "openai", "legacy")
FLOORS = {
    "parec": "(a) `parec` recording `mic` alone (C, libpulse)",
    "loop": "(b) a Python asyncio loop woken once per frame, nothing else",
    "loop_tcp": "(c) (b) + one loopback `transport.write` of the append JSON per frame",
    "loop_ws": "(d) (b) + `await ws.send()` of the append JSON (websockets, masked)",
    "parec_plus_loop_tcp": "(a) + (c): parec reads, Python sends (the SDK baseline's shape)",
}
"""The platform floors of ``bench.floor``, as the table names them."""


def required(plan: dict[str, Any]) -> list[str]:
    """Dotted paths of the numbers every run (the smoke run included) must produce."""
    paths = []
    for c in CLIENTS:
        streaming = f"clients.{c}.streaming"
        for metric in ("capture_to_wire_ms", "capture_to_wire_raw_ms"):
            paths += [f"{streaming}.{metric}.p50", f"{streaming}.{metric}.p99"]
        paths += [
            f"{streaming}.paplay_latency_ms.p50",
            f"{streaming}.frame_ms.p50",
            f"{streaming}.cpu_s_per_audio_min",
            f"{streaming}.rss_peak_mb",
            f"clients.{c}.drop.audio_lost_ms",
            f"clients.{c}.drop.audio_lost_at_server_ms",
            f"clients.{c}.drop.drop_to_audio_again_ms",
        ]
        for delay in plan["handshake_delays_ms"]:
            start = f"clients.{c}.start_handshake_{delay}ms"
            paths += [
                f"{start}.start_to_first_audio_ms.p50",
                f"{start}.start_to_recording_ms.p50",
                f"{start}.speech_lost_at_start_ms.max",
                f"{start}.speech_lost_after_start_ms.max",
            ]
            if c != "sttd":
                paths += [
                    f"{start}.script_main_to_first_audio_ms.p50",
                    f"{start}.speech_lost_at_start_from_ready_ms.max",
                ]
            if c == "sttd":
                stops = ("stop_to_final_transcript_ms", "stop_to_idle_ms")
                paths += [f"{start}.{m}.{p}" for m in stops for p in ("p50", "p99")]
    paths += [
        "sttd.transcripts.completed_to_signal_ms.p50",
        "sttd.transcripts.completed_to_signal_ms.p99",
        "sttd.transcripts.completed_to_hook_started_ms.p50",
        "sttd.transcripts.completed_to_hook_started_ms.p99",
        "sttd.transcripts.hook_spawn_floor_ms.p50",
        "sttd.transcripts_without_hooks.completed_to_signal_ms.p50",
        "sttd.transcripts_without_hooks.completed_to_signal_ms.p99",
        "sttd.start_with_preroll.speech_lost_at_start_ms.max",
        "sttd.streaming_own_vad.cpu_s_per_audio_min",
        "sttd.idle.cpu_ms_per_min",
        "sttd.idle.wakeups_per_min",
        "sttd.memory.rss_peak_mb",
        "sttd.memory.rss_idle_mb",
        "engine.end_of_speech_to_final_ms.p50",
        "engine.end_of_speech_to_final_ms.p99",
        "engine.wer",
        "engine.engine_rss_mb",
        "engine.engine_rss_peak_mb",
    ]
    for chunk in (plan["main_chunk_ms"], *plan["chunk_variants"]):
        paths += [f"chunk_ms.{chunk}.capture_to_wire_ms.p99", f"chunk_ms.{chunk}.cpu_s_per_audio_min"]
    for frame in plan.get("floor_frames_ms", ()):
        paths += [f"floor.{frame}.{kind}.{m}" for kind in FLOORS for m in ("cpu_s_per_audio_min", "us_per_frame")]
    return paths


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def missing(data: dict[str, Any]) -> list[str]:
    """The required metrics a run's results lack (or hold something other than a number for)."""
    found = [p for p in required(data["meta"]["plan"]) if not _number(_get(data, *p.split(".")))]
    found += [f"goal: {g['goal']}" for g in data["goals"] if not _number(g["value"])]
    return found


def _worst(values: list[Any]) -> float | None:
    numbers = [v for v in values if _number(v)]
    return max(numbers) if numbers else None


def _lost(start: Any) -> float | None:
    """Speech lost at or after Start, worst run."""
    return _worst([_get(start, key, "max") for key in ("speech_lost_at_start_ms", "speech_lost_after_start_ms")])


SAME_FRAME_MS = 20
"""The openai baseline's frame length: sttd's CPU and latency goals are taken at the same length."""


def goals(results: Any) -> list[dict[str, Any]]:
    """Each goal with sttd's value and whether it is met (None when the value is missing), for one run."""
    clients, sttd = results.clients, results.sttd
    chunk = results.meta["plan"]["main_chunk_ms"]
    delays = results.meta["plan"]["handshake_delays_ms"]
    same = _get(results.chunk_ms, str(SAME_FRAME_MS)) or {}
    rows = [
        (
            f"capture → wire p99 ≤ one chunk + 15 ms ({chunk + 15} ms at {chunk} ms frames)",
            _get(clients, "sttd", "streaming", "capture_to_wire_ms", "p99"),
            chunk + 15,
            "ms",
        ),
        (
            f"capture → wire p99 ≤ one chunk + 15 ms ({SAME_FRAME_MS + 15} ms at {SAME_FRAME_MS} ms frames)",
            _get(same, "capture_to_wire_ms", "p99"),
            SAME_FRAME_MS + 15,
            "ms",
        ),
        (
            "D-Bus signal delivery p99 ≤ 2 ms (a transcript hook configured)",
            _get(sttd, "transcripts", "completed_to_signal_ms", "p99"),
            2,
            "ms",
        ),
        (
            "D-Bus signal delivery p99 ≤ 2 ms (no hook configured)",
            _get(sttd, "transcripts_without_hooks", "completed_to_signal_ms", "p99"),
            2,
            "ms",
        ),
        (
            f"CPU while streaming ≤ 0.6 s per audio minute at {SAME_FRAME_MS} ms frames (service VAD)",
            _get(same, "cpu_s_per_audio_min"),
            0.6,
            "s/min",
        ),
        (
            f"CPU while streaming ≤ 0.6 s per audio minute at {chunk} ms frames (service VAD)",
            _get(clients, "sttd", "streaming", "cpu_s_per_audio_min"),
            0.6,
            "s/min",
        ),
        (
            f"CPU while streaming ≤ 0.9 s per audio minute at {SAME_FRAME_MS} ms frames (sttd's own VAD)",
            _get(sttd, "streaming_own_vad", "cpu_s_per_audio_min"),
            0.9,
            "s/min",
        ),
        ("no measurable idle CPU (≤ 1 ms per minute)", _get(sttd, "idle", "cpu_ms_per_min"), 1.0, "ms/min"),
        ("no idle wake-ups (≤ 1 per minute)", _get(sttd, "idle", "wakeups_per_min"), 1.0, "/min"),
        ("peak RSS ≤ 50 MB", _get(sttd, "memory", "rss_peak_mb"), 50, "MB"),
        (
            "0 ms of speech lost at Start (from Start; handshake 0 and 1000 ms, worst run)",
            _worst([_lost(_get(clients, "sttd", f"start_handshake_{d}ms")) for d in delays]),
            0,
            "ms",
        ),
        (
            "0 ms of voice lost across a dropped connection (voice in no transcribed turn)",
            _get(clients, "sttd", "drop", "audio_lost_ms"),
            0,
            "ms",
        ),
    ]
    return [
        {"goal": goal, "value": value, "limit": limit, "unit": unit, "met": None if value is None else value <= limit}
        for goal, value, limit, unit in rows
    ]


def combined(per_run: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per goal over several runs: every run's figure, the worst, met only if the worst is.

    So one quiet run cannot pass a goal.
    """
    rows = []
    for i, first in enumerate(per_run[0]):
        values = [run[i]["value"] for run in per_run]
        worst = _worst(values) if all(_number(v) for v in values) else None
        rows.append(
            {
                **first,
                "runs": values,
                "value": worst,
                "met": None if worst is None else worst <= first["limit"],
            }
        )
    return rows


# --------------------------------------------------------------------------- markdown


def _fmt(value: Any, digits: int = 1) -> str:
    if not _number(value):
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _pair(stats: Any) -> str:
    """``p50 / p99`` of a summary."""
    if not isinstance(stats, dict) or not _number(stats.get("p50")):
        return "—"
    return f"{_fmt(stats['p50'])} / {_fmt(stats['p99'])}"


def _ratio(value: Any, base: Any) -> str:
    if not _number(value) or not _number(base):
        return "—"
    if base == 0:
        return "same" if value == 0 else "∞"
    return f"{value / base:.1f}x"


def floor_table(floor: dict[str, Any], sttd_cpu: dict[str, Any] | None = None) -> list[str]:
    """The "what the platform costs" table of ``bench.floor.combined``; ``sttd_cpu`` the goal rows' worst figures."""
    frames = [k for k in floor if isinstance(floor[k], dict)]
    runs = floor.get("runs", 1)
    out = [
        "### What the platform costs",
        "",
        f"CPU (schedstat) per audio minute of the named process alone, the worst of {runs} run(s) with each run "
        "in brackets, and that run's µs per frame and wake-ups (context switches) per audio second, the "
        "involuntary ones in brackets (`bench.floor`; bench/README.md). "
        f"{_fmt(floor.get('seconds'))} s of audio per floor.",
        "",
        "| what the platform costs | "
        + " | ".join(f"{f} ms frames: s per audio min | µs/frame | wake-ups/s" for f in frames)
        + " |",
        "|---|" + "---|---|---|" * len(frames),
    ]
    for kind, label in FLOORS.items():
        cells = []
        for f in frames:
            got = floor[f].get(kind) or {}
            each = " · ".join(_fmt(v, 3) for v in got.get("runs", []))
            cpu = _fmt(got.get("cpu_s_per_audio_min"), 3)
            wakes = _fmt(got.get("wakeups_per_audio_s"))
            if _number(got.get("preempted_per_audio_s")):
                wakes += f" ({_fmt(got['preempted_per_audio_s'])})"
            cells += [f"{cpu} ({each})" if each else cpu, _fmt(got.get("us_per_frame")), wakes]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    if sttd_cpu:
        cells = []
        for f in frames:
            cells += [f"{_fmt(sttd_cpu.get(f), 3)} (goal ≤ 0.6)", "", ""]
        label = "sttd while streaming, every thread (the service-VAD CPU goal rows' worst)"
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def markdown(data: dict[str, Any]) -> str:
    meta, clients, plan = data["meta"], data["clients"], data["meta"]["plan"]
    sttd_rss = _get(data, "sttd", "memory", "rss_peak_mb")
    out = [
        "# sttd benchmark",
        "",
        f"{meta['date']} · {meta['mode']} run in {meta['duration_s']} s · commit {meta['commit'] or '?'}"
        f"{' (sttd/ with uncommitted changes)' if meta.get('uncommitted_changes') else ''} · "
        f"sttd {meta['sttd']} · {meta['cpu']}, {meta['cores']} cores · Linux {meta['kernel']} · "
        f"Python {meta['python']} · {meta['pulseaudio']} · openai {meta['openai']}",
        "",
        "Made by `.venv/bin/python -m bench`; bench/README.md has the method. Latencies are p50 / p99 in ms "
        "unless marked. *Net* latency counts from the instant a sample entered the virtual microphone, "
        "*raw* from paplay's launch.",
        "",
        "## Goals",
        "",
        f"Each goal over {len(data['goals'][0].get('runs', [0])) if data['goals'] else 0} run(s) of the whole "
        "measurement: every run's figure, and the worst, which decides.",
        "",
        "| goal | sttd, each run | worst | met |",
        "|---|---|---|---|",
    ]
    for goal in data["goals"]:
        met = {True: "yes", False: "**no**", None: "—"}[goal["met"]]
        digits = 3 if goal["unit"] in ("ms/min", "s/min") else 1
        each = " · ".join(_fmt(v, digits) for v in goal.get("runs", [goal["value"]]))
        value = _fmt(goal["value"], digits)
        out.append(f"| {goal['goal']} | {each} | {value} {goal['unit']} | {met} |")

    if data.get("floor"):
        sttd_cpu = {
            str(f): g["value"]
            for f in plan.get("floor_frames_ms", ())
            for g in data["goals"]
            if g["unit"] == "s/min" and f"at {f} ms frames (service VAD)" in g["goal"]
        }
        out += ["", *floor_table(data["floor"], sttd_cpu)]

    def row(label: str, value: Any, ratio: Any = None, fmt: Any = _fmt) -> str:
        """``value(client)`` is shown per client; ``ratio(client)``, a number, makes the ratio columns."""
        shown = [fmt(value(c)) for c in CLIENTS]
        ratios = [_ratio(ratio(c), ratio("sttd")) if ratio else "" for c in CLIENTS[1:]]
        return f"| {label} | " + " | ".join(shown + ratios) + " |"

    def of(*path: str) -> Any:
        return lambda c: _get(clients.get(c, {}), *path)

    def rss(c: str) -> Any:
        return sttd_rss if c == "sttd" else of("streaming", "rss_peak_mb")(c)

    out += [
        "",
        "## Side by side",
        "",
        "Ratios are the baseline's number over sttd's: above 1x sttd does better. "
        "The baselines run per dictation, so their *Start* is the launch of the script; the rows *from ready* "
        "count from the moment their own code starts (interpreter and imports left out). "
        "*Speech lost at Start* counts from Start (runs whose voice came more than 50 ms after Start are "
        "rejected); *lost across a drop* is voice that is in no turn the server transcribed.",
        "",
        f"| | {' | '.join(NAMES[c] for c in CLIENTS)} | openai ÷ sttd | legacy ÷ sttd |",
        "|---|---|---|---|---|---|",
        row(
            "capture → wire, net",
            of("streaming", "capture_to_wire_ms"),
            of("streaming", "capture_to_wire_ms", "p99"),
            _pair,
        ),
        row(
            "capture → wire, raw (with paplay)",
            of("streaming", "capture_to_wire_raw_ms"),
            of("streaming", "capture_to_wire_raw_ms", "p99"),
            _pair,
        ),
        row("frame sent (ms, p50)", of("streaming", "frame_ms", "p50")),
    ]
    for delay in plan["handshake_delays_ms"]:
        key = f"start_handshake_{delay}ms"
        first = of(key, "start_to_first_audio_ms", "p50")
        lost = lambda c, k=key: _lost(_get(clients.get(c, {}), k))  # noqa: E731
        out += [
            row(f"Start → first audio at the server, handshake {delay} ms (p50)", first, first),
            row(
                f"… from ready, handshake {delay} ms (p50)",
                lambda c, k=key: _get(
                    clients.get(c, {}),
                    k,
                    "start_to_first_audio_ms" if c == "sttd" else "script_main_to_first_audio_ms",
                    "p50",
                ),
            ),
            row(f"Start → recording began, handshake {delay} ms (p50)", of(key, "start_to_recording_ms", "p50")),
            row(f"speech lost at Start, handshake {delay} ms (ms, worst run)", lost, lost),
            row(
                f"… from ready, handshake {delay} ms (ms, worst run)",
                lambda c, k=key: _get(
                    clients.get(c, {}),
                    k,
                    "speech_lost_at_start_ms" if c == "sttd" else "speech_lost_at_start_from_ready_ms",
                    "max",
                ),
            ),
        ]
    cpu = of("streaming", "cpu_s_per_audio_min")
    dropped = of("drop", "audio_lost_ms")
    out += [
        row("CPU while streaming (s per audio minute)", cpu, cpu, lambda v: _fmt(v, 2)),
        row("peak RSS (MB; baselines: python + parec)", rss, rss),
        row("voice lost across a dropped connection (ms; in no transcribed turn)", dropped, dropped),
        row("… of it never at the server (ms)", of("drop", "audio_lost_at_server_ms")),
        row("drop → audio arriving again (ms)", of("drop", "drop_to_audio_again_ms")),
    ]

    same = _get(data, "chunk_ms", str(SAME_FRAME_MS)) or {}
    oai = _get(clients, "openai", "streaming") or {}
    out += [
        "",
        f"### At the same frame length ({SAME_FRAME_MS} ms, the openai baseline's)",
        "",
        f"| | sttd at {SAME_FRAME_MS} ms | openai SDK + parec | openai ÷ sttd |",
        "|---|---|---|---|",
        f"| capture → wire, net | {_pair(same.get('capture_to_wire_ms'))} | {_pair(oai.get('capture_to_wire_ms'))} "
        f"| {_ratio(_get(oai, 'capture_to_wire_ms', 'p99'), _get(same, 'capture_to_wire_ms', 'p99'))} |",
        f"| CPU while streaming (s per audio minute) | {_fmt(same.get('cpu_s_per_audio_min'), 2)} "
        f"| {_fmt(oai.get('cpu_s_per_audio_min'), 2)} "
        f"| {_ratio(oai.get('cpu_s_per_audio_min'), same.get('cpu_s_per_audio_min'))} |",
        f"| peak RSS (MB) | {_fmt(same.get('rss_peak_mb'))} | {_fmt(oai.get('rss_peak_mb'))} | |",
    ]

    tr = _get(data, "sttd", "transcripts") or {}
    idle = _get(data, "sttd", "idle") or {}
    streaming = _get(clients, "sttd", "streaming") or {}
    bare = _get(data, "sttd", "transcripts_without_hooks", "completed_to_signal_ms")
    lines = [
        ("server `completed` → D-Bus `Transcript` received", _pair(tr.get("completed_to_signal_ms"))),
        ("… the same with no hook configured", _pair(bare)),
        ("server `completed` → hook process started", _pair(tr.get("completed_to_hook_started_ms"))),
        ("… for comparison: bash started straight from Python", _pair(tr.get("hook_spawn_floor_ms"))),
    ]
    for delay in plan["handshake_delays_ms"]:
        start = _get(clients, "sttd", f"start_handshake_{delay}ms") or {}
        lines += [
            (f"Stop → final transcript, handshake {delay} ms", _pair(start.get("stop_to_final_transcript_ms"))),
            (f"Stop → `idle`, handshake {delay} ms", _pair(start.get("stop_to_idle_ms"))),
        ]
    main_thread = _get(streaming, "cpu_s_per_audio_min_main_thread", "sttd")
    lines += [
        (
            f"speech lost at Start with `[audio] preroll_ms = {plan['preroll_ms']}`, handshake 0 ms (ms, worst run)",
            _fmt(_lost(_get(data, "sttd", "start_with_preroll"))),
        ),
        (
            "CPU while streaming: event loop thread / capture thread (s per audio minute)",
            f"{_fmt(main_thread, 2)} / {_fmt(cpu('sttd') - main_thread, 2)}"
            if _number(main_thread) and _number(cpu("sttd"))
            else "—",
        ),
        ("idle CPU (ms per minute)", _fmt(idle.get("cpu_ms_per_min"), 3)),
        ("idle wake-ups (per minute)", _fmt(idle.get("wakeups_per_min"))),
        ("idle measured over (s)", _fmt(idle.get("seconds"))),
        ("RSS idle / peak (MB)", f"{_fmt(_get(data, 'sttd', 'memory', 'rss_idle_mb'))} / {_fmt(sttd_rss)}"),
    ]
    out += ["", "## sttd alone", "", "| | |", "|---|---|"] + [f"| {a} | {b} |" for a, b in lines]

    out += [
        "",
        "## `[audio] chunk_ms`",
        "",
        "| chunk_ms | capture → wire, net | CPU while streaming (s per audio minute) |",
        "|---|---|---|",
    ]
    for chunk, stats in sorted(data["chunk_ms"].items(), key=lambda kv: int(kv[0])):
        latency, cpu_s = _pair(stats.get("capture_to_wire_ms")), _fmt(stats.get("cpu_s_per_audio_min"), 2)
        out.append(f"| {chunk} | {latency} | {cpu_s} |")

    eng = data.get("engine") or {}
    out += [
        "",
        "## Offline engine (Whisper base, int8, through sttd from the microphone)",
        "",
        "| | |",
        "|---|---|",
        f"| end of speech → final transcript | {_pair(eng.get('end_of_speech_to_final_ms'))} |",
        f"| word error rate ({eng.get('sentences', 0)} espeak-ng sentences) | {_fmt(eng.get('wer'), 3)} |",
        f"| engine RSS / peak (MB) | {_fmt(eng.get('engine_rss_mb'))} / {_fmt(eng.get('engine_rss_peak_mb'))} |",
        f"| engine CPU while dictating (s per audio minute) | {_fmt(eng.get('engine_cpu_s_per_audio_min'), 1)} |",
        f"| sttd start → model loaded (s) | {_fmt(eng.get('start_to_model_loaded_s'))} |",
        "",
    ]
    violations = meta.get("protocol_violations") or []
    if violations:
        out += [f"The test server saw {len(violations)} protocol violation(s); see the JSON.", ""]
    return "\n".join(out)
