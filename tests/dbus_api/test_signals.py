"""A whole dictation as a bus client sees it: State, Level, Transcript, Triggered and Error signals."""

from __future__ import annotations

from pathlib import Path

from ..bus import require
from ..daemon import leaks_python
from ..sound import speech_wav
from .clients import IFACE, NAME, PATH, Clients, Monitor, Setup

# --------------------------------------------------------- a whole dictation


def test_a_dictation_seen_through_signals(tmp_path: Path, setup: Setup, clients: Clients, monitor: Monitor) -> None:
    """State in order, Level while listening only, Transcript, PendingText and a voice Triggered."""
    setup.realtime.script(["Hello world. Send."])
    wav = speech_wav("hello world send", tmp_path / "speech.wav")
    assert clients.busctl_get("State", "Level") == ["idle", 0.0]

    assert clients.busctl_call("Start").returncode == 0
    monitor.wait_property("State", "listening")
    setup.pulse.play(wav)
    triggered = monitor.wait_signal("Triggered", "send", timeout=20)
    assert triggered.args == ("send", "Hello world")
    monitor.wait_last("State", "listening")  # back from processing once the transcript is in
    assert clients.gdbus_call(f"{IFACE}.Stop").returncode == 0
    monitor.wait_last("State", "idle")
    # A fence: every signal sent before this one has arrived.
    assert clients.busctl_call("Purge").returncode == 0
    fence = monitor.wait_signal("Triggered", "purge")

    signals = [s for s in monitor.snapshot() if s.at <= fence.at]
    states = monitor.values("State")
    # Stop passes through processing: the session is flushed before it closes.
    assert states == ["connecting", "listening", "speaking", "processing", "listening", "processing", "idle"]

    transcripts = [s.args for s in signals if s.member == "Transcript"]
    assert transcripts, "no Transcript signal"
    *partials, final = transcripts
    assert final[:2] == ("Hello world. Send.", True)
    item_id = final[2]
    assert item_id
    assert partials and all(p[1] is False and p[2] == item_id for p in partials)
    assert "Hello world. Send.".startswith(partials[-1][0].rstrip("."))
    assert monitor.values("PendingText") == ["Hello world", ""]
    assert clients.busctl_get("PendingText", "Level") == ["", 0.0]

    # Level: moves while the microphone hears speech, never outside listening/speaking/processing,
    # at most ten updates a second.
    state = "idle"
    levels: list[tuple[float, float]] = []
    for s in signals:
        if s.member != "PropertiesChanged":
            continue
        changed = s.args[1]
        if "Level" in changed:
            assert state in ("listening", "speaking", "processing"), (state, changed)
            levels.append((s.at, changed["Level"]))
        state = changed.get("State", state)
    assert any(level > 0.01 for _, level in levels), levels
    assert all(0.0 <= level <= 1.0 for _, level in levels)
    times = [at for at, _ in levels]
    assert len(times) <= 10 * (times[-1] - times[0]) + 3, times  # the arrivals jitter; the daemon paces
    for first, eleventh in zip(times, times[10:], strict=False):
        assert eleventh - first >= 0.7, times
    # Level was reset before the State left listening: nothing follows the idle.
    idle_at = monitor.changes("State")[-1][0]
    assert all(at <= idle_at for at in times)


def test_a_fatal_close_raises_the_error_signal(setup: Setup, clients: Clients, monitor: Monitor) -> None:
    setup.realtime.close_on_connect(3000, "x", times=None)
    clients.ok(require("dbus-send"), "--session", "--print-reply", f"--dest={NAME}", PATH, f"{IFACE}.Start")
    error = monitor.wait_signal("Error")
    code, message = error.args
    assert code == "credentials"
    assert "3000" in message
    monitor.wait_property("State", "error")
    (last_error,) = [v for v in monitor.values("LastError") if v]
    assert clients.busctl_get("State", "LastError") == ["error", last_error]
    assert "3000" in last_error
    assert not leaks_python(message + last_error)
    # A new Start clears LastError and tries again.
    assert clients.busctl_call("Start").returncode == 0
    monitor.wait_for(lambda s: len([e for e in monitor.snapshot() if e.member == "Error"]) == 2, "a second Error")
    assert "" in monitor.values("LastError")
