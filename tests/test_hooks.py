"""Hook commands and built-in outputs: real processes, a real X server, the real daemon.

The hooks here are small Python programs written into the test's directory
that record what they were given (stdin, ``STTD_*`` environment, their pid)
as JSON lines. Typing is checked on a virtual X display (Xvfb) with xdotool
typing into a real X client (``tests/xclient.py``) that reports the
characters it receives. Every wait has a deadline; a missing tool fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sttd import hooks as hooks_module
from sttd.config import HooksConfig, OutputConfig
from sttd.errors import OutputError
from sttd.hooks import QUEUE_SIZE, HookRunner
from sttd.output import Wtype, Xdotool, find_copier, find_typer, keysym, keysym_pairs, xdotool_chunks

from .bus import SessionBus, require, wait_until
from .daemon import Listener, Sttd, write_config
from .processes import end_process, start_xvfb
from .realtime_server import FakeRealtimeServer
from .sound import SoundServer, speech_wav, wav_samples, write_wav

RATE = 24000
XCLIENT = Path(__file__).with_name("xclient.py")
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


# --------------------------------------------------------- hooks, directly


def test_hooks_get_the_text_on_stdin_and_the_event_in_their_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-hooks")
    rec = Recorder(tmp_path)
    hooks = HooksConfig(transcript=rec.argv("t"), send=rec.argv("s"), purge=rec.argv("p"))
    runner = HookRunner(hooks, OutputConfig())
    events = [("transcript", "hello world"), ("send", "hello world"), ("transcript", "déjà vu"), ("purge", "déjà vu")]
    run_async(handle(runner, events, item_id="item_7"))
    got = rec.records()
    assert [(r["event"], r["stdin"], r["argv"]) for r in got] == [
        ("transcript", "hello world", ["t"]),
        ("send", "hello world", ["s"]),
        ("transcript", "déjà vu", ["t"]),
        ("purge", "déjà vu", ["p"]),
    ]
    assert {(r["language"], r["item_id"], r["api_key"]) for r in got} == {("en", "item_7", False)}
    assert len({r["pid"] for r in got}) == 4  # one process per event, one after another


def test_shell_syntax_in_a_transcript_reaches_the_hook_as_literal_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "canary").write_text("still here")
    monkeypatch.setenv("HOME", str(home))
    marker = tmp_path / f"pwned-{os.getpid()}"
    text = f"$(touch {marker}); rm -rf ~ `touch {marker}` && touch {marker} | cat > {marker}"
    rec = Recorder(tmp_path / "rec")
    hooks = HooksConfig(transcript=rec.argv(), send=(*rec.argv(), "$(touch " + str(marker) + ")"))
    run_async(handle(HookRunner(hooks, OutputConfig()), [("transcript", text), ("send", text)]))
    got = rec.records()
    assert [r["stdin"] for r in got] == [text, text]
    assert got[1]["argv"] == [f"$(touch {marker})"]  # argv too is passed as is
    assert not marker.exists()
    assert (home / "canary").read_text() == "still here"


def test_a_hanging_hook_is_killed_with_its_children_and_the_next_event_runs(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    errors = Errors()
    runner = HookRunner(HooksConfig(transcript=rec.argv(), timeout_s=0.5), OutputConfig(), on_error=errors)
    started = time.monotonic()
    run_async(handle(runner, [("transcript", "please hang"), ("transcript", "all good again")]))
    elapsed = time.monotonic() - started
    hung, after = rec.records()
    assert after["stdin"] == "all good again"
    assert 0.5 <= elapsed < 5
    wait_until(lambda: gone(hung["pid"]) and gone(hung["child"]), 5, "the hung hook and its child to be gone")
    assert errors == [
        ("hook", f"transcript hook: {sys.executable} did not finish within 0.5 s; killed it and what it started")
    ]


def test_a_failing_or_missing_hook_is_logged_with_its_status_and_dictation_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    rec = Recorder(tmp_path)
    failing = (sys.executable, "-c", "import sys; print(sys.stdin.read()); sys.exit(3)")
    killed = (sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    errors = Errors()
    hooks = HooksConfig(transcript=rec.argv(), send=failing, purge=(str(tmp_path / "no-such-hook"),))

    async def go() -> None:
        runner = HookRunner(hooks, OutputConfig(), on_error=errors)
        await handle(runner, [("send", "secret words"), ("purge", "more secrets"), ("transcript", "still alive")])
        runner.reconfigure(HooksConfig(send=killed), OutputConfig())
        await handle(runner, [("send", "x")])

    run_async(go())
    assert [r["stdin"] for r in rec.records()] == ["still alive"]
    assert errors == [
        ("hook", f"send hook: {sys.executable} exited with status 3"),
        ("hook", f"purge hook: cannot run {tmp_path / 'no-such-hook'}: No such file or directory"),
        ("hook", f"send hook: {sys.executable} was killed by SIGTERM"),
    ]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [m for _, m in errors]
    # What the hook printed (here: the text) is kept for DEBUG only.
    assert any("secret words" in r.getMessage() for r in caplog.records if r.levelname == "DEBUG")
    no_text_above_debug(caplog, "secret words")
    no_text_above_debug(caplog, "more secrets")


def test_submit_never_blocks_and_what_overflows_the_queue_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runner = HookRunner(HooksConfig(send=Recorder(tmp_path).argv()), OutputConfig())

    async def flood() -> float:
        started = time.monotonic()
        for n in range(QUEUE_SIZE + 3):
            runner.submit("send", f"text {n}", language="")
        return time.monotonic() - started

    assert run_async(flood()) < 1
    assert runner.waiting == QUEUE_SIZE
    dropped = [r for r in caplog.records if "dropped a send event" in r.getMessage()]
    assert len(dropped) == 3 and all(r.levelname == "WARNING" for r in dropped)
    no_text_above_debug(caplog, "text ")


def test_cancelling_the_worker_kills_a_running_hook(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    runner = HookRunner(HooksConfig(send=rec.argv(), timeout_s=600), OutputConfig())

    async def go() -> None:
        worker = asyncio.create_task(runner.run())
        runner.submit("send", "hang on", language="")
        while not rec.records():
            await asyncio.sleep(0.02)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(worker, 5)

    run_async(go(), timeout=15)
    (hung,) = rec.records()
    wait_until(lambda: gone(hung["pid"]) and gone(hung["child"]), 5, "the hook to be killed on cancel")


def test_events_nobody_wants_are_not_queued() -> None:
    runner = HookRunner(HooksConfig(), OutputConfig())
    runner.submit("transcript", "hello", language="")
    assert runner.waiting == 0


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


def test_what_a_hook_started_ends_when_the_hook_exits(tmp_path: Path) -> None:
    spawner = Spawner(tmp_path)
    errors = Errors()
    runner = HookRunner(HooksConfig(send=spawner.argv, timeout_s=30), OutputConfig(), on_error=errors)
    run_async(handle(runner, [("send", "go")]))
    spawner.started()
    spawner.none_left()
    assert errors == []  # the hook itself succeeded


def test_what_a_hook_started_ends_when_the_hook_times_out(tmp_path: Path) -> None:
    spawner = Spawner(tmp_path, "hang")
    errors = Errors()
    runner = HookRunner(HooksConfig(send=spawner.argv, timeout_s=2), OutputConfig(), on_error=errors)
    run_async(handle(runner, [("send", "go")]))
    spawner.started()
    spawner.none_left()
    assert errors == [("hook", f"send hook: {sys.executable} did not finish within 2 s; killed it and what it started")]


def test_stopping_the_worker_ends_what_a_running_hook_started(tmp_path: Path) -> None:
    spawner = Spawner(tmp_path, "hang")
    runner = HookRunner(HooksConfig(send=spawner.argv, timeout_s=600), OutputConfig())

    async def go() -> None:
        worker = asyncio.create_task(runner.run())
        runner.submit("send", "go", language="")
        while not spawner.out.exists():
            await asyncio.sleep(0.02)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(worker, 10)

    run_async(go(), timeout=30)
    spawner.started()
    spawner.none_left()


def test_a_hook_never_gets_a_secret_on_stdin(tmp_path: Path) -> None:
    from sttd.redact import register_secret

    register_secret("a-registered-secret-for-hooks")
    rec = Recorder(tmp_path)
    runner = HookRunner(HooksConfig(send=rec.argv()), OutputConfig())
    run_async(handle(runner, [("send", "say a-registered-secret-for-hooks and sk-proj-0123456789abcdef")]))
    assert [r["stdin"] for r in rec.records()] == ["say [redacted] and [redacted]"]


# ------------------------------------------------------------ built-in outputs


STDOUT_PROGRAM = """
import asyncio, sys
from sttd.config import HooksConfig, OutputConfig
from sttd.hooks import HookRunner

