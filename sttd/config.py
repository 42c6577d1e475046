"""The TOML configuration: frozen dataclasses, validated once, errors that name the key.

Every section of ``config.toml`` is a frozen dataclass below; each field's
docstring is what the man page says of the key. Loading walks the dataclass
fields, so a key in the file that is not a field is an error naming it, and a
value of the wrong type or out of range is an error naming it too.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError, InvalidLanguageError
from .languages import check_language
from .protocol import SessionSettings, TurnDetection

DEFAULT_URL = "wss://api.openai.com/v1/realtime?intent=transcription"


@dataclass(frozen=True)
class RealtimeConfig:
    """``[realtime]``: the transcription service."""

    engine: Literal["auto", "openai", "local"] = "auto"
    """"openai", "local", or "auto" (openai when credentials exist, else local)."""
    url: str = DEFAULT_URL
    """Websocket URL of the Realtime transcription endpoint."""
    model: str = "gpt-4o-mini-transcribe"
    """Transcription model."""
    language: str = ""
    """Default ISO-639-1 language until SetLanguage persists another; "" = automatic."""
    prompt: str = ""
    """Vocabulary hints for the transcription model."""
    noise_reduction: Literal["near_field", "far_field", "off"] = "near_field"
    """The service's noise suppression."""
    api_key_file: str = ""
    """File holding the API key; else $CREDENTIALS_DIRECTORY/openai-api-key, else OPENAI_API_KEY."""
    token_url: str = ""
    """Optional: POST here for an ephemeral client secret instead of sending the API key."""
    max_reconnect_attempts: int = 3
    """Consecutive failed connection attempts before giving up."""


@dataclass(frozen=True)
class TurnDetectionConfig:
    """``[turn_detection]``: how the end of an utterance is found."""

    type: Literal["server_vad", "semantic_vad", "manual"] = "server_vad"
    """"server_vad", "semantic_vad" or "manual" (commit on Stop)."""
    threshold: float = 0.5
    """server_vad activation threshold, 0..1."""
    prefix_padding_ms: int = 300
    """Audio kept before detected speech."""
    silence_duration_ms: int = 500
    """Silence that ends an utterance."""


@dataclass(frozen=True)
class AudioConfig:
    """``[audio]``: the microphone."""

    source: str = ""
    """Source name; empty = follow the default source."""
    chunk_ms: int = 40
    """Frame length sent to the service, 20..100 ms."""
    preroll_ms: int = 0
    """>0 keeps a ring of this much audio while idle (the microphone stays open)."""


@dataclass(frozen=True)
class TriggersConfig:
    """``[triggers]``: voice commands, as case-insensitive regular expressions."""

    send: str = r"\bsend\b"
    """Saying this sends the pending text."""
    purge: str = r"\bpurge\b"
    """Saying this drops the pending text."""
    position: Literal["end", "anywhere"] = "end"
    """"end": only when the trigger ends the utterance; "anywhere"."""


@dataclass(frozen=True)
class HooksConfig:
    """``[hooks]``: commands (argv lists, no shell) that get the text on stdin."""

    transcript: tuple[str, ...] = ()
    """Run for every final utterance."""
    send: tuple[str, ...] = ()
    """Run on the send trigger with the pending text."""
    purge: tuple[str, ...] = ()
    """Run on the purge trigger with the dropped text."""
    timeout_s: float = 10.0
    """Seconds before a hook is killed."""


@dataclass(frozen=True)
class OutputConfig:
    """``[output]``: built-in ways to deliver text."""

    mode: Literal["none", "type", "clipboard", "stdout"] = "none"
    """Where final text goes besides D-Bus and hooks."""


@dataclass(frozen=True)
class LocalConfig:
    """``[local]``: the offline engine."""

    model: str = "base.en"
    """A faster-whisper model name (fetched by its loader on first use) or a directory holding one."""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    """Where the model runs."""
    compute_type: str = "int8"
    """CTranslate2 compute type: "int8", "int8_float16", "float16", "float32", ..."""
    threads: int = 0
    """CPU threads for transcription; 0 = as many as there are cores."""


