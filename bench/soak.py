"""``python -m bench.soak``: one long dictation through everything a day throws at sttd, and what it leaves behind.

sttd (the installed console script, as a subprocess) dictates without a
break for ``--seconds`` (600 by default; CI runs 60 in tests/test_soak.py)
while espeak-ng sentences are played into the virtual microphone, each
followed by a pause. At the first pause ``disrupt_every_s`` after the
previous disruption (after every sentence in runs under 5 minutes), in turn,
the rig:

* **drops** the websocket (TCP abort, no close frame);
* **drops mid-utterance** (close 1011 400 ms into the next sentence);
* **rolls the session over** as the service does at its time limit: an
  ``error`` (``session_expired``) and close 1001 "maximum duration". sttd's
  own planned rollover comes only after 55 minutes of one session, out of
  reach here; this is the service-side end of a session, which sttd must
  follow with a new one without losing the sentence around it;
* **restarts the sound server** (PulseAudio killed with SIGKILL and started
  again on the same socket);
* **changes the default source** to a second microphone, back, and to the
  second again (so the sound server restarts while sttd is on the second
  one), and plays into whichever is the default;
* **floods the hooks**: the server completes ``flood_turns`` turns 10 ms
  apart, each a final ``Transcript`` and a transcript hook that takes 50 ms.

Meanwhile a D-Bus client in its own process (``--poll-level``, this module)
reads ``Level`` 100 times a second, ``sttctl listen --json`` collects every
signal, and the sttd process is sampled every few seconds: RSS, open file
descriptors (by kind), threads and child processes. Every fifth sentence
ends with the trigger word "send", so the pending text is sent and cleared
as a user would.

Every sentence gets a scripted transcript ``soak sentence NNNN`` from the
test server (queued just before it is played), so "every spoken sentence
transcribed" is exact: the final transcripts, in order, are the sentences
played, each once.

The verdict: growth after warm-up is the median of the last quarter of the
samples minus the median of the first quarter after warm-up, for RSS, fds
and threads. Writes ``soak-<date>.json`` to ``--out`` (bench/results by
default): the samples, the schedule that ran, what sttd logged at WARNING
and above, and the verdict. The Level poller, the sampler and the verdict are
:mod:`bench.soak_probes`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.bus import SessionBus, wait_until
from tests.daemon import Listener, Sttd, daemon_env, write_config
from tests.realtime_rules import CLOSE_GOING_AWAY, MAX_DURATION_MESSAGE
from tests.realtime_server import FakeRealtimeServer
from tests.sound import SoundServer, speech_wav

from .harness import REPO
from .plan import ENGINE_SENTENCES
from .soak_probes import BOUNDS, LevelPoller, Sampler, poll_level_main, verdict

SENTENCES = ENGINE_SENTENCES
DISRUPTIONS = (
    "drop",
    "source_change",
    "hook_flood",
    "rollover",
    "source_change",
    "drop_mid_utterance",
    "source_change",
    "sound_restart",
)
"""In turn. Three source changes a round: to mic2, back to mic, to mic2 again, so the sound server
restarts while sttd records from the second microphone and must follow the new server's default."""
SENTENCE_RE = re.compile(r"soak sentence (\d{4})")
HOOK_SCRIPT = 'cat >/dev/null; sleep 0.05; printf "%s %s\\n" "$STTD_EVENT" "$STTD_ITEM_ID" >> "$0"'
LOG_LINE_RE = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b")
TIMESTAMP_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")


@dataclass(frozen=True)
class Plan:
    """How long, and how often things happen."""

    seconds: float
    """Dictation time; disruptions and sentences stop then, and the rig waits for the last transcripts."""
    sample_s: float
    """Interval between samples of the sttd process."""
    warmup_s: float
    """Samples before this are left out of the verdict (imports, first connections, first hooks)."""
    disrupt_every_s: float
    """A disruption at the first pause after this long since the previous one."""
    pause_s: float = 1.4
    """Silence after each sentence (sttd's own VAD commits after 500 ms of it)."""
    flood_turns: int = 60
    transcript_deadline_s: float = 20.0
    """How long a spoken sentence may take to come back as a final transcript before it counts as lost."""


