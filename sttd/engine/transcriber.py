"""Whisper (faster-whisper, CTranslate2) in one worker thread, never on the event loop.

One :class:`Transcriber` per engine process owns the model and a
single-thread executor: the model is loaded there at start-up (then warmed
up with a second of silence, so the first utterance is not the slow one),
and every turn is transcribed there in the order it was committed. On a
2-core machine one turn at a time is as fast as it gets; CTranslate2 uses
``threads`` cores for that one turn.

Partial decodes (:attr:`Request.draft`, the audio of a turn still in
progress) share that one thread but yield to committed turns: whenever the
thread is free it takes the oldest committed turn first, and a draft only
when none is waiting (a draft already running is not interrupted: Whisper's
encoder cannot be). A draft with a known language encodes only the audio it
has plus a second of padding (at least :data:`DRAFT_MIN_S`) instead of a
30 s window, and decodes greedily with a length limit and no repeated
trigrams (a short window makes Whisper loop more readily): ≈ 0.3 s of CPU
for 3 s of audio instead of ≈ 2 s. Drafts are only ever compared with each
other (:mod:`sttd.engine.partials`); the committed turn's final is the full
decode.

Finals of turns up to :data:`DRAFT_MAX_S` take the same short window, with
beam search (:meth:`Transcriber._short_final`): faster-whisper's own path
always encodes a 30 s window, so a short utterance cost about the same as a
long one (≈ 0.8 s for Whisper base, int8, on 2 quiet cores; 1.3-1.5 s busy),
against 0.2-0.35 s now. A short decode that does not look sound (cut at its
length limit, a low average log-probability, repetitive) is done again the
full way, with temperature fallback. With no language set, a short decode
tells it from its own window's encoder output (CTranslate2's
``detect_language``); the full path detects it from the encoder output it
decodes with (faster-whisper's ``multilingual`` mode). Either way the window
is encoded once. ``STTD_ENGINE_SHORT_FINALS=off`` restores the full path
for every final (the bench's baseline).

A *speculative final* (:meth:`Transcriber.speculate`) is a committed turn's
short-window final decoded before its commit, when the session's voice
detection hears a pause begin: if the commit then finds no speech after that
decode's audio, the result is the final (:mod:`sttd.engine.speculative`).
In the worker it comes after every committed turn waiting and before every
draft, so it delays another session's final no more than a draft does.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .download import cached_path, missing_model_message

logger = logging.getLogger(__name__)

BEAM_SIZE = 5
DRAFT_MIN_S = 5.0
"""A draft's encoder window: its audio plus 1 s of silence, at least this long (shorter ones loop)."""
DRAFT_MAX_S = 25.0
"""Drafts of longer audio take the full decode's path (one 30 s window)."""
DRAFT_TOKENS_PER_S = 6
FINAL_TOKENS_PER_S = 12
"""A final's length limit: a turn that reaches it is decoded again the full way (it was looping)."""
SHORT_MIN_LOGPROB = -1.0
"""A short-window final with a lower average token log-probability is decoded again the full way
(faster-whisper's own threshold for a temperature fallback)."""
MAX_COMPRESSION_RATIO = 2.4
"""...and so is one whose text compresses better than this (a loop; faster-whisper's threshold too)."""
MAX_WORDS_PER_S = 5.0
"""...and so is one with more words than this per second of audio (at least 1 s): a sentence said again after
itself (seen: 22 words from 3.7 s of audio) neither compresses like a loop nor scores low."""
SHORT_FINALS = os.environ.get("STTD_ENGINE_SHORT_FINALS", "on") != "off"
"""Off: every final takes the full 30 s window (the engine as it was: the bench's baseline)."""
SPECULATIVE_FINALS = SHORT_FINALS and os.environ.get("STTD_ENGINE_SPECULATIVE_FINALS", "on") != "off"
"""Off: finals are decoded only once committed (an A/B switch for the bench)."""
FINAL, SPECULATIVE, DRAFT = 0, 1, 2
"""Priorities in the worker, best first."""
TEMPERATURES = (0.0, 0.4, 0.8)
"""Fallback temperatures when a decode looks like a failure (repetition, low probability)."""


