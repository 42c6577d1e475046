"""A broken or hostile Realtime service against a running sttd: paced retries, no leaked key, bounded memory.

sttd runs as installed, on a private bus with PulseAudio, against the test
server's fault injection: sessions closed at once claiming their "maximum
duration", sessions dropped a second after they are configured, error
messages that echo the API key, a flood of deltas for items that never
exist, and audio that is never committed.
"""

from __future__ import annotations

import asyncio
import itertools
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sttd import protocol as p
from sttd.credentials import ApiKey, CredentialSource
from sttd.realtime import RealtimeSession, SessionOptions

from .bus import SessionBus, wait_until
from .daemon import Listener, Sttd, write_config
from .realtime_records import ConnectionSample
from .realtime_server import FakeRealtimeServer
from .sound import SoundServer
from .systemd_harness import Daemon, DatagramSink, clean_daemon_env, parse_notify, short_dir

MAX_ATTEMPTS = 3  # the default [realtime] max_reconnect_attempts


def _ends_in_error_after_paced_attempts(sttd: Sttd, server: FakeRealtimeServer) -> str:
    assert sttd.ctl("start").returncode == 0
    sttd.wait_state("error", timeout=40)
    error = str(sttd.status()["last_error"])
    time.sleep(1.5)  # a tight loop would show here: no connection may follow the error
    assert server.connection_count <= MAX_ATTEMPTS + 1, f"{server.connection_count} connections"
    opened = [
        c.t
        for prev, c in itertools.pairwise([ConnectionSample(0.0, 0, 0), *server.connection_timeline()])
        if c.total > prev.total
    ]
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(opened)), f"connections opened at {opened}"
    return error


def test_a_maximum_duration_close_right_after_the_update_is_a_failure_not_a_rollover(
    sttd: Sttd, realtime_server: FakeRealtimeServer
) -> None:
    realtime_server.close_after_update(1001, "Your session hit the maximum duration of 60 minutes.", 0.0)
    error = _ends_in_error_after_paced_attempts(sttd, realtime_server)
    assert "maximum duration" in error
    assert "gave up after" in error
    assert sttd.ctl("stop").returncode == 0
    sttd.wait_state("idle")


def test_a_server_that_drops_every_session_a_second_after_configuring_it_is_given_up(
    sttd: Sttd, realtime_server: FakeRealtimeServer
) -> None:
    realtime_server.close_after_update(1011, "internal error", 1.0)
    error = _ends_in_error_after_paced_attempts(sttd, realtime_server)
    assert "1011" in error
    # After the error, a fresh Start is a fresh dictation with a fresh count: it works once the server does.
    realtime_server.close_after_update(None)
    assert sttd.ctl("stop").returncode == 0
    assert sttd.ctl("start").returncode == 0
    sttd.wait_state("listening")
    assert sttd.ctl("stop").returncode == 0
    sttd.wait_state("idle")


