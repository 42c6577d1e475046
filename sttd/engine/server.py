"""``sttd-engine``: a local server speaking the Realtime transcription protocol, with Whisper behind it.

It implements the GA transcription subset of the protocol as DESIGN.md
describes the service, so the daemon's one Realtime client works unchanged:

* the handshake on ``/v1/realtime`` (``?intent=transcription``) with
  ``Authorization: Bearer <key>``, where the key is made up at start and
  printed with the URL (so other local users cannot use the engine); HTTP
  401 for a wrong key, 404 for another path;
* ``session.created``; ``session.update`` → ``session.updated`` (24 kHz
  PCM only; transcription ``language`` and ``prompt``; ``turn_detection``
  ``server_vad`` with ``threshold``, ``prefix_padding_ms`` and
  ``silence_duration_ms``, or ``null`` for manual commits). ``semantic_vad``
  is refused: there is no semantic model here, and falling back silently
  would hide that. ``noise_reduction`` is accepted and echoed but not
  applied. The transcription ``model`` the client asks for is ignored:
  ``session.updated`` names the model the engine runs;
* ``input_audio_buffer.append`` / ``commit`` / ``clear``; with server VAD
  (Silero, :mod:`sttd.engine.vad`) per turn ``speech_started`` →
  ``speech_stopped`` → ``committed`` → ``conversation.item.added`` →
  transcription ``delta`` (one per Whisper segment) → ``completed`` (with
  ``usage``) or ``failed`` → ``conversation.item.done``; a client commit
  skips the two speech events (and commits speech in progress with its
  ``item_id``);
* ``error`` events with the service's codes, echoing the client's
  ``event_id``: ``invalid_value`` (with ``param``) for an unknown event type,
  a rate other than 24000 and other bad values, ``unknown_parameter``,
  ``input_audio_buffer_commit_empty`` for a commit of under 100 ms,
  ``invalid_json``;
* a model that cannot be loaded: ``error`` (``model_unavailable``) and close
  4000, which the client does not retry; turns already committed fail with
  the same message.

Every event is built with :class:`sttd.protocol.ServerEvents`. Audio is
resampled to 16 kHz on arrival (:mod:`sttd.engine.resample`); Silero VAD
runs on the event loop (≈ 0.1 ms per 32 ms window); Whisper runs in the
transcriber's worker thread (:mod:`sttd.engine.transcriber`), one turn at a
time, in commit order.

Run: ``sttd-engine [--model NAME|DIR] [--port 0] [--unix PATH]``. It prints
one JSON line on stdout, ``{"url", "api_key", "unix_socket", "model",
"pid"}``, once it listens; logs go to stderr; SIGTERM/SIGINT stop it
(sessions are closed with 1001); with ``--exit-with-stdin`` it also stops
when its stdin reaches end of file, so it never outlives a supervisor that
holds the other end of a pipe.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import numpy.typing as npt
from websockets.asyncio.server import Server, ServerConnection, serve, unix_serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..errors import ProtocolError
from ..protocol import MIN_COMMIT_MS, SAMPLE_RATE, ServerEvents, parse_client_event
from .resample import Resampler
from .transcriber import ModelSettings, ModelUnavailableError, Transcriber, supported_languages
from .transcriber import Request as TranscriptionRequest
from .vad import SAMPLES_PER_MS, InputBuffer, SileroProbe, SpeechProbe, SpeechStart, SpeechStop, VadSettings

logger = logging.getLogger(__name__)

REALTIME_PATH = "/v1/realtime"
CLOSE_GOING_AWAY = 1001
CLOSE_REFUSED = 4000
MAX_MESSAGE_BYTES = 16 * 2**20
SUPPORTED_EVENTS = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
)
DEFAULT_VAD = VadSettings()
TRANSCRIPTION_KEYS = frozenset({"model", "language", "prompt", "delay", "keywords", "languages"})
"""Keys of ``audio.input.transcription`` the service declares; only language and prompt are used."""


class Refusal(Exception):
    """A client event the engine answers with an ``error`` event."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass
