"""The TOML configuration: frozen dataclasses, validated once, errors that name the key.

Every section of ``config.toml`` is a frozen dataclass below; each field's
docstring is what the man page says of the key. Loading walks the dataclass
fields, so a key in the file that is not a field is an error naming it, and a
value of the wrong type or out of range is an error naming it too.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import stat
import tomllib
import typing
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import models, sockets
from .errors import ConfigError, InvalidLanguageError
from .languages import check_language
from .protocol import SessionSettings, TurnDetection
from .redact import excerpt
from .triggers import check_pattern

DEFAULT_URL = "wss://api.openai.com/v1/realtime?intent=transcription"

MAX_CONFIG_BYTES = 1024 * 1024
"""A config file is a few hundred bytes; anything past this is not one (``/dev/zero``, a log file)."""


@dataclass(frozen=True)
class RealtimeConfig:
    """``[realtime]``: the transcription service."""

    engine: Literal["auto", "openai", "local"] = "auto"
    """"openai", "local", or "auto" (openai when credentials exist, else local)."""
    url: str = DEFAULT_URL
    """Websocket URL of the Realtime transcription endpoint."""
    model: str = models.DEFAULT_MODEL
    """Transcription model (see MODELS in the man page: what each takes and costs)."""
    language: str = ""
    """Default ISO-639-1 language until SetLanguage persists another; "" = automatic."""
    languages: tuple[str, ...] = ()
    """ISO-639-1 codes the speech may be in, for models that take a list; a set language wins."""
    keywords: tuple[str, ...] = ()
    """Words and names the model should expect (gpt-transcribe, gpt-live-transcribe)."""
    prompt: str = ""
    """Vocabulary hints for the transcription model."""
    delay: str = ""
    """How long the model may wait for context before emitting text (gpt-realtime-whisper); "" = its default."""
    noise_reduction: Literal["near_field", "far_field", "off"] = "near_field"
    """The service's noise suppression."""
    api_key_file: str = ""
    """File holding the API key; else $CREDENTIALS_DIRECTORY/openai-api-key, else OPENAI_API_KEY."""
    token_url: str = ""
    """Optional: POST here for an ephemeral client secret instead of sending the API key."""
    allow_insecure: bool = False
    """Allow ws:// and http:// URLs to hosts other than this machine (the key would travel in clear text)."""
    max_reconnect_attempts: int = 3
    """Consecutive failed connection attempts before giving up."""


@dataclass(frozen=True)
class TurnDetectionConfig:
    """``[turn_detection]``: how the end of an utterance is found."""

    type: Literal["auto", "client_vad", "server_vad", "semantic_vad", "manual"] = "auto"
    """"auto" (the service's VAD where the model has one, else sttd's own), "client_vad", "server_vad",
    "semantic_vad" or "manual" (commit on Stop)."""
    threshold: float = 0.5
    """Speech activation threshold, 0..1, of server_vad and of sttd's own VAD."""
    prefix_padding_ms: int = 300
    """Audio kept before detected speech (server_vad and sttd's own VAD)."""
    silence_duration_ms: int = 500
    """Silence that ends an utterance (server_vad and sttd's own VAD)."""


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


class Table(Mapping[str, Any]):
    """An immutable, hashable TOML table of strings (``replacements``): a frozen dataclass may hold it."""

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        self._items = dict(items or {})

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __repr__(self) -> str:
        return f"Table({self._items!r})"


class ArgvTable(Table):
    """A TOML table of argv lists (``[commands] hooks``)."""


@dataclass(frozen=True)
class ShapingConfig:
    """``[shaping]``: what happens to the words before they are sent (see sttd.shaping)."""

    spoken_punctuation: bool = False
    """"comma", "period", "new line", ... (in the dictation's language) become punctuation; and capitals after."""
    replacements: Table = Table()  # noqa: RUF009 - immutable
    """Words or phrases replaced by other text: whole words, case-insensitive, the longest first."""
    filler_words: tuple[str, ...] = ()
    """Words removed wherever they are said ("um", "uh")."""
    punctuation: Table = Table()  # noqa: RUF009 - immutable
    """Spoken punctuation of your own ({ "smiley" = ":-)" }), over the language's; "" turns a word off."""


