"""The checks of a config's values past their types: ranges, URLs, languages, keywords, phrases.

:func:`check_values` raises :class:`ConfigError` naming the key of the first
value that is out of range or makes no sense; :mod:`sttd.config` runs it on
the whole config and on each profile. No I/O.
"""

from __future__ import annotations

import ipaddress
import urllib.parse

from . import models, sockets
from .config_schema import Config, ShortcutsConfig
from .errors import ConfigError, InvalidLanguageError
from .languages import check_language
from .redact import excerpt
from .triggers import check_pattern


def check_values(config: Config) -> None:
    """Raise :class:`ConfigError` naming the key of the first value out of range or malformed."""
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
