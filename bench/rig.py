"""The rig of a bench run (bus, sound server, Realtime server, probes) and the clients it drives."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from tests.bus import SessionBus
from tests.daemon import Sttd
from tests.sound import SoundServer

from .harness import (
    RATE,
    REPO,
    Probe,
    Reference,
    TimedServer,
    children,
    sleep_until,
    stop_group,
    wait_for,
)
from .measure import Piece, align, find
from .plan import Plan, log
from .stimuli import Stimulus

# --------------------------------------------------------------------------- the rig


class Rig:
    """Bus, sound server, Realtime server, reference recorder and D-Bus probe for one run."""

    def __init__(self, plan: Plan, directory: Path) -> None:
        self.plan = plan
        self.dir = directory
        self.rng = np.random.default_rng(8)
        self.paplay_latency_s = 0.01
        """Launch of paplay → its first sample in the microphone; measured by the first click run."""
        self._closers: list[Callable[[], None]] = []
        self.daemons: list[Daemon] = []
        self.groups: list[subprocess.Popen[bytes]] = []
        """Process groups started for the baselines."""
        self.bus = SessionBus(directory / "bus")
        self._closers.append(self.bus.stop)
        (directory / "pulse").mkdir()
        self.sound = SoundServer("pulseaudio", directory / "pulse")
        self._closers.append(self.sound.close)
        self.sound.start()
        self.server = TimedServer()
        self.server.start()
        self._closers.append(self.server.stop)
        self._reference: Reference | None = None
        self._closers.append(self._stop_reference)
        self.probe = Probe({**os.environ, **self.bus.env()})
        self._closers.append(self.probe.close)

    def close(self) -> None:
        for daemon in self.daemons:  # before the bus and the sound server they use go away
            if daemon.sttd.process.poll() is None:
                daemon.terminate()
        for group in self.groups:
            stop_group(group, signal.SIGKILL, 5)
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception as exc:  # teardown goes on; the run's result is already written
                log(f"teardown: {exc!r}")

    @property
    def reference(self) -> Reference:
        assert self._reference is not None, "the reference recorder is not running (use Rig.observed)"
        return self._reference

    @contextlib.contextmanager
    def observed(self) -> Iterator[Reference]:
        """Run the reference recorder for the block.

        It asks the microphone for 5 ms periods, so while it runs every client
        gets audio at that pace: CPU is measured without it.
        """
        self._reference = Reference(self.sound.env)
        try:
            yield self._reference
        finally:
            self._stop_reference()

    def _stop_reference(self) -> None:
        if self._reference is not None:
            self._reference.close()
            self._reference = None

    def settle(self, seconds: float) -> None:
        """Let things settle (a pause scaled by the plan)."""
        time.sleep(seconds * self.plan.settle)

    def sessions_since(self, first: int) -> list[int]:
        return list(range(first, self.server.connection_count))

    def window(self, r_lo: int, r_hi: int | None = None) -> tuple[np.ndarray, int]:
        """Reference samples [r_lo, r_hi) (clipped at 0) and where they start."""
        lo = max(0, r_lo)
        return self.reference.samples(lo, r_hi), lo

    def locate(self, stimulus: Stimulus, reference: np.ndarray, base: int) -> int:
        """Where a played stimulus starts in the microphone's stream (its first 250 ms, checked sample by sample)."""
        head = stimulus.samples[: RATE // 4]
        lag = find(head, reference)
        got = reference[lag : lag + len(head)]
        if lag < 0 or len(got) < len(head) or np.max(np.abs(got.astype(np.int32) - head)) > 2:
            raise RuntimeError(f"{stimulus.path.name} is not in the microphone's stream as played")
        return base + lag

    def pieces(
        self, sessions: list[int], reference: np.ndarray, base: int, since: float = 0.0
    ) -> dict[int, list[Piece]]:
        """Each session's audio placed in the reference (from the first frame that arrived after ``since``)."""
        found = {}
        for s in sessions:
            start = next((a.start // 2 for a in self.server.arrivals(s) if a.t >= since), None)
            found[s] = [] if start is None else align(self.server.session_pcm(s), reference, base, start)
        return found


class Daemon:
    """``sttd`` (the installed console script) with its own config, hooks log and state."""

    def __init__(self, rig: Rig, name: str, *, chunk_ms: int = 40, local_model: Path | None = None) -> None:
        self.rig = rig
        self.dir = rig.dir / name
        self.dir.mkdir()
        self.hooks_log = self.dir / "hooks.log"
        self.hooks_log.touch()
        self.config = self.dir / "config.toml"
        self.local_model = local_model
        self.chunk_ms = chunk_ms
        self.preroll_ms = 0
        self.hooks = True
        self.own_vad = False
        """sttd's own voice detection (the default model) instead of the service's."""
        self.write_config()
        env = {
            **rig.bus.env(),
            "PULSE_SERVER": rig.sound.server,
            "OPENAI_API_KEY": rig.server.api_key if local_model is None else "",
            "HF_HUB_OFFLINE": "1",
        }
        self.sttd = Sttd(self.dir, env, self.config, extra_args=("--log-level", "INFO"))
        rig.daemons.append(self)
        self.sttd.wait_ready(30)

    def write_config(self) -> None:
        # The hook records its own start: bash's $EPOCHREALTIME (CLOCK_REALTIME, microseconds).
        stamp = 'printf "%s %s\\n" "$STTD_ITEM_ID" "$EPOCHREALTIME" >> "$0"'
        text = f'[realtime]\nurl = "{self.rig.server.url}"\n'
        text += 'engine = "local"\n' if self.local_model else 'engine = "openai"\n'
        # The service's turn detection, as the SDK baseline uses: the figures compare like with like.
        # sttd's own (gpt-live-transcribe, the default model) for the own-VAD CPU figure; its turns
        # and decisions are measured by bench/turns.py and bench/vad.py.
        text += 'model = "gpt-live-transcribe"\n' if self.own_vad else 'model = "gpt-transcribe"\n'
        text += f"\n[audio]\nchunk_ms = {self.chunk_ms}\npreroll_ms = {self.preroll_ms}\n"
        if self.hooks:
            text += f'\n[hooks]\ntranscript = ["bash", "-c", \'{stamp}\', "{self.hooks_log}"]\n'
        if self.local_model:
            text += f'\n[local]\nmodel = "{self.local_model}"\n'
        self.config.write_text(text, encoding="utf-8")

    def reload(
        self,
        chunk_ms: int | None = None,
        preroll_ms: int | None = None,
        hooks: bool | None = None,
        own_vad: bool | None = None,
    ) -> None:
        """SIGHUP with a changed configuration; returns once sttd says it reloaded."""
        self.own_vad = self.own_vad if own_vad is None else own_vad
        self.chunk_ms = self.chunk_ms if chunk_ms is None else chunk_ms
        self.preroll_ms = self.preroll_ms if preroll_ms is None else preroll_ms
        self.hooks = self.hooks if hooks is None else hooks
        self.write_config()
        count = self.sttd.log.count("configuration reloaded")
        self.sttd.process.send_signal(signal.SIGHUP)
        wait_for(lambda: self.sttd.log.count("configuration reloaded") > count, 10, "sttd to reload")

    @property
    def pid(self) -> int:
        return self.sttd.process.pid

    def hook_stamps(self) -> dict[str, float]:
        stamps = {}
        for line in self.hooks_log.read_text().splitlines():
            item, _, real = line.partition(" ")
            if real:
                stamps[item] = float(real.replace(",", "."))
        return stamps

    def terminate(self) -> None:
        try:
            code = self.sttd.terminate(20)
        except subprocess.TimeoutExpired:
            self.sttd.kill()
            code = -9
        if code != 0:
            log(f"sttd exited with {code}; see {self.sttd.log_path}")


# --------------------------------------------------------------------------- clients


class Client:
    """What the measurements drive: something that starts and stops sending the microphone."""

    label = ""

    def start(self, at: float = 0.0) -> float:
        """Start (at ``at`` if given); returns the time the start was asked for."""
        raise NotImplementedError

    def stop(self) -> float:
        """Stop and wait until stopped; returns the time the stop was asked for."""
        raise NotImplementedError

    def pids(self) -> dict[str, int]:
        raise NotImplementedError

    def transcripts(self, since: float) -> int:
        raise NotImplementedError


class SttdClient(Client):
    label = "sttd"

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.probe = daemon.rig.probe

    def start(self, at: float = 0.0) -> float:
        sleep_until(at - self.probe.lag)  # the probe takes a moment to pass the call on
        return float(self.probe.call("Start")["t_sent"])

    def stop(self) -> float:
        mark = self.probe.mark()
        t = float(self.probe.call("Stop")["t_sent"])
        self.probe.wait_state("idle", 20, mark)
        return t

    def pids(self) -> dict[str, int]:
        return {"sttd": self.daemon.pid}

    def transcripts(self, since: float) -> int:
        return sum(1 for e in self.probe.since(0, "transcript") if e["final"] and e["t"] >= since)


class BaselineClient(Client):
    """``bench/baseline_<kind>.py`` in a process group of its own; started per dictation, stopped by SIGINT."""

    def __init__(self, rig: Rig, kind: str) -> None:
        self.rig = rig
        self.label = kind
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.out = self.err = Path()

    def start(self, at: float = 0.0) -> float:
        sleep_until(at)
        url = self.rig.server.url
        if self.label == "openai":
            url = url.split("/realtime")[0]
        argv = [sys.executable, str(REPO / "bench" / f"baseline_{self.label}.py"), "--url", url]
        argv += ["--api-key", self.rig.server.api_key, "--source", "mic"]
        self.runs += 1
        self.out = self.rig.dir / f"{self.label}-{self.runs}.out"
        self.err = self.rig.dir / f"{self.label}-{self.runs}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            t = time.monotonic()
            self.proc = subprocess.Popen(
                argv, env=self.rig.sound.env, stdout=out, stderr=err, start_new_session=True, cwd=REPO
            )
        self.rig.groups.append(self.proc)
        return t

    def stop(self) -> float:
        t = time.monotonic()
        if self.proc is not None:
            stop_group(self.proc, signal.SIGINT, 10)
        return t

    def pids(self) -> dict[str, int]:
        assert self.proc is not None
        found = {"python": self.proc.pid}
        for kid in children(self.proc.pid):
            found["parec"] = kid
        return found

    def main_time(self) -> float | None:
        found = re.search(r"bench: main ([0-9.]+)", self.err.read_text(errors="replace"))
        return float(found.group(1)) if found else None

    def transcripts(self, since: float) -> int:
        return len(self.out.read_text(errors="replace").splitlines())