@dataclass(frozen=True)
class CommandsConfig:
    """``[commands]``: voice commands; each action's spoken phrases, whole words, case-insensitive."""

    send: tuple[str, ...] = ("send",)
    """Saying one of these sends the pending text (the send hook, Return)."""
    purge: tuple[str, ...] = ("purge",)
    """Saying one of these drops the pending text."""
    undo: tuple[str, ...] = ()
    """Saying one of these takes back the last utterance."""
    stop: tuple[str, ...] = ()
    """Saying one of these stops dictating (what was said before it is kept)."""
    cancel: tuple[str, ...] = ()
    """Saying one of these stops dictating and drops what was said with it."""
    position: Literal["end", "anywhere"] = "end"
    """"end": a command counts only when it ends the utterance; "anywhere"."""
    hooks: ArgvTable = ArgvTable()  # noqa: RUF009 - immutable
    """Phrases that run a command (an argv list, like [hooks]) with the pending text."""


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

    mode: Literal["none", "type", "clipboard", "stdout", "ibus", "paste", "auto"] = "none"
    """Where final text goes besides D-Bus and hooks ("auto": the IBus engine, wtype, xdotool or the clipboard)."""
    paste_keys: Literal["ctrl+v", "ctrl+shift+v", "shift+Insert"] = "ctrl+v"
    """The keystroke "paste" mode presses ("ctrl+shift+v" for terminals)."""


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
    listen: str = ""
    """"": the engine listens on a unix socket in $XDG_RUNTIME_DIR/sttd/ only; "127.0.0.1:PORT": on that TCP port."""


@dataclass(frozen=True)
class ShortcutsConfig:
    """``[shortcuts]``: desktop-wide keys through the XDG GlobalShortcuts portal (GNOME 48+, KDE, Hyprland)."""

    enabled: bool = True
    """Ask the desktop portal for the shortcuts below (false: sttd never talks to the portal)."""
    push_to_talk: str = "<Super>space"
    """Preferred trigger of push-to-talk: hold to dictate, release to stop (the desktop has the last word)."""
    toggle: str = ""
    """Preferred trigger of toggle (Start when idle, else Stop); "" = none proposed."""
    cancel: str = ""
    """Preferred trigger of cancel; "" = none proposed."""
    send: str = ""
    """Preferred trigger of send; "" = none proposed."""
    hold_threshold_ms: int = 300
    """A push-to-talk press shorter than this is a tap: it toggles (listening goes on until the next press)."""
    max_hold_s: float = 300.0
    """A push-to-talk hold longer than this stops the dictation (a release the desktop lost)."""


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
    shortcuts: ShortcutsConfig = ShortcutsConfig()
    shaping: ShapingConfig = ShapingConfig()
    commands: CommandsConfig = CommandsConfig()
    profiles: Table = Table()  # noqa: RUF009 - immutable
    """``[profiles.NAME]``: name -> :class:`Profile` (not a section of its own: see :func:`_profiles`)."""

    def profile(self, name: str) -> Profile:
        """The profile called ``name`` ("" = the defaults). Raises :class:`ConfigError` when there is none."""
        if not name:
            return Profile("", self, None)
        found = self.profiles.get(name)
        if found is None:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise ConfigError(f"no [profiles.{excerpt(name)}] in the config (profiles: {known})")
        assert isinstance(found, Profile)
        return found

    @property
    def turn_mode(self) -> models.TurnMode:
        """What ``[turn_detection] type`` means for the configured model ("auto" resolved)."""
        return models.resolve_turn_detection(models.model_info(self.realtime.model), self.turn_detection.type)

    def session_settings(self, language: str) -> SessionSettings:
        """The Realtime session configuration for ``language`` (the persisted one)."""
        rt, td = self.realtime, self.turn_detection
        return SessionSettings(
            model=rt.model,
            language=language,
            prompt=rt.prompt,
            turn_detection=TurnDetection(self.turn_mode, td.threshold, td.prefix_padding_ms, td.silence_duration_ms),
            noise_reduction=rt.noise_reduction,
            languages=rt.languages,
            keywords=rt.keywords,
            delay=rt.delay,
        )


PROFILE_KEYS = {
    "language": ("realtime", "language"),
    "prompt": ("realtime", "prompt"),
    "keywords": ("realtime", "keywords"),
    "output": ("output", "mode"),
}
"""``[profiles.NAME]`` keys and the key of the main config each one sets (``commands`` and ``shaping`` are tables)."""
PROFILE_TABLES = ("commands", "shaping")


@dataclass(frozen=True)
class Profile:
    """One ``[profiles.NAME]``: the whole config as it is for a dictation with that profile."""

    name: str
    config: Config
    language: str | None
    """The profile's language; None: the one in use (persisted by SetLanguage)."""


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
        text = _read(path)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: no such file") from None
        return Config()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse(text, source=str(path))


