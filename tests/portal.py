"""The real ``xdg-desktop-portal`` frontend on a test's private bus, with the test backend behind it.

:class:`Portal` writes ``sttdtest.portal`` (``UseIn=sttdtest``) into a
folder, starts :mod:`tests.portal_backend` under that ``DBusName`` and then
``/usr/libexec/xdg-desktop-portal -r`` with ``XDG_CURRENT_DESKTOP=sttdtest``
and ``XDG_DESKTOP_PORTAL_DIR`` pointing at the folder: the frontend finds the
backend as it finds a desktop's, and sttd talks to the frontend as it would
on GNOME or KDE. The bus must have no service directories (the stock session
config auto-starts other portals, the document portal mounts FUSE).

:meth:`Portal.press` / :meth:`Portal.release` drive the backend's test-only
methods with ``busctl --user`` (a real client); :meth:`Portal.restart_frontend`
plays a portal restarted mid-day.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .bus import SessionBus, busctl, wait_until
from .processes import end_process

FRONTEND = "/usr/libexec/xdg-desktop-portal"
DESKTOP = "sttdtest"
BACKEND_NAME = "org.freedesktop.impl.portal.desktop.sttdtest"
PORTAL_NAME = "org.freedesktop.portal.Desktop"
DESKTOP_PATH = "/org/freedesktop/portal/desktop"
TEST_IFACE = "io.github.sttd.test.PortalBackend"
REPO = Path(__file__).resolve().parent.parent


def _owned(bus: SessionBus, name: str) -> bool:
    done = busctl(bus, "status", name, check=False)
    return done.returncode == 0


class Portal:
    """Frontend plus test backend on ``bus``; ``interfaces`` go into the .portal file."""

    def __init__(
        self, directory: Path, bus: SessionBus, interfaces: str = "org.freedesktop.impl.portal.GlobalShortcuts"
    ) -> None:
        if not os.access(FRONTEND, os.X_OK):
            pytest.fail(f"{FRONTEND} is missing: install xdg-desktop-portal (the README's test command does)")
        self.bus = bus
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{DESKTOP}.portal").write_text(
            f"[portal]\nDBusName={BACKEND_NAME}\nInterfaces={interfaces};\nUseIn={DESKTOP}\n"
        )
        self.env = {**os.environ, **bus.env(), "XDG_CURRENT_DESKTOP": DESKTOP, "XDG_DESKTOP_PORTAL_DIR": str(directory)}
        self._logs: list[Path] = []
        self.backend = self._spawn("backend", [sys.executable, "-m", "tests.portal_backend", "--name", BACKEND_NAME])
        wait_until(lambda: _owned(bus, BACKEND_NAME), 15, "the test portal backend to own its name", interval=0.05)
        self.frontend = self.start_frontend()

    def _spawn(self, what: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = self.directory / f"{what}-{len(self._logs)}.log"
        self._logs.append(log)
        with log.open("wb") as out:
            return subprocess.Popen(argv, env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    def start_frontend(self) -> subprocess.Popen[bytes]:
        process = self._spawn("frontend", [FRONTEND, "-r"])

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"xdg-desktop-portal exited with {process.returncode}: {self.logs()}")
            return _owned(self.bus, PORTAL_NAME)

        wait_until(up, 15, "xdg-desktop-portal to own org.freedesktop.portal.Desktop", interval=0.05)
        return process

    def stop_frontend(self) -> None:
        end_process(self.frontend)
        wait_until(lambda: not _owned(self.bus, PORTAL_NAME), 10, "the portal to leave the bus", interval=0.05)

    def restart_frontend(self) -> None:
        self.stop_frontend()
        self.frontend = self.start_frontend()

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')}" for log in self._logs if log.exists())

    def _call(self, member: str, signature: str = "", *args: str) -> str:
        done = busctl(
            self.bus, "call", BACKEND_NAME, DESKTOP_PATH, TEST_IFACE, member, *([signature, *args] if signature else [])
        )
        return done.stdout.strip()

    def press(self, shortcut: str) -> int:
        """Press ``shortcut``; how many sessions heard it."""
        return int(self._call("Press", "s", shortcut).split()[-1])

    def release(self, shortcut: str) -> int:
        return int(self._call("Release", "s", shortcut).split()[-1])

    def press_at(self, shortcut: str, stamp: int) -> int:
        return int(self._call("PressAt", "st", shortcut, str(stamp)).split()[-1])

    def release_at(self, shortcut: str, stamp: int) -> int:
        return int(self._call("ReleaseAt", "st", shortcut, str(stamp)).split()[-1])

    def now(self) -> int:
        return int(self._call("Now").split()[-1])

    def sessions(self) -> int:
        return int(self._call("Sessions").split()[-1])

    def bound(self) -> dict[str, str]:
        """``{id: trigger}`` of every open session, as ``busctl`` prints ``a(ss)``."""
        words = self._call("Bound").split()
        count = int(words[1])
        pairs = [w.strip('"') for w in words[2:]]
        assert len(pairs) == 2 * count, words
        return dict(zip(pairs[::2], pairs[1::2], strict=True))

    def close(self) -> None:
        end_process(self.frontend)
        end_process(self.backend)
