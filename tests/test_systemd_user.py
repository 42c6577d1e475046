"""A real ``systemd --user`` (in a private mount namespace and a cgroup of its own, never the machine's; its
session bus from ``dbus.socket``, its journal the test's sockets): ``scripts/install`` reloads it, ``sttctl
start`` activates sttd (ready, hardened, watchdog fed, logging with fields), SIGKILL gets it restarted,
``systemctl --user reload`` applies or refuses a config, ``systemctl --user stop`` stops it cleanly,
``--uninstall`` removes it.

Every wait has a deadline; a missing tool fails the test.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .bus import require, wait_until
from .daemon import sttctl
from .realtime_server import FakeRealtimeServer
from .sound import SoundServer
from .systemd_harness import (
    DatagramSink,
    StreamSink,
    UserDirs,
    clean_env,
    install,
    parse_journal,
    short_dir,
    uninstall,
    with_private_run_systemd,
)

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