def plan_for(seconds: float) -> Plan:
    if seconds >= 300:
        return Plan(seconds=seconds, sample_s=3.0, warmup_s=60.0, disrupt_every_s=20.0)
    # Short runs: a disruption after every sentence, so that each kind comes at least once.
    return Plan(seconds=seconds, sample_s=1.5, warmup_s=min(15.0, seconds / 4), disrupt_every_s=0.0)


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the run


@dataclass
class Record:
    """What happened during the run (the JSON's ``events`` and counts)."""

    spoken: list[int] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    flood_items: list[str] = field(default_factory=list)


class Soak:
    """The rig (bus, PulseAudio, test server, sttd, listener, Level poller) and the schedule."""

    def __init__(self, plan: Plan, directory: Path) -> None:
        self.plan = plan
        self.dir = directory
        self.record = Record()
        self._closers: list[Callable[[], None]] = []
        self.bus = SessionBus(directory / "bus")
        self._closers.append(self.bus.stop)
        (directory / "pulse").mkdir()
        self.sound = SoundServer("pulseaudio", directory / "pulse")
        self._closers.append(self.sound.close)
        self.sound.start()
        self.sound.add_mic("mic2", "spk2")
        self.sink = "spk"
        self.server = FakeRealtimeServer()
        self.server.start()
        self._closers.append(self.server.stop)
        self.hooks_log = directory / "hooks.log"
        self.hooks_log.touch()
        hook = f'["bash", "-c", {json.dumps(HOOK_SCRIPT)}, "{self.hooks_log}"]'
        config = write_config(
            directory / "config.toml", self.server.url, extra=f"\n[hooks]\ntranscript = {hook}\nsend = {hook}\n"
        )
        self.sttd = Sttd(
            directory / "sttd", daemon_env(self.bus, self.sound, self.server), config, ("--log-level", "INFO")
        )
        self._closers.append(self.sttd.kill)
        self.sttd.wait_ready(30)
        self.listener = Listener(self.sttd)
        self._closers.append(self.listener.close)
        self.poller = LevelPoller({**os.environ, **self.bus.env()})
        self.poller_result: dict[str, Any] = {}
        self._closers.append(self._close_poller)
        self.wavs = [speech_wav(text, directory / f"sentence-{i}.wav") for i, text in enumerate(SENTENCES)]
        self.t0 = time.monotonic()
        self.flood_rounds = 0

    def _close_poller(self) -> None:
        if not self.poller_result:
            self.poller_result = self.poller.close()

    def close(self) -> None:
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception as exc:  # teardown goes on; the result is already taken
                log(f"teardown: {exc!r}")

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def event(self, kind: str, **details: Any) -> None:
        self.record.events.append({"t": self.now(), "kind": kind, **details})
        log(f"{kind} {details if details else ''}")

    def problem(self, text: str) -> None:
        self.record.problems.append(f"{self.now():.1f} s: {text}")
        log(f"PROBLEM: {text}")

    # -- what the listener saw

    def sentence_finals(self) -> list[int]:
        return [int(m.group(1)) for text in self.listener.finals() if (m := SENTENCE_RE.search(text))]

    def wait_transcribed(self, what: str) -> bool:
        """Wait until every sentence spoken so far came back as a final transcript."""
        want = len(self.record.spoken)
        try:
            wait_until(lambda: len(self.sentence_finals()) >= want, self.plan.transcript_deadline_s, what, 0.05)
        except AssertionError:
            self.problem(f"{what}: {len(self.sentence_finals())} of {want} sentences transcribed")
            return False
        return True

    # -- speaking

    def speak(self, n: int) -> None:
        text = f"soak sentence {n:04d}" + (" send" if n % 5 == 4 else "")
        self.server.script([text])
        self.record.spoken.append(n)
        self.sound.play(self.wavs[n % len(self.wavs)], self.sink, timeout=30)
        time.sleep(self.plan.pause_s)

    # -- disruptions

    def capture_source(self) -> str:
        """The source sttd's record stream is on ("" when it has none)."""
        for line in self.sound.source_outputs():
            return self.sound.source_of_output(int(line.split("\t")[0]))
        return ""

    def wait_capture(self, source: str, what: str) -> None:
        try:
            wait_until(lambda: self.capture_source() == source, 15, what, 0.1)
        except AssertionError:
            self.problem(f"{what}: sttd's capture is on {self.capture_source()!r} after 15 s")

    def disrupt(self, kind: str) -> None:
        if kind != "drop_mid_utterance":
            self.wait_transcribed(f"before {kind}")
        began = time.monotonic()
        getattr(self, f"_{kind}")()
        self.event(kind, took_s=round(time.monotonic() - began, 2))

    def _drop(self) -> None:
        self.server.drop("abort")

    def _drop_mid_utterance(self) -> None:
        self.server.drop_mid_utterance("close_1011", after_ms=400, times=1)

    def _rollover(self) -> None:
        self.server.close_sessions(
            CLOSE_GOING_AWAY, MAX_DURATION_MESSAGE, error=("session_expired", MAX_DURATION_MESSAGE)
        )

    def _sound_restart(self) -> None:
        self.sound.restart()
        self.sound.add_mic("mic2", "spk2")
        self.sink = "spk"
        self.wait_capture("mic", "capture after the sound server restart")

    def _source_change(self) -> None:
        new, self.sink = ("mic2", "spk2") if self.sink == "spk" else ("mic", "spk")
        self.sound.set_default_source(new)
        self.wait_capture(new, f"capture after the default source became {new}")

    def _hook_flood(self) -> None:
        self.flood_rounds += 1
        try:
            wait_until(lambda: self.server.open_connections == 1, 10, "an open session to flood", 0.05)
        except AssertionError:
            self.problem("no open session for the hook flood")
            return
        for i in range(self.plan.flood_turns):
            try:
                self.record.flood_items.append(self.server.force_turn(f"flood {self.flood_rounds} turn {i}"))
            except RuntimeError as exc:
                self.problem(f"flood turn {i}: {exc}")
            time.sleep(0.01)

    # -- the schedule

    def run(self) -> None:
        result = self.sttd.ctl("start")
        if result.returncode != 0:
            raise RuntimeError(f"sttctl start failed: {result.stderr.strip()}")
        self.sttd.wait_state("listening", 15)
        self.event("start")
        n = 0
        turn = 0
        last_disruption = time.monotonic()
        end = self.t0 + self.plan.seconds
        while time.monotonic() < end:
            self.speak(n)
            n += 1
            if time.monotonic() - last_disruption >= self.plan.disrupt_every_s and time.monotonic() < end:
                self.disrupt(DISRUPTIONS[turn % len(DISRUPTIONS)])
                turn += 1
                last_disruption = time.monotonic()
        self.wait_transcribed("at the end")
        self.event("stop")
        self.sttd.ctl("stop")
        try:
            self.sttd.wait_state("idle", 20)
        except AssertionError:
            self.problem("sttd did not go idle within 20 s of Stop")

    def check_flood(self) -> dict[str, Any]:
        ids = set(self.record.flood_items)
        self.listener.drain()
        finals = {e["item_id"] for e in self.listener.seen if e["type"] == "transcript" and e["final"]}
        return {"forced": len(ids), "final_transcripts": len(ids & finals)}


