"""Configuration and persisted state: what a user writes, and what they are told when it is wrong."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from sttd import config, core, state
from sttd.errors import ConfigError
from sttd.protocol import TurnDetection

from .daemon import command


def test_an_empty_file_gives_the_contract_defaults() -> None:
    cfg = config.parse("")
    assert cfg.realtime.url == "wss://api.openai.com/v1/realtime?intent=transcription"
    assert cfg.realtime.model == "gpt-live-transcribe"
    assert cfg.realtime.allow_insecure is False
    assert cfg.turn_detection.type == "auto"
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
        languages = ["de", "en"]
        prompt = "sttd, PipeWire"
        keywords = ["sttd", "PipeWire"]
        delay = "low"
        noise_reduction = "off"
        api_key_file = "~/.config/sttd/key"
        token_url = "http://127.0.0.1:1/token"
        allow_insecure = false
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
    settings = cfg.session_settings("de")
    assert settings.turn_detection.type == "manual"
    assert (settings.languages, settings.keywords, settings.delay) == (("de", "en"), ("sttd", "PipeWire"), "low")


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
        ("[triggers]\npurge = ''", "triggers.purge"),
        ("[triggers]\nsend = 'a*'", "triggers.send"),
        ("[triggers]\nsend = '.*'", "triggers.send"),
        ("[triggers]\npurge = '|x'", "triggers.purge"),
        ("[triggers]\npurge = '.'", "triggers.purge"),
        ("[triggers]\nsend = '\\b'", "triggers.send"),
        ("[realtime]\nlanguages = ['en', 'english']", "realtime.languages"),
        ("[realtime]\nlanguages = ['']", "realtime.languages"),
        ("[realtime]\nlanguages = 'en'", "realtime.languages"),
        ("[realtime]\nkeywords = ['ok', '']", "realtime.keywords"),
        ('[realtime]\nkeywords = ["line\\nbreak"]', "realtime.keywords"),
        ("[realtime]\nkeywords = ['" + "x" * 101 + "']", "realtime.keywords"),
        ("[realtime]\nkeywords = [" + ", ".join(f"'k{i}'" for i in range(101)) + "]", "realtime.keywords"),
        ("[realtime]\ndelay = 'slow'", "realtime.delay"),
        ("[realtime]\nallow_insecure = 'yes'", "realtime.allow_insecure"),
        ("[realtime]\nurl = 'wss://'", "realtime.url"),
        ("[realtime]\nurl = 'ws://127.0.0.1:port/'", "realtime.url"),
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
    from sttd import engines as daemon

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


# ------------------------------------------------------------- models, languages, keywords


def test_a_keyword_the_service_refuses_is_a_config_error_naming_realtime_keywords() -> None:
    with pytest.raises(ConfigError) as info:
        config.parse("[realtime]\nkeywords = ['sttd', 'a<b']")
    assert str(info.value) == "config: realtime.keywords: 'a<b' must not contain '<'"


def test_languages_and_keywords_reach_the_session() -> None:
    cfg = config.parse("[realtime]\nlanguages = ['en', 'de']\nkeywords = ['PipeWire', 'sttd']\n")
    settings = cfg.session_settings("")
    assert settings.languages == ("en", "de")
    assert settings.keywords == ("PipeWire", "sttd")
    assert config.parse("[realtime]\nlanguages = []").session_settings("").languages == ()


def test_auto_turn_detection_is_sttds_own_for_the_default_model_and_the_services_for_older_ones() -> None:
    live = config.parse("").session_settings("en")
    assert (live.model, live.turn_detection.type) == ("gpt-live-transcribe", "client_vad")
    assert (live.turn_detection.threshold, live.turn_detection.prefix_padding_ms) == (0.5, 300)
    assert live.turn_detection.silence_duration_ms == 500
    old = config.parse("[realtime]\nmodel = 'gpt-4o-mini-transcribe'").session_settings("en")
    assert old.turn_detection.type == "server_vad"
    explicit = config.parse("[realtime]\nmodel = 'gpt-4o-mini-transcribe'\n[turn_detection]\ntype = 'client_vad'")
    assert explicit.session_settings("").turn_detection.type == "client_vad"
    semantic = config.parse("[turn_detection]\ntype = 'semantic_vad'\nsilence_duration_ms = 900")
    assert semantic.session_settings("").turn_detection == TurnDetection("semantic_vad", 0.5, 300, 900)


def test_check_report_names_the_model_its_price_and_the_turn_detection() -> None:
    assert config.check_report(config.parse("")) == [
        "model: gpt-live-transcribe ($0.017 per minute), "
        "turn detection: client_vad (auto: sttd's own; the model has none)"
    ]


def test_check_report_warns_of_a_setting_the_model_does_not_take() -> None:
    report = config.check_report(config.parse("[realtime]\ndelay = 'low'\n[turn_detection]\ntype = 'server_vad'"))
    assert "warning: realtime.delay: gpt-live-transcribe does not take a delay: it is not sent" in report
    assert any(line.startswith("warning: turn_detection.type: ") for line in report)
    whisper = config.check_report(config.parse("[realtime]\nmodel = 'gpt-realtime-whisper'\nkeywords = ['sttd']"))
    assert any(line.startswith("warning: realtime.keywords: ") for line in whisper)


def test_check_report_says_that_a_set_language_wins_over_the_list() -> None:
    report = config.check_report(config.parse("[realtime]\nlanguage = 'de'\nlanguages = ['en', 'de']"))
    assert any(line.startswith("warning: realtime.languages: realtime.language (de) is sent") for line in report)


def test_check_report_names_the_shutdown_date_and_replacement_of_a_deprecated_model() -> None:
    report = config.check_report(config.parse("[realtime]\nmodel = 'gpt-4o-mini-transcribe'"))
    assert report[0].startswith(
        "model: gpt-4o-mini-transcribe ($0.003 per minute (estimated)), turn detection: server_vad"
    )
    deprecated = [line for line in report if "deprecated" in line]
    assert len(deprecated) == 1
    assert deprecated[0].startswith("warning: realtime.model: ")
    assert "2027-02-26" in deprecated[0] and "gpt-transcribe" in deprecated[0]


def test_check_report_warns_of_an_unknown_model() -> None:
    report = config.check_report(config.parse("[realtime]\nmodel = 'gpt-9-transcribe'"))
    assert report[0].startswith("model: 'gpt-9-transcribe' (price unknown), turn detection: client_vad")
    assert any(line.startswith("warning: realtime.model: unknown model 'gpt-9-transcribe'") for line in report)


# ------------------------------------------------------------- clear-text URLs


@pytest.mark.parametrize(
    ("key", "url"),
    [
        ("url", "ws://example.com/v1/realtime"),
        ("url", "ws://192.168.1.10:8080/"),
        ("url", "ws://[2001:db8::1]/"),
        ("url", "ws://127.0.0.1@example.com/"),
        ("token_url", "http://example.com/token"),
        ("token_url", "http://10.0.0.1/token"),
    ],
)
def test_a_clear_text_url_to_another_host_is_refused_unless_allowed(key: str, url: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(f"[realtime]\n{key} = '{url}'")
    assert f"realtime.{key}" in str(info.value) and "allow_insecure" in str(info.value)
    cfg = config.parse(f"[realtime]\n{key} = '{url}'\nallow_insecure = true")
    assert getattr(cfg.realtime, key) == url
    assert any(line.startswith(f"warning: realtime.{key}: ") for line in config.check_report(cfg))


@pytest.mark.parametrize(
    "url",
    [
        "ws://127.0.0.1:8000/",
        "ws://127.3.2.1/",
        "ws://[::1]:9/",
        "ws://localhost/",
        "ws://LOCALHOST:1/",
        "wss://x.org/",
    ],
)
def test_loopback_and_encrypted_urls_need_no_permission(url: str) -> None:
    cfg = config.parse(f"[realtime]\nurl = '{url}'\ntoken_url = '{url.replace('ws', 'http', 1)}'")
    assert cfg.realtime.url == url
    assert not any(line.startswith("warning: realtime.") for line in config.check_report(cfg))


# ------------------------------------------------------------- hostile files and values


@pytest.mark.parametrize(
    "text",
    ["a = " + "[" * 100_000, "a = " + "{b = " * 100_000, "[realtime]\nkeywords = " + "[" * 900 + "]" * 900],
)
def test_deeply_nested_toml_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(path) in str(info.value)


def test_a_fifo_as_config_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)
    # A subprocess with a deadline: if opening blocked, the test would fail instead of hanging.
    result = subprocess.run(
        [command("sttd"), "--config", str(fifo), "--check-config"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert f"{fifo}: not a regular file" in result.stderr


@pytest.mark.parametrize("name", ["directory", "/dev/zero", "huge"])
def test_a_config_path_that_is_no_config_file_is_refused_naming_it(tmp_path: Path, name: str) -> None:
    path = Path(name) if name.startswith("/") else tmp_path / name
    if name == "directory":
        path.mkdir()
    elif name == "huge":
        path.write_text("# " + "x" * (2 * 1024 * 1024) + "\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    "text",
    [
        "[realtime]\nlanguage = '{big}'",
        "[realtime]\nlanguages = ['{big}']",
        "[realtime]\nkeywords = ['<{big}']",
        "[realtime]\nurl = 'http://{big}'",
        "[realtime]\ndelay = '{big}'",
        "[turn_detection]\ntype = '{big}'",
        "[audio]\nchunk_ms = '{big}'",
        "[hooks]\nsend = '{big}'",
        "[realtime]\n{big} = 1",
        "[triggers]\nsend = '({big}'",
    ],
)
def test_a_huge_value_is_cut_short_in_the_error(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(text.replace("{big}", "y" * 1_000_000))
    assert len(str(info.value)) < 500


# ------------------------------------------------------------- triggers


def test_a_pattern_re2_cannot_compile_says_re2_syntax_is_used() -> None:
    for pattern in (r"(\w+) \1", "send(?= now)", "(?<!un)send"):
        with pytest.raises(ConfigError) as info:
            config.parse(f"[triggers]\nsend = '{pattern}'")
        message = str(info.value)
        assert "triggers.send" in message and "RE2 syntax" in message and "backreferences" in message


@pytest.mark.parametrize("pattern", ["(a+)+$", "(?:x|y*)+z", "(sen+d )+now"])
def test_a_nested_repetition_is_refused_naming_the_key(pattern: str) -> None:
    with pytest.raises(ConfigError, match=r"triggers\.purge: .*repeats a repetition"):
        config.parse(f"[triggers]\npurge = '{pattern}'")


def test_matching_is_linear_even_for_a_pattern_that_backtracks_elsewhere() -> None:
    # Refused at load, but the matcher itself is RE2: had one slipped through, it could not stall sttd.
    triggers = core.Triggers("(a+)+$", r"\bpurge\b")
    assert triggers.match("a" * 40 + "!?") == core.TriggerMatch("send", "")
    assert triggers.match("a" * 10_000 + "b") is None


def test_triggers_match_case_insensitively_in_any_script() -> None:
    triggers = core.Triggers("über", r"\bpurge\b")
    assert triggers.match("Das ist alles, ÜBER.") == core.TriggerMatch("send", "Das ist alles")
    assert triggers.match("Über alles hinweg") is None  # position "end"
