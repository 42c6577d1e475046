"""Persisted user state: whether dictation is enabled, and the chosen language.

Written atomically (a temporary file in the same directory, fsync, rename) so
a crash or a full disk never leaves a half-written file behind; a corrupt
or unreadable file (also a FIFO, a device or anything over
:data:`STATE_FILE_LIMIT`, refused without blocking) is logged and replaced
by defaults rather than stopping the daemon. A save that fails raises
:class:`~sttd.errors.StateNotSavedError`, which the daemon returns to the
D-Bus caller while keeping the new value in memory.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import FileError, InvalidLanguageError, StateNotSavedError
from .files import read_regular_file
from .languages import check_language

logger = logging.getLogger(__name__)

STATE_FILE_LIMIT = 65536
"""The largest state file read (a real one is under 100 bytes)."""


@dataclass(frozen=True)
class PersistedState:
    """What survives a restart."""

    enabled: bool = True
    """False refuses Start until enabled again."""
    language: str | None = None
    """ISO-639-1 code or "" (automatic); None until SetLanguage is first called (the config's default applies)."""


def default_path() -> Path:
    """``$XDG_STATE_HOME/sttd/state.json``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "sttd" / "state.json"


def load(path: Path) -> PersistedState:
    """Read the state; defaults when the file is missing or unusable."""
    try:
        data = json.loads(read_regular_file(path, STATE_FILE_LIMIT, "the state file").data.decode("utf-8"))
    except FileError as exc:
        if not exc.missing:
            logger.warning("ignoring %s", exc)
        return PersistedState()
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        logger.warning("ignoring unreadable state file %s: %s", path, exc.__class__.__name__)
        return PersistedState()
    if not isinstance(data, dict):
        logger.warning("ignoring state file %s: not a JSON object", path)
        return PersistedState()
    enabled = data.get("enabled", True)
    language = data.get("language")
    if not isinstance(enabled, bool):
        logger.warning("state file %s: ignoring non-boolean 'enabled'", path)
        enabled = True
    if language is not None:
        try:
            language = check_language(language) if isinstance(language, str) else None
        except InvalidLanguageError:
            language = None
        if language is None:
            logger.warning("state file %s: ignoring invalid 'language'", path)
    return PersistedState(enabled=enabled, language=language)


def save(path: Path, state: PersistedState) -> None:
    """Write the state atomically.

    Raises :class:`StateNotSavedError` (naming the file and the reason) when it
    cannot: a read-only or full file system, a directory in the way.
    """
    try:
        _write(path, state)
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise StateNotSavedError(f"cannot save the state file {path}: {reason}") from None


def _write(path: Path, state: PersistedState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(state), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
