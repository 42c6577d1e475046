"""sttd.audio against real PulseAudio and PipeWire servers: no mocks.

Speech from espeak-ng is played into the null sink ``spk`` and recorded from
the virtual microphone ``mic``; tones tell two microphones apart.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sttd.audio import Capture, list_sources
from sttd.errors import AudioError

from .bus import wait_until
from .sound import (
    RATE,
    SoundServer,
    dominant_hz,
    pcm,
    speech_wav,
    tone_wav,
    wav_samples,
    xcorr_similarity,
)

LOW_HZ, HIGH_HZ = 440.0, 1500.0
CLIENT = "sttd-test"


class Recorder:
    """Collects what a Capture hands to the loop, with arrival times."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, bytes]] = []
        self.problems: list[str] = []
        self.sources: list[str] = []
        self.levels: list[tuple[float, float]] = []

    def on_frame(self, frame: bytes) -> None:
        self.frames.append((time.monotonic(), frame))

    def on_problem(self, message: str) -> None:
        self.problems.append(message)

    def on_source(self, name: str) -> None:
        self.sources.append(name)

    def on_level(self, peak: float) -> None:
        self.levels.append((time.monotonic(), peak))

    def audio(self, since: float = 0.0) -> np.ndarray:
        return pcm([frame for at, frame in self.frames if at >= since])

    def last_hz(self, seconds: float = 0.2) -> float:
        tail = self.audio()[-int(seconds * RATE) :]
        return dominant_hz(tail) if len(tail) else 0.0

    def frames_since(self, at: float) -> int:
        return sum(1 for arrived, _ in self.frames if arrived >= at)

    def problem(self) -> str | None:
        return self.problems[-1] if self.problems else None

    def problem_is(self, message: str) -> bool:
        return self.problem() == message

    def has_frames(self, count: int) -> bool:
        return len(self.frames) >= count


async def until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Wait on the loop until ``predicate()`` is true; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def capturing(rec: Recorder, source: str = "", chunk_ms: int = 40) -> AsyncIterator[Capture]:
    capture = Capture(
        source=source,
        chunk_ms=chunk_ms,
        loop=asyncio.get_running_loop(),
        on_frame=rec.on_frame,
        on_problem=rec.on_problem,
        on_level=rec.on_level,
        on_source=rec.on_source,
        client_name=CLIENT,
    )
    await capture.start()
    try:
        yield capture
    finally:
        await capture.stop()


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


async def in_thread(func: Callable[..., object], *args: Any) -> None:
    """Blocking helpers (pactl, paplay) off the loop, so frames keep arriving."""
    await asyncio.to_thread(func, *args)


def capture_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sttd-capture"]


@pytest.fixture(params=["pulse_server", "pipewire_server"])
def sound_server(request: pytest.FixtureRequest) -> SoundServer:
    """Each kind of server in turn."""
    server: SoundServer = request.getfixturevalue(request.param)
    return server


@pytest.fixture
def two_tones(sound_server: SoundServer, tmp_path: Path) -> SoundServer:
    """A second microphone ``mic2`` (hearing ``spk2``); ``mic`` hears LOW_HZ, ``mic2`` HIGH_HZ, for 20 s."""
    server = sound_server
    server.add_mic("mic2", "spk2")
    server.play(tone_wav(tmp_path / "low.wav", LOW_HZ, 20), "spk", wait=False)
    server.play(tone_wav(tmp_path / "high.wav", HIGH_HZ, 20), "spk2", wait=False)
    return server


