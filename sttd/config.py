"""The TOML configuration: read once, validated, errors that name the key.

Every section of ``config.toml`` is a frozen dataclass in
:mod:`sttd.config_schema`; loading walks the dataclass fields, so a key in
the file that is not a field is an error naming it, and a value of the wrong
type is an error naming it too. A value out of range is caught by
:mod:`sttd.config_checks`; what ``--check-config`` reports of a valid config
is :mod:`sttd.config_report`. This module is the one callers import: the
schema's names and those functions are re-exported here (``config.Config``,
``config.check_report``).
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

from .config_checks import check_values, is_loopback
from .config_report import check_report, legacy_notes
from .config_schema import (
    DEFAULT_URL,
    PROFILE_KEYS,
    PROFILE_TABLES,
    ArgvTable,
    AudioConfig,
    CommandsConfig,
    Config,
    HooksConfig,
    LocalConfig,
    OutputConfig,
    Profile,
    RealtimeConfig,
    ShapingConfig,
    ShortcutsConfig,
    Table,
    TriggersConfig,
    TurnDetectionConfig,
)
from .errors import ConfigError
from .redact import excerpt

__all__ = [
    "DEFAULT_URL",
    "MAX_CONFIG_BYTES",
    "PROFILE_KEYS",
    "PROFILE_TABLES",
    "ArgvTable",
    "AudioConfig",
    "CommandsConfig",
    "Config",
    "HooksConfig",
    "LocalConfig",
    "OutputConfig",
    "Profile",
    "RealtimeConfig",
    "ShapingConfig",
    "ShortcutsConfig",
    "Table",
    "TriggersConfig",
    "TurnDetectionConfig",
    "check_report",
    "default_path",
    "is_loopback",
    "legacy_notes",
    "load",
    "parse",
]

MAX_CONFIG_BYTES = 1024 * 1024
"""A config file is a few hundred bytes; anything past this is not one (``/dev/zero``, a log file)."""


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
        check_values(config)
        if profiles:
            config = dataclasses.replace(config, profiles=Table(_profiles(data, profiles)))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except RecursionError:
        # A value nested just below tomllib's limit can still exhaust the stack when shown.
        raise ConfigError(f"{source}: a value is nested too deeply") from None
    return config


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
            check_values(config)
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