def hook_counts(path: Path) -> Counter[str]:
    return Counter(line.split(" ", 1)[0] for line in path.read_text().splitlines() if line.strip())


def log_findings(text: str) -> dict[str, Any]:
    """What sttd logged at WARNING and above, grouped by message (numbers and ids folded)."""
    kinds: Counter[str] = Counter()
    for line in text.splitlines():
        if LOG_LINE_RE.search(line):
            message = re.sub(r"\d+(\.\d+)?", "N", TIMESTAMP_RE.sub("", line).strip())[:200]
            message = re.sub(r"sess_\w+|item_\w+", "ID", message)
            kinds[message] += 1
    return {"tracebacks": text.count("Traceback"), "by_message": dict(kinds.most_common(40))}


def summarise(soak: Soak, samples: list[dict[str, Any]], exit_code: int | None) -> dict[str, Any]:
    record = soak.record
    finals = soak.sentence_finals()
    hooks = hook_counts(soak.hooks_log)
    soak.listener.drain()
    states = [e["state"] for e in soak.listener.seen if e["type"] == "properties" and "state" in e]
    errors = [e for e in soak.listener.seen if e["type"] == "error"]
    flood = soak.check_flood()
    missing = sorted(set(record.spoken) - set(finals))
    duplicates = sorted(n for n, c in Counter(finals).items() if c > 1)
    all_finals = [e for e in soak.listener.seen if e["type"] == "transcript" and e["final"]]
    extra = [e["text"] for e in all_finals if not SENTENCE_RE.search(e["text"]) and not e["text"].startswith("flood")]
    return {
        "sentences": {
            "spoken": len(record.spoken),
            "transcribed": len(set(finals) & set(record.spoken)),
            "missing": missing,
            "duplicates": duplicates,
            "in_order": finals == sorted(finals),
            "unexpected_finals": extra[:20],
            "all_transcribed": not missing and not duplicates,
        },
        "flood": flood,
        "hooks": dict(hooks),
        "final_transcripts": len(all_finals),
        "states_seen": states,
        "error_signals": errors[:20],
        "disruptions": Counter(e["kind"] for e in record.events if e["kind"] in DISRUPTIONS),
        "websocket": {
            "connections": soak.server.connection_count,
            "max_concurrent": soak.server.max_concurrent_connections,
            "violations": soak.server.violations[:20],
        },
        "level_poller": soak.poller_result,
        "sttd_exit_code": exit_code,
        "sttd_log": log_findings(soak.sttd.log),
        "problems": record.problems,
        "verdict": verdict(samples, soak.plan.warmup_s),
    }


