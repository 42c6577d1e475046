"""Hook commands run by the hook runner directly: what they get, their timeouts and failures, the queue, and
what a hook leaves behind.

The hooks here are small Python programs written into the test's directory that record what they were
given (stdin, ``STTD_*`` environment, their pid) as JSON lines. Every wait has a deadline; a missing tool fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

import pytest

from sttd.config import HooksConfig, OutputConfig
from sttd.hooks import QUEUE_SIZE, HookRunner

from ..bus import wait_until
from .harness import Errors, Recorder, Spawner, gone, handle, no_text_above_debug, run_async

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