def _read(path: Path) -> str:
    """The file's text, if it is a regular file of sane size.

    O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer
    forever; on a regular file it changes nothing.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: not a regular file")
        # Read one byte past the limit: the file may have grown since fstat.
        data = os.read(fd, MAX_CONFIG_BYTES + 1)
    finally:
        os.close(fd)
    if info.st_size > MAX_CONFIG_BYTES or len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes: not a config file")
    return data.decode("utf-8")


def parse(text: str, source: str = "config") -> Config:
    """Validate TOML text into a :class:`Config`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {excerpt(str(exc), 200)}") from None
    except (RecursionError, MemoryError):
        # tomllib parses nested arrays and inline tables recursively.
        raise ConfigError(f"{source}: invalid TOML: nested too deeply") from None
    try:
        profiles = data.pop("profiles", {}) if isinstance(data, dict) else {}
        config: Config = _build(Config, data, prefix="")
        _check_values(config)
        if profiles:
            config = dataclasses.replace(config, profiles=Table(_profiles(data, profiles)))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except RecursionError:
        # A value nested just below tomllib's limit can still exhaust the stack when shown.
        raise ConfigError(f"{source}: a value is nested too deeply") from None
    return config


def legacy_notes(config: Config) -> list[str]:
    """What the config still says the old way (``[triggers]``), one line each: logged at INFO, and by --check-config."""
    changed = [
        f"triggers.{f.name}"
        for f in dataclasses.fields(TriggersConfig)
        if getattr(config.triggers, f.name) != f.default
    ]
    if not changed:
        return []
    return [
        f"{', '.join(changed)}: [triggers] still works, but [commands] replaces it "
        '(send = ["send"], purge = ["purge"], position = "end"; phrases, not regular expressions); '
        "the [triggers] patterns are used for send and purge"
    ]


def _profiles(data: dict[str, Any], profiles: Any) -> dict[str, Profile]:
    """Each ``[profiles.NAME]`` applied over the rest of the file, and checked as a whole config."""
    if not isinstance(profiles, dict):
        raise ConfigError("profiles: expected a table of [profiles.NAME] tables")
    built = {}
    for name, keys in profiles.items():
        prefix = f"profiles.{name if name.isprintable() and len(name) <= 60 else excerpt(name)}"
        if not isinstance(keys, dict):
            raise ConfigError(f"{prefix}: expected a table")
        merged = {section: dict(value) if isinstance(value, dict) else value for section, value in data.items()}
        for key, value in keys.items():
            if key in PROFILE_KEYS:
                section, field_name = PROFILE_KEYS[key]
                merged.setdefault(section, {})[field_name] = value
            elif key in PROFILE_TABLES:
                if not isinstance(value, dict):
                    raise ConfigError(f"{prefix}.{key}: expected a table")
                merged.setdefault(key, {}).update(value)
            else:
                raise ConfigError(f"{prefix}.{key}: unknown key (a profile takes {', '.join(_profile_keys())})")
        try:
            config: Config = _build(Config, merged, prefix="")
            _check_values(config)
        except ConfigError as exc:
            raise ConfigError(f"{prefix}: {exc}") from None
        language = keys.get("language")
        built[name] = Profile(name, config, language if isinstance(language, str) else None)
    return built


def _profile_keys() -> list[str]:
    return [*PROFILE_KEYS, *PROFILE_TABLES]


