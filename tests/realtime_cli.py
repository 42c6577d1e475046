"""``python -m tests.realtime_server``: the test Realtime server as a program (for the bench and by hand).

It prints one JSON line (``url``, ``token_url``, ``api_key``), serves until
SIGINT/SIGTERM, and exits 1 if a protocol violation was recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys

from .realtime_server import DEFAULT_API_KEY, FakeRealtimeServer

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.realtime_server", description="A stand-in for OpenAI's Realtime transcription service."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="websocket port (0: any free port)")
    parser.add_argument("--token-port", type=int, default=0, help="token endpoint port (0: any free port)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--script", action="append", default=[], metavar="TEXT", help="transcript of the next turn")
    parser.add_argument("--script-file", help="file with one transcript per line")
    parser.add_argument("--default-transcript", default="utterance {n}")
    parser.add_argument("--completion-delay", type=float, default=0.0, metavar="S")
    parser.add_argument("--delta-interval", type=float, default=0.0, metavar="S")
    parser.add_argument("--handshake-delay", type=float, default=0.0, metavar="S")
    parser.add_argument("--session-max", type=float, default=None, metavar="S")
    parser.add_argument("--no-energy-vad", action="store_true", help="only client commits make turns")
    parser.add_argument("--never-commit", action="store_true", help="accept audio, never make a turn of it")
    parser.add_argument("--dump", metavar="PATH", help="write sessions, events and violations as JSON at exit")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    script = list(args.script)
    if args.script_file:
        with open(args.script_file, encoding="utf-8") as f:
            script += [line.rstrip("\n") for line in f if line.strip()]
    # Block the signals before the server thread starts so that only sigwait() sees them.
    signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    server = FakeRealtimeServer(
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        token_port=args.token_port,
        script=script,
        default_transcript=args.default_transcript,
        completion_delay_s=args.completion_delay,
        delta_interval_s=args.delta_interval,
        handshake_delay_s=args.handshake_delay,
        session_max_s=args.session_max,
        energy_vad=not args.no_energy_vad,
        never_commit=args.never_commit,
    ).start()
    print(
        json.dumps({"url": server.url, "token_url": server.token_url, "api_key": server.api_key}),
        flush=True,
    )
    received = signal.sigwait(signals)
    logger.info("signal %d: stopping", received)
    server.stop()
    if args.dump:
        dump = {
            "sessions": [
                {
                    "index": s.index,
                    "id": s.session_id,
                    "audio_bytes": len(s.audio),
                    "close_code": s.close_code,
                    "client_events": server.client_events(session=s.index),
                    "server_events": server.server_events(session=s.index),
                }
                for s in server.sessions()
            ],
            "turns": [
                {k: v for k, v in dataclasses.asdict(t).items() if k != "audio"} | {"audio_bytes": len(t.audio)}
                for t in server.turns()
            ],
            "violations": server.violations,
        }
        with open(args.dump, "w", encoding="utf-8") as f:
            json.dump(dump, f, indent=1)
    for violation in server.violations:
        print(f"violation: {violation}", file=sys.stderr)
    return 1 if server.violations else 0
