"""What the soak watches sttd with, from outside: a D-Bus client reading ``Level`` 100 times a second in a
process of its own, and a sampler of the sttd process (RSS, descriptors by kind, threads, children,
websocket connections) with the verdict on growth after warm-up.

The verdict: growth after warm-up is the median of the last quarter of the samples minus the median of
the first quarter after warm-up, for RSS, fds and threads (a trend line is recorded too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import numpy as np

from tests.realtime_server import FakeRealtimeServer

from .harness import REPO, children, memory_kb

BUS_NAME = "io.github.sttd.Sttd1"
OBJECT_PATH = "/io/github/sttd/Sttd1"
INTERFACE = "io.github.sttd.Sttd1"


BOUNDS = {"rss_kb": 4096, "fds": 2, "threads": 1}
"""The soak's own verdict: growth after warm-up above these is growth (medians, so single spikes do not count)."""


# --------------------------------------------------------------------------- the Level poller (its own process)


async def _poll_level(rate_hz: float) -> dict[str, Any]:
    from dbus_next import Message, MessageType, Variant
    from dbus_next.aio import MessageBus

    bus = await MessageBus().connect()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ok = errors = 0
    worst = 0.0
    error_names: Counter[str] = Counter()
    period = 1.0 / rate_hz
    next_at = time.monotonic()
    while not stop.is_set():
        sent = time.monotonic()
        try:
            reply = await asyncio.wait_for(
                bus.call(
                    Message(
                        destination=BUS_NAME,
                        path=OBJECT_PATH,
                        interface="org.freedesktop.DBus.Properties",
                        member="Get",
                        signature="ss",
                        body=[INTERFACE, "Level"],
                    )
                ),
                5,
            )
        except TimeoutError:
            errors += 1
            error_names["timeout"] += 1
        else:
            if (
                reply is not None
                and reply.message_type == MessageType.METHOD_RETURN
                and isinstance(reply.body[0], Variant)
            ):
                ok += 1
            else:
                errors += 1
                error_names[str(reply.error_name if reply is not None else None)] += 1
        worst = max(worst, time.monotonic() - sent)
        next_at = max(next_at + period, time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), next_at - time.monotonic())
    bus.disconnect()
    return {"ok": ok, "errors": errors, "error_names": dict(error_names), "worst_reply_ms": worst * 1000}


def poll_level_main(rate_hz: float) -> int:
    """``--poll-level``: Get(Level) at ``rate_hz`` until SIGINT/SIGTERM; one JSON line with the counts."""
    print("ready", flush=True)
    result = asyncio.run(_poll_level(rate_hz))
    print(json.dumps(result), flush=True)
    return 0


class LevelPoller:
    """``python -m bench.soak --poll-level``, in a process of its own (its own GIL, its own bus connection)."""

    def __init__(self, env: dict[str, str], rate_hz: float = 100.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.soak", "--poll-level", str(rate_hz)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the Level poller did not start")

    def close(self) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=5)
            return {"error": "the poller did not stop"}
        lines = [line for line in out.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {"error": f"no result (exit {self.proc.returncode})"}


# --------------------------------------------------------------------------- sampling


def fd_kinds(pid: int) -> dict[str, int]:
    """Open descriptors of a process by kind: socket, pipe, anon_inode:<what>, file, dev."""
    kinds: Counter[str] = Counter()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return {}
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith(("socket:", "pipe:")):
            kinds[target.split(":")[0]] += 1
        elif target.startswith("anon_inode:"):
            kinds[target.strip("[]").replace("[", "")] += 1
        elif target.startswith("/dev/"):
            kinds["dev"] += 1
        else:
            kinds["file"] += 1
    return dict(kinds)


def sample(pid: int, t0: float, server: FakeRealtimeServer) -> dict[str, Any]:
    kinds = fd_kinds(pid)
    try:
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        threads = 0
    mem = memory_kb(pid)
    return {
        "t": round(time.monotonic() - t0, 2),
        "rss_kb": mem.get("VmRSS", 0),
        "hwm_kb": mem.get("VmHWM", 0),
        "fds": sum(kinds.values()),
        "fd_kinds": kinds,
        "threads": threads,
        "children": len(children(pid)),
        "ws_open": server.open_connections,
        "ws_total": server.connection_count,
    }


class Sampler:
    """Samples the sttd process every ``interval`` seconds in a thread, until :meth:`stop`."""

    def __init__(self, pid: int, interval: float, t0: float, server: FakeRealtimeServer) -> None:
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._args = (pid, t0, server)
        self._thread = threading.Thread(target=self._run, args=(interval,), name="soak-sampler", daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while True:
            self.samples.append(sample(*self._args))
            if self._stop.wait(interval):
                return

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join(10)
        return self.samples


def growth(samples: list[dict[str, Any]], warmup_s: float, key: str) -> dict[str, float] | None:
    """Median of the last quarter minus median of the first quarter, of the samples after warm-up."""
    kept = [s for s in samples if s["t"] >= warmup_s]
    values = [s[key] for s in kept]
    if len(values) < 4:
        return None
    quarter = len(values) // 4
    first, last = float(np.median(values[:quarter])), float(np.median(values[-quarter:]))
    # A trend line too: a slow leak shows as a steady slope long before the medians part.
    slope = float(np.polyfit([s["t"] for s in kept], values, 1)[0]) * 60
    return {
        "first_quarter_median": first,
        "last_quarter_median": last,
        "growth": last - first,
        "max": max(values),
        "slope_per_min": round(slope, 2),
    }


def verdict(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, bound in BOUNDS.items():
        g = growth(samples, warmup_s, key)
        found[key] = None if g is None else {**g, "bound": bound, "grew": g["growth"] > bound}
    found["no_growth"] = all(v is not None and not v["grew"] for v in found.values())
    return found