async def main():
    runner = HookRunner(HooksConfig(), OutputConfig(mode="stdout"))
    worker = asyncio.create_task(runner.run())
    events = [("transcript", "hello world"), ("transcript", "how are you"), ("send", "hello world how are you"),
              ("transcript", "Ünïcödé"), ("purge", "Ünïcödé"), ("transcript", "next"), ("send", "")]
    for event, text in events:
        runner.submit(event, text, language="en")
    await asyncio.wait_for(runner.join(), 10)
    worker.cancel()

asyncio.run(main())
"""


def test_stdout_mode_prints_the_text_as_it_would_be_typed() -> None:
    result = subprocess.run(
        [sys.executable, "-c", STDOUT_PROGRAM],
        capture_output=True,
        timeout=30,
        check=False,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode("utf-8") == "hello world how are you\nÜnïcödé next\n"


def fake_bin(directory: Path, *names: str) -> Callable[[str], str | None]:
    """A PATH holding only ``names`` (real executables: links to ``true``), and ``which`` over it."""
    directory.mkdir(parents=True, exist_ok=True)
    true = require("true")
    for name in names:
        (directory / name).symlink_to(true)
    return lambda name: shutil.which(name, path=str(directory))


def test_the_typing_and_clipboard_tools_follow_the_session(tmp_path: Path) -> None:
    every = fake_bin(tmp_path / "all", "wtype", "xdotool", "ydotool", "wl-copy", "xclip")
    none = fake_bin(tmp_path / "none")
    runtime = str(tmp_path / "run")
    wayland = {"WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0", "XDG_RUNTIME_DIR": runtime}
    x11 = {"DISPLAY": ":0", "XDG_RUNTIME_DIR": runtime}
    assert find_typer(wayland, every) is Wtype
    assert find_typer(x11, every) is Xdotool
    assert find_copier(wayland, every)[0] == "wl-copy"
    assert find_copier(x11, every)[0] == "xclip"
    # Under Wayland xdotool would reach X11 windows only: not a silent fallback.
    with pytest.raises(OutputError, match="install wtype"):
        find_typer(wayland, fake_bin(tmp_path / "x", "xdotool"))
    with pytest.raises(OutputError, match="install xdotool"):
        find_typer(x11, none)
    with pytest.raises(OutputError, match="WAYLAND_DISPLAY and DISPLAY are unset"):
        find_typer({"XDG_RUNTIME_DIR": runtime}, none)
    with pytest.raises(OutputError, match="install wl-clipboard"):
        find_copier(wayland, none)
    with pytest.raises(OutputError, match="install xclip"):
        find_copier(x11, none)


def test_type_mode_without_a_display_says_what_to_install_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "YDOTOOL_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    rec = Recorder(tmp_path)
    errors = Errors()
    runner = HookRunner(HooksConfig(transcript=rec.argv()), OutputConfig(mode="type"), on_error=errors)
    run_async(handle(runner, [("transcript", "first words"), ("transcript", "more words"), ("send", "")]))
    assert [r["stdin"] for r in rec.records()] == ["first words", "more words"]  # the hooks still run
    assert len(errors) == 1, errors  # reported once, not for every utterance
    code, message = errors[0]
    assert code == "output"
    assert 'output.mode = "type"' in message and "DISPLAY" in message and "ydotool" in message
    no_text_above_debug(caplog, "words")


def test_xdotool_gets_each_non_ascii_letter_with_both_cases_and_shift_for_capitals() -> None:
    assert xdotool_chunks(UNICODE) == [(False, "café naïve "), (True, "Ü"), (False, "nïcödé")]
    assert keysym_pairs("Ünï€ü Œß") == [
        [keysym("ü"), keysym("Ü")],
        [keysym("ï"), keysym("Ï")],
        [0x10020AC, 0x10020AC],
        [0x1000153, 0x1000152],
        [keysym("ß"), keysym("ß")],  # its upper case is two letters
    ]


# ------------------------------------------------------------------ X11


@pytest.fixture
def x_display(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private Xvfb; ``DISPLAY`` points at it and ``WAYLAND_DISPLAY`` is unset for the test."""
    process, display = start_xvfb(tmp_path)
    try:
        monkeypatch.setenv("DISPLAY", display)
        monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
        yield display
    finally:
        end_process(process)


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