class SessionConfig:
    """What a session is configured to do; :meth:`echo` is the ``audio`` object of ``session.updated``."""

    model: str
    vad: VadSettings | None = DEFAULT_VAD
    language: str = ""
    prompt: str = ""
    noise_reduction: str | None = None

    def echo(self) -> dict[str, Any]:
        transcription: dict[str, Any] = {"model": self.model}
        if self.language:
            transcription["language"] = self.language
        if self.prompt:
            transcription["prompt"] = self.prompt
        vad = self.vad
        return {
            "input": {
                "format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                "transcription": transcription,
                "noise_reduction": None if self.noise_reduction is None else {"type": self.noise_reduction},
                "turn_detection": None
                if vad is None
                else {
                    "type": "server_vad",
                    "threshold": vad.threshold,
                    "prefix_padding_ms": vad.prefix_padding_ms,
                    "silence_duration_ms": vad.silence_duration_ms,
                },
            }
        }


# ------------------------------------------------------------ session.update


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Refusal("invalid_type", f"Invalid type for '{param}': expected an object.", param)
    return value


def _check_keys(value: dict[str, Any], allowed: frozenset[str] | set[str], prefix: str) -> None:
    for key in value:
        if key not in allowed:
            raise Refusal("unknown_parameter", f"Unknown parameter: '{prefix}.{key}'.", f"{prefix}.{key}")


def _number(td: dict[str, Any], key: str, default: float, low: float, high: float, *, integer: bool) -> Any:
    param = f"session.audio.input.turn_detection.{key}"
    value: object = td.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        kind = "an integer" if integer else "a number"
        raise Refusal("invalid_type", f"Invalid type for '{param}': expected {kind}, but got {value!r}.", param)
    if not low <= value <= high:
        raise Refusal("invalid_value", f"Invalid '{param}': {value!r} is not between {low:g} and {high:g}.", param)
    return value


def _turn_detection(value: Any) -> VadSettings | None:
    param = "session.audio.input.turn_detection"
    if value is None:
        return None
    td = _object(value, param)
    kind = td.get("type", "server_vad")
    if kind == "semantic_vad":
        raise Refusal(
            "invalid_value",
            "Invalid value: 'semantic_vad'. The local engine supports 'server_vad' (Silero VAD) or null "
            "(manual commits); it has no semantic turn detection.",
            f"{param}.type",
        )
    if kind != "server_vad":
        raise Refusal("invalid_value", f"Invalid value: {kind!r}. Supported values are: 'server_vad'.", f"{param}.type")
    return VadSettings(
        threshold=float(_number(td, "threshold", DEFAULT_VAD.threshold, 0.0, 1.0, integer=False)),
        prefix_padding_ms=_number(td, "prefix_padding_ms", DEFAULT_VAD.prefix_padding_ms, 0, 10000, integer=True),
        silence_duration_ms=_number(td, "silence_duration_ms", DEFAULT_VAD.silence_duration_ms, 0, 10000, integer=True),
    )


def apply_update(config: SessionConfig, session: Any, languages: frozenset[str]) -> SessionConfig:
    """The configuration after a ``session.update``; raises :class:`Refusal` and changes nothing on a bad one.

    Members of ``audio.input`` the update names replace the current ones as a whole.
    """
    session = _object(session, "session")
    _check_keys(session, {"type", "audio", "include"}, "session")
    if session.get("type") != "transcription":
        raise Refusal(
            "invalid_value",
            f"Invalid value: {session.get('type')!r}. This is a transcription session: "
            "session.type must be 'transcription'.",
            "session.type",
        )
    audio = _object(session.get("audio", {}), "session.audio")
    _check_keys(audio, {"input"}, "session.audio")
    audio_input = _object(audio.get("input", {}), "session.audio.input")
    _check_keys(audio_input, {"format", "transcription", "turn_detection", "noise_reduction"}, "session.audio.input")
    new = SessionConfig(config.model, config.vad, config.language, config.prompt, config.noise_reduction)
    if "format" in audio_input:
        fmt = _object(audio_input["format"], "session.audio.input.format")
        if fmt.get("type", "audio/pcm") != "audio/pcm":
            raise Refusal(
                "invalid_value",
                f"Invalid value: {fmt.get('type')!r}. Supported values are: 'audio/pcm'.",
                "session.audio.input.format.type",
            )
        if fmt.get("rate", SAMPLE_RATE) != SAMPLE_RATE:
            raise Refusal(
                "invalid_value",
                f"Invalid value: {fmt.get('rate')!r}. Supported values are: {SAMPLE_RATE}.",
                "session.audio.input.format.rate",
            )
    if "transcription" in audio_input:
        transcription = audio_input["transcription"] or {}
        transcription = _object(transcription, "session.audio.input.transcription")
        _check_keys(transcription, TRANSCRIPTION_KEYS, "session.audio.input.transcription")
        language = transcription.get("language") or ""
        if not isinstance(language, str) or (language and language not in languages):
            raise Refusal(
                "invalid_value",
                f"Invalid value: {language!r}. The local model does not know this language (ISO-639-1 code).",
                "session.audio.input.transcription.language",
            )
        prompt = transcription.get("prompt") or ""
        if not isinstance(prompt, str):
            raise Refusal(
                "invalid_type",
                "Invalid type for 'session.audio.input.transcription.prompt': expected a string.",
                "session.audio.input.transcription.prompt",
            )
        new.language, new.prompt = language, prompt
    if "noise_reduction" in audio_input:
        nr = audio_input["noise_reduction"]
        if nr is None:
            new.noise_reduction = None
        else:
            kind = _object(nr, "session.audio.input.noise_reduction").get("type")
            if kind not in ("near_field", "far_field"):
                raise Refusal(
                    "invalid_value",
                    f"Invalid value: {kind!r}. Supported values are: 'near_field' and 'far_field'.",
                    "session.audio.input.noise_reduction.type",
                )
            new.noise_reduction = kind
    if "turn_detection" in audio_input:
        new.vad = _turn_detection(audio_input["turn_detection"])
    return new


