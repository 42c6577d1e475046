"""``sttd-engine``: a local server speaking the Realtime transcription protocol, with Whisper behind it.

It implements the GA transcription subset of the protocol as DESIGN.md
describes the service, so the daemon's one Realtime client (or any client
configured for OpenAI) works unchanged:

* :mod:`sttd.engine.listener`: the handshake on ``/v1/realtime?intent=transcription``
  with ``Authorization: Bearer <key>``, where the key is made up at start and
  printed with the URL; the service's HTTP errors; a handshake timeout and a
  cap on concurrent sessions;
* :mod:`sttd.engine.session`: one session's events, turns and transcripts;
* :mod:`sttd.engine.session_config`: what ``session.update`` may carry, per
  transcription model (:func:`sttd.models.session_problems`), with the
  service's error shapes; any model name is served by the engine's Whisper;
* a model that cannot be loaded: ``error`` (``model_unavailable``) and close
  4000, which the client does not retry; turns already committed fail with
  the same message.

Every event is built with :class:`sttd.protocol.ServerEvents`. Audio is
resampled to 16 kHz on arrival (:mod:`sttd.engine.resample`); Silero VAD
runs on the event loop (≈ 0.1 ms per 32 ms window); Whisper runs in the
transcriber's worker thread (:mod:`sttd.engine.transcriber`), one turn at a
time, in commit order.

Run: ``sttd-engine [--model NAME|DIR] [--host ADDR] [--port 0] [--unix PATH]
[--tls-cert PEM --tls-key PEM] [--api-key-file PATH] [--handshake-timeout S]
[--max-sessions N]``; ``sttd-engine download [MODEL]`` fetches a model
(:mod:`sttd.engine.download`). A shared engine (a team's GPU box) listens on
``--host 0.0.0.0 --port 8765`` with TLS (``wss://``; the official ``openai``
npm package only speaks that) and a key every client is given
(``--api-key-file``): see ``docs/shared-engine.md``. It prints one JSON line on
stdout, ``{"url", "api_key", "unix_socket", "model", "pid"}``, once it
listens; logs go to stderr; SIGTERM/SIGINT stop it (sessions are closed
with 1001); with ``--exit-with-stdin`` it also stops when its stdin reaches
end of file, so it never outlives a supervisor that holds the other end of
a pipe.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import ssl
import sys
from collections.abc import Callable

from websockets.asyncio.server import Server, serve, unix_serve

from ..config_checks import is_loopback
from ..protocol import ServerEvents
from .listener import REALTIME_PATH, Engine, ListenerLimits
from .session import SessionContext
from .transcriber import Transcriber
from .vad import SileroProbe
from .whisper_model import ModelSettings, supported_languages

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------- main


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text[:40]!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0: {text[:40]!r}")
        return value

    return parse


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = ModelSettings()
    parser = argparse.ArgumentParser(
        prog="sttd-engine",
        description="sttd's offline engine: the Realtime transcription protocol on a local socket, "
        "Whisper (faster-whisper) behind it.",
    )
    parser.add_argument("--model", default=defaults.model, help="faster-whisper model name or directory")
    parser.add_argument("--device", default=defaults.device, help="cpu, cuda or auto")
    parser.add_argument("--compute-type", default=defaults.compute_type, help="CTranslate2 compute type")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="CPU threads (0: all cores)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=None, help="TCP port; 0 = any free one (the default without --unix)"
    )
    parser.add_argument("--unix", metavar="PATH", help="also (or, without --port, only) listen on this unix socket")
    parser.add_argument("--no-auth", action="store_true", help="accept connections without the printed API key")
    parser.add_argument(
        "--api-key-file", metavar="PATH", help="the bearer key clients must send (else one is made up and printed)"
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="serve wss:// with this certificate chain (needs --tls-key)")
    parser.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    parser.add_argument("--exit-with-stdin", action="store_true", help="stop when stdin reaches end of file")
    limits = ListenerLimits()
    parser.add_argument(
        "--handshake-timeout",
        type=_positive(float),
        default=limits.handshake_timeout_s,
        metavar="SECONDS",
        help=f"drop a connection that has not completed its handshake by then (default {limits.handshake_timeout_s:g})",
    )
    parser.add_argument(
        "--max-sessions",
        type=_positive(int),
        default=limits.max_sessions,
        metavar="N",
        help=f"concurrent sessions; one more gets HTTP 503 (default {limits.max_sessions})",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper, metavar="LEVEL"
    )
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.api_key_file and args.no_auth:
        parser.error("--api-key-file and --no-auth contradict each other")
    return args


def _read_key(path: str) -> str:
    """The first line of a key file; raises OSError/ValueError with the reason."""
    with open(path, encoding="utf-8") as file:
        key = file.readline().strip()
    if not key:
        raise ValueError(f"{path} is empty")
    return key


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.tls_cert, args.tls_key)
    return context


class _StdinWatch(asyncio.Protocol):
    def __init__(self, gone: asyncio.Event) -> None:
        self._gone = gone

    def eof_received(self) -> bool | None:
        self._gone.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone.set()


def _engine(args: argparse.Namespace) -> Engine | None:
    """The engine for these arguments; None when faster-whisper cannot even be imported."""
    settings = ModelSettings(args.model, args.device, args.compute_type, args.threads)
    try:
        probe = SileroProbe.load()
        languages = supported_languages()
    except Exception as exc:  # faster-whisper missing or broken: nothing to serve
        logger.error("cannot load faster-whisper's Silero VAD: %s: %s", exc.__class__.__name__, exc)
        return None
    api_key = None if args.no_auth else "sk-local-" + secrets.token_urlsafe(24)
    if args.api_key_file:
        try:
            api_key = _read_key(args.api_key_file)
        except (OSError, ValueError) as exc:
            logger.error("cannot read the API key file: %s", exc)
            return None
    context = SessionContext(Transcriber(settings), probe.fork, languages, ServerEvents())
    return Engine(context, api_key=api_key, limits=ListenerLimits(args.handshake_timeout, args.max_sessions))


async def _listen(engine: Engine, args: argparse.Namespace) -> tuple[list[Server], str]:
    """Bind the TCP port and/or the unix socket (private to this user); the servers and the URL to print."""
    options = engine.serve_options()
    servers: list[Server] = []
    port = args.port if args.port is not None else (None if args.unix else 0)
    url = f"ws://localhost{REALTIME_PATH}?intent=transcription"
    if port is not None:
        tls = _tls(args)
        tcp = await serve(engine.handler, args.host, port, ssl=tls, **options)
        servers.append(tcp)
        host, bound = tcp.sockets[0].getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        scheme = "wss" if tls is not None else "ws"
        url = f"{scheme}://{host}:{bound}{REALTIME_PATH}?intent=transcription"
        if tls is None and not is_loopback(args.host):
            logger.warning("listening on %s without TLS: the API key and the audio travel in clear text", args.host)
        if engine.api_key is None and not is_loopback(args.host):
            logger.warning("listening on %s without an API key: anyone who can reach it may use it", args.host)
    if args.unix:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.unix)
        old = os.umask(0o077)
        try:
            servers.append(await unix_serve(engine.handler, args.unix, **options))
        finally:
            os.umask(old)
    return servers, url


async def _stop_requested(exit_with_stdin: bool) -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if exit_with_stdin:
        stdin = open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)  # noqa: SIM115 - the transport owns it
        await loop.connect_read_pipe(lambda: _StdinWatch(stop), stdin)
    return stop


async def _report_model(transcriber: Transcriber) -> None:
    """Print ``{"model": "loaded"}`` or ``{"model_error": message}`` on stdout when loading ends."""
    try:
        await asyncio.wrap_future(transcriber.start_loading())
    except Exception:
        print(json.dumps({"model_error": transcriber.load_error or "the model could not be loaded"}), flush=True)
    else:
        print(json.dumps({"model": "loaded"}), flush=True)


async def serve_engine(args: argparse.Namespace) -> int:
    engine = _engine(args)
    if engine is None:
        return 1
    transcriber = engine.context.transcriber
    servers, url = await _listen(engine, args)
    engine.start()
    stop = await _stop_requested(args.exit_with_stdin)
    line = {
        "url": url,
        "api_key": engine.api_key,
        "unix_socket": args.unix,
        "model": transcriber.settings.name,
        "pid": os.getpid(),
    }
    print(json.dumps(line), flush=True)
    # A second line once the model is loaded or has failed: the supervisor tells its user why
    # dictation cannot work (a missing model) instead of a session closed with a cut reason.
    reporter = asyncio.get_running_loop().create_task(_report_model(transcriber))
    tcp = args.port is not None or not args.unix
    logger.info("listening on %s%s", url, f" and {args.unix}" if args.unix and tcp else "")
    await stop.wait()
    logger.info("stopping")
    reporter.cancel()
    for server in servers:
        server.close(close_connections=True)
    for server in servers:
        await server.wait_closed()
    transcriber.close()
    if args.unix:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.unix)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["download"]:
        from .download import main as download_main

        return download_main(argv[1:])
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    quiet = max(logging.WARNING, logging.getLogger().level)
    for noisy in ("websockets", "faster_whisper", "asyncio"):  # a line per connection or per turn
        logging.getLogger(noisy).setLevel(quiet)
    try:
        return asyncio.run(serve_engine(args))
    except (OSError, ssl.SSLError) as exc:  # the port or socket cannot be bound, the certificate is unusable
        logger.error("cannot listen: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
