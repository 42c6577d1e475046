"""``python -m bench.floor``: what the platform costs before sttd does anything, per audio minute.

The CPU goal (0.6 s per audio minute at 20 ms frames) has to fit around what
Python, the kernel and libpulse charge for merely waking up 50 times a second
and sending a message each time. These floors measure that, on the bench's own
rig and with the bench's method: schedstat run time of every living thread of
the measured process (the sum over ``/proc/PID/task/*/schedstat``, as
``bench.harness.run_ns``), divided by the length of the audio it handled.

At each frame length (20 and 40 ms):

* **parec** -- ``parec -d mic --latency-msec=<frame>`` (C, libpulse) recording
  the rig's virtual microphone into ``/dev/null``: the C floor of reading the
  microphone at that frame length. Only parec's CPU counts (not the sound
  server's); the audio is the wall time of the window, since the source
  delivers in real time. Its wake-ups per second show the fragment rate it got.
* **loop** -- a Python asyncio loop (its own process) woken once per frame and
  doing nothing else: a ``loop.add_reader`` callback that ``recv``s the frame
  from a unix socket. The frame (random bytes, the size of a frame of 24 kHz
  s16 mono) is written on the socket on a steady clock by a helper process, so
  the wake-up is a socket becoming readable, as microphone data reaching a
  process would be, and the helper's cost is not counted.
* **loop_tcp** -- *loop* plus, in the same callback, the frame base64-encoded
  into an ``input_audio_buffer.append`` JSON message (bytes, one
  concatenation) and one ``transport.write`` of it on a loopback TCP
  connection: the floor of any Python client that sends each frame as soon as
  it is recorded. On loopback the sender's ``write`` also runs the receiver's
  TCP input (softirq in the sender's context), which a real network would put
  on the NIC's interrupt instead.
* **loop_ws** -- the same message through a real ``websockets`` connection
  (asyncio client, ``compression=None`` as sttd uses, masked client frames):
  a long-lived task awaits each frame (a future the reader callback resolves)
  and ``await ws.send(message, text=True)``, the shape of a client written
  on websockets' own API.
* **parec_plus_loop_tcp** -- *parec* + *loop_tcp* of the same run: a client of
  the SDK baseline's shape (parec reads in C, Python sends) pays at least this.

The receiving side is a plain drain in the helper process (an asyncio server
that discards what it reads, and a ``websockets`` server that does the same),
not the rig's test Realtime server: that server runs in a thread of the bench
process and parses, base64-decodes and keeps every append, which would put
its work, and its share of the two cores, into a measurement of the client's
transport; the drain also needs no session protocol, so the floor is the
transport and nothing else, and ``python -m bench.floor`` needs no server.

Each floor runs in a process of its own, one after the other (the machine has
two cores), after a warm-up; the measured process stamps schedstat after
handling frame *W* and after frame *W + N*, so the window holds exactly *N*
wake-ups' work. ``--runs N`` (default 3) repeats the sweep and every figure is
the worst run, the bench's rule. ``python -m bench`` runs one sweep per run
(``Plan.floor_s`` per floor) and reports them beside the CPU goal.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["combined", "main", "measure"]

RATE = 24000
BYTES_PER_SAMPLE = 2
_CLIENT_KINDS = ("loop", "loop_tcp", "loop_ws")
_HEAD = b'{"type":"input_audio_buffer.append","audio":"'
_TAIL = b'"}'


def _frame_bytes(frame_ms: int) -> int:
    return RATE * frame_ms // 1000 * BYTES_PER_SAMPLE


# --------------------------------------------------------------------------- in the measured process (stdlib only)


def _own_run_ns() -> int:
    """schedstat run time of this process's living threads (ns): ``bench.harness.run_ns`` of itself."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/schedstat", encoding="ascii") as f:
            total += int(f.read().split()[0])
    return total


def _switches(pid: int | str = "self") -> tuple[int, int]:
    """Voluntary and involuntary context switches of a process's living threads (``bench.harness.wakeups`` split)."""
    found = [0, 0]
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    found[0] += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    found[1] += int(line.split()[1])
    return found[0], found[1]


