"""The journal: sttd run in a private mount namespace (``unshare -m``) where a directory of the test's is
``/run/systemd``, so the datagrams systemd-python sends to ``/run/systemd/journal/socket`` arrive on a
socket the test binds, with sttd's fields; run by hand, or with no journal answering, it writes to stderr
instead (with ``<N>`` priority prefixes for systemd's stream).

Every wait has a deadline; a missing tool fails the test.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from .bus import SessionBus, wait_until
from .daemon import command, sttctl, write_config
from .realtime_server import FakeRealtimeServer
from .sound import SoundServer
from .systemd_harness import (
    Daemon,
    DatagramSink,
    clean_daemon_env,
    clean_env,
    parse_journal,
    short_dir,
    with_private_run_systemd,
)

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
