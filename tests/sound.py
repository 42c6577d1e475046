"""Throwaway sound servers, virtual microphones and speech for tests.

Fixtures ``pulse_server`` (PulseAudio) and ``pipewire_server`` (PipeWire with
WirePlumber and pipewire-pulse on a private session bus) each run a server of
their own in a temporary directory, with a null sink ``spk`` (24 kHz mono) and
a virtual microphone ``mic`` (a remap of ``spk.monitor``) as the default
source; ``PULSE_SERVER`` points at it for the test. Whatever is played into
``spk`` (paced in real time by the server) is heard on ``mic``.

Every wait has a deadline; every process is killed on teardown; a missing
binary fails the test (CI counts skips as failures).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from .bus import SessionBus, require, wait_until

RATE = 24000
"""The rate of the virtual devices and of the wavs made here."""

Kind = Literal["pulseaudio", "pipewire"]

_BINARIES: dict[Kind, tuple[str, ...]] = {
    "pulseaudio": ("pulseaudio", "pactl", "paplay"),
    "pipewire": ("pipewire", "wireplumber", "pipewire-pulse", "dbus-daemon", "pactl", "paplay"),
}


class SoundServer:
    """A sound server of its own in ``directory``, driven with the real ``pactl``/``paplay``.

    ``server`` is the ``PULSE_SERVER`` value, ``env`` a full environment for
    subprocesses that should talk to it.
    """

    def __init__(self, kind: Kind, directory: Path, bus: SessionBus | None = None) -> None:
        for binary in _BINARIES[kind]:
            require(binary)
        self.kind = kind
        self.dir = directory
        self._own_bus = bus is None and kind == "pipewire"
        self.bus = SessionBus(directory / "bus") if self._own_bus else bus
        native = directory / ("native" if kind == "pulseaudio" else "pulse/native")
        self.server = f"unix:{native}"
        self.env = {
            **os.environ,
            "HOME": str(directory),
            "XDG_RUNTIME_DIR": str(directory),
            "PULSE_SERVER": self.server,
        }
        self.env.pop("PULSE_COOKIE", None)
        if self.bus is not None:
            self.env.update(self.bus.env())
        self._daemons: list[subprocess.Popen[bytes]] = []
        self._players: list[subprocess.Popen[bytes]] = []
        self.spk_module = self.mic_module = -1

    # -- lifecycle --

    def start(self, timeout: float = 15) -> None:
        """Start the server and set up ``spk`` and ``mic`` (the default source)."""
        if self.kind == "pulseaudio":
            self._spawn(
                "pulseaudio",
                "-n",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--disallow-exit",
                "--use-pid-file=no",
                "-L",
                f"module-native-protocol-unix socket={self.dir / 'native'} auth-anonymous=1",
            )
        else:
            self._spawn("pipewire")
            wait_until(lambda: _accepts(self.dir / "pipewire-0"), timeout, "pipewire to listen")
            self._spawn("wireplumber")
            self._spawn("pipewire-pulse")
        wait_until(self._answers, timeout, f"{self.kind} to answer on {self.server}")
        self.spk_module, self.mic_module = self.add_mic("mic", "spk")
        self.set_default_source("mic", timeout)

    def kill(self) -> None:
        """Kill the server (SIGKILL, no goodbye to clients) and wait for it to be gone."""
        for process in reversed(self._daemons):
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(10)
        self._daemons.clear()

    def restart(self, timeout: float = 15) -> None:
        """A fresh server on the same socket, with ``spk`` and ``mic`` again."""
        self.kill()
        self.start(timeout)

    def close(self) -> None:
        """Teardown: kill players, the server and a bus of our own."""
        for player in self._players:
            if player.poll() is None:
                player.kill()
            player.wait(10)
        self._players.clear()
        self.kill()
        if self._own_bus and self.bus is not None:
            self.bus.stop()

    def _spawn(self, *argv: str) -> None:
        log = (self.dir / f"{argv[0]}.log").open("ab")
        with log:
            self._daemons.append(
                subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.dir)
            )

    def _answers(self) -> bool:
        for process in self._daemons:
            if process.poll() is not None:
                raise AssertionError(f"{process.args!r} exited with {process.returncode}; see {self.dir}")
        return self.pactl("info", check=False) is not None

    # -- pactl --

    def pactl(self, *args: str, check: bool = True, timeout: float = 10) -> str | None:
        """Run pactl against this server; its stdout, or None on failure when ``check`` is false."""
        done = subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            if check:
                raise AssertionError(f"pactl {' '.join(args)} failed: {done.stderr.strip()}")
            return None
        return done.stdout

    def load_module(self, name: str, *args: str) -> int:
        out = self.pactl("load-module", name, *args)
        assert out is not None
        return int(out.strip())

    def unload_module(self, index: int) -> None:
        self.pactl("unload-module", str(index))

    def add_mic(self, name: str, sink: str) -> tuple[int, int]:
        """A null sink ``sink`` and a virtual microphone ``name`` hearing it; returns both module indexes."""
        sink_module = self.load_module(
            "module-null-sink", f"sink_name={sink}", f"rate={RATE}", "channels=1", "norewinds=1"
        )
        return sink_module, self.add_remap(name, sink)

    def add_remap(self, name: str, sink: str) -> int:
        """Only the microphone ``name`` hearing ``sink``; returns its module index."""
        index = self.load_module("module-remap-source", f"master={sink}.monitor", f"source_name={name}")
        wait_until(lambda: name in self.sources(), 10, f"source {name} to appear")
        return index

    def remove_mic(self, module: int, name: str) -> None:
        """Unload a microphone's module and wait until the server no longer lists ``name``."""
        self.unload_module(module)
        wait_until(lambda: name not in self.sources(), 10, f"source {name} to disappear")

    def sources(self) -> list[str]:
        out = self.pactl("list", "short", "sources") or ""
        return [line.split("\t")[1] for line in out.splitlines() if line.strip()]

    def default_source(self) -> str:
        return (self.pactl("get-default-source") or "").strip()

    def set_default_source(self, name: str, timeout: float = 10) -> None:
        """Make ``name`` the default and wait until the server says so.

        Asked again until then: pipewire-pulse answers "Not supported" until WirePlumber is up.
        """

        def done() -> bool:
            self.pactl("set-default-source", name, check=False)
            return self.default_source() == name

        wait_until(done, timeout, f"{name} to become the default source", interval=0.1)

    def clients(self) -> list[str]:
        """``application.name`` of each connected client (pactl's own connection included)."""
        listing = json.loads(self.pactl("--format=json", "list", "clients") or "[]")
        return [client.get("properties", {}).get("application.name", "") for client in listing]

    def move_source_output(self, index: int, source: str, timeout: float = 10) -> None:
        """``pactl move-source-output``, asked again until the server shows it done.

        PipeWire under load sometimes acknowledges a move and does not carry it out.
        """

        def moved() -> bool:
            self.pactl("move-source-output", str(index), source)
            return self.source_of_output(index) == source

        wait_until(moved, timeout, f"source output {index} to move to {source}", interval=0.5)

    def source_of_output(self, index: int) -> str:
        """The name of the source a source output records from."""
        names = {}
        for line in (self.pactl("list", "short", "sources") or "").splitlines():
            number, name = line.split("\t")[:2]
            names[number] = name
        for line in (self.pactl("list", "short", "source-outputs") or "").splitlines():
            fields = line.split("\t")
            if fields[0] == str(index):
                return names.get(fields[1], "")
        return ""

    def source_outputs(self) -> list[str]:
        """Record streams of clients (those of modules, like a remap source's, left out)."""
        out = self.pactl("list", "short", "source-outputs") or ""
        return [line for line in out.splitlines() if line.count("\t") >= 2 and line.split("\t")[2] != "-"]

    # -- playing --

    def play(
        self, wav: Path, device: str = "spk", *, wait: bool = True, timeout: float = 60
    ) -> subprocess.Popen[bytes]:
        """``paplay -d device wav``, paced in real time; waits for the end unless ``wait`` is false.

        A background player is killed at teardown if still running.
        """
        player = subprocess.Popen(["paplay", "-d", device, str(wav)], env=self.env, stderr=subprocess.PIPE)
        self._players.append(player)
        if wait:
            _, err = player.communicate(timeout=timeout)
            assert player.returncode == 0, f"paplay {wav} failed: {err.decode(errors='replace')}"
        return player