def _build(cls: type[Any], data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'top level'}: expected a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            shown = key if key.isprintable() and len(key) <= 60 else excerpt(key)
            raise ConfigError(f"{prefix}{shown}: unknown key")
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
            raise ConfigError(f"{key}: must be one of {', '.join(repr(c) for c in choices)}, not {excerpt(value)}")
        return value
    if kind is ArgvTable:
        if not isinstance(value, dict):
            raise ConfigError(f'{key}: must be a table of argv lists ({{ "phrase" = ["program"] }})')
        for phrase, argv in value.items():
            if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv) or not argv[0]:
                raise ConfigError(f"{key}: {excerpt(phrase)} must be an argv list with a program, not {excerpt(argv)}")
        return ArgvTable({phrase: tuple(argv) for phrase, argv in value.items()})
    if kind is Table:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f'{key}: must be a table of strings ({{ "from" = "to" }}), not {excerpt(value)}')
        return Table(value)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            what = "a list of strings (an argv list)" if key.startswith("hooks.") else "a list of strings"
            raise ConfigError(f"{key}: must be {what}, not {excerpt(value)}")
        return tuple(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: must be a number, not {excerpt(value)}")
        return float(value)
    if kind in (int, str, bool):
        if type(value) is not kind:
            raise ConfigError(f"{key}: must be {_TYPE_NAMES[kind]}, not {excerpt(value)}")
        return value
    raise ConfigError(f"{key}: unsupported type {kind!r}")


_TYPE_NAMES = {int: "an integer", str: "a string", bool: "true or false"}


def _check_values(config: Config) -> None:
    rt, td, audio, hooks = config.realtime, config.turn_detection, config.audio, config.hooks
    _check_url("realtime.url", rt.url, ("wss",), ("ws",), rt.allow_insecure)
    if rt.token_url:
        _check_url("realtime.token_url", rt.token_url, ("https",), ("http",), rt.allow_insecure)
    if not rt.model:
        raise ConfigError("realtime.model: must not be empty")
    try:
        check_language(rt.language)
    except InvalidLanguageError as exc:
        raise ConfigError(f"realtime.language: {exc}") from None
    _check_languages(rt.languages)
    _check_keywords(rt.keywords)
    if rt.delay and rt.delay not in models.DELAYS:
        choices = ", ".join(repr(d) for d in ("", *models.DELAYS))
        raise ConfigError(f"realtime.delay: must be one of {choices}, not {excerpt(rt.delay)}")
    _check_range("realtime.max_reconnect_attempts", rt.max_reconnect_attempts, 0, 100)
    _check_range("turn_detection.threshold", td.threshold, 0.0, 1.0)
    _check_range("turn_detection.prefix_padding_ms", td.prefix_padding_ms, 0, 5000)
    _check_range("turn_detection.silence_duration_ms", td.silence_duration_ms, 0, 10000)
    _check_range("audio.chunk_ms", audio.chunk_ms, 10, 100)
    _check_range("audio.preroll_ms", audio.preroll_ms, 0, 10000)
    _check_range("hooks.timeout_s", hooks.timeout_s, 0.1, 3600)
    _check_range("local.threads", config.local.threads, 0, 256)
    _check_shortcuts(config.shortcuts)
    if config.local.listen:
        try:
            sockets.parse_listen(config.local.listen)
        except sockets.ListenError as exc:
            raise ConfigError(f"local.listen: {exc}") from None
    for name in ("send", "purge"):
        try:
            check_pattern(getattr(config.triggers, name))
        except ConfigError as exc:
            raise ConfigError(f"triggers.{name}: {exc}") from None
    _check_commands(config)
    for name in ("transcript", "send", "purge"):
        argv = getattr(hooks, name)
        if argv and not argv[0]:
            raise ConfigError(f"hooks.{name}: the program (first element) must not be empty")


def _check_commands(config: Config) -> None:
    shaping, commands = config.shaping, config.commands
    for phrase in shaping.replacements:
        if not phrase.split():
            raise ConfigError("shaping.replacements: a phrase to replace must not be empty")
    for word in shaping.filler_words:
        if not word.split():
            raise ConfigError("shaping.filler_words: a filler word must not be empty")
    for word in shaping.punctuation:
        if not word.split():
            raise ConfigError("shaping.punctuation: a spoken word must not be empty")
    seen: dict[str, str] = {}
    for action in ("send", "purge", "undo", "stop", "cancel"):
        for phrase in getattr(commands, action):
            key = " ".join(phrase.lower().split())
            if not key:
                raise ConfigError(f"commands.{action}: a phrase must not be empty (leave the list empty for none)")
            if key in seen and seen[key] != action:
                raise ConfigError(f"commands.{action}: {excerpt(phrase)} is also a phrase of commands.{seen[key]}")
            seen[key] = action
    for phrase in commands.hooks:
        key = " ".join(phrase.lower().split())
        if not key:
            raise ConfigError("commands.hooks: a phrase must not be empty")
        if key in seen:
            raise ConfigError(f"commands.hooks: {excerpt(phrase)} is also a phrase of commands.{seen[key]}")
        seen[key] = "hooks"


def _check_shortcuts(shortcuts: ShortcutsConfig) -> None:
    _check_range("shortcuts.hold_threshold_ms", shortcuts.hold_threshold_ms, 0, 5000)
    _check_range("shortcuts.max_hold_s", shortcuts.max_hold_s, 1.0, 86400.0)
    for name in ("push_to_talk", "toggle", "cancel", "send"):
        trigger = getattr(shortcuts, name)
        if len(trigger) > 100 or not trigger.isprintable():
            raise ConfigError(f'shortcuts.{name}: not a key combination like "<Super>space": {excerpt(trigger)}')


def _check_url(key: str, url: str, secure: tuple[str, ...], clear: tuple[str, ...], allow_insecure: bool) -> None:
    """A URL sttd sends the key to: encrypted, or in clear text only to this machine (or when allowed)."""
    schemes = " or ".join(f"{s}://" for s in (*clear, *secure))
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"{key}: not a valid URL ({exc}): {excerpt(url)}") from None
    if parts.scheme not in (*secure, *clear):
        raise ConfigError(f"{key}: must be a {schemes} URL, not {excerpt(url)}")
    if not host:
        raise ConfigError(f"{key}: the URL has no host: {excerpt(url)}")
    if parts.scheme in clear and not allow_insecure and not is_loopback(host):
        raise ConfigError(
            f"{key}: {parts.scheme}:// to {excerpt(host)} would send the API key in clear text: "
            f"use {secure[0]}://, or set realtime.allow_insecure = true"
        )


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1: traffic that never leaves this machine."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_languages(languages: tuple[str, ...]) -> None:
    for code in languages:
        if not code:
            raise ConfigError("realtime.languages: '' is not a language (leave the list empty for automatic)")
        try:
            check_language(code)
        except InvalidLanguageError as exc:
            raise ConfigError(f"realtime.languages: {exc}") from None
    if len(set(languages)) != len(languages):
        raise ConfigError("realtime.languages: a language is listed twice")