def assert_speech_captured(server: SoundServer, tmp_path: Path, minimum: float, chunk_ms: int = 40) -> float:
    wav = speech_wav("The quick brown fox jumps over the lazy dog.", tmp_path / "speech.wav")
    played = wav_samples(wav)
    rec = Recorder()

    async def main() -> None:
        async with capturing(rec, chunk_ms=chunk_ms) as capture:
            assert capture.source_name == "mic"
            await in_thread(server.play, wav)
            ended = time.monotonic()
            await until(lambda: rec.frames_since(ended) * chunk_ms >= 300, 5, "the tail of the speech")

    run(main())
    assert {len(frame) for _, frame in rec.frames} == {chunk_ms * RATE // 1000 * 2}
    similarity = xcorr_similarity(played, rec.audio())
    print(f"{server.kind}: speech similarity {similarity:.5f} over {len(rec.frames)} frames")
    assert similarity >= minimum, f"{server.kind}: captured speech differs from what was played ({similarity:.4f})"
    duration = len(rec.frames) * chunk_ms / 1000
    assert 0 < len(rec.levels) <= duration * 10 + 2
    assert 0.1 < max(peak for _, peak in rec.levels) <= 1.0
    assert rec.problems == []
    return similarity


def test_list_sources_names_the_default_microphone(pulse_server: SoundServer) -> None:
    sources = {source.name: source for source in list_sources()}
    assert sources["mic"].is_default
    assert sources["mic"].description
    assert "spk.monitor" not in sources  # monitors of outputs are not microphones
    assert [s for s in sources.values() if s.is_default] == [sources["mic"]]


def test_list_sources_without_server_is_an_audio_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PULSE_SERVER", f"unix:{tmp_path}/none")
    with pytest.raises(AudioError, match="cannot connect"):
        list_sources()


def test_captured_speech_equals_played_speech_on_pulseaudio(pulse_server: SoundServer, tmp_path: Path) -> None:
    assert_speech_captured(pulse_server, tmp_path, minimum=0.99)


def test_captured_speech_equals_played_speech_on_pipewire(pipewire_server: SoundServer, tmp_path: Path) -> None:
    assert {s.name: s for s in list_sources()}["mic"].is_default
    assert_speech_captured(pipewire_server, tmp_path, minimum=0.95)


def test_switching_the_default_source_moves_the_capture(two_tones: SoundServer) -> None:
    rec = Recorder()

    async def main() -> None:
        async with capturing(rec, chunk_ms=20) as capture:
            await until(lambda: abs(rec.last_hz() - LOW_HZ) < 30, 5, "the low tone from mic")
            await in_thread(two_tones.set_default_source, "mic2")
            await until(lambda: capture.source_name == "mic2", 5, "the capture to follow to mic2")
            moved = time.monotonic()
            await until(lambda: rec.frames_since(moved) >= 15, 5, "frames from mic2")
            assert abs(rec.last_hz() - HIGH_HZ) < 30

    run(main())
    assert rec.sources == ["mic", "mic2"]
    assert {len(frame) for _, frame in rec.frames} == {960}
    gaps = np.diff([at for at, _ in rec.frames])
    assert gaps.max() < 0.25, f"frames stalled for {gaps.max():.3f} s around the switch"
    assert rec.problems == []


def test_while_only_streaming_the_capture_thread_sleeps(sound_server: SoundServer) -> None:
    """The event loop reads the stream itself (the capture thread lends it its mainloop): one wake-up a frame."""
    rec = Recorder()

    async def main() -> None:
        async with capturing(rec, chunk_ms=20):
            await until(partial(rec.has_frames, 10), 5, "frames")
            (thread,) = capture_threads()
            woken, count = _switches(thread), len(rec.frames)
            await until(partial(rec.has_frames, count + 50), 5, "a second of frames")
            # Reading them itself, the thread would have woken about 50 times.
            assert _switches(thread) - woken <= 2

    run(main())
    assert {len(frame) for _, frame in rec.frames} == {960}


def test_a_move_by_the_user_holds_until_the_default_changes(two_tones: SoundServer) -> None:
    rec = Recorder()

    async def main() -> None:
        async with capturing(rec, chunk_ms=20) as capture:
            await until(lambda: abs(rec.last_hz() - LOW_HZ) < 30, 5, "the low tone from mic")
            (stream,) = two_tones.source_outputs()
            await in_thread(two_tones.move_source_output, int(stream.split("\t")[0]), "mic2")
            await until(lambda: capture.source_name == "mic2", 5, "the capture to report the move")
            moved = time.monotonic()
            await until(lambda: rec.frames_since(moved) >= 15, 5, "frames from mic2")
            assert abs(rec.last_hz() - HIGH_HZ) < 30 and capture.source_name == "mic2"
            # The server keeps a stream moved by hand where it is; sttd follows the new default itself.
            await in_thread(two_tones.set_default_source, "spk.monitor")
            await until(lambda: capture.source_name == "spk.monitor", 5, "the capture to follow the default")
            followed = time.monotonic()
            await until(lambda: rec.frames_since(followed) >= 15, 5, "frames from spk.monitor")
            assert abs(rec.last_hz() - LOW_HZ) < 30

    run(main())
    assert rec.sources == ["mic", "mic2", "spk.monitor"]
    assert rec.problems == []


def test_a_named_source_that_goes_away_is_waited_for(two_tones: SoundServer) -> None:
    rec = Recorder()

    async def main() -> None:
        async with capturing(rec, source="mic2") as capture:
            await until(lambda: abs(rec.last_hz() - HIGH_HZ) < 30, 5, "the high tone from mic2")
            remap = _module_of(two_tones, "mic2")
            await in_thread(two_tones.remove_mic, remap, "mic2")
            await until(lambda: rec.problem() == "source 'mic2' is not available; waiting for it", 5, "the problem")
            assert capture.source_name == ""
            await in_thread(two_tones.add_remap, "mic2", "spk2")
            await until(lambda: rec.problem() == "" and capture.source_name == "mic2", 5, "mic2 to be taken back")
            back = time.monotonic()
            await until(lambda: rec.frames_since(back) >= 8, 5, "frames from mic2 again")
            assert abs(rec.last_hz() - HIGH_HZ) < 30

    run(main())
    assert rec.sources == ["mic2", "", "mic2"]


def test_removing_the_default_source_moves_to_the_new_default(two_tones: SoundServer) -> None:
    rec = Recorder()

    def new_default() -> str:
        name = two_tones.default_source()
        return name if name not in ("", "mic") else ""

    async def main() -> None:
        async with capturing(rec) as capture:
            await until(lambda: rec.frames_since(0) >= 5, 5, "frames from mic")
            await in_thread(two_tones.remove_mic, two_tones.mic_module, "mic")
            await until(new_default, 5, "the server to pick a new default source")
            await until(lambda: capture.source_name == new_default(), 5, "the capture to follow the new default")
            moved = time.monotonic()
            await until(lambda: rec.frames_since(moved) >= 5, 5, "frames from the new default")
            two_tones.mic_module = await asyncio.to_thread(two_tones.add_remap, "mic", "spk")
            await in_thread(two_tones.set_default_source, "mic")
            await until(lambda: capture.source_name == "mic", 5, "the capture to return to mic")
            back = time.monotonic()
            await until(lambda: rec.frames_since(back) >= 8, 5, "frames from mic again")
            assert abs(rec.last_hz() - LOW_HZ) < 30

    run(main())
    assert rec.sources[0] == "mic" and rec.sources[-1] == "mic"
    if two_tones.kind == "pulseaudio":
        # PulseAudio rescues the stream to the new default: no gap at all.
        assert "" not in rec.sources
        assert rec.problems == []
    else:
        # PipeWire ends the stream with its device; sttd opens one on the new default.
        assert rec.problems in ([], ["no audio source is available; waiting for one", ""])


def test_capture_survives_a_sound_server_restart(sound_server: SoundServer, tmp_path: Path) -> None:
    wav = speech_wav("Still listening after the restart.", tmp_path / "speech.wav")
    rec = Recorder()

    async def main() -> None:
        async with capturing(rec) as capture:
            await until(lambda: rec.frames_since(0) >= 5, 5, "frames")
            await in_thread(sound_server.kill)
            await until(lambda: (rec.problem() or "").startswith("lost the sound server"), 5, "the lost server")
            assert capture.source_name == ""
            await in_thread(sound_server.restart)
            await until(lambda: rec.problem() == "" and capture.source_name == "mic", 10, "the capture to resume")
            resumed = time.monotonic()
            await in_thread(sound_server.play, wav)
            ended = time.monotonic()
            await until(lambda: rec.frames_since(ended) >= 8, 5, "the tail of the speech")
            similarity = xcorr_similarity(wav_samples(wav), rec.audio(since=resumed))
            print(f"{sound_server.kind} after restart: speech similarity {similarity:.5f}")
            assert similarity >= 0.99

    run(main())
    # While the fresh server is being set up its default may briefly be spk.monitor: followed too.
    assert rec.sources[:2] == ["mic", ""] and rec.sources[-1] == "mic"


def test_a_muted_or_suspended_source_is_reported(pulse_server: SoundServer) -> None:
    rec = Recorder()

    async def main() -> None:
        async with capturing(rec):
            for command, problem in [("set-source-mute", "muted"), ("suspend-source", "suspended")]:
                await in_thread(pulse_server.pactl, command, "mic", "1")
                await until(partial(rec.problem_is, f"source 'mic' is {problem}"), 5, problem)
                await in_thread(pulse_server.pactl, command, "mic", "0")
                await until(lambda: rec.problem() == "", 5, "the problem to clear")
            frames = len(rec.frames)
            await until(lambda: len(rec.frames) >= frames + 5, 5, "frames after the resume")

    run(main())
    assert rec.problems == ["source 'mic' is muted", "", "source 'mic' is suspended", ""]


def test_stop_is_clean_and_idempotent(pulse_server: SoundServer) -> None:
    open_fds = len(os.listdir("/proc/self/fd"))

    async def main() -> None:
        for _ in range(3):
            rec = Recorder()
            capture = Capture(source="", chunk_ms=40, loop=asyncio.get_running_loop(), on_frame=rec.on_frame)
            await capture.start()
            assert capture_threads()
            assert "sttd" in pulse_server.clients()  # the default client name
            await until(partial(rec.has_frames, 3), 5, "frames")
            await capture.stop()
            await capture.stop()
            assert capture.source_name == ""
            assert not capture_threads()
            count = len(rec.frames)
            await asyncio.sleep(0.2)  # nothing may arrive after stop() returned
            assert len(rec.frames) == count

    run(main())
    assert len(os.listdir("/proc/self/fd")) == open_fds
    wait_until(lambda: "sttd" not in pulse_server.clients(), 5, "the server to drop the sttd client")
    assert pulse_server.source_outputs() == []


def test_start_fails_cleanly(pulse_server: SoundServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(AudioError, match="source 'nope' is not available"):
            await Capture(source="nope", chunk_ms=40, loop=loop, on_frame=print).start()
        monkeypatch.setenv("PULSE_SERVER", f"unix:{tmp_path}/none")
        with pytest.raises(AudioError, match="cannot connect"):
            await Capture(source="", chunk_ms=40, loop=loop, on_frame=print).start()

    run(main())
    assert not capture_threads()
    assert pulse_server.source_outputs() == []


def test_start_is_safe_to_cancel_or_stop_midway(pulse_server: SoundServer) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        capture = Capture(source="", chunk_ms=40, loop=loop, on_frame=lambda frame: None)
        starting = asyncio.create_task(capture.start())
        await asyncio.sleep(0)  # the capture thread is launched; start() waits for it
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert not capture_threads()

        starting = asyncio.create_task(capture.start())
        await asyncio.sleep(0)
        began = time.monotonic()
        await capture.stop()
        (outcome,) = await asyncio.gather(starting, return_exceptions=True)
        assert outcome is None or isinstance(outcome, AudioError)  # whichever came first
        assert time.monotonic() - began < 2
        assert not capture_threads()

    run(main())
    assert pulse_server.source_outputs() == []


def _module_of(server: SoundServer, source: str) -> int:
    out = server.pactl("list", "short", "modules") or ""
    for line in out.splitlines():
        index, name, args = [*line.split("\t"), "", ""][:3]
        if name == "module-remap-source" and f"source_name={source}" in args:
            return int(index)
    raise AssertionError(f"no module makes {source}")


def _switches(thread: threading.Thread) -> int:
    """Context switches of a thread so far: how often it was woken."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return sum(int(line.split()[1]) for line in status.splitlines() if line.startswith("voluntary_ctxt_switches"))


def test_a_paused_capture_stays_connected_sleeps_and_records_again(pulse_server: SoundServer, tmp_path: Path) -> None:
    """warm()/pause() keep the connection (Start then only opens a stream); parked, the thread is never woken."""
    wav = speech_wav("one two three four five six seven eight nine ten", tmp_path / "count.wav")

    async def main() -> None:
        rec = Recorder()
        capture = Capture(source="", chunk_ms=20, loop=asyncio.get_running_loop(), on_frame=rec.on_frame)
        capture.warm()
        await in_thread(wait_until, lambda: "sttd" in pulse_server.clients(), 5, "the warm connection")
        assert pulse_server.source_outputs() == []  # connected, not recording
        (thread,) = capture_threads()
        player = pulse_server.play(wav, wait=False)
        try:
            for _ in range(2):
                await capture.start()
                await until(partial(rec.has_frames, len(rec.frames) + 10), 5, "frames")
                assert len(pulse_server.source_outputs()) == 1
                await capture.pause()
                count = len(rec.frames)
                await in_thread(wait_until, lambda: pulse_server.source_outputs() == [], 5, "the stream to close")
                woken = _switches(thread)
                # Other clients come and go (each pactl) while sttd is parked: nothing of it wakes the thread.
                for _ in range(3):
                    assert "sttd" in pulse_server.clients() and pulse_server.source_outputs() == []
                assert _switches(thread) == woken
                assert capture.source_name == ""
                assert len(rec.frames) == count  # nothing after pause() returned
                assert capture_threads() == [thread]
        finally:
            player.kill()
        await capture.stop()
        assert not capture_threads()

    run(main())
    wait_until(lambda: "sttd" not in pulse_server.clients(), 5, "the server to drop the sttd client")