def _accepts(path: Path) -> bool:
    """Whether a unix socket at ``path`` takes connections (a killed server leaves its file behind)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _short_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    # A unix socket path must stay under 108 bytes; deep pytest temp dirs may not.
    path = tmp_path_factory.mktemp(name)
    if len(str(path)) > 60:
        path = Path(tempfile.mkdtemp(prefix=f"sttd-{name}-", dir="/tmp"))
    return path


def _serve(
    kind: Kind, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SoundServer]:
    server = SoundServer(kind, _short_dir(tmp_path_factory, kind))
    try:
        server.start()
        monkeypatch.setenv("PULSE_SERVER", server.server)
        yield server
    finally:
        server.close()


@pytest.fixture
def pulse_server(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoundServer]:
    """A PulseAudio of the test's own: ``spk`` and ``mic`` (default); ``PULSE_SERVER`` set."""
    yield from _serve("pulseaudio", tmp_path_factory, monkeypatch)


@pytest.fixture
def pipewire_server(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoundServer]:
    """PipeWire + WirePlumber + pipewire-pulse on a private bus: ``spk`` and ``mic``; ``PULSE_SERVER`` set."""
    yield from _serve("pipewire", tmp_path_factory, monkeypatch)


# --- signals ------------------------------------------------------------------------------------