@dataclass(frozen=True)
class Config:
    """The whole configuration file."""

    realtime: RealtimeConfig = RealtimeConfig()
    turn_detection: TurnDetectionConfig = TurnDetectionConfig()
    audio: AudioConfig = AudioConfig()
    triggers: TriggersConfig = TriggersConfig()
    hooks: HooksConfig = HooksConfig()
    output: OutputConfig = OutputConfig()
    local: LocalConfig = LocalConfig()

    def session_settings(self, language: str) -> SessionSettings:
        """The Realtime session configuration for ``language`` (the persisted one)."""
        td = self.turn_detection
        return SessionSettings(
            model=self.realtime.model,
            language=language,
            prompt=self.realtime.prompt,
            turn_detection=TurnDetection(td.type, td.threshold, td.prefix_padding_ms, td.silence_duration_ms),
            noise_reduction=self.realtime.noise_reduction,
        )


def default_path() -> Path:
    """``$XDG_CONFIG_HOME/sttd/config.toml``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "sttd" / "config.toml"


def load(path: Path | None = None) -> Config:
    """Read and validate the config; a missing default file means all defaults.

    Raises :class:`ConfigError` naming the file or the key.
    """
    explicit = path is not None
    path = path or default_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: no such file") from None
        return Config()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse(text, source=str(path))


def parse(text: str, source: str = "config") -> Config:
    """Validate TOML text into a :class:`Config`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    try:
        config: Config = _build(Config, data, prefix="")
        _check_values(config)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return config


def _build(cls: type[Any], data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'top level'}: expected a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{prefix}{key}: unknown key")
    values = {}
    for name, value in data.items():
        kind = hints[name]
        key = f"{prefix}{name}"
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            values[name] = _build(kind, value, prefix=f"{key}.")
        else:
            values[name] = _coerce(key, value, kind)
    return cls(**values)


def _coerce(key: str, value: Any, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(repr(c) for c in choices)}, not {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: must be a list of strings (an argv list), not {value!r}")
        return tuple(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: must be a number, not {value!r}")
        return float(value)
    if kind in (int, str, bool):
        if type(value) is not kind:
            raise ConfigError(f"{key}: must be {_TYPE_NAMES[kind]}, not {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {kind!r}")


_TYPE_NAMES = {int: "an integer", str: "a string", bool: "true or false"}


def _check_values(config: Config) -> None:
    rt, td, audio, hooks = config.realtime, config.turn_detection, config.audio, config.hooks
    if not re.match(r"^wss?://", rt.url):
        raise ConfigError(f"realtime.url: must be a ws:// or wss:// URL, not {rt.url!r}")
    if rt.token_url and not re.match(r"^https?://", rt.token_url):
        raise ConfigError(f"realtime.token_url: must be an http:// or https:// URL, not {rt.token_url!r}")
    if not rt.model:
        raise ConfigError("realtime.model: must not be empty")
    try:
        check_language(rt.language)
    except InvalidLanguageError as exc:
        raise ConfigError(f"realtime.language: {exc}") from None
    _check_range("realtime.max_reconnect_attempts", rt.max_reconnect_attempts, 0, 100)
    _check_range("turn_detection.threshold", td.threshold, 0.0, 1.0)
    _check_range("turn_detection.prefix_padding_ms", td.prefix_padding_ms, 0, 5000)
    _check_range("turn_detection.silence_duration_ms", td.silence_duration_ms, 0, 10000)
    _check_range("audio.chunk_ms", audio.chunk_ms, 10, 100)
    _check_range("audio.preroll_ms", audio.preroll_ms, 0, 10000)
    _check_range("hooks.timeout_s", hooks.timeout_s, 0.1, 3600)
    _check_range("local.threads", config.local.threads, 0, 256)
    for name in ("send", "purge"):
        pattern = getattr(config.triggers, name)
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"triggers.{name}: invalid regular expression: {exc}") from None
    for name in ("transcript", "send", "purge"):
        argv = getattr(hooks, name)
        if argv and not argv[0]:
            raise ConfigError(f"hooks.{name}: the program (first element) must not be empty")


def _check_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key}: must be between {low} and {high}, not {value!r}")