def _check_keywords(keywords: tuple[str, ...]) -> None:
    if len(keywords) > models.MAX_KEYWORDS:
        raise ConfigError(f"realtime.keywords: at most {models.MAX_KEYWORDS} keywords, not {len(keywords)}")
    for keyword in keywords:
        why = models.keyword_problem(keyword)
        if why is not None:
            raise ConfigError(f"realtime.keywords: {excerpt(keyword)} {why}")


def _check_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key}: must be between {low} and {high}, not {value!r}")


# ------------------------------------------------------------- --check-config

_TURN_MEANING = {
    "server_vad": "the service's voice detection",
    "semantic_vad": "the service's semantic voice detection",
    "client_vad": "sttd's own",
    "manual": "commit on Stop",
}


def check_report(config: Config) -> list[str]:
    """What ``sttd --check-config`` tells about a valid config, one line each.

    The model and its price, what turn detection comes of ``type`` for this
    model, then one ``warning: <key>: <why>`` line for each setting the model
    does not take, a deprecated or unknown model, and clear-text URLs.
    """
    rt, td = config.realtime, config.turn_detection
    info = models.model_info(rt.model)
    price = info.price if info.known else "price unknown"
    lines = [f"model: {excerpt(rt.model) if not info.known else rt.model} ({price}), {_turn_line(config)}"]
    problems = models.setting_problems(
        info,
        turn_detection=td.type,
        languages=rt.languages,
        keywords=rt.keywords,
        prompt=rt.prompt,
        delay=rt.delay,
    )
    lines += [f"warning: {key}: {why}" for key, why in problems]
    if rt.language and rt.languages:
        lines.append(
            f"warning: realtime.languages: realtime.language ({rt.language}) is sent instead of the list "
            "(the service takes only one of them)"
        )
    if info.deprecated:
        lines.append(
            f"warning: realtime.model: {info.name} is deprecated and shut down on {info.shutdown}: "
            f"use {info.replacement} (or {models.DEFAULT_MODEL}, the default)"
        )
    elif not info.known:
        lines.append(
            f"warning: realtime.model: unknown model {excerpt(rt.model)}: sttd sends the most conservative "
            "session (one language, no keywords, sttd's own turn detection)"
        )
    lines += _insecure_lines(rt)
    lines += [f"note: {note}" for note in legacy_notes(config)]
    return lines


def _turn_line(config: Config) -> str:
    info = models.model_info(config.realtime.model)
    mode = config.turn_mode
    meaning = _TURN_MEANING[mode]
    if mode == "client_vad" and info.needs_client_turns:
        meaning += "; the model has none"
    if config.turn_detection.type == "auto":
        meaning = f"auto: {meaning}"
    return f"turn detection: {mode} ({meaning})"


def _insecure_lines(rt: RealtimeConfig) -> list[str]:
    lines = []
    for key, url in (("realtime.url", rt.url), ("realtime.token_url", rt.token_url)):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme in ("ws", "http") and not is_loopback(parts.hostname or ""):
            lines.append(f"warning: {key}: {parts.scheme}:// to another host: the API key travels in clear text")
    return lines