def speech_wav(text: str, path: Path) -> Path:
    """espeak-ng speaking ``text``, written to ``path`` as a 24 kHz mono s16 wav."""
    raw = path.with_suffix(".espeak.wav")
    subprocess.run(
        [require("espeak-ng"), "-v", "en-us", "-s", "175", "-g", "5", "-w", str(raw), text], check=True, timeout=30
    )
    subprocess.run(
        [require("sox"), str(raw), "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer", str(path)],
        check=True,
        timeout=30,
    )
    raw.unlink()
    return path


VOICE_LEVEL = 300
"""A sample louder than this is voice (espeak-ng's silences are digital zeros)."""


def voiced(texts: tuple[str, ...], directory: Path) -> dict[str, np.ndarray]:
    """Each text as espeak-ng says it (24 kHz samples), its leading and trailing silence cut."""
    out = {}
    for i, text in enumerate(texts):
        samples = wav_samples(speech_wav(text, directory / f"voice-{i}.wav"))
        loud = np.flatnonzero(np.abs(samples) > VOICE_LEVEL)
        out[text] = samples[loud[0] : loud[-1] + 1]
    return out


def tone_wav(path: Path, hz: float, seconds: float, amplitude: float = 0.5) -> Path:
    """A sine tone as a 24 kHz mono s16 wav."""
    t = np.arange(int(seconds * RATE)) / RATE
    write_wav(path, (np.sin(2 * np.pi * hz * t) * amplitude * 32767).astype(np.int16))
    return path


def write_wav(path: Path, samples: np.ndarray) -> Path:
    """Write int16 mono samples as a 24 kHz wav."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(np.asarray(samples, dtype="<i2").tobytes())
    return path


def wav_samples(path: Path) -> np.ndarray:
    """Any wav as 24 kHz mono int16 samples (sox converts what is not already so)."""
    with wave.open(str(path), "rb") as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (RATE, 1, 2):
            return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").copy()
    raw = subprocess.run(
        [require("sox"), str(path), "-t", "raw", "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer", "-"],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    return np.frombuffer(raw, dtype="<i2").copy()


def pcm(frames: list[bytes] | bytes) -> np.ndarray:
    """s16le bytes (or a list of frames) as int16 samples."""
    data = b"".join(frames) if isinstance(frames, list) else frames
    return np.frombuffer(data, dtype="<i2")


def best_lag(reference: np.ndarray, received: np.ndarray) -> int:
    """Where ``reference`` starts inside ``received`` (in samples; negative if it started earlier)."""
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(received, dtype=np.float64)
    size = 1 << (len(a) + len(b) - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    lag = int(np.argmax(corr))
    return lag - size if lag > size - len(a) else lag


def xcorr_similarity(reference: np.ndarray, received: np.ndarray) -> float:
    """Normalised cross-correlation of ``received`` with ``reference`` at their best alignment.

    1.0 means ``received`` holds exactly the ``reference`` waveform (at any gain).
    The norm is that of the whole reference, so a part of it that is missing
    from ``received`` lowers the score.
    """
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(received, dtype=np.float64)
    lag = best_lag(a, b)
    start_a, start_b = max(0, -lag), max(0, lag)
    length = min(len(a) - start_a, len(b) - start_b)
    if length <= 0:
        return 0.0
    seg_a, seg_b = a[start_a : start_a + length], b[start_b : start_b + length]
    denominator = float(np.sqrt(np.dot(a, a) * np.dot(seg_b, seg_b)))
    return float(np.dot(seg_a, seg_b) / denominator) if denominator else 0.0


def dominant_hz(samples: np.ndarray) -> float:
    """The strongest frequency in a stretch of 24 kHz samples."""
    spectrum = np.abs(np.fft.rfft(np.asarray(samples, dtype=np.float64) * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * RATE / len(samples))