@pytest.fixture
def x_client(x_display: str, tmp_path: Path) -> Iterator[XClient]:
    client = XClient(x_display, tmp_path / "xclient.log")
    try:
        yield client
    finally:
        client.close()


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


def test_type_mode_types_into_the_focused_x_window(
    x_client: XClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hooks_module, "KEYMAP_RELEASE_S", 0.5)
    assert keysym("Ü") not in keysyms_on_the_keymap()  # a US keymap: xdotool would bind it itself
    errors = Errors()

    async def go() -> None:
        runner = HookRunner(HooksConfig(), OutputConfig(mode="type"), on_error=errors)
        async with working(runner) as feed:
            await feed([("transcript", "hello world"), ("transcript", UNICODE), ("send", f"hello world {UNICODE}")])
            assert x_client.typed("\r") == f"hello world {UNICODE}\r"
            assert {keysym("Ü"), keysym("ü"), keysym("é")} <= keysyms_on_the_keymap()  # bound by sttd
            # After the Return a new message starts: no separating space.
            await feed([("transcript", "Äpfel and Œuvre"), ("send", "")])
            assert x_client.typed("\r") == "Äpfel and Œuvre\r"

            # Idle typing: the keymap is given back as it was.
            def restored() -> bool:
                return keysym("Ü") not in keysyms_on_the_keymap()

            await asyncio.to_thread(wait_until, restored, 10, "the keymap to be restored")
            assert keysym("Œ") not in keysyms_on_the_keymap()

    run_async(go())
    assert errors == []


