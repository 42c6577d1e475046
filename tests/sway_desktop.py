"""A headless sway with a ``foot`` terminal recording what it receives: the Wayland output tests' desktop.

sway refuses to run as root, so it and the receiving terminal run as uid
65534 (``setpriv``), with ``env -i`` and a private 0700 ``XDG_RUNTIME_DIR``
owned by that uid, in a directory of their own under /tmp (pytest's are
0700 root). Root clients (sttd, wtype, wl-copy) connect with
``XDG_RUNTIME_DIR`` and ``WAYLAND_DISPLAY`` (:attr:`SwayDesktop.env`). The
terminal runs ``cat >> received`` in raw mode without echo, so the file
holds exactly the bytes typed or pasted into the window.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .bus import require, wait_until
from .processes import end_process

NOBODY = 65534


class SwayDesktop:
    def __init__(self) -> None:
        for tool in ("sway", "foot", "setpriv", "swaymsg"):
            require(tool)
        self.root = Path(tempfile.mkdtemp(prefix="sttd-sway-"))
        self._processes: list[subprocess.Popen[bytes]] = []
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        root = self.root
        os.chmod(root, 0o755)
        self.runtime = root / "runtime"
        self.runtime.mkdir(mode=0o700)
        os.chown(self.runtime, NOBODY, NOBODY)
        (root / "config").write_text("output HEADLESS-1 resolution 1280x720\n")
        self.received = root / "received"
        self.received.touch()
        os.chown(self.received, NOBODY, NOBODY)
        self.ready = root / "ready"
        base = [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "env",
            "-i",
            f"XDG_RUNTIME_DIR={self.runtime}",
            f"HOME={root}",
            "PATH=/usr/bin:/bin",
            "LANG=C.UTF-8",
        ]
        compositor = ["WLR_BACKENDS=headless", "WLR_RENDERER=pixman", "WLR_LIBINPUT_NO_DEVICES=1"]
        with (root / "sway.log").open("wb") as log:
            self._processes.append(
                subprocess.Popen([*base, *compositor, "sway", "-c", str(root / "config")], stdout=log, stderr=log)
            )
        socket = self.runtime / "wayland-1"
        wait_until(socket.exists, 20, "sway's Wayland socket")
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SWAYSOCK")},
            "XDG_RUNTIME_DIR": str(self.runtime),
            "WAYLAND_DISPLAY": "wayland-1",
        }
        ipc = wait_until(lambda: next(iter(self.runtime.glob("sway-ipc.*.sock")), None), 20, "sway's IPC socket")
        self.env["SWAYSOCK"] = str(ipc)
        ready_dir = root / "flags"
        ready_dir.mkdir()
        os.chown(ready_dir, NOBODY, NOBODY)
        self.ready = ready_dir / "ready"
        script = f"stty raw -echo; touch {self.ready}; exec cat >> {self.received}"
        with (root / "foot.log").open("wb") as log:
            self._processes.append(
                subprocess.Popen(
                    [*base, "WAYLAND_DISPLAY=wayland-1", "foot", "sh", "-c", script], stdout=log, stderr=log
                )
            )
        wait_until(self.ready.exists, 20, "the terminal to be ready")
        wait_until(self._foot_focused, 20, "the terminal to have the focus")

    def _foot_focused(self) -> bool:
        reply = subprocess.run(
            ["swaymsg", "-t", "get_tree", "-r"], env=self.env, capture_output=True, text=True, timeout=10, check=False
        )
        if reply.returncode != 0:
            return False

        def walk(node: dict[str, Any]) -> bool:
            if node.get("app_id") == "foot" and node.get("focused"):
                return True
            return any(walk(child) for child in node.get("nodes", []) + node.get("floating_nodes", []))

        return walk(json.loads(reply.stdout))

    def text(self) -> str:
        return self.received.read_bytes().decode("utf-8", errors="replace")

    def wait_text(self, text: str, timeout: float = 20) -> None:
        try:
            wait_until(lambda: self.text() == text, timeout, f"the terminal to hold {text!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; it holds {self.text()!r}") from None

    def run(self, *argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        """A root client of the compositor (wtype, wl-copy, wl-paste)."""
        return subprocess.run(argv, env=self.env, input=stdin, capture_output=True, timeout=20, check=False)

    def copy(self, text: str) -> None:
        """``wl-copy TEXT`` as the user does: it leaves a child serving the clipboard (until the compositor goes)."""
        subprocess.run(
            ["wl-copy", text],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=20,
            check=True,
        )

    def close(self) -> None:
        for process in reversed(self._processes):
            end_process(process)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def sway_desktop() -> Iterator[SwayDesktop]:
    desktop = SwayDesktop()
    try:
        yield desktop
    finally:
        desktop.close()
