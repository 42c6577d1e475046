"""What the systemd tests stand in for systemd with: the sockets it would own (``NOTIFY_SOCKET``, the journal's
datagram and stream sockets), a private ``/run/systemd``, a clean environment, sttd run as a unit would
run it, and ``scripts/install`` for a user whose HOME and XDG directories are the test's.
"""

from __future__ import annotations

import array
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from .bus import SessionBus, busctl, require
from .realtime_server import FakeRealtimeServer
from .sound import SoundServer

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "scripts" / "install"
BUS_NAME = "io.github.sttd.Sttd1"
T = TypeVar("T")


# --------------------------------------------------------------------------- sockets the test binds


def short_dir(prefix: str) -> Path:
    """A fresh directory with a short path: unix socket paths must stay under 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=f"sttd-{prefix}-", dir="/tmp"))


class DatagramSink(Generic[T]):
    """A datagram socket bound at ``path``; a thread collects ``(sender pid, parse(payload))``.

    Payloads passed as a file descriptor (what sd_journal_sendv does with a
    record too big for one datagram) are read from that descriptor.
    """

    def __init__(self, path: Path, parse: Callable[[bytes], T]) -> None:
        self.path = path
        self._parse = parse
        self._items: list[tuple[int, T]] = []
        self._errors: list[str] = []
        self._cond = threading.Condition()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.settimeout(0.1)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        ancillary = socket.CMSG_SPACE(4 * 8) + socket.CMSG_SPACE(3 * 4)
        while not self._closed.is_set():
            try:
                data, cmsgs, flags, _ = self._sock.recvmsg(1 << 20, ancillary)
            except TimeoutError:
                continue
            except OSError:
                return
            pid = 0
            for level, kind, payload in cmsgs:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = int.from_bytes(payload[:4], sys.byteorder)
                elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    for fd in fds:
                        with os.fdopen(fd, "rb") as memfd:
                            memfd.seek(0)
                            data += memfd.read()
            with self._cond:
                if flags & socket.MSG_TRUNC:
                    self._errors.append(f"a datagram on {self.path} was truncated")
                else:
                    try:
                        self._items.append((pid, self._parse(data)))
                    except Exception as exc:
                        self._errors.append(f"cannot parse {data!r}: {exc!r}")
                self._cond.notify_all()

    @property
    def items(self) -> list[tuple[int, T]]:
        with self._cond:
            if self._errors:
                raise AssertionError("; ".join(self._errors))
            return list(self._items)

    def values(self) -> list[T]:
        return [value for _, value in self.items]

    def wait_for(self, predicate: Callable[[T], bool], timeout: float, what: str) -> T:
        """The first item (in arrival order, earlier ones included) for which ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for _, value in self._items:
                    if predicate(value):
                        return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}; got {self._items}")
                self._cond.wait(remaining)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self._sock.close()


def parse_notify(data: bytes) -> dict[str, str]:
    """An sd_notify message: newline-separated ``KEY=value`` assignments."""
    text = data.decode("utf-8")
    fields = dict(line.split("=", 1) for line in text.split("\n") if line)
    assert len(fields) == len([line for line in text.split("\n") if line]), f"repeated key in {text!r}"
    return fields


