"""sttd as a systemd user service, against real components.

* ``scripts/install`` puts the unit, the activation file and the man pages in
  their XDG places (HOME and XDG dirs pointed at a temporary directory;
  ``--python`` reuses this test environment, so nothing is downloaded), and
  ``--uninstall`` takes them away; the installed unit passes
  ``systemd-analyze --user verify``.
* sd_notify: ``READY=1`` (only once the bus name is owned), ``STATUS=``,
  ``WATCHDOG=1``, ``RELOADING=1`` and ``STOPPING=1`` arrive on a
  ``NOTIFY_SOCKET`` the test binds.
* The journal: sttd run in a private mount namespace (``unshare -m``) where a
  directory of the test's is ``/run/systemd``, so the datagrams systemd-python
  sends to ``/run/systemd/journal/socket`` arrive on a socket the test binds,
  with sttd's fields; run by hand, or with no journal answering, it writes
  to stderr instead (with ``<N>`` priority prefixes for systemd's stream).
* SIGHUP: a valid new config takes effect in a running dictation, an invalid
  one is refused with an error naming the key.
* A real ``systemd --user`` (in a private mount namespace and a cgroup of its
  own, never the machine's; its session bus from ``dbus.socket``, its journal
  the test's sockets): ``scripts/install`` reloads it, ``sttctl start``
  activates sttd (ready, hardened, watchdog fed, logging with fields),
  SIGKILL gets it restarted, ``systemctl --user reload`` applies or refuses a
  config, ``systemctl --user stop`` stops it cleanly, ``--uninstall`` removes
  it.

Every wait has a deadline; a missing tool fails the test.
"""

from __future__ import annotations

import array
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

import pytest

from sttd.protocol import BYTES_PER_MS
from sttd.systemd import Notifier, send_datagram

from .bus import SessionBus, busctl, require, wait_until
from .daemon import Listener, Sttd, command, daemon_env, sttctl, write_config
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


# --------------------------------------------------------------------------- sd_notify