def test_a_server_echoing_the_api_key_leaks_it_nowhere(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    key = realtime_server.api_key
    notify = DatagramSink(short_dir("notify") / "notify", parse_notify)
    config = write_config(tmp_path / "config.toml", realtime_server.url)
    env = clean_daemon_env(tmp_path, session_bus, pulse_server, realtime_server, NOTIFY_SOCKET=str(notify.path))
    daemon = Daemon([sys.executable, "-m", "sttd.cli", "--config", str(config)], env, tmp_path / "sttd.log")
    sttd = Sttd.__new__(Sttd)  # sttctl and the listener need only its environment
    sttd.env = env
    listener = None
    try:
        notify.wait_for(lambda m: "READY" in m, 15, "READY=1")
        listener = Listener(sttd)
        assert _ctl(env, "start").returncode == 0
        wait_until(lambda: "listening" in _ctl(env, "status").stdout, 15, "listening")
        realtime_server.echo_key_in_errors()
        realtime_server.send_error("server_error", "something broke")
        listener.wait_for(lambda e: e["type"] == "error", 10, "the Error signal")
        realtime_server.close_sessions(4000, f"refused for {key}")
        wait_until(lambda: "error" in _ctl(env, "status").stdout, 15, "the error state")
        status = _ctl(env, "status").stdout
        listener.drain()
        assert daemon.terminate() == 0
    finally:
        if listener is not None:
            listener.close()
        daemon.close()
        notify.close()
    assert "refused" in status
    assert key not in status
    errors = [e for e in listener.seen if e["type"] == "error"]
    assert errors and all(key not in str(e) for e in errors)
    assert all(key not in str(m) for m in notify.values())
    assert any("error" in m.get("STATUS", "") for m in notify.values())
    assert key not in daemon.log


def _ctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    from .daemon import sttctl

    return sttctl(env, *args)


def test_a_flood_of_deltas_for_unknown_items_leaves_sttd_responsive(
    tmp_path: Path, sttd: Sttd, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    assert sttd.ctl("start").returncode == 0
    sttd.wait_state("listening")
    realtime_server.flood_deltas(2000)
    try:
        for _ in range(5):
            started = time.monotonic()
            assert sttd.ctl("status").returncode == 0
            assert time.monotonic() - started < 5
        assert sttd.ctl("stop").returncode == 0
        sttd.wait_state("idle", timeout=15)
    finally:
        realtime_server.stop_flood()
    started = time.monotonic()
    assert sttd.terminate(timeout=5) == 0
    assert time.monotonic() - started < 5


def test_a_nul_or_a_lone_surrogate_in_a_transcript_reaches_the_desktop_as_a_replacement_character(
    sttd: Sttd, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    # JSON carries both; a D-Bus string carries neither (a NUL gets the sender dropped from the
    # bus, a lone surrogate cannot even be encoded), so sttd must mend them where they come in.
    listener = Listener(sttd)
    try:
        assert sttd.ctl("start").returncode == 0
        sttd.wait_state("listening")
        realtime_server.force_turn("nul\u0000here and \ud800 there")
        realtime_server.force_turn("still dictating")

        def final(text: str) -> Callable[[dict[str, Any]], bool]:
            return lambda e: e["type"] == "transcript" and e["final"] and e["text"] == text

        listener.wait_for(final("nul\ufffdhere and \ufffd there"), 20, "the mended transcript")
        listener.wait_for(final("still dictating"), 20, "the next transcript, on the same connection")
        assert sttd.status()["state"] == "listening"
        assert sttd.ctl("stop").returncode == 0
        sttd.wait_state("idle")
    finally:
        listener.close()
    assert sttd.terminate() == 0
    assert "Traceback" not in sttd.log
    # The SDK's models refuse a lone surrogate too: the server's check saw what it was made to send.
    assert all("hex escape" in v for v in realtime_server.take_violations())


def test_ten_minutes_of_audio_never_committed_keep_the_session_memory_bounded() -> None:
    """The replay log is bounded by the backlog limit: RSS, sampled, stays within 10 MB."""
    with subprocess.Popen(
        [sys.executable, "-m", "tests.realtime_server", "--port", "0", "--never-commit"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    ) as server:
        assert server.stdout is not None
        import json

        info = json.loads(server.stdout.readline())
        try:
            samples = asyncio.run(_stream_minutes(info["url"], info["api_key"], minutes=10))
        finally:
            server.terminate()
    start = samples[0]
    assert max(samples) - start < 10 * 1024, f"RSS grew from {start} to {max(samples)} kB: {samples}"


def _rss_kb() -> int:
    """The resident set size now (not the peak, which earlier tests in this process may have set)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() // 1024


async def _stream_minutes(url: str, api_key: str, minutes: int) -> list[int]:
    settings = p.SessionSettings(model="gpt-4o-mini-transcribe", turn_detection=p.TurnDetection("manual"))
    options = SessionOptions(url=url, settings=settings)

    ready = asyncio.Event()

    class Quiet:
        def session_ready(self) -> None:
            ready.set()

        def session_event(self, event: p.ServerEvent) -> None: ...

        def session_reconnecting(self, reason: str) -> None: ...

    session = RealtimeSession(options, CredentialSource(ApiKey(api_key, "test")), listener=Quiet())
    task = asyncio.create_task(session.run())
    await asyncio.wait_for(ready.wait(), 10)
    rng = np.random.default_rng(1)
    frame = (rng.normal(0, 300, p.SAMPLE_RATE * 40 // 1000)).astype("<i2").tobytes()
    samples = []
    for n in range(minutes * 60 * 25):  # 40 ms frames, as fast as the connection takes them
        session.send_audio(frame)
        while session.queued_audio_ms > 1000:  # as a microphone would: no faster than it is sent
            await asyncio.sleep(0.001)
        if n % 1500 == 0:  # every minute of audio
            samples.append(_rss_kb())
    session.cancel()
    await task
    # Everything sent beyond the 120 s bound was trimmed from the replay log; nothing was dropped.
    assert session.trimmed_audio_ms >= (minutes * 60 - 120) * 1000 - 5000
    assert session.dropped_audio_ms == 0
    return samples