async def _client(kind: str, frame_ms: int, warmup: int, frames: int, tick: str, port: int) -> dict[str, Any]:
    """One floor in this process: stamps after frame ``warmup`` and after frame ``warmup + frames``."""
    loop = asyncio.get_running_loop()
    frame = _frame_bytes(frame_ms)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect("\0" + tick)  # an abstract name: no file to clean up
    sock.sendall(f"{frame_ms}\n".encode())
    sock.setblocking(False)
    done: asyncio.Future[None] = loop.create_future()
    received = 0
    stamps: list[tuple[int, tuple[int, int], float, int]] = []  # (run ns, switches, time, bytes) at the edges
    edges = [warmup * frame, (warmup + frames) * frame]

    def handled() -> None:
        """After a frame was handled: stamp at the window's edges."""
        if edges and received >= edges[0]:
            edges.pop(0)
            stamps.append((_own_run_ns(), _switches(), time.monotonic(), received))
            if not edges and not done.done():
                done.set_result(None)

    transport: asyncio.WriteTransport | None = None
    ws: Any = None
    if kind == "loop_tcp":
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        transport = writer.transport
    elif kind == "loop_ws":
        from websockets.asyncio.client import connect

        ws = await connect(f"ws://127.0.0.1:{port}/", compression=None, max_size=None)
    pending: collections.deque[bytes] = collections.deque()
    waiter: list[asyncio.Future[None]] = []

    def ready() -> None:
        nonlocal received
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        if not data:
            loop.remove_reader(sock)
            if not done.done():
                done.set_exception(RuntimeError("the frame clock went away"))
            return
        received += len(data)
        if transport is not None:
            transport.write(_HEAD + base64.b64encode(data) + _TAIL)
        elif ws is not None:
            pending.append(_HEAD + base64.b64encode(data) + _TAIL)
            if waiter and not waiter[0].done():
                waiter[0].set_result(None)
            return  # handled once sent
        handled()

    async def sender() -> None:
        while True:
            while not pending:
                waiter[:] = [loop.create_future()]
                await waiter[0]
            await ws.send(pending.popleft(), text=True)
            handled()

    task = asyncio.ensure_future(sender()) if ws is not None else None
    loop.add_reader(sock, ready)
    try:
        await asyncio.wait_for(done, timeout=(warmup + frames) * frame_ms / 1000 + 20)
    finally:
        loop.remove_reader(sock)
        sock.close()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if ws is not None:
            await ws.close()
        if transport is not None:
            transport.close()
    (ns0, sw0, t0, b0), (ns1, sw1, t1, b1) = stamps
    return _figures(ns1 - ns0, sw0, sw1, (b1 - b0) / (RATE * BYTES_PER_SAMPLE), t1 - t0, frame_ms)


def _figures(
    ns: int, sw0: tuple[int, int], sw1: tuple[int, int], audio_s: float, wall_s: float, frame_ms: int
) -> dict[str, Any]:
    frames = audio_s * 1000 / frame_ms
    voluntary, involuntary = sw1[0] - sw0[0], sw1[1] - sw0[1]
    return {
        "cpu_s_per_audio_min": round(ns / 1e9 / audio_s * 60, 3),
        "us_per_frame": round(ns / 1e3 / frames, 1),
        "wakeups_per_audio_s": round((voluntary + involuntary) / audio_s, 1),
        # Involuntary switches: another task (often the one just woken, on the same core) took the CPU.
        "preempted_per_audio_s": round(involuntary / audio_s, 1),
        "audio_s": round(audio_s, 2),
        "wall_s": round(wall_s, 2),
    }


# --------------------------------------------------------------------------- the helper: frame clock and drains


