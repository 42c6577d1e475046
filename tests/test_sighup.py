"""SIGHUP: a valid new config takes effect in a running dictation, an invalid one is refused with an error
naming the key.

Every wait has a deadline; a missing tool fails the test.
"""

from __future__ import annotations

import signal
from pathlib import Path

from sttd.protocol import BYTES_PER_MS

from .bus import SessionBus, wait_until
from .daemon import Listener, Sttd, daemon_env, write_config
from .realtime_server import FakeRealtimeServer
from .sound import SoundServer

# --------------------------------------------------------------------------- SIGHUP


def _started(sttd: Sttd, server: FakeRealtimeServer) -> Listener:
    listener = Listener(sttd)
    assert sttd.ctl("start").returncode == 0
    sttd.wait_state("listening")
    server.wait_for_connections(1)
    return listener


def _say(server: FakeRealtimeServer, listener: Listener, text: str) -> None:
    """A final utterance ``text``, as if spoken, in the running session."""
    # The service commits only with at least 100 ms buffered since the last commit.
    server.wait_for_audio(len(server.audio()) + 250 * BYTES_PER_MS, timeout=10)
    server.force_turn(text)
    listener.wait_for(lambda e: e["type"] == "transcript" and e["final"] and e["text"] == text, 10, f"final {text!r}")


def test_sighup_applies_a_valid_config_to_the_running_dictation(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    config = write_config(tmp_path / "config.toml", realtime_server.url)
    env = daemon_env(session_bus, pulse_server, realtime_server)
    sttd = Sttd(tmp_path, env, config)
    listener: Listener | None = None
    try:
        sttd.wait_ready()
        listener = _started(sttd, realtime_server)
        _say(realtime_server, listener, "the weather is fine over")
        assert not any(e["type"] == "triggered" for e in listener.seen)

        config.write_text(config.read_text() + "\n[triggers]\nsend = '\\bover\\b'\n")
        sttd.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in sttd.log, 10, "the reload")
        _say(realtime_server, listener, "and that is all over")
        sent = listener.wait_for(lambda e: e["type"] == "triggered", 10, "the new send trigger")
        assert sent == {"type": "triggered", "name": "send", "text": "the weather is fine over and that is all"}

        # The dictation was not dropped: the same session, still listening.
        assert realtime_server.connection_count == 1
        assert sttd.status()["state"] == "listening"
        assert sttd.terminate() == 0
    finally:
        if listener is not None:
            listener.close()
        sttd.kill()


def test_sighup_refuses_an_invalid_config_names_the_key_and_keeps_the_old_one(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    config = write_config(tmp_path / "config.toml", realtime_server.url)
    good = config.read_text()
    env = daemon_env(session_bus, pulse_server, realtime_server)
    sttd = Sttd(tmp_path, env, config)
    listener: Listener | None = None
    try:
        sttd.wait_ready()
        listener = _started(sttd, realtime_server)
        for bad, key in [
            ("[triggers]\nsend = '(unclosed'\n", "triggers.send"),
            ("[audio]\nvolume = 11\n", "audio.volume"),
            ("[turn_detection]\nthreshold = 2.0\n", "turn_detection.threshold"),
        ]:
            config.write_text(good + "\n" + bad)
            errors_before = sttd.log.count(" ERROR ")
            sttd.process.send_signal(signal.SIGHUP)

            def logged(n: int = errors_before) -> bool:
                return sttd.log.count(" ERROR ") > n

            wait_until(logged, 10, f"the error about {key}")
            line = [line for line in sttd.log.splitlines() if " ERROR " in line][-1]
            assert "reload refused" in line and key in line, line
            assert sttd.process.poll() is None

        # Still running, still dictating, with the old triggers.
        assert sttd.status()["state"] == "listening"
        _say(realtime_server, listener, "keep this and send")
        sent = listener.wait_for(lambda e: e["type"] == "triggered", 10, "the old send trigger")
        assert sent["name"] == "send" and sent["text"] == "keep this and"
        assert realtime_server.connection_count == 1
        assert sttd.terminate() == 0
        assert "Traceback" not in sttd.log
    finally:
        if listener is not None:
            listener.close()
        sttd.kill()