@dataclass(frozen=True)
class ModelSettings:
    """``[local]``: which model, where it runs."""

    model: str = "base.en"
    """A faster-whisper model name (fetched by its loader on first use) or a directory."""
    device: str = "cpu"
    compute_type: str = "int8"
    threads: int = 0
    """0: every core this process may run on."""

    @property
    def name(self) -> str:
        """What ``session.updated`` reports as the transcription model."""
        path = os.path.expanduser(self.model)
        return os.path.basename(os.path.normpath(path)) if os.path.isdir(path) else self.model


def choose_device(device: str, compute_type: str, cuda_devices: int) -> tuple[str, str]:
    """``(device, compute_type)`` to load the model with, for ``[local] device`` and the CUDA devices found.

    ``auto`` takes CUDA when CTranslate2 finds a device, else the CPU. On
    CUDA the CPU's default ``int8`` becomes ``int8_float16`` (int8 weights,
    float16 arithmetic: what GPUs are fast at); any other compute type is
    kept as configured. ``cuda`` without a device is refused with a reason
    rather than left to CTranslate2's error. No I/O: the count is passed in.
    """
    if device == "auto":
        device = "cuda" if cuda_devices > 0 else "cpu"
    if device == "cuda":
        if cuda_devices <= 0:
            raise ModelUnavailableError(
                'cannot use [local] device = "cuda": CTranslate2 finds no CUDA device '
                '(use "auto" to fall back to the CPU)'
            )
        if compute_type == "int8":
            compute_type = "int8_float16"
    return device, compute_type


def cuda_device_count() -> int:
    """CUDA devices CTranslate2 can use (0 when it was built without CUDA or finds no driver)."""
    try:
        import ctranslate2  # type: ignore[import-untyped, import-not-found, unused-ignore]

        return int(ctranslate2.get_cuda_device_count())
    except Exception:  # no CUDA runtime: the CPU it is
        return 0


@dataclass(frozen=True)
class Request:
    """One committed turn to transcribe (or, with ``draft``, the audio so far of one in progress)."""

    audio: npt.NDArray[np.float32]
    """16 kHz mono, full scale 1.0."""
    language: str = ""
    """ISO-639-1, or "" to detect it."""
    prompt: str = ""
    hotwords: str = ""
    """Words to expect (the session's ``keywords``)."""
    vad_threshold: float | None = None
    """Drop what Silero VAD does not call speech first (client commits, whose audio no VAD cut)."""
    report_language: bool = False
    """The session reports the detected language: detect it once up front rather than per segment."""
    draft: bool = False
    """A partial decode of a turn in progress: greedy, no fallback, after every committed turn waiting."""


@dataclass(frozen=True)
class Piece:
    """One segment of a transcript, as the worker produces it."""

    text: str
    language: str
    """The language it was decoded in; "" when each segment detected its own (not reported)."""


class Speculation:
    """A short-window final decoded ahead of its commit (see :meth:`Transcriber.speculate`).

    :attr:`result` resolves to ``(text, language)``, or None when there is no
    usable result (abandoned before it started, unsound, failed): the final is
    then decoded as usual. Awaiting it is safe to cancel.
    """

    def __init__(self, request: Request, result: asyncio.Future[tuple[str, str] | None]) -> None:
        self.request = request
        self.result = result
        self._lock = threading.Lock()
        self._started = False
        self._abandoned = False

    def claim(self) -> bool:
        """The worker is about to decode it: False when it was abandoned first."""
        with self._lock:
            if not self._abandoned:
                self._started = True
            return self._started

    def abandon(self) -> bool:
        """Give up on it unless the worker has started it; returns whether it has (its result will come)."""
        with self._lock:
            if not self._started:
                self._abandoned = True
            return self._started


class ModelUnavailableError(Exception):
    """The model could not be loaded; every turn fails with this message."""