def run(plan: Plan, out: Path, keep: bool) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip()
    directory = Path(tempfile.mkdtemp(prefix="sttd-soak-", dir="/tmp"))
    soak = Soak(plan, directory)
    failed = True
    try:
        sampler = Sampler(soak.sttd.process.pid, plan.sample_s, soak.t0, soak.server)
        try:
            soak.run()
        finally:
            samples = sampler.stop()
        soak.poller_result = soak.poller.close()
        code = soak.sttd.terminate(20)
        result = summarise(soak, samples, code)
        failed = False
    finally:
        soak.close()
        if keep or failed:
            log(f"work directory kept: {directory}")
        else:
            subprocess.run(["rm", "-rf", str(directory)], check=False)
    document = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "plan": asdict(plan),
        **result,
        "events": soak.record.events,
        "samples": samples,
    }
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"soak-{stamp}.json"
    path.write_text(json.dumps(document, indent=1, default=str) + "\n", encoding="utf-8")
    document["path"] = str(path)
    return document


def print_summary(doc: dict[str, Any]) -> None:
    s, v = doc["sentences"], doc["verdict"]
    print(f"soak: {doc['plan']['seconds']:.0f} s, {len(doc['samples'])} samples -> {doc['path']}")
    print(f"  sentences {s['transcribed']}/{s['spoken']} transcribed, missing {s['missing']}, dup {s['duplicates']}")
    print(f"  flood {doc['flood']}, hooks {doc['hooks']}, disruptions {dict(doc['disruptions'])}")
    print(
        f"  websocket {doc['websocket']['connections']} connections, max {doc['websocket']['max_concurrent']} at once"
    )
    print(f"  level poller {doc['level_poller']}")
    for key in BOUNDS:
        g = v[key]
        if g:
            first, last = g["first_quarter_median"], g["last_quarter_median"]
            print(f"  {key}: {first:.0f} -> {last:.0f} (max {g['max']}, trend {g['slope_per_min']} per min)")
    print(f"  no growth: {v['no_growth']}; sttd exit {doc['sttd_exit_code']}; problems {doc['problems']}")
    print(f"  sttd log: {doc['sttd_log']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="dictation time (default 600)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="directory for soak-<date>.json")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (sttd log, hooks log)")
    parser.add_argument("--poll-level", type=float, metavar="HZ", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.poll_level:
        return poll_level_main(args.poll_level)
    doc = run(plan_for(args.seconds), args.out, args.keep)
    print_summary(doc)
    ok = doc["sentences"]["all_transcribed"] and doc["verdict"]["no_growth"] and doc["sttd_exit_code"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
