"""Hooks and outputs through the real daemon: spoken triggers run the hooks, a transcript is only ever text,
hanging hooks are killed, type mode types, and stopping sttd ends what a hook started.
Every wait has a deadline; a missing tool fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from ..bus import SessionBus, wait_until
from ..daemon import Listener, Sttd, write_config
from ..realtime_server import FakeRealtimeServer
from ..sound import SoundServer, speech_wav, wav_samples, write_wav
from .harness import RATE, UNICODE, Recorder, Spawner, XClient, gone, hooks_toml

# ------------------------------------------------------------ through the daemon


def two_utterances(directory: Path, first: str, second: str) -> Path:
    """espeak-ng saying ``first``, a second of silence, then ``second``."""
    a = wav_samples(speech_wav(first, directory / "first.wav"))
    b = wav_samples(speech_wav(second, directory / "second.wav"))
    silence = np.zeros(RATE, dtype=np.int16)
    return write_wav(directory / "two.wav", np.concatenate([a, silence, b, silence[: RATE // 3]]))


@pytest.fixture
def start_sttd(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> Iterator[Callable[..., Sttd]]:
    """Start ``sttd`` with extra config text (``[hooks]``, ``[output]``) and extra environment."""
    daemons: list[Sttd] = []

    def start(config: str, env: dict[str, str] | None = None) -> Sttd:
        path = write_config(tmp_path / "config.toml", realtime_server.url, extra=config)
        full_env = {
            **session_bus.env(),
            "PULSE_SERVER": pulse_server.server,
            "OPENAI_API_KEY": realtime_server.api_key,
            **(env or {}),
        }
        daemon = Sttd(tmp_path / "sttd", full_env, path)
        daemons.append(daemon)
        daemon.wait_ready()
        return daemon

    yield start
    for daemon in daemons:
        daemon.kill()


def listening(sttd: Sttd) -> Listener:
    listener = Listener(sttd)
    assert sttd.ctl("start").returncode == 0
    sttd.wait_state("listening")
    return listener


def test_saying_send_runs_the_send_hook_with_the_pending_text(
    tmp_path: Path, start_sttd: Callable[..., Sttd], pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    rec = Recorder(tmp_path / "rec")
    sttd = start_sttd(hooks_toml(rec))
    realtime_server.script(["hello world", "send"])
    wav = two_utterances(tmp_path, "hello world", "send")
    listener = listening(sttd)
    try:
        pulse_server.play(wav)
        triggered = listener.wait_for(lambda e: e["type"] == "triggered", 20, "the Triggered signal")
        assert (triggered["name"], triggered["text"]) == ("send", "hello world")
        send_item = next(e["item_id"] for e in listener.seen if e["type"] == "transcript" and e["text"] == "send")
        got = rec.wait(2)
        assert [(r["event"], r["stdin"]) for r in got] == [("transcript", "hello world"), ("send", "hello world")]
        assert got[1]["item_id"] == send_item
        assert not any(r["api_key"] for r in got)  # the daemon's secret stays with it
        assert sttd.status()["transcript"] == ""
        assert sttd.ctl("stop").returncode == 0
        sttd.wait_state("idle")
    finally:
        listener.close()
    assert len(realtime_server.turns()) == 2  # two utterances, as spoken
    assert sttd.terminate() == 0
    for line in sttd.log.splitlines():
        if "hello world" in line:
            assert " DEBUG " in line, line


def test_saying_purge_drops_the_pending_text_and_the_send_hook_does_not_run(
    tmp_path: Path, start_sttd: Callable[..., Sttd], realtime_server: FakeRealtimeServer
) -> None:
    rec = Recorder(tmp_path / "rec")
    sttd = start_sttd(hooks_toml(rec))
    listener = listening(sttd)
    try:
        realtime_server.force_turn("hello world")
        realtime_server.force_turn("Purge.")
        purged = listener.wait_for(lambda e: e["type"] == "triggered", 15, "Triggered purge")
        assert (purged["name"], purged["text"]) == ("purge", "hello world")
        assert sttd.status()["transcript"] == ""
        assert [(r["event"], r["stdin"]) for r in rec.wait(2)] == [
            ("transcript", "hello world"),
            ("purge", "hello world"),
        ]
        # What comes next is sent without the purged words.
        realtime_server.force_turn("again, send")
        rec.wait(4)
    finally:
        listener.close()
    assert [(r["event"], r["stdin"]) for r in rec.records()[2:]] == [("transcript", "again"), ("send", "again")]


def test_a_transcript_with_shell_syntax_is_only_ever_text(
    tmp_path: Path, start_sttd: Callable[..., Sttd], realtime_server: FakeRealtimeServer
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "canary").write_text("still here")
    marker = tmp_path / f"pwned-{os.getpid()}"
    text = f"$(touch {marker}); rm -rf ~"
    rec = Recorder(tmp_path / "rec")
    sttd = start_sttd(hooks_toml(rec), {"HOME": str(home)})
    listener = listening(sttd)
    try:
        realtime_server.force_turn(text)
        realtime_server.force_turn("send")
        got = rec.wait(2)
    finally:
        listener.close()
    assert [(r["event"], r["stdin"]) for r in got] == [("transcript", text), ("send", text)]
    assert not marker.exists()
    assert (home / "canary").read_text() == "still here"


def test_a_hanging_hook_is_killed_at_its_timeout_and_the_next_utterance_is_handled(
    tmp_path: Path, start_sttd: Callable[..., Sttd], realtime_server: FakeRealtimeServer
) -> None:
    rec = Recorder(tmp_path / "rec")
    sttd = start_sttd(hooks_toml(rec, timeout_s=1))
    listener = listening(sttd)
    try:
        realtime_server.force_turn("please hang here")
        (hung,) = rec.wait(1)
        error = listener.wait_for(lambda e: e["type"] == "error", 10, "the Error signal of the killed hook")
        assert error["code"] == "hook"
        assert "did not finish within 1 s" in error["message"]
        wait_until(lambda: gone(hung["pid"]) and gone(hung["child"]), 5, "the hung hook to be killed")
        realtime_server.force_turn("all good again")
        after = rec.wait(2)[1]
        assert after["stdin"] == "all good again"
        final = listener.wait_for(lambda e: e["type"] == "transcript" and e["final"] and "good" in e["text"], 5, "")
        assert final["text"] == "all good again"
        assert sttd.status()["state"] == "listening"
    finally:
        listener.close()
    assert "did not finish within 1 s" in sttd.log


def test_type_mode_through_the_daemon_types_and_presses_return(
    tmp_path: Path, start_sttd: Callable[..., Sttd], realtime_server: FakeRealtimeServer, x_client: XClient
) -> None:
    sttd = start_sttd('\n[output]\nmode = "type"\n', {"DISPLAY": os.environ["DISPLAY"], "WAYLAND_DISPLAY": ""})
    listener = listening(sttd)
    try:
        realtime_server.force_turn("hello world")
        realtime_server.force_turn(f"{UNICODE}, send.")
        assert x_client.typed("\r") == f"hello world {UNICODE}\r"
        triggered = listener.wait_for(lambda e: e["type"] == "triggered", 10, "Triggered send")
        assert triggered["text"] == f"hello world {UNICODE}"
    finally:
        listener.close()
    assert "output: typing with xdotool" in sttd.log


def test_stopping_sttd_ends_what_its_running_hook_started(
    tmp_path: Path, start_sttd: Callable[..., Sttd], realtime_server: FakeRealtimeServer
) -> None:
    spawner = Spawner(tmp_path, "hang")
    sttd = start_sttd(f"\n[hooks]\ntranscript = {json.dumps(list(spawner.argv))}\ntimeout_s = 600\n")
    listener = listening(sttd)
    try:
        realtime_server.force_turn("start them")
        spawner.started()
    finally:
        listener.close()
    assert sttd.terminate() == 0
    spawner.none_left()