def supported_languages() -> frozenset[str]:
    """Language codes Whisper knows (without loading a model)."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES  # type: ignore[import-untyped, import-not-found, unused-ignore]

    return frozenset(_LANGUAGE_CODES)


def _compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class Transcriber:
    """The model and its worker thread."""

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper")
        # Work waiting for the thread, best first: (priority, arrival, run, never_ran). One executor
        # task per entry pops the best entry when it runs, so committed turns overtake the rest.
        self._waiting: list[tuple[int, int, Callable[[], None], Callable[[], None]]] = []
        self._lock = threading.Lock()
        self._arrivals = itertools.count()
        self._model: Any = None
        self._loaded: Future[None] | None = None
        self.load_error: str | None = None

    def start_loading(self) -> Future[None]:
        """Load (and warm up) the model in the worker; idempotent."""
        if self._loaded is None:
            self._loaded = self._executor.submit(self._load)
        return self._loaded

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _load(self) -> None:
        s = self.settings
        started = time.monotonic()
        threads = s.threads or cpu_count()
        try:
            from faster_whisper import WhisperModel  # type: ignore[import-untyped, import-not-found, unused-ignore]

            device, compute_type = choose_device(s.device, s.compute_type, cuda_device_count())
            model = WhisperModel(
                os.path.expanduser(s.model),
                device=device,
                compute_type=compute_type,
                cpu_threads=threads,
                num_workers=1,
            )
        except Exception as exc:  # anything the loader raises: a missing file, no network, a bad compute type
            self.load_error = f"cannot load the model {s.model!r}: {exc.__class__.__name__}: {exc}"
            if not os.path.isdir(os.path.expanduser(s.model)) and cached_path(s.model) is None:
                # Not on this machine and the loader could not fetch it (offline, or HF_HUB_OFFLINE):
                # say what is missing and the command that fixes it, not the hub client's exception.
                logger.debug("%s", self.load_error)
                self.load_error = missing_model_message(s.model)
            logger.error("%s", self.load_error)
            raise ModelUnavailableError(self.load_error) from None
        self._model = model
        loaded = time.monotonic()
        silence = np.zeros(16000, dtype=np.float32)
        list(self._iter_segments(Request(silence, language="en"), threading.Event()))
        list(self._iter_segments(Request(silence, language="en", draft=True), threading.Event()))
        logger.info(
            "model %s loaded in %.1f s (warm-up %.1f s) on %s, %s, %d threads",
            s.name,
            loaded - started,
            time.monotonic() - loaded,
            device,
            compute_type,
            threads,
        )

    def _language(self, request: Request) -> tuple[str, bool]:
        """Whisper's language for this turn, and whether each segment detects its own instead."""
        model = self._model
        if not model.model.is_multilingual:
            return "en", False  # an English-only model decodes English whatever it is told
        if request.language:
            return request.language, False
        if request.report_language:
            # One answer for the whole turn costs a second encoding of the window (as faster-whisper's
            # own detection does); only sessions that report the language pay it.
            language, _, _ = model.detect_language(request.audio)
            return str(language), False
        # Detect from the decoding window's own encoder output (see the module docstring).
        return "en", True

    def _short_language(self, request: Request) -> str | None:
        """The language a short-window decode uses ("" to detect it there); None: take the full path."""
        if request.audio.size / 16000 > DRAFT_MAX_S:
            return None
        return request.language if self._model.model.is_multilingual else "en"

    def _window_decode(
        self, audio: npt.NDArray[np.float32], language: str, *, beam_size: int, tokens_per_s: float
    ) -> tuple[str, str, bool]:
        """Decode ``audio`` over an encoder window of its own length (see the module docstring).

        ``language`` "" is detected from that window's own encoder output (one
        encoder pass, not the second one faster-whisper's detection costs).
        Returns the text, the language, and whether the text looks sound: not cut
        off at the length limit, an average log-probability above
        :data:`SHORT_MIN_LOGPROB`, not repetitive, and not more words than
        :data:`MAX_WORDS_PER_S` allows.
        """
        import ctranslate2  # type: ignore[import-untyped, import-not-found, unused-ignore]
        from faster_whisper.tokenizer import Tokenizer  # type: ignore[import-untyped, import-not-found, unused-ignore]

        model = self._model
        seconds = audio.size / 16000
        window = int(max(DRAFT_MIN_S, seconds + 1.0) * 16000)
        padded = np.zeros(window, dtype=np.float32)
        padded[: audio.size] = audio
        features = model.feature_extractor(padded)
        frames = features.shape[-1] // 2 * 2  # the encoder's first convolution has stride 2
        batch = np.ascontiguousarray(features[None, :, :frames], dtype=np.float32)
        encoded = model.model.encode(ctranslate2.StorageView.from_array(batch), to_cpu=False)
        if not language:
            best = model.model.detect_language(encoded)[0][0][0]  # "<|en|>", the likeliest
            language = str(best)[2:-2]
        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language)
        max_length = int(10 + tokens_per_s * seconds)
        result = model.model.generate(
            encoded,
            [[*tokenizer.sot_sequence, tokenizer.no_timestamps]],
            beam_size=beam_size,
            max_length=max_length,
            no_repeat_ngram_size=3,
            return_scores=True,
        )
        tokens = result[0].sequences_ids[0]
        text = str(tokenizer.decode([t for t in tokens if t < tokenizer.eot]))
        sound = (
            len(tokens) < max_length - len(tokenizer.sot_sequence) - 1
            and float(result[0].scores[0]) >= SHORT_MIN_LOGPROB
            and _compression_ratio(text) <= MAX_COMPRESSION_RATIO
            and len(text.split()) <= MAX_WORDS_PER_S * max(seconds, 1.0)
        )
        return text, language, sound

    def _draft_text(self, request: Request) -> tuple[str, str] | None:
        """A quick draft decode (see the module docstring): text and language; None: the full path."""
        language = self._short_language(request)
        if language is None:
            return None
        text, language, _ = self._window_decode(request.audio, language, beam_size=1, tokens_per_s=DRAFT_TOKENS_PER_S)
        return text, language

    def _short_final(self, request: Request) -> tuple[str, str] | None:
        """A committed turn's text from a window of its own length, beam search; None: take the full path.

        What the full path would do first is done here too: a client commit's audio
        loses what Silero does not call speech (faster-whisper's own VAD filter, same
        options). A decode that does not look sound (see :meth:`_window_decode`) is
        thrown away for the full path's 30 s window and temperature fallback.
        """
        language = self._short_language(request)
        if language is None or not SHORT_FINALS:
            return None
        audio = request.audio
        if request.vad_threshold is not None:
            from faster_whisper.vad import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
                VadOptions,
                collect_chunks,
                get_speech_timestamps,
            )

            speech = get_speech_timestamps(audio, VadOptions(threshold=request.vad_threshold))
            if not speech:
                return "", language
            audio = np.concatenate(collect_chunks(audio, speech)[0])
        text, language, sound = self._window_decode(
            audio, language, beam_size=BEAM_SIZE, tokens_per_s=FINAL_TOKENS_PER_S
        )
        if not sound:
            logger.debug("a short-window final did not look sound; decoding the full window")
            return None
        return text, language

    def _iter_segments(self, request: Request, abandoned: threading.Event) -> Any:
        model = self._model
        short = self._draft_text(request) if request.draft else self._short_final(request)
        if short is not None:
            if short[0].strip():
                yield Piece(*short)
            return
        options: dict[str, Any] = {}
        if request.vad_threshold is not None:
            options = {"vad_filter": True, "vad_parameters": {"threshold": request.vad_threshold}}
        language, multilingual = self._language(request)
        segments, _ = model.transcribe(
            request.audio,
            language=language,
            multilingual=multilingual,
            initial_prompt=request.prompt or None,
            hotwords=request.hotwords or None,
            beam_size=1 if request.draft else BEAM_SIZE,
            temperature=[TEMPERATURES[0]] if request.draft else list(TEMPERATURES),
            condition_on_previous_text=False,
            without_timestamps=True,
            **options,
        )
        for segment in segments:
            yield Piece(segment.text, "" if multilingual else language)
            if abandoned.is_set():
                return

    async def transcribe(self, request: Request) -> AsyncIterator[Piece]:
        """The transcript of one turn, segment by segment, as the worker produces them.

        Raises :class:`ModelUnavailableError` when the model could not be
        loaded; any other exception is a failed transcription. Stopping the
        iteration early (or cancelling its task) tells the worker to stop
        after the segment it is on.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        abandoned = threading.Event()

        def put(kind: str, value: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        def never_ran() -> None:
            put("error", ModelUnavailableError("the engine is shutting down"))

        def work() -> None:
            if abandoned.is_set():  # the session gave up on it while it waited (a draft overtaken by a commit)
                return
            if self._model is None:
                put("error", ModelUnavailableError(self.load_error or "the model is not loaded"))
                return
            try:
                for piece in self._iter_segments(request, abandoned):
                    put("text", piece)
            except Exception as exc:  # reported to the session as a failed transcription
                put("error", exc)
            else:
                put("done", None)

        self.start_loading()
        self._submit(DRAFT if request.draft else FINAL, work, never_ran)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "text":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            # Not future.cancel(): the executor task runs whichever entry is best, not this one.
            # An entry that has not started returns at once when its turn comes.
            abandoned.set()

    def speculate(self, request: Request) -> Speculation:
        """Decode ``request`` (a turn not yet committed) the way its final would be, in the background.

        Only the short-window path is tried (:meth:`_short_final`); a turn it
        would not do gets None, and its final is decoded as usual once
        committed. Runs after every committed turn waiting, before drafts.
        Must be called on the event loop; :meth:`Speculation.abandon` drops it
        if it has not started.
        """
        loop = asyncio.get_running_loop()
        speculation = Speculation(request, loop.create_future())

        def resolve(value: tuple[str, str] | None) -> None:
            if not speculation.result.done():  # awaited and cancelled meanwhile: nobody wants it
                speculation.result.set_result(value)

        def put(value: tuple[str, str] | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(resolve, value)

        def work() -> None:
            if not speculation.claim():
                put(None)
                return
            result = None
            started = time.monotonic()
            if self._model is not None:
                try:
                    result = self._short_final(request)
                    logger.debug(
                        "a speculative final of %.2f s in %.2f s",
                        request.audio.size / 16000,
                        time.monotonic() - started,
                    )
                except Exception as exc:  # the final will be decoded again and report it
                    logger.debug("a speculative final failed: %s: %s", exc.__class__.__name__, exc)
            put(result)

        self.start_loading()
        if not SPECULATIVE_FINALS:
            resolve(None)
            return speculation
        try:
            self._submit(SPECULATIVE, work, lambda: put(None))
        except ModelUnavailableError:
            resolve(None)
        return speculation

    def _submit(self, priority: int, work: Callable[[], None], never_ran: Callable[[], None]) -> None:
        entry = (priority, next(self._arrivals), work, never_ran)
        with self._lock:
            heapq.heappush(self._waiting, entry)
        try:
            future = self._executor.submit(self._run_best)
        except RuntimeError:  # shut down
            with self._lock:
                self._waiting.remove(entry)
                heapq.heapify(self._waiting)
            raise ModelUnavailableError("the engine is shutting down") from None
        future.add_done_callback(self._maybe_never_ran)

    def _take_best(self) -> tuple[Callable[[], None], Callable[[], None]] | None:
        with self._lock:
            if not self._waiting:
                return None
            _, _, work, never_ran = heapq.heappop(self._waiting)
        return work, never_ran

    def _run_best(self) -> None:
        best = self._take_best()
        if best is not None:
            best[0]()

    def _maybe_never_ran(self, future: Future[None]) -> None:
        # A cancelled executor task leaves one entry that will never run: tell its waiter.
        if future.cancelled():
            best = self._take_best()
            if best is not None:
                best[1]()

    def close(self) -> None:
        """Stop taking work; a transcription in progress finishes in the background."""
        self._executor.shutdown(wait=False, cancel_futures=True)