def parse_journal(data: bytes) -> dict[str, str]:
    """journald's native protocol: ``KEY=value\\n``, or ``KEY\\n`` + 64-bit LE size + value + ``\\n``."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            i = end + 1
        else:
            key = line
            size = int.from_bytes(data[end + 1 : end + 9], "little")
            value = data[end + 9 : end + 9 + size]
            assert data[end + 9 + size : end + 10 + size] == b"\n", "binary field not terminated"
            i = end + 10 + size
        fields[key.decode("ascii")] = value.decode("utf-8")
    return fields


class StreamSink:
    """A listening stream socket standing in for journald's ``stdout``: keeps what each connection writes."""

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            reader = threading.Thread(target=self._drain, args=(conn,), daemon=True)
            self._threads.append(reader)
            reader.start()

    def _drain(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        with conn:
            while not self._closed.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                with self._lock:
                    self._chunks.append(chunk)

    @property
    def text(self) -> str:
        with self._lock:
            return b"".join(self._chunks).decode(errors="replace")

    def close(self) -> None:
        self._closed.set()
        for thread in list(self._threads):
            thread.join(5)
        self._sock.close()


# --------------------------------------------------------------------------- a private /run/systemd


def with_private_run_systemd(run_systemd: Path, argv: list[str], prelude: str = "") -> list[str]:
    """``argv`` run in a private mount namespace where ``run_systemd`` is ``/run/systemd``.

    The bind mount is seen by that process tree only; the machine's
    ``/run/systemd`` is untouched. ``prelude`` is shell run first (``$$`` is
    the process that becomes ``argv``).
    """
    script = (
        f"{prelude}\n"
        "[ -d /run/systemd ] || { mount -t tmpfs -o mode=0755 tmpfs /run && mkdir /run/systemd; }\n"
        'mount --bind "$0" /run/systemd\n'
        'exec "$@"\n'
    )
    return [require("unshare"), "--mount", "--propagation", "private", "sh", "-ec", script, str(run_systemd), *argv]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without anything that would reach a real systemd or bus."""
    env = dict(os.environ)
    for name in (
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "JOURNAL_STREAM",
        "INVOCATION_ID",
        "LISTEN_FDS",
        "DBUS_SESSION_BUS_ADDRESS",
        "XDG_RUNTIME_DIR",
        "MANAGERPID",
    ):
        env.pop(name, None)
    env.update(extra)
    return env


class Daemon:
    """``sttd`` as a subprocess, with the environment systemd would give it (or not)."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        assert self.process.poll() is None, f"sttd exited with {self.process.returncode}:\n{self.log}"
        self.process.send_signal(sig)

    def terminate(self, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


def clean_daemon_env(
    tmp: Path, bus: SessionBus, pulse: SoundServer, server: FakeRealtimeServer, **extra: str
) -> dict[str, str]:
    return clean_env(
        XDG_CONFIG_HOME=str(tmp / "config"),
        XDG_STATE_HOME=str(tmp / "state"),
        OPENAI_API_KEY=server.api_key,
        PULSE_SERVER=pulse.server,
        **bus.env(),
        **extra,
    )


def has_owner(bus: SessionBus) -> bool:
    out = busctl(
        bus,
        "call",
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus",
        "NameHasOwner",
        "s",
        BUS_NAME,
    ).stdout
    return out.strip() == "b true"


# --------------------------------------------------------------------------- scripts/install


class UserDirs:
    """HOME, the XDG directories and a runtime directory of a user, all in ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.home = base / "home"
        self.data = self.home / ".local" / "share"
        self.config = self.home / ".config"
        self.state = self.home / ".local" / "state"
        self.bin = self.home / ".local" / "bin"
        self.runtime = base / "rt"
        self.home.mkdir(parents=True)
        self.runtime.mkdir(mode=0o700)
        self.unit = self.data / "systemd" / "user" / "sttd.service"
        self.activation = self.data / "dbus-1" / "services" / f"{BUS_NAME}.service"
        self.pages = [self.data / "man" / "man1" / "sttd.1", self.data / "man" / "man1" / "sttctl.1"]
        self.pages.append(self.data / "man" / "man5" / "sttd.toml.5")

    def env(self, *, xdg: bool = True, **extra: str) -> dict[str, str]:
        """An environment for this user; ``xdg=False`` leaves XDG_DATA_HOME/XDG_CONFIG_HOME to their defaults."""
        env = clean_env(HOME=str(self.home), XDG_RUNTIME_DIR=str(self.runtime), STTD_NO_APT="1", **extra)
        for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "OPENAI_API_KEY"):
            env.pop(name, None)
        if xdg:
            env.update(XDG_DATA_HOME=str(self.data), XDG_CONFIG_HOME=str(self.config), XDG_STATE_HOME=str(self.state))
        env.update(extra)
        return env


Wrap = Callable[[list[str]], list[str]]


def install(
    dirs: UserDirs, *args: str, env: dict[str, str] | None = None, wrap: Wrap = list
) -> subprocess.CompletedProcess[str]:
    """``scripts/install --python <this test's python> ARGS``: the unit runs this checkout, nothing is downloaded.

    ``wrap`` runs it differently (in a user manager's mount namespace).
    """
    return _installer(dirs, [str(INSTALL), "--python", sys.executable, *args], env, wrap)


def uninstall(dirs: UserDirs, env: dict[str, str] | None = None, wrap: Wrap = list) -> subprocess.CompletedProcess[str]:
    return _installer(dirs, [str(INSTALL), "--uninstall"], env, wrap)


def _installer(
    dirs: UserDirs, argv: list[str], env: dict[str, str] | None, wrap: Wrap
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        wrap(argv),
        env=env if env is not None else dirs.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"scripts/install {' '.join(argv[1:])} failed:\n{result.stdout}\n{result.stderr}"
    return result