def _diagnose(raw: str | bytes) -> tuple[Refusal, str | None]:
    """Why a message that :func:`parse_client_event` refused was refused, and its event_id if any."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return Refusal("invalid_json", "The server could not parse the message as JSON."), None
    if not isinstance(data, dict):
        return Refusal("invalid_json", "The message must be a JSON object."), None
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    if not isinstance(data.get("type"), str):
        return Refusal("missing_required_parameter", "Missing required parameter: 'type'.", "type"), event_id
    return Refusal("invalid_value", "Invalid 'audio': expected base64-encoded PCM16 audio.", "audio"), event_id


def _close_reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8."""
    data = text.encode()
    return text if len(data) <= 123 else data[:120].decode(errors="ignore") + "..."


# ------------------------------------------------------------------ sessions


@dataclass(eq=False)
class _Turn:
    item_id: str
    previous_item_id: str | None
    audio: npt.NDArray[np.float32]
    request: TranscriptionRequest
    committed_at: float = field(default_factory=time.monotonic)


class Session:
    """One websocket connection: its configuration, input buffer and turns."""

    def __init__(self, engine: Engine, ws: ServerConnection, session_id: str) -> None:
        self.engine = engine
        self.ws = ws
        self.id = session_id
        self.config = SessionConfig(engine.transcriber.settings.name)
        self.resampler = Resampler()
        self.buffer = InputBuffer(engine.new_probe(), self.config.vad)
        self.speech_item: str | None = None
        self.last_item: str | None = None
        self.turns: asyncio.Queue[_Turn] = asyncio.Queue()
        self._events = engine.events

    def session_object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "realtime.transcription_session",
            "type": "transcription",
            "audio": self.config.echo(),
        }

    async def send(self, event: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(json.dumps(event))

    async def refuse(self, message: str) -> None:
        """The model is unusable: say so and close with 4000 (the client does not retry that)."""
        await self.send(self._events.error("model_unavailable", message, type_="server_error"))
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(CLOSE_REFUSED, _close_reason(f"local engine: {message}"))

    async def run(self) -> None:
        await self.send(self._events.session_created(self.session_object()))
        async with asyncio.TaskGroup() as tg:
            worker = tg.create_task(self._turn_worker())
            try:
                async for raw in self.ws:
                    await self.on_message(raw)
            except ConnectionClosed:
                pass
            finally:
                worker.cancel()

    # -- client events

    async def on_message(self, raw: str | bytes) -> None:
        try:
            event = parse_client_event(raw)
        except ProtocolError:
            refusal, event_id = _diagnose(raw)
            await self._error(refusal, event_id)
            return
        kind = event["type"]
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        try:
            if kind == "input_audio_buffer.append":
                await self.append(event["pcm"])
            elif kind == "session.update":
                await self.update(event.get("session"))
            elif kind == "input_audio_buffer.commit":
                await self.commit()
            elif kind == "input_audio_buffer.clear":
                self.buffer.clear()
                self.speech_item = None
                await self.send(self._events.cleared())
            else:
                supported = ", ".join(f"'{t}'" for t in SUPPORTED_EVENTS)
                raise Refusal("invalid_value", f"Invalid value: '{kind}'. Supported values are: {supported}.", "type")
        except Refusal as refusal:
            await self._error(refusal, event_id)

    async def _error(self, refusal: Refusal, event_id: str | None) -> None:
        logger.info("session %s: refused a client event: %s", self.id, refusal.message)
        await self.send(self._events.error(refusal.code, refusal.message, event_id=event_id, param=refusal.param))

    async def update(self, session: Any) -> None:
        self.config = apply_update(self.config, session, self.engine.languages)
        if self.config.vad != self.buffer.vad:
            self.speech_item = None
        self.buffer.set_vad(self.config.vad)
        logger.debug(
            "session %s: language %r, turn detection %s", self.id, self.config.language or "auto", self.config.vad
        )
        await self.send(self._events.session_updated(self.session_object()))

    async def append(self, pcm: bytes) -> None:
        dropped = self.buffer.dropped
        for decision in self.buffer.append(self.resampler.process_bytes(pcm)):
            if isinstance(decision, SpeechStart):
                self.speech_item = self._events.new_item_id()
                await self.send(self._events.speech_started(self.speech_item, decision.start // SAMPLES_PER_MS))
            elif isinstance(decision, SpeechStop):
                item = self.speech_item or self._events.new_item_id()
                self.speech_item = None
                await self.send(self._events.speech_stopped(item, decision.end // SAMPLES_PER_MS))
                await self._commit(item, decision.audio, client=False)
        if self.buffer.dropped > dropped and dropped == 0:
            logger.warning("session %s: the uncommitted buffer is full; dropping its oldest audio", self.id)

    async def commit(self) -> None:
        buffered = self.buffer.buffered_ms
        if buffered < MIN_COMMIT_MS:
            raise Refusal(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {buffered:.2f}ms of audio.",
            )
        item = self.speech_item or self._events.new_item_id()
        self.speech_item = None
        _, audio = self.buffer.take()
        await self._commit(item, audio, client=True)

    async def _commit(self, item: str, audio: npt.NDArray[np.float32], *, client: bool) -> None:
        previous, self.last_item = self.last_item, item
        await self.send(self._events.committed(item, previous))
        await self.send(self._events.item_added(item, previous))
        # A client commit's audio was not cut by the VAD: let Silero drop what is not speech
        # (silence sent after the last words, or a whole buffer of it in manual mode).
        threshold = (self.config.vad or DEFAULT_VAD).threshold if client else None
        request = TranscriptionRequest(audio, self.config.language, self.config.prompt, threshold)
        self.turns.put_nowait(_Turn(item, previous, audio, request))

    # -- transcription

    async def _turn_worker(self) -> None:
        while True:
            await self._transcribe(await self.turns.get())

    async def _transcribe(self, turn: _Turn) -> None:
        seconds = turn.audio.size / (SAMPLES_PER_MS * 1000)
        deltas: list[str] = []
        try:
            async for text in self.engine.transcriber.transcribe(turn.request):
                delta = text if deltas else text.lstrip()
                if delta.strip():
                    deltas.append(delta)
                    await self.send(self._events.delta(turn.item_id, delta))
        except ModelUnavailableError as exc:
            await self.send(self._events.failed(turn.item_id, "model_unavailable", str(exc)))
            return
        except Exception as exc:  # any failure of the model is this turn's failure, not the session's
            logger.exception("session %s: transcription of %s failed", self.id, turn.item_id)
            message = f"Input transcription failed for this item: {exc.__class__.__name__}: {exc}"
            await self.send(self._events.failed(turn.item_id, "transcription_failed", message))
            return
        transcript = "".join(deltas).strip()
        logger.debug(
            "session %s: %s, %.2f s of audio, final %.2f s after commit: %r",
            self.id,
            turn.item_id,
            seconds,
            time.monotonic() - turn.committed_at,
            transcript,
        )
        await self.send(self._events.completed(turn.item_id, transcript, seconds))
        await self.send(self._events.item_done(turn.item_id, turn.previous_item_id, transcript))


# ------------------------------------------------------------------- engine


class Engine:
    """The websocket handler and what every session shares: the model, the VAD model, event ids."""

    def __init__(
        self,
        transcriber: Transcriber,
        *,
        api_key: str | None,
        probe_factory: Callable[[], SpeechProbe | None],
        languages: frozenset[str],
    ) -> None:
        self.transcriber = transcriber
        self.api_key = api_key
        self.new_probe = probe_factory
        self.languages = languages
        self.events = ServerEvents()
        self.sessions: set[Session] = set()
        self.model_error: str | None = None

    def start(self) -> None:
        """Start loading the model; a failure closes every session (call on the event loop)."""
        loop = asyncio.get_running_loop()

        def loaded(future: Any) -> None:
            if not future.cancelled() and future.exception() is not None:
                loop.call_soon_threadsafe(self._model_failed, str(future.exception()))

        self.transcriber.start_loading().add_done_callback(loaded)

    def _model_failed(self, message: str) -> None:
        self.model_error = message
        for session in list(self.sessions):
            asyncio.get_running_loop().create_task(session.refuse(message))

    async def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path != REALTIME_PATH:
            return _http_error(conn, 404, f"Invalid URL (GET {url.path})", None)
        if parse_qs(url.query).get("intent", ["transcription"]) != ["transcription"]:
            return _http_error(
                conn, 400, "The local engine serves transcription sessions only: use ?intent=transcription", None
            )
        if self.api_key is not None:
            authorization = request.headers.get("Authorization", "")
            given = authorization[len("Bearer ") :] if authorization.startswith("Bearer ") else ""
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return _http_error(conn, 401, "Incorrect API key for the local engine.", "invalid_api_key")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        session = Session(self, ws, "sess_" + secrets.token_hex(12))
        if self.model_error is not None:
            await session.refuse(self.model_error)
            return
        self.sessions.add(session)
        logger.info("session %s opened", session.id)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            logger.info("session %s closed (%s)", session.id, ws.close_code)


def _http_error(conn: ServerConnection, status: int, message: str, code: str | None) -> Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code, "param": None}}
    response = conn.respond(status, json.dumps(body) + "\n")
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


# --------------------------------------------------------------------- main


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
    parser.add_argument("--exit-with-stdin", action="store_true", help="stop when stdin reaches end of file")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper, metavar="LEVEL"
    )
    return parser.parse_args(argv)


class _StdinWatch(asyncio.Protocol):
    def __init__(self, gone: asyncio.Event) -> None:
        self._gone = gone

    def eof_received(self) -> bool | None:
        self._gone.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone.set()


async def serve_engine(args: argparse.Namespace) -> int:
    settings = ModelSettings(args.model, args.device, args.compute_type, args.threads)
    try:
        probe = SileroProbe.load()
        languages = supported_languages()
    except Exception as exc:  # faster-whisper missing or broken: nothing to serve
        logger.error("cannot load faster-whisper's Silero VAD: %s: %s", exc.__class__.__name__, exc)
        return 1
    transcriber = Transcriber(settings)
    api_key = None if args.no_auth else "sk-local-" + secrets.token_urlsafe(24)
    engine = Engine(transcriber, api_key=api_key, probe_factory=probe.fork, languages=languages)
    options: dict[str, Any] = {
        "process_request": engine.process_request,
        "max_size": MAX_MESSAGE_BYTES,
        "ping_interval": None,
        "close_timeout": 2,
    }
    servers: list[Server] = []
    port = args.port if args.port is not None else (None if args.unix else 0)
    url = f"ws://localhost{REALTIME_PATH}?intent=transcription"
    if port is not None:
        tcp = await serve(engine.handler, args.host, port, **options)
        servers.append(tcp)
        host, bound = tcp.sockets[0].getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        url = f"ws://{host}:{bound}{REALTIME_PATH}?intent=transcription"
    if args.unix:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.unix)
        old = os.umask(0o077)
        try:
            servers.append(await unix_serve(engine.handler, args.unix, **options))
        finally:
            os.umask(old)
    engine.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.exit_with_stdin:
        stdin = open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)  # noqa: SIM115 - the transport owns it
        await loop.connect_read_pipe(lambda: _StdinWatch(stop), stdin)
    line = {"url": url, "api_key": api_key, "unix_socket": args.unix, "model": settings.name, "pid": os.getpid()}
    print(json.dumps(line), flush=True)
    logger.info("listening on %s%s", url, f" and {args.unix}" if args.unix and port is not None else "")
    await stop.wait()
    logger.info("stopping")
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
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    quiet = max(logging.WARNING, logging.getLogger().level)
    for noisy in ("websockets", "faster_whisper", "asyncio"):  # a line per connection or per turn
        logging.getLogger(noisy).setLevel(quiet)
    try:
        return asyncio.run(serve_engine(args))
    except OSError as exc:  # the port or socket cannot be bound
        logger.error("cannot listen: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
