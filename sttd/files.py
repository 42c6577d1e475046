"""Reading the small files sttd depends on (API key, state, config) without being stalled by them.

A path the user configured may name a FIFO (``open`` would block until a
writer appears, wedging the event loop), a device such as ``/dev/zero``
(``read`` would never end) or a huge file. So each file is opened with
``O_NONBLOCK`` (a FIFO opens at once) and ``O_CLOEXEC`` (hooks never inherit
it), checked with ``fstat`` on that very descriptor (no race with a rename),
and read only if it is a regular file no larger than the caller's limit.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import FileError


@dataclass(frozen=True)
class RegularFile:
    """What was read from a regular file."""

    data: bytes
    """Its whole content."""
    mode: int
    """Its ``st_mode`` when it was read (for permission warnings)."""


def read_regular_file(path: Path, limit: int, name: str) -> RegularFile:
    """The content of ``path``, a regular file of at most ``limit`` bytes.

    ``name`` says what the file is for in messages: the config key
    (``realtime.api_key_file``) or a description (``the state file``).
    Raises :class:`FileError` (``missing`` set when it does not exist); its
    message names ``name`` and ``path``, never the content.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise FileError(f"{name}: cannot read {path}: {_reason(exc)}", missing=exc.errno == errno.ENOENT) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileError(f"{name}: {path} is not a regular file")
        if info.st_size > limit:
            raise FileError(f"{name}: {path} is larger than {limit} bytes")
        # The size may grow between fstat and read: never read more than the limit allows.
        data = bytearray()
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > limit:
            raise FileError(f"{name}: {path} is larger than {limit} bytes")
        return RegularFile(bytes(data), info.st_mode)
    except OSError as exc:
        raise FileError(f"{name}: cannot read {path}: {_reason(exc)}") from None
    finally:
        os.close(fd)


def _reason(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__