def test_ready_status_watchdog_reloading_and_stopping_arrive_on_notify_socket(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    sockets = short_dir("notify")
    notify = DatagramSink(sockets / "notify", parse_notify)
    config = write_config(tmp_path / "config.toml", realtime_server.url)
    env = clean_daemon_env(
        tmp_path, session_bus, pulse_server, realtime_server, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="300000"
    )
    daemon = Daemon([command("sttd"), "--config", str(config)], env, tmp_path / "sttd.log")
    try:
        ready = notify.wait_for(lambda m: "READY" in m, 15, "READY=1")
        # READY=1 means "clients can call it": the name is owned before it is sent.
        assert has_owner(session_bus), "READY=1 arrived before sttd owned its bus name"
        assert notify.values()[0] is ready, f"something came before READY=1: {notify.values()}"
        assert ready == {"READY": "1", "STATUS": "idle"}

        # The watchdog: WATCHDOG_USEC/2 = 150 ms, from the event loop.
        wait_until(lambda: sum("WATCHDOG" in m for m in notify.values()) >= 4, 5, "four WATCHDOG=1")

        # STATUS= follows the dictation state.
        assert sttctl(env, "start").returncode == 0
        notify.wait_for(lambda m: m.get("STATUS") == "listening", 15, "STATUS=listening")
        assert sttctl(env, "stop").returncode == 0
        notify.wait_for(lambda m: m.get("STATUS") == "idle" and "READY" not in m, 15, "STATUS=idle after stop")
        statuses = [m["STATUS"] for m in notify.values() if "STATUS" in m]
        assert statuses.index("connecting") < statuses.index("listening"), statuses

        # SIGHUP: RELOADING=1 (with the MONOTONIC_USEC Type=notify-reload needs), then READY=1 again.
        daemon.signal(signal.SIGHUP)
        reloading = notify.wait_for(lambda m: "RELOADING" in m, 10, "RELOADING=1")
        assert reloading["RELOADING"] == "1"
        assert int(reloading["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        wait_until(lambda: sum("READY" in m for m in notify.values()) == 2, 10, "READY=1 after the reload")

        assert daemon.terminate() == 0, daemon.log
        assert notify.wait_for(lambda m: "STOPPING" in m, 5, "STOPPING=1") == {"STOPPING": "1", "STATUS": "stopping"}
        pids = {pid for pid, _ in notify.items}
        assert pids == {daemon.process.pid}, f"notifications from {pids}, sttd is {daemon.process.pid}"
    finally:
        daemon.close()
        notify.close()
        shutil.rmtree(sockets, ignore_errors=True)


def test_a_reload_with_a_config_nested_too_deep_keeps_the_old_one_and_still_reports_ready(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    sockets = short_dir("notify")
    notify = DatagramSink(sockets / "notify", parse_notify)
    config = write_config(tmp_path / "config.toml", realtime_server.url)
    env = clean_daemon_env(tmp_path, session_bus, pulse_server, realtime_server, NOTIFY_SOCKET=str(notify.path))
    daemon = Daemon([command("sttd"), "--config", str(config)], env, tmp_path / "sttd.log")
    try:
        notify.wait_for(lambda m: "READY" in m, 15, "READY=1")
        good = config.read_text()
        config.write_text(good + "\n[hooks]\ntranscript = " + "[" * 100_000 + "\n")  # tomllib recurses on it
        daemon.signal(signal.SIGHUP)
        notify.wait_for(lambda m: "RELOADING" in m, 10, "RELOADING=1")
        wait_until(lambda: sum("READY" in m for m in notify.values()) == 2, 10, "READY=1 after the refused reload")
        refused = [line for line in daemon.log.splitlines() if "reload refused" in line]
        assert len(refused) == 1 and len(refused[0]) < 400, refused
        assert "Traceback" not in daemon.log and "RecursionError" not in daemon.log
        # The old configuration still works.
        assert sttctl(env, "start").returncode == 0
        notify.wait_for(lambda m: m.get("STATUS") == "listening", 15, "STATUS=listening")
        assert sttctl(env, "stop").returncode == 0
        assert daemon.terminate() == 0, daemon.log
    finally:
        daemon.close()
        notify.close()
        shutil.rmtree(sockets, ignore_errors=True)


def test_the_notifier_is_inert_without_notify_socket_and_keeps_each_message_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    notifier = Notifier()
    assert not notifier.active
    assert notifier.watchdog_interval_s is None  # WATCHDOG_USEC alone starts no watchdog
    notifier.ready("idle")  # a no-op, not an error

    sockets = short_dir("notify")
    sink = DatagramSink(sockets / "notify", parse_notify)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", str(sink.path))
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
        assert Notifier().watchdog_interval_s is None  # the watchdog is another process's
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        notifier = Notifier()
        assert notifier.active and notifier.watchdog_interval_s == 0.5
        # A status (an error message) with a newline cannot smuggle in another assignment.
        notifier.status("error: the service said\nREADY=1")
        assert sink.wait_for(lambda m: True, 5, "the status") == {"STATUS": "error: the service said READY=1"}
    finally:
        sink.close()
        shutil.rmtree(sockets, ignore_errors=True)


def test_without_systemd_python_notifications_are_plain_datagrams() -> None:
    # The fallback sd_notify: to a path, or to an abstract socket ("@name").
    sockets = short_dir("notify")
    sink = DatagramSink(sockets / "notify", parse_notify)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"sttd-test-{uuid.uuid4().hex}"
    abstract.bind("\0" + name)
    abstract.settimeout(5)
    try:
        send_datagram(str(sink.path), "READY=1\nSTATUS=idle")
        assert sink.wait_for(lambda m: True, 5, "a datagram") == {"READY": "1", "STATUS": "idle"}
        send_datagram("@" + name, "WATCHDOG=1")
        assert abstract.recv(100) == b"WATCHDOG=1"
    finally:
        abstract.close()
        sink.close()
        shutil.rmtree(sockets, ignore_errors=True)


# --------------------------------------------------------------------------- the journal


FIELD_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


@pytest.fixture
def fake_run_systemd() -> Iterator[tuple[Path, DatagramSink[dict[str, str]]]]:
    """A directory to become ``/run/systemd`` in a private mount namespace, with a journal socket bound."""
    run_systemd = short_dir("run")
    (run_systemd / "journal").mkdir()
    journal = DatagramSink(run_systemd / "journal" / "socket", parse_journal)
    try:
        yield run_systemd, journal
    finally:
        journal.close()
        shutil.rmtree(run_systemd, ignore_errors=True)


def test_under_systemd_records_go_to_the_journal_with_sttd_fields(
    tmp_path: Path,
    session_bus: SessionBus,
    pulse_server: SoundServer,
    realtime_server: FakeRealtimeServer,
    fake_run_systemd: tuple[Path, DatagramSink[dict[str, str]]],
) -> None:
    run_systemd, journal = fake_run_systemd
    config = write_config(tmp_path / "config.toml", realtime_server.url)
    stderr = tmp_path / "stderr"
    stderr.touch()
    st = stderr.stat()
    # What systemd does for a unit whose stderr is the journal: JOURNAL_STREAM names that stream.
    env = clean_daemon_env(
        tmp_path, session_bus, pulse_server, realtime_server, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}"
    )
    argv = with_private_run_systemd(run_systemd, [command("sttd"), "--config", str(config)])
    daemon = Daemon(argv, env, stderr)
    try:
        ready = journal.wait_for(lambda r: "ready on the session bus" in r.get("MESSAGE", ""), 15, "the ready record")
        assert ready["SYSLOG_IDENTIFIER"] == "sttd"
        assert ready["PRIORITY"] == "6"
        assert ready["LOGGER"] == "sttd.daemon"
        assert ready["CODE_FUNC"] == "run" and ready["CODE_FILE"].endswith("daemon.py") and ready["CODE_LINE"].isdigit()

        assert sttctl(env, "start").returncode == 0
        listening = journal.wait_for(lambda r: r.get("STTD_STATE") == "listening", 15, "STTD_STATE=listening")
        assert listening["STTD_EVENT"] == "state"
        assert listening["LOGGER"] == "sttd.core"
        assert listening["PRIORITY"] == "6"
        assert listening["MESSAGE"] == "state: connecting -> listening"
        assert sttctl(env, "stop").returncode == 0
        journal.wait_for(lambda r: r.get("STTD_STATE") == "idle", 15, "STTD_STATE=idle")

        # An error is PRIORITY=3, and names the key.
        config.write_text(config.read_text() + "\n[audio]\nchunk_ms = 5\n")
        daemon.signal(signal.SIGHUP)
        refused = journal.wait_for(lambda r: "reload refused" in r.get("MESSAGE", ""), 10, "the refused reload")
        assert refused["PRIORITY"] == "3"
        assert "audio.chunk_ms" in refused["MESSAGE"]

        assert daemon.terminate() == 0
        journal.wait_for(lambda r: r.get("MESSAGE") == "stopped", 5, "the stopped record")
    finally:
        daemon.close()
    records = journal.values()
    for record in records:
        assert all(FIELD_NAME.match(name) for name in record), f"not a journal field name in {sorted(record)}"
        assert record["SYSLOG_IDENTIFIER"] == "sttd"
        assert realtime_server.api_key not in repr(record)
    # The fields sent are these and sttd's own, nothing of the LogRecord's internals.
    allowed = {
        "MESSAGE",
        "PRIORITY",
        "SYSLOG_IDENTIFIER",
        "LOGGER",
        "THREAD_NAME",
        "CODE_FILE",
        "CODE_LINE",
        "CODE_FUNC",
    }
    extra = {name for record in records for name in record} - allowed
    assert extra and all(name.startswith("STTD_") for name in extra), extra
    pids = {pid for pid, _ in journal.items}
    assert pids == {daemon.process.pid}
    assert stderr.read_text() == "", "under systemd nothing should go to stderr"


def test_run_by_hand_records_go_to_stderr_not_the_journal(
    tmp_path: Path,
    session_bus: SessionBus,
    realtime_server: FakeRealtimeServer,
    fake_run_systemd: tuple[Path, DatagramSink[dict[str, str]]],
) -> None:
    run_systemd, journal = fake_run_systemd
    config = write_config(tmp_path / "config.toml", realtime_server.url)
    env = clean_env(
        XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_STATE_HOME=str(tmp_path / "state"), **session_bus.env()
    )
    # A JOURNAL_STREAM that is not our stderr (inherited from a shell started by systemd) does not count.
    env["JOURNAL_STREAM"] = "1:1"
    argv = with_private_run_systemd(run_systemd, [command("sttd"), "--config", str(config)])
    daemon = Daemon(argv, env, tmp_path / "stderr")
    try:
        wait_until(lambda: "ready on the session bus" in daemon.log, 15, "the ready line on stderr")
        assert daemon.terminate() == 0
    finally:
        daemon.close()
    assert re.search(r"^\S+ \S+ INFO sttd\.daemon: sttd \S+ ready on the session bus$", daemon.log, re.M), daemon.log
    assert journal.values() == []


@pytest.mark.parametrize("journald", ["absent", "not answering"])
def test_without_a_working_journal_records_go_to_stderr_with_priority_prefixes(
    journald: str, tmp_path: Path, session_bus: SessionBus, realtime_server: FakeRealtimeServer
) -> None:
    run_systemd = short_dir("run")
    (run_systemd / "journal").mkdir()
    if journald == "not answering":  # the socket is there, nobody reads it: sends are refused
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        dead.bind(str(run_systemd / "journal" / "socket"))
        dead.close()
    config = write_config(tmp_path / "config.toml", realtime_server.url)
    stderr = tmp_path / "stderr"
    stderr.touch()
    st = stderr.stat()
    env = clean_env(
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        XDG_STATE_HOME=str(tmp_path / "state"),
        JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}",
        **session_bus.env(),
    )
    daemon = Daemon(with_private_run_systemd(run_systemd, [command("sttd"), "--config", str(config)]), env, stderr)
    try:
        wait_until(lambda: "ready on the session bus" in daemon.log, 15, "the ready line on stderr")
        assert daemon.terminate() == 0
    finally:
        daemon.close()
        shutil.rmtree(run_systemd, ignore_errors=True)
    # What systemd's stdout stream files as PRIORITY=6: nothing is lost, nothing is a traceback.
    assert re.search(r"^<6>sttd\.daemon: sttd \S+ ready on the session bus$", daemon.log, re.M), daemon.log
    assert re.search(r"^<6>sttd\.daemon: stopped$", daemon.log, re.M), daemon.log
    assert "Traceback" not in daemon.log and "Logging error" not in daemon.log


# --------------------------------------------------------------------------- SIGHUP


def _started(sttd: Sttd, server: FakeRealtimeServer) -> Listener:
    listener = Listener(sttd)
    assert sttd.ctl("start").returncode == 0
    sttd.wait_state("listening")
    server.wait_for_connections(1)
    return listener


def _say(server: FakeRealtimeServer, listener: Listener, text: str) -> None:
    """A final utterance ``text``, as if spoken, in the running session."""
    # The service commits only with at least 100 ms buffered since the last commit.
    server.wait_for_audio(len(server.audio()) + 250 * BYTES_PER_MS, timeout=10)
    server.force_turn(text)
    listener.wait_for(lambda e: e["type"] == "transcript" and e["final"] and e["text"] == text, 10, f"final {text!r}")


def test_sighup_applies_a_valid_config_to_the_running_dictation(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    config = write_config(tmp_path / "config.toml", realtime_server.url)
    env = daemon_env(session_bus, pulse_server, realtime_server)
    sttd = Sttd(tmp_path, env, config)
    listener: Listener | None = None
    try:
        sttd.wait_ready()
        listener = _started(sttd, realtime_server)
        _say(realtime_server, listener, "the weather is fine over")
        assert not any(e["type"] == "triggered" for e in listener.seen)

        config.write_text(config.read_text() + "\n[triggers]\nsend = '\\bover\\b'\n")
        sttd.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in sttd.log, 10, "the reload")
        _say(realtime_server, listener, "and that is all over")
        sent = listener.wait_for(lambda e: e["type"] == "triggered", 10, "the new send trigger")
        assert sent == {"type": "triggered", "name": "send", "text": "the weather is fine over and that is all"}

        # The dictation was not dropped: the same session, still listening.
        assert realtime_server.connection_count == 1
        assert sttd.status()["state"] == "listening"
        assert sttd.terminate() == 0
    finally:
        if listener is not None:
            listener.close()
        sttd.kill()


def test_sighup_refuses_an_invalid_config_names_the_key_and_keeps_the_old_one(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    config = write_config(tmp_path / "config.toml", realtime_server.url)
    good = config.read_text()
    env = daemon_env(session_bus, pulse_server, realtime_server)
    sttd = Sttd(tmp_path, env, config)
    listener: Listener | None = None
    try:
        sttd.wait_ready()
        listener = _started(sttd, realtime_server)
        for bad, key in [
            ("[triggers]\nsend = '(unclosed'\n", "triggers.send"),
            ("[audio]\nvolume = 11\n", "audio.volume"),
            ("[turn_detection]\nthreshold = 2.0\n", "turn_detection.threshold"),
        ]:
            config.write_text(good + "\n" + bad)
            errors_before = sttd.log.count(" ERROR ")
            sttd.process.send_signal(signal.SIGHUP)

            def logged(n: int = errors_before) -> bool:
                return sttd.log.count(" ERROR ") > n

            wait_until(logged, 10, f"the error about {key}")
            line = [line for line in sttd.log.splitlines() if " ERROR " in line][-1]
            assert "reload refused" in line and key in line, line
            assert sttd.process.poll() is None

        # Still running, still dictating, with the old triggers.
        assert sttd.status()["state"] == "listening"
        _say(realtime_server, listener, "keep this and send")
        sent = listener.wait_for(lambda e: e["type"] == "triggered", 10, "the old send trigger")
        assert sent["name"] == "send" and sent["text"] == "keep this and"
        assert realtime_server.connection_count == 1
        assert sttd.terminate() == 0
        assert "Traceback" not in sttd.log
    finally:
        if listener is not None:
            listener.close()
        sttd.kill()


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


def test_install_puts_everything_in_its_xdg_place_and_uninstall_takes_it_away(tmp_path: Path) -> None:
    dirs = UserDirs(tmp_path)
    env = dirs.env(xdg=False, OPENAI_API_KEY="sk-install-test-0123456789")
    out = install(dirs, env=env).stdout
    assert "no systemd user manager" in out  # none runs for this user: nothing was started

    sttd_path = Path(sys.executable).parent / "sttd"
    source_unit = (ROOT / "systemd" / "sttd.service").read_text().splitlines()
    unit = dirs.unit.read_text().splitlines()
    assert [line for line in unit if line.startswith("ExecStart=")] == [f"ExecStart={sttd_path}"]
    assert [a for a, b in zip(unit, source_unit, strict=True) if a != b] == [f"ExecStart={sttd_path}"]
    activation = dirs.activation.read_text()
    assert f"\nExec={sttd_path}\n" in activation
    assert "\nSystemdService=sttd.service\n" in activation and f"\nName={BUS_NAME}\n" in activation
    for page in dirs.pages:
        assert page.read_bytes() == (ROOT / "man" / page.name).read_bytes()
        assert page.stat().st_mode & 0o777 == 0o644
    for exe in ("sttd", "sttctl", "sttd-ibus"):
        assert os.readlink(dirs.bin / exe) == str(Path(sys.executable).parent / exe)
    # The IBus component names that sttd-ibus, where IBUS_COMPONENT_PATH (with IBus's own folder) points.
    component = dirs.data / "ibus" / "component" / "sttd.xml"
    assert f"<exec>{dirs.bin / 'sttd-ibus'} --ibus</exec>" in component.read_text()
    ibus_env = (dirs.home / ".config" / "environment.d" / "60-sttd-ibus.conf").read_text()
    assert ibus_env == f"IBUS_COMPONENT_PATH={component.parent}:/usr/share/ibus/component\n"
    key = dirs.config / "sttd" / "openai-api-key"
    assert key.read_text() == "sk-install-test-0123456789\n"
    assert key.stat().st_mode & 0o777 == 0o600
    config = dirs.config / "sttd" / "config.toml"
    check = subprocess.run(
        [command("sttd"), "--check-config", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stderr
    assert f"api_key_file = '{key}'" in config.read_text()

    # Again, as an update: the key and the config are the user's now and stay as they are.
    config.write_text(config.read_text() + "\n[audio]\nchunk_ms = 20\n")
    before = config.read_text()
    install(dirs, env=dirs.env(xdg=False, OPENAI_API_KEY="sk-another-key-0123456789"))
    assert key.read_text() == "sk-install-test-0123456789\n"
    assert config.read_text() == before

    out = uninstall(dirs, env=dirs.env(xdg=False)).stdout
    assert "removed" in out
    for path in [dirs.unit, dirs.activation, *dirs.pages, dirs.bin / "sttd", dirs.bin / "sttctl", component]:
        assert not path.exists() and not path.is_symlink(), f"{path} is still there"
    assert key.exists() and config.read_text() == before  # the user's own files stay
    assert Path(sys.executable).exists()  # --python's environment is not the installer's to remove


def test_the_installed_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    require("man")  # verify runs it for every Documentation= page
    dirs = UserDirs(tmp_path)
    install(dirs)
    # verify runs `man` for each Documentation= entry: MANPATH is where install put the pages.
    result = subprocess.run(
        [require("systemd-analyze"), "--user", "verify", str(dirs.unit)],
        env=dirs.env(MANPATH=str(dirs.data / "man")),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


# --------------------------------------------------------------------------- a real systemd --user


def _require_user_bus_units() -> None:
    # dbus.socket and dbus.service for the user manager come with dbus-user-session.
    if not any(Path(d, "dbus.socket").exists() for d in ("/usr/lib/systemd/user", "/lib/systemd/user")):
        pytest.fail("dbus-user-session is not installed; run the README's test command, which installs it")


def _systemd_binary() -> str:
    for path in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd"):
        if os.access(path, os.X_OK):
            return path
    pytest.fail("systemd is not installed; run the README's test command, which installs it")


def _own_cgroups(name: str) -> list[Path]:
    """Fresh cgroups ``name`` under this process's own, in the hierarchies systemd manages.

    The user manager moves every process of the cgroup it starts in into its
    init.scope: started in one of its own, it can touch nothing else.
    """
    mine = dict(line.split(":", 2)[1:] for line in Path("/proc/self/cgroup").read_text().splitlines())
    roots = []
    if "name=systemd" in mine and Path("/sys/fs/cgroup/systemd/cgroup.procs").exists():
        roots.append(Path("/sys/fs/cgroup/systemd") / mine["name=systemd"].lstrip("/"))
    if "" in mine:
        unified = Path("/sys/fs/cgroup/unified")
        if not (unified / "cgroup.procs").exists():
            unified = Path("/sys/fs/cgroup")
        roots.append(unified / mine[""].lstrip("/"))
    if not roots:
        pytest.fail("no cgroup hierarchy for a systemd user manager")
    created = []
    for root in roots:
        (root / name).mkdir()
        created.append(root / name)
    return created


def _remove_cgroups(paths: list[Path]) -> None:
    """Kill what is left in our cgroups (all of it started by this test) and remove them."""
    for top in paths:
        if not top.exists():
            continue
        for directory in [*sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)), top]:

            def empty(directory: Path = directory) -> bool:
                pids = [int(pid) for pid in (directory / "cgroup.procs").read_text().split()]
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                return not pids

            wait_until(empty, 10, f"{directory} to be empty", interval=0.05)
            directory.rmdir()


class UserManager:
    """``systemd --user`` for ``dirs``, in a private mount namespace (a directory of ours is
    ``/run/systemd``, with ``system/`` and a journal the test reads) and in cgroups of its own.

    It starts ``basic.target`` only (the sockets, among them ``dbus.socket``:
    the session bus is at ``$XDG_RUNTIME_DIR/bus``), not the machine's
    ``default.target`` services.
    """

    def __init__(self, dirs: UserDirs) -> None:
        _require_user_bus_units()
        self.dirs = dirs
        self.run_systemd = short_dir("run")
        (self.run_systemd / "system").mkdir()
        (self.run_systemd / "journal").mkdir()
        self.journal = DatagramSink(self.run_systemd / "journal" / "socket", parse_journal)
        self.stdout = StreamSink(self.run_systemd / "journal" / "stdout")
        self.cgroups = _own_cgroups(f"sttd-test-{uuid.uuid4().hex[:12]}")
        prelude = "".join(f'echo $$ > "{path}/cgroup.procs"\n' for path in self.cgroups)
        argv = with_private_run_systemd(self.run_systemd, [_systemd_binary(), "--user", "--unit=basic.target"], prelude)
        self.log_path = dirs.base / "systemd.log"
        with self.log_path.open("wb") as log:
            env = dirs.env(LANG="C.UTF-8", SYSTEMD_LOG_TARGET="journal")  # the test's journal
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
        try:
            wait_until(self._running, 30, "the user manager to finish starting up", interval=0.1)
        except BaseException:
            self.close()
            raise

    def _running(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"systemd --user exited with {self.process.returncode}:\n{self.diagnostics()}")
        state = self.systemctl("is-system-running", check=False).stdout.strip()
        if state == "degraded":
            raise AssertionError(f"a unit of the user manager failed:\n{self.systemctl('--failed').stdout}")
        return state == "running"

    def inside(self, argv: list[str]) -> list[str]:
        """``argv`` run in the manager's mount namespace, where it sees ``/run/systemd/system``
        (as on a machine booted with systemd: ``systemctl`` talks to the manager rather than
        working offline)."""
        return [require("nsenter"), "--target", str(self.process.pid), "--mount", "--", *argv]

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.inside([require("systemctl"), "--user", *args]),
            env=self.dirs.env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"systemctl --user {' '.join(args)}: {result.stderr}\n{self.diagnostics()}")
        return result

    def show(self, unit: str) -> dict[str, str]:
        out = self.systemctl("show", unit).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def sttd_records(self, pid: int | None = None) -> list[dict[str, str]]:
        return [
            record
            for sender, record in self.journal.items
            if record.get("SYSLOG_IDENTIFIER") == "sttd" and (pid is None or sender == pid)
        ]

    def diagnostics(self) -> str:
        status = subprocess.run(
            self.inside(["systemctl", "--user", "status", "--no-pager", "sttd"]),
            env=self.dirs.env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
        records = "\n".join(f"{pid} {r.get('SYSLOG_IDENTIFIER')}: {r.get('MESSAGE')}" for pid, r in self.journal.items)
        log = self.log_path.read_text(errors="replace")
        return (
            f"--- status\n{status}\n--- journal\n{records}\n--- stdout streams\n{self.stdout.text}\n--- manager\n{log}"
        )

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)  # a user manager exits on SIGTERM, stopping its units
                try:
                    self.process.wait(20)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
            _remove_cgroups(self.cgroups)
        finally:
            self.journal.close()
            self.stdout.close()
            shutil.rmtree(self.run_systemd, ignore_errors=True)


@pytest.fixture
def user_manager() -> Iterator[UserManager]:
    base = short_dir("user")
    manager = UserManager(UserDirs(base))
    try:
        yield manager
    finally:
        manager.close()
        shutil.rmtree(base, ignore_errors=True)


def test_systemd_user_manager_activates_restarts_and_stops_sttd(
    user_manager: UserManager, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    manager, dirs = user_manager, user_manager.dirs
    bus_env = clean_env(DBUS_SESSION_BUS_ADDRESS=f"unix:path={dirs.runtime / 'bus'}")
    # A shorter watchdog than the unit's, to see it fed within the test.
    dropin = dirs.config / "systemd" / "user" / "sttd.service.d" / "test.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text("[Service]\nWatchdogSec=4\n")
    # The sound server as a desktop session would export it to the manager.
    manager.systemctl("set-environment", f"PULSE_SERVER={pulse_server.server}")

    out = install(dirs, "--no-start", env=dirs.env(OPENAI_API_KEY=realtime_server.api_key), wrap=manager.inside).stdout
    assert "sttd is enabled" in out, out
    config = dirs.config / "sttd" / "config.toml"
    config.write_text(config.read_text() + f'url = "{realtime_server.url}"\n')
    assert manager.show("sttd")["ActiveState"] == "inactive"  # installed, not started

    # D-Bus activation: the bus asks systemd for sttd.service, which is ready once it owns the name.
    started = sttctl(bus_env, "start")
    assert started.returncode == 0, f"{started.stderr}\n{manager.diagnostics()}"
    wait_until(lambda: manager.show("sttd")["StatusText"] == "listening", 15, "Status: listening")
    realtime_server.wait_for_connections(1)
    props = manager.show("sttd")
    assert (props["ActiveState"], props["SubState"], props["NRestarts"]) == ("active", "running", "0")
    first = int(props["MainPID"])
    status = manager.systemctl("status", "--no-pager", "sttd", check=False).stdout
    assert 'Status: "listening"' in status, status
    # The hardening is in force (seccomp filter, no_new_privs), and sttd works under it.
    proc_status = Path(f"/proc/{first}/status").read_text()
    assert re.search(r"^NoNewPrivs:\s+1$", proc_status, re.M) and re.search(r"^Seccomp:\s+2$", proc_status, re.M)
    # Its log reached the journal, with sttd's fields.
    records = manager.sttd_records(first)
    assert any(r.get("STTD_STATE") == "listening" and r.get("STTD_EVENT") == "state" for r in records), records

    # The watchdog is fed from the event loop (every WatchdogSec/2 = 2 s).
    fed = props["WatchdogTimestampMonotonic"]
    wait_until(lambda: manager.show("sttd")["WatchdogTimestampMonotonic"] != fed, 10, "a WATCHDOG=1")

    # SIGKILL: systemd restarts it (Restart=on-failure), idle and reachable again.
    os.kill(first, signal.SIGKILL)

    def restarted() -> bool:
        p = manager.show("sttd")
        return p["NRestarts"] == "1" and p["SubState"] == "running" and p["MainPID"] not in ("0", str(first))

    wait_until(restarted, 20, "systemd to restart sttd")
    second = int(manager.show("sttd")["MainPID"])
    wait_until(lambda: manager.show("sttd")["StatusText"] == "idle", 10, "Status: idle")
    status_after = sttctl(bus_env, "status", "--json")
    assert status_after.returncode == 0 and '"state": "idle"' in status_after.stdout, status_after.stderr
    assert any("ready on the session bus" in r["MESSAGE"] for r in manager.sttd_records(second))

    # systemctl --user reload: SIGHUP; a valid config is taken, an invalid one refused and logged.
    config.write_text(config.read_text() + "\n[triggers]\nsend = '\\bover\\b'\n")
    manager.systemctl("reload", "sttd")
    wait_until(
        lambda: any("configuration reloaded" in r["MESSAGE"] for r in manager.sttd_records(second)), 10, "the reload"
    )
    config.write_text(config.read_text() + "position = 'middle'\n")
    manager.systemctl("reload", "sttd")

    def refused() -> list[dict[str, str]]:
        return [r for r in manager.sttd_records(second) if "reload refused" in r["MESSAGE"]]

    (record,) = wait_until(refused, 10, "the refused reload")
    assert record["PRIORITY"] == "3" and "triggers.position" in record["MESSAGE"]
    assert manager.show("sttd")["ActiveState"] == "active"

    # A clean stop: SIGTERM, exit status 0, no restart.
    manager.systemctl("stop", "sttd")
    props = manager.show("sttd")
    assert (props["ActiveState"], props["Result"], props["ExecMainStatus"]) == ("inactive", "success", "0"), props
    assert any(r["MESSAGE"] == "stopped" for r in manager.sttd_records(second))
    time.sleep(0.5)
    assert manager.show("sttd")["ActiveState"] == "inactive"

    # Uninstall: the unit and the activation file are gone, so nothing can start sttd any more.
    uninstall(dirs, wrap=manager.inside)
    assert manager.show("sttd")["LoadState"] == "not-found"
    assert sttctl(bus_env, "start").returncode == 3
    assert "Traceback" not in manager.stdout.text, manager.stdout.text
    # systemd found nothing to complain about in the unit.
    said = [r["MESSAGE"] for r in manager.journal.values() if "sttd.service" in r.get("MESSAGE", "")]
    assert any(m.startswith("Started sttd.service") for m in said), manager.diagnostics()
    assert not [m for m in said if re.search(r"unknown|ignoring|invalid|deprecated|not supported", m, re.I)], said