def test_clipboard_mode_copies_the_pending_text(x_display: str) -> None:
    xclip = require("xclip")

    def clipboard() -> str:
        out = subprocess.run([xclip, "-selection", "clipboard", "-o"], capture_output=True, timeout=10, check=True)
        return out.stdout.decode("utf-8")

    errors = Errors()

    async def go() -> None:
        runner = HookRunner(HooksConfig(), OutputConfig(mode="clipboard"), on_error=errors)
        await handle(runner, [("transcript", "hello"), ("transcript", UNICODE)])
        assert clipboard() == f"hello {UNICODE}"
        await handle(runner, [("send", f"hello {UNICODE}"), ("transcript", "next")])
        assert clipboard() == "next"

    run_async(go())
    assert errors == []


# ------------------------------------------------------------ through the daemon


def two_utterances(directory: Path, first: str, second: str) -> Path:
    """espeak-ng saying ``first``, a second of silence, then ``second``."""
    a = wav_samples(speech_wav(first, directory / "first.wav"))
    b = wav_samples(speech_wav(second, directory / "second.wav"))
    silence = np.zeros(RATE, dtype=np.int16)
    return write_wav(directory / "two.wav", np.concatenate([a, silence, b, silence[: RATE // 3]]))


@pytest.fixture
def start_sttd(
    tmp_path: Path, session_bus: SessionBus, pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> Iterator[Callable[..., Sttd]]:
    """Start ``sttd`` with extra config text (``[hooks]``, ``[output]``) and extra environment."""
    daemons: list[Sttd] = []

    def start(config: str, env: dict[str, str] | None = None) -> Sttd:
        path = write_config(tmp_path / "config.toml", realtime_server.url, extra=config)
        full_env = {
            **session_bus.env(),
            "PULSE_SERVER": pulse_server.server,
            "OPENAI_API_KEY": realtime_server.api_key,
            **(env or {}),
        }
        daemon = Sttd(tmp_path / "sttd", full_env, path)
        daemons.append(daemon)
        daemon.wait_ready()
        return daemon

    yield start
    for daemon in daemons:
        daemon.kill()


def listening(sttd: Sttd) -> Listener:
    listener = Listener(sttd)
    assert sttd.ctl("start").returncode == 0
    sttd.wait_state("listening")
    return listener


def hooks_toml(rec: Recorder, timeout_s: float = 10) -> str:
    return (
        f"\n[hooks]\ntranscript = {rec.toml('transcript')}\nsend = {rec.toml('send')}\n"
        f"purge = {rec.toml('purge')}\ntimeout_s = {timeout_s}\n"
    )


def test_saying_send_runs_the_send_hook_with_the_pending_text(
    tmp_path: Path, start_sttd: Callable[..., Sttd], pulse_server: SoundServer, realtime_server: FakeRealtimeServer
) -> None:
    rec = Recorder(tmp_path / "rec")
    sttd = start_sttd(hooks_toml(rec))
    realtime_server.script(["hello world", "send"])
    wav = two_utterances(tmp_path, "hello world", "send")
    listener = listening(sttd)
    try:
        pulse_server.play(wav)
        triggered = listener.wait_for(lambda e: e["type"] == "triggered", 20, "the Triggered signal")
        assert (triggered["name"], triggered["text"]) == ("send", "hello world")
        send_item = next(e["item_id"] for e in listener.seen if e["type"] == "transcript" and e["text"] == "send")
        got = rec.wait(2)
        assert [(r["event"], r["stdin"]) for r in got] == [("transcript", "hello world"), ("send", "hello world")]
        assert got[1]["item_id"] == send_item
        assert not any(r["api_key"] for r in got)  # the daemon's secret stays with it
        assert sttd.status()["transcript"] == ""
        assert sttd.ctl("stop").returncode == 0
        sttd.wait_state("idle")
    finally:
        listener.close()
    assert len(realtime_server.turns()) == 2  # two utterances, as spoken
    assert sttd.terminate() == 0
    for line in sttd.log.splitlines():
        if "hello world" in line:
            assert " DEBUG " in line, line


def test_saying_purge_drops_the_pending_text_and_the_send_hook_does_not_run(
    tmp_path: Path, start_sttd: Callable[..., Sttd], realtime_server: FakeRealtimeServer
) -> None:
    rec = Recorder(tmp_path / "rec")
    sttd = start_sttd(hooks_toml(rec))
    listener = listening(sttd)
    try:
        realtime_server.force_turn("hello world")
        realtime_server.force_turn("Purge.")
        purged = listener.wait_for(lambda e: e["type"] == "triggered", 15, "Triggered purge")
        assert (purged["name"], purged["text"]) == ("purge", "hello world")
        assert sttd.status()["transcript"] == ""
        assert [(r["event"], r["stdin"]) for r in rec.wait(2)] == [
            ("transcript", "hello world"),
            ("purge", "hello world"),
        ]
        # What comes next is sent without the purged words.
        realtime_server.force_turn("again, send")
        rec.wait(4)
    finally:
        listener.close()
    assert [(r["event"], r["stdin"]) for r in rec.records()[2:]] == [("transcript", "again"), ("send", "again")]


def test_a_transcript_with_shell_syntax_is_only_ever_text(
    tmp_path: Path, start_sttd: Callable[..., Sttd], realtime_server: FakeRealtimeServer
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "canary").write_text("still here")
    marker = tmp_path / f"pwned-{os.getpid()}"
    text = f"$(touch {marker}); rm -rf ~"
    rec = Recorder(tmp_path / "rec")
    sttd = start_sttd(hooks_toml(rec), {"HOME": str(home)})
    listener = listening(sttd)
    try:
        realtime_server.force_turn(text)
        realtime_server.force_turn("send")
        got = rec.wait(2)
    finally:
        listener.close()
    assert [(r["event"], r["stdin"]) for r in got] == [("transcript", text), ("send", text)]
    assert not marker.exists()
    assert (home / "canary").read_text() == "still here"


def test_a_hanging_hook_is_killed_at_its_timeout_and_the_next_utterance_is_handled(
    tmp_path: Path, start_sttd: Callable[..., Sttd], realtime_server: FakeRealtimeServer
) -> None:
    rec = Recorder(tmp_path / "rec")
    sttd = start_sttd(hooks_toml(rec, timeout_s=1))
    listener = listening(sttd)
    try:
        realtime_server.force_turn("please hang here")
        (hung,) = rec.wait(1)
        error = listener.wait_for(lambda e: e["type"] == "error", 10, "the Error signal of the killed hook")
        assert error["code"] == "hook"
        assert "did not finish within 1 s" in error["message"]
        wait_until(lambda: gone(hung["pid"]) and gone(hung["child"]), 5, "the hung hook to be killed")
        realtime_server.force_turn("all good again")
        after = rec.wait(2)[1]
        assert after["stdin"] == "all good again"
        final = listener.wait_for(lambda e: e["type"] == "transcript" and e["final"] and "good" in e["text"], 5, "")
        assert final["text"] == "all good again"
        assert sttd.status()["state"] == "listening"
    finally:
        listener.close()
    assert "did not finish within 1 s" in sttd.log


def test_type_mode_through_the_daemon_types_and_presses_return(
    tmp_path: Path, start_sttd: Callable[..., Sttd], realtime_server: FakeRealtimeServer, x_client: XClient
) -> None:
    sttd = start_sttd('\n[output]\nmode = "type"\n', {"DISPLAY": os.environ["DISPLAY"], "WAYLAND_DISPLAY": ""})
    listener = listening(sttd)
    try:
        realtime_server.force_turn("hello world")
        realtime_server.force_turn(f"{UNICODE}, send.")
        assert x_client.typed("\r") == f"hello world {UNICODE}\r"
        triggered = listener.wait_for(lambda e: e["type"] == "triggered", 10, "Triggered send")
        assert triggered["text"] == f"hello world {UNICODE}"
    finally:
        listener.close()
    assert "output: typing with xdotool" in sttd.log


def test_stopping_sttd_ends_what_its_running_hook_started(
    tmp_path: Path, start_sttd: Callable[..., Sttd], realtime_server: FakeRealtimeServer
) -> None:
    spawner = Spawner(tmp_path, "hang")
    sttd = start_sttd(f"\n[hooks]\ntranscript = {json.dumps(list(spawner.argv))}\ntimeout_s = 600\n")
    listener = listening(sttd)
    try:
        realtime_server.force_turn("start them")
        spawner.started()
    finally:
        listener.close()
    assert sttd.terminate() == 0
    spawner.none_left()
