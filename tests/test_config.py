"""Configuration and persisted state: what a user writes, and what they are told when it is wrong."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sttd import config, state
from sttd.errors import ConfigError

from .daemon import command


def test_an_empty_file_gives_the_contract_defaults() -> None:
    cfg = config.parse("")
    assert cfg.realtime.url == "wss://api.openai.com/v1/realtime?intent=transcription"
    assert cfg.realtime.model == "gpt-4o-mini-transcribe"
    assert cfg.turn_detection.type == "server_vad"
    assert cfg.audio.chunk_ms == 40
    assert cfg.triggers.send == r"\bsend\b"
    assert cfg.hooks.timeout_s == 10


def test_every_contract_key_is_accepted() -> None:
    cfg = config.parse(
        """
        [realtime]
        engine = "openai"
        url = "ws://127.0.0.1:1/v1/realtime?intent=transcription"
        model = "gpt-4o-transcribe"
        language = "de"
        prompt = "sttd, PipeWire"
        noise_reduction = "off"
        api_key_file = "~/.config/sttd/key"
        token_url = "http://127.0.0.1:1/token"
        max_reconnect_attempts = 5
        [turn_detection]
        type = "manual"
        threshold = 0.7
        prefix_padding_ms = 200
        silence_duration_ms = 800
        [audio]
        source = "mic"
        chunk_ms = 20
        preroll_ms = 500
        [triggers]
        send = 'over'
        purge = 'scratch that'
        position = "anywhere"
        [hooks]
        transcript = ["wtype", "-"]
        send = ["wtype", "-k", "Return"]
        purge = []
        timeout_s = 2.5
        [output]
        mode = "type"
        [local]
        model = "small"
        """
    )
    assert cfg.hooks.send == ("wtype", "-k", "Return")
    assert cfg.turn_detection.type == "manual"
    assert cfg.session_settings("de").turn_detection.type == "manual"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[realtime]\nmodle = 'x'", "realtime.modle"),
        ("[nonsense]\n", "nonsense"),
        ("[audio]\nchunk_ms = 'forty'", "audio.chunk_ms"),
        ("[audio]\nchunk_ms = 1000", "audio.chunk_ms"),
        ("[realtime]\nlanguage = 'english'", "realtime.language"),
        ("[realtime]\nurl = 'http://example'", "realtime.url"),
        ("[turn_detection]\ntype = 'loud'", "turn_detection.type"),
        ("[turn_detection]\nthreshold = 2", "turn_detection.threshold"),
        ("[hooks]\nsend = 'wtype -k Return'", "hooks.send"),
        ("[triggers]\nsend = '(unclosed'", "triggers.send"),
        ("[realtime]\nmax_reconnect_attempts = true", "realtime.max_reconnect_attempts"),
        ("realtime = 1", "realtime"),
    ],
)
def test_bad_values_are_refused_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(text)
    assert key in str(info.value)


def test_check_config_names_the_key_and_exits_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[audio]\nchunk_ms = 'forty'\n")
    result = subprocess.run([command("sttd"), "--config", str(bad), "--check-config"], capture_output=True, text=True)
    assert result.returncode != 0
    assert "audio.chunk_ms" in result.stderr
    good = tmp_path / "good.toml"
    good.write_text("[audio]\nchunk_ms = 20\n")
    result = subprocess.run([command("sttd"), "--config", str(good), "--check-config"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_state_is_written_atomically_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "sttd" / "state.json"
    assert state.load(path) == state.PersistedState()
    state.save(path, state.PersistedState(enabled=False, language="fr"))
    assert json.loads(path.read_text()) == {"enabled": False, "language": "fr"}
    assert state.load(path) == state.PersistedState(enabled=False, language="fr")
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temporary left behind


def test_a_corrupt_state_file_falls_back_to_defaults(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    assert state.load(path) == state.PersistedState()
    path.write_text('{"enabled": "yes", "language": "klingon"}')
    assert state.load(path) == state.PersistedState()


def test_default_paths_follow_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "c"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "s"))
    assert config.default_path() == tmp_path / "c" / "sttd" / "config.toml"
    assert state.default_path() == tmp_path / "s" / "sttd" / "state.json"
    assert config.load() == config.Config()  # no file there: the defaults


def test_engine_auto_uses_openai_with_credentials_else_the_local_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sttd import daemon

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert daemon.choose_engine(config.parse("")) == "local"  # faster-whisper is installed for the tests
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    assert daemon.choose_engine(config.parse("")) == "openai"
    assert daemon.choose_engine(config.parse('[realtime]\nengine = "local"')) == "local"
    monkeypatch.delenv("OPENAI_API_KEY")
    key = tmp_path / "key"
    key.write_text("sk-from-a-file-0123")
    key.chmod(0o600)
    assert daemon.choose_engine(config.parse(f'[realtime]\napi_key_file = "{key}"')) == "openai"
    monkeypatch.setattr(daemon, "engine_available", lambda: False)
    assert daemon.choose_engine(config.parse("")) == ""  # neither: Start says how to set up either
