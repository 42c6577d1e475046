"""What the hook tests share: a hook program that records what it was given (stdin, ``STTD_*`` environment,
its pid) as JSON lines, one that leaves processes behind, a runner driven by hand, and a real X client
(``tests/xclient.py``) that reports the characters it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from sttd.hooks import HookRunner

from ..bus import require, wait_until

RATE = 24000
XCLIENT = Path(__file__).resolve().parent.parent / "xclient.py"
UNICODE = "café naïve Ünïcödé"

RECORDER = r"""
import json, os, subprocess, sys, time
text = sys.stdin.buffer.read().decode("utf-8")
record = {
    "stdin": text,
    "event": os.environ.get("STTD_EVENT"),
    "language": os.environ.get("STTD_LANGUAGE"),
    "item_id": os.environ.get("STTD_ITEM_ID"),
    "argv": sys.argv[2:],
    "pid": os.getpid(),
    "api_key": "OPENAI_API_KEY" in os.environ,
}
hang = "hang" in text
if hang:
    record["child"] = subprocess.Popen(["sleep", "600"]).pid
with open(sys.argv[1], "a", encoding="utf-8") as out:
    out.write(json.dumps(record) + "\n")
if hang:
    time.sleep(600)
"""


# ------------------------------------------------------------------ helpers


class Recorder:
    """A hook program that appends what it got to ``log`` (one JSON object per run)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.script = directory / "recorder.py"
        self.script.write_text(RECORDER, encoding="utf-8")
        self.log = directory / "hooks.jsonl"

    def argv(self, *extra: str) -> tuple[str, ...]:
        return (sys.executable, str(self.script), str(self.log), *extra)

    def toml(self, *extra: str) -> str:
        return json.dumps(list(self.argv(*extra)))

    def records(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines() if line]

    def wait(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.records()) >= count, timeout, f"{count} hook run(s); saw {self.records()}")
        return self.records()


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie nobody reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def run_async(coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


Feed = Callable[[list[tuple[str, str]]], Awaitable[None]]


@contextlib.asynccontextmanager
async def working(runner: HookRunner, item_id: str = "", timeout: float = 15) -> AsyncIterator[Feed]:
    """The worker running; ``await feed(events)`` submits events and waits until they are handled."""
    worker = asyncio.create_task(runner.run())

    async def feed(events: list[tuple[str, str]]) -> None:
        for event, text in events:
            runner.submit(event, text, language="en", item_id=item_id)  # type: ignore[arg-type]
        await asyncio.wait_for(runner.join(), timeout)

    try:
        yield feed
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(worker, 10)


async def handle(runner: HookRunner, events: list[tuple[str, str]], item_id: str = "") -> None:
    """Run the worker until every event was handled."""
    async with working(runner, item_id) as feed:
        await feed(events)


class Errors(list[tuple[str, str]]):
    """An ``on_error`` callback that keeps what it was told."""

    def __call__(self, code: str, message: str) -> None:
        self.append((code, message))


def no_text_above_debug(caplog: pytest.LogCaptureFixture, text: str) -> None:
    for record in caplog.records:
        if text in record.getMessage():
            assert record.levelname == "DEBUG", record.getMessage()


# ------------------------------------------------------------ what a hook leaves behind

SPAWNER = r"""
import json, os, subprocess, sys, time
marker, out, mode = sys.argv[1:4]
kids = [
    subprocess.Popen(["sleep", marker + "1"]),  # cmd &
    subprocess.Popen(["setsid", "sleep", marker + "2"]),  # setsid cmd &: a session and group of its own
    subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep " + marker + "3"]),  # ignores SIGTERM
]
def running(pid, suffix):  # exec'd into sleep (setsid and sh have the marker in their arguments too)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")[:2] == [b"sleep", (marker + suffix).encode()]
deadline = time.monotonic() + 10
while not all(running(k.pid, str(n + 1)) for n, k in enumerate(kids)) and time.monotonic() < deadline:
    time.sleep(0.01)
with open(out + ".tmp", "w") as f:  # renamed into place: the test reads it as soon as it exists
    json.dump({"session": os.getsid(0), "sessions": [os.getsid(k.pid) for k in kids]}, f)
os.rename(out + ".tmp", out)
if mode == "hang":
    time.sleep(600)
"""


def marked(marker: str) -> list[int]:
    """The live processes with an argument starting with ``marker`` (a zombie has no command line)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(arg.startswith(marker.encode()) for arg in args):
                found.append(int(entry))
    return found


class Spawner:
    """A hook that starts ``sleep MARKER1 &``, ``setsid sleep MARKER2 &`` and a SIGTERM-ignoring
    ``sleep MARKER3 &``, then exits (or, with ``hang``, sleeps); the marker finds them afterwards."""

    def __init__(self, directory: Path, mode: str = "exit") -> None:
        self.marker = f"600.{os.getpid()}{time.monotonic_ns() % 100000:05d}"
        self.script = directory / "spawner.py"
        self.script.write_text(SPAWNER, encoding="utf-8")
        self.out = directory / f"spawned-{self.marker}.json"
        self.argv = (sys.executable, str(self.script), self.marker, str(self.out), mode)

    def started(self) -> dict[str, Any]:
        wait_until(self.out.exists, 15, "the hook to start its children")
        spawned: dict[str, Any] = json.loads(self.out.read_text())
        # The setsid child really left the hook's session (a process-group kill would miss it).
        assert spawned["sessions"][0] == spawned["session"] != spawned["sessions"][1]
        return spawned

    def none_left(self) -> None:
        wait_until(lambda: not marked(self.marker), 10, f"no process of {self.marker} left; saw {marked(self.marker)}")


class XClient:
    """``tests/xclient.py`` on a display: holds the focus and reports each key it gets."""

    def __init__(self, display: str, log: Path) -> None:
        require("xdotool")
        probe = subprocess.run([sys.executable, "-c", "import tkinter"], capture_output=True, check=False, timeout=30)
        if probe.returncode != 0:
            pytest.fail("tkinter is missing: install python3-tk (scripts/test does)")
        self._log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, str(XCLIENT)],
            env={**os.environ, "DISPLAY": display},
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self._next(15, "the X client to get the focus")
        assert ready["type"] == "ready", ready
        self.window = int(ready["window"])

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._events.put(json.loads(line))

    def _next(self, timeout: float, what: str) -> dict[str, Any]:
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None

    def typed(self, until: str, timeout: float = 15) -> str:
        """The characters received, up to and including the one ending with ``until``."""
        text = ""
        deadline = time.monotonic() + timeout
        while not text.endswith(until):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {until!r}; received {text!r}")
            event = self._next(remaining, f"keys ending in {until!r}; received {text!r}")
            if event["type"] == "key":
                text += event["char"]
        return text

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self._log.close()


def keysyms_on_the_keymap() -> set[int]:
    result = subprocess.run(
        [sys.executable, "-m", "sttd.output", "x11-keymap", "list"],
        input="{}",
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return set(json.loads(result.stdout)["keysyms"])


def hooks_toml(rec: Recorder, timeout_s: float = 10) -> str:
    return (
        f"\n[hooks]\ntranscript = {rec.toml('transcript')}\nsend = {rec.toml('send')}\n"
        f"purge = {rec.toml('purge')}\ntimeout_s = {timeout_s}\n"
    )
