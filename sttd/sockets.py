"""Where the local engine listens: a unix socket in a private directory, or a configured TCP address.

By default the daemon runs its engine on ``$XDG_RUNTIME_DIR/sttd/engine.sock``
in a directory only this user may enter (0700), so no other local user can
reach it, and no TCP port is opened. ``[local] listen = "127.0.0.1:PORT"``
asks for a TCP port instead (for other programs of this user, e.g. a client
that only speaks TCP); the engine then still wants its bearer key.

The daemon's Realtime client takes one URL per connection; a unix socket is
named by a ``ws+unix://`` URL whose host is the socket's path,
percent-encoded (the ``http+unix://`` convention of requests-unixsocket):
``ws+unix://%2Frun%2Fuser%2F1000%2Fsttd%2Fengine.sock/v1/realtime?intent=transcription``.
:func:`split_unix_url` turns it back into the path and the ``ws://localhost``
URL the handshake uses.

:func:`parse_listen` and the URL functions do no I/O;
:func:`private_runtime_dir` creates the directory.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import tempfile
from urllib.parse import quote, unquote, urlsplit

UNIX_SCHEME = "ws+unix"
SOCKET_NAME = "engine.sock"
KEY_NAME = "engine.key"
MAX_UNIX_PATH = 107
"""sun_path holds 108 bytes, the terminating NUL included."""


class ListenError(ValueError):
    """A ``[local] listen`` value that is not a loopback ``HOST:PORT``."""


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8765"`` → ``("127.0.0.1", 8765)``; ``[::1]:8765`` for IPv6. Loopback addresses only.

    The engine's bearer key travels in clear text over ``ws://``: another
    machine gets a shared engine with TLS (``sttd-engine --tls-cert``), not this.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ListenError(f"must be HOST:PORT such as 127.0.0.1:8765, not {text[:60]!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ListenError(f"the port must be between 0 (any free one) and 65535, not {port}")
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            raise ListenError(f"{host[:60]!r} is not an IP address (use 127.0.0.1 or ::1)") from None
        if not loopback:
            raise ListenError(
                f"{host[:60]!r} is not a loopback address: the local engine only listens on this machine "
                "(run sttd-engine --host ... --tls-cert ... for a shared one)"
            )
    return host, port


def unix_url(path: str, resource: str = "/v1/realtime?intent=transcription") -> str:
    """The ``ws+unix://`` URL of a websocket served on the unix socket ``path``."""
    return f"{UNIX_SCHEME}://{quote(path, safe='')}{resource}"


def split_unix_url(url: str) -> tuple[str | None, str]:
    """``(socket path, ws://localhost URL)`` for a ``ws+unix://`` URL; ``(None, url)`` for any other."""
    parts = urlsplit(url)
    if parts.scheme != UNIX_SCHEME:
        return None, url
    path = unquote(parts.netloc)
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return path, "ws://localhost" + resource


def _private(path: str) -> bool:
    """A real directory (no symlink) owned by this user that nobody else may enter."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and info.st_mode & 0o077 == 0


def private_runtime_dir() -> str:
    """``$XDG_RUNTIME_DIR/sttd``, created 0700 (and made so if it is ours and too open).

    Without ``XDG_RUNTIME_DIR``, where that directory is not ours, or where a
    socket path in it would be too long for a unix socket: a fresh 0700
    directory under the system's temporary directory.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime):
        path = os.path.join(runtime, "sttd")
        if len(os.path.join(path, SOCKET_NAME).encode()) <= MAX_UNIX_PATH:
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
            except OSError:
                path = ""
            if path:
                try:
                    info = os.lstat(path)
                    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and info.st_mode & 0o077:
                        os.chmod(path, 0o700)  # ours but too open (made by hand, or an old umask)
                except OSError:
                    pass
                if _private(path):
                    return path
    return tempfile.mkdtemp(prefix="sttd-")  # mkdtemp makes it 0700