async def _serve() -> None:
    """Frame clock on an abstract unix socket, TCP and websocket drains on 127.0.0.1; until stdin closes.

    Cancelling is safe: the servers close with the loop.
    """
    from websockets.asyncio.server import ServerConnection, serve

    loop = asyncio.get_running_loop()

    async def clock(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frame_ms = int((await reader.readline()).strip())
        payload = os.urandom(_frame_bytes(frame_ms))
        period = frame_ms / 1000
        due = loop.time()
        # Until the client hangs up, or the helper is told to end (cancelled: then it ends quietly, since
        # asyncio's stream callback would log a cancelled handler as an error).
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while not reader.at_eof() and not writer.is_closing():
                due += period
                await asyncio.sleep(due - loop.time())
                writer.write(payload)
        writer.close()

    class Drain(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            pass

    async def ws_drain(connection: ServerConnection) -> None:
        async for _ in connection:
            pass

    tick = f"sttd-bench-floor-{os.getpid()}"
    clocks = await asyncio.start_unix_server(clock, "\0" + tick)
    tcp = await loop.create_server(Drain, "127.0.0.1", 0)
    async with clocks, tcp, serve(ws_drain, "127.0.0.1", 0, compression=None, max_size=None) as ws:
        ports = {s.family: s.getsockname()[1] for s in ws.sockets}
        line = {"tick": tick, "tcp": tcp.sockets[0].getsockname()[1], "ws": ports[socket.AF_INET]}
        print(json.dumps(line), flush=True)
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin


# --------------------------------------------------------------------------- in the bench process


class _Helper:
    """``python -m bench.floor --serve`` as a child; closing its stdin ends it."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.floor", "--serve"],
            cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # a line, or EOF if it died (then json fails loudly)
        self.addresses: dict[str, Any] = json.loads(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _parec(env: dict[str, str], frame_ms: int, warmup_s: float, seconds: float) -> dict[str, Any]:
    from .harness import run_ns

    argv = ["parec", "-d", "mic", f"--latency-msec={frame_ms}", "--raw", "--format=s16le", f"--rate={RATE}"]
    proc = subprocess.Popen(
        [*argv, "--channels=1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(warmup_s)  # a measurement window, not a wait for an event
        if proc.poll() is not None:
            raise RuntimeError(f"parec exited with {proc.returncode}: {proc.communicate()[1]!r}")
        ns0, sw0, t0 = run_ns(proc.pid), _switches(proc.pid), time.monotonic()
        time.sleep(seconds)
        ns1, sw1, t1 = run_ns(proc.pid), _switches(proc.pid), time.monotonic()
        if proc.poll() is not None:
            raise RuntimeError(f"parec exited with {proc.returncode} while measured")
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return _figures(ns1 - ns0, sw0, sw1, t1 - t0, t1 - t0, frame_ms)


def _measured_client(helper: _Helper, kind: str, frame_ms: int, warmup_s: float, seconds: float) -> dict[str, Any]:
    warmup = max(2, round(warmup_s * 1000 / frame_ms))
    frames = max(3, round(seconds * 1000 / frame_ms))
    a = helper.addresses
    argv = [sys.executable, "-m", "bench.floor", "--client", kind, "--frame-ms", str(frame_ms)]
    argv += ["--warmup", str(warmup), "--frames", str(frames), "--tick", a["tick"]]
    argv += ["--port", str(a["ws"] if kind == "loop_ws" else a["tcp"])]
    done = subprocess.run(
        argv,
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=(warmup + frames) * frame_ms / 1000 + 30,
    )
    if done.returncode != 0:
        raise RuntimeError(f"floor {kind} at {frame_ms} ms failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def measure(env: dict[str, str], seconds: float, frames_ms: tuple[int, ...] = (20, 40)) -> dict[str, Any]:
    """One sweep of every floor at every frame length; ``env`` talks to a sound server with a source ``mic``.

    ``seconds`` of audio per floor, after a warm-up of up to 0.5 s. Returns
    ``{"<frame_ms>": {kind: figures}}`` plus the load average around the sweep.
    """
    warmup_s = min(0.5, seconds / 2)
    result: dict[str, Any] = {"seconds": seconds, "load_before": round(os.getloadavg()[0], 2)}
    helper = _Helper()
    try:
        for frame_ms in frames_ms:
            found = {"parec": _parec(env, frame_ms, warmup_s, seconds)}
            for kind in _CLIENT_KINDS:
                found[kind] = _measured_client(helper, kind, frame_ms, warmup_s, seconds)
            found["parec_plus_loop_tcp"] = {
                key: round(found["parec"][key] + found["loop_tcp"][key], 3)
                for key in ("cpu_s_per_audio_min", "us_per_frame", "wakeups_per_audio_s", "preempted_per_audio_s")
            }
            result[str(frame_ms)] = found
    finally:
        helper.close()
    result["load_after"] = round(os.getloadavg()[0], 2)
    return result


def combined(per_run: list[dict[str, Any]]) -> dict[str, Any]:
    """Every floor over several sweeps: the worst run's figures, with each run's CPU under ``runs``."""
    first = per_run[0]
    out: dict[str, Any] = {"seconds": first.get("seconds"), "runs": len(per_run)}
    for frame_ms, kinds in first.items():
        if not isinstance(kinds, dict):
            continue
        out[frame_ms] = {}
        for kind in kinds:
            each = [run[frame_ms][kind] for run in per_run]
            worst = max(each, key=lambda f: f["cpu_s_per_audio_min"])
            out[frame_ms][kind] = {**worst, "runs": [f["cpu_s_per_audio_min"] for f in each]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, help="sweeps; every figure is the worst (default 3, smoke 1)")
    parser.add_argument("--seconds", type=float, help="audio per floor (default the full plan's)")
    parser.add_argument("--smoke", action="store_true", help="a short sweep (numbers meaningless)")
    parser.add_argument("--out", type=Path, help="the JSON (default bench/results/floor.json)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=_CLIENT_KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--frame-ms", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=25, help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, default=500, help=argparse.SUPPRESS)
    parser.add_argument("--tick", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve())
        return 0
    if args.client:
        coro = _client(args.client, args.frame_ms, args.warmup, args.frames, args.tick, args.port)
        print(json.dumps(asyncio.run(coro)))
        return 0

    from tests.sound import SoundServer

    from . import report
    from .harness import REPO
    from .plan import FULL, SMOKE, log

    plan = SMOKE if args.smoke else FULL
    runs = args.runs or (1 if args.smoke else 3)
    seconds = args.seconds or plan.floor_s
    out = args.out or REPO / "bench" / "results" / "floor.json"
    sweeps = []
    with tempfile.TemporaryDirectory(prefix="sttd-floor-", dir="/tmp") as directory:
        (Path(directory) / "pulse").mkdir()
        sound = SoundServer("pulseaudio", Path(directory) / "pulse")
        try:
            sound.start()
            for n in range(runs):
                log(f"floor: sweep {n + 1} of {runs}, {seconds:g} s per floor")
                sweeps.append(measure(sound.env, seconds, plan.floor_frames_ms))
        finally:
            sound.close()
    worst = combined(sweeps)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": sweeps, "worst": worst}, indent=1) + "\n", encoding="utf-8")
    print("\n".join(report.floor_table(worst)))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
