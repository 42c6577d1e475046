"""The built-in outputs: stdout, the typing and clipboard tools for the session, and typing on X11.

Typing is checked on a virtual X display (Xvfb) with xdotool typing into a real X client
(``tests/xclient.py``) that reports the characters it receives. Every wait has a deadline; a missing tool fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sttd import hooks as hooks_module
from sttd.config import HooksConfig, OutputConfig
from sttd.errors import OutputError
from sttd.hooks import HookRunner
from sttd.output import Wtype, Xdotool, find_copier, find_typer, keysym, keysym_pairs, xdotool_chunks

from ..bus import require, wait_until
from .harness import (
    UNICODE,
    Errors,
    Recorder,
    XClient,
    handle,
    keysyms_on_the_keymap,
    no_text_above_debug,
    run_async,
    working,
)

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
