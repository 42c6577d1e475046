"""The configuration's schema: one frozen dataclass per section of ``config.toml``.

Each field is a key, its default the key's default and its docstring what the
man page says of the key (tests/test_man.py holds the page to that). Reading
and checking a file against these is :mod:`sttd.config`'s job; this module
only says what there is to set, and what a whole :class:`Config` means for a
session (:meth:`Config.session_settings`, :meth:`Config.profile`). No I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from . import models
from .errors import ConfigError
from .protocol import SessionSettings, TurnDetection
from .redact import excerpt

DEFAULT_URL = "wss://api.openai.com/v1/realtime?intent=transcription"


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
    """``[profiles.NAME]``: name -> :class:`Profile` (not a section of its own: see :func:`sttd.config._profiles`)."""

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
