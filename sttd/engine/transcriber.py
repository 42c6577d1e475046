"""Whisper (faster-whisper, CTranslate2) in one worker thread, never on the event loop.

One :class:`Transcriber` per engine process owns the model and a
single-thread executor: the model is loaded there at start-up (then warmed
up with a second of silence, so the first utterance is not the slow one),
and every turn is transcribed there in the order it was committed. On a
2-core machine one turn at a time is as fast as it gets; CTranslate2 uses
``threads`` cores for that one turn. How a turn is decoded (short windows,
the full path) is :mod:`sttd.engine.decoding`; which model on which device,
:mod:`sttd.engine.whisper_model`.

Partial decodes (:attr:`~sttd.engine.decoding.Request.draft`, the audio of a
turn still in progress) share that one thread but yield to committed turns:
whenever the thread is free it takes the oldest committed turn first, and a
draft only when none is waiting (a draft already running is not interrupted:
Whisper's encoder cannot be).

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
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from .decoding import SHORT_FINALS, Decoder, Piece, Request
from .download import cached_path, missing_model_message
from .whisper_model import ModelSettings, ModelUnavailableError, choose_device, cpu_count, cuda_device_count

logger = logging.getLogger(__name__)

SPECULATIVE_FINALS = SHORT_FINALS and os.environ.get("STTD_ENGINE_SPECULATIVE_FINALS", "on") != "off"
"""Off: finals are decoded only once committed (an A/B switch for the bench)."""
FINAL, SPECULATIVE, DRAFT = 0, 1, 2
"""Priorities in the worker, best first."""


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
        self._decoder: Decoder | None = None
        self._loaded: Future[None] | None = None
        self.load_error: str | None = None

    def start_loading(self) -> Future[None]:
        """Load (and warm up) the model in the worker; idempotent."""
        if self._loaded is None:
            self._loaded = self._executor.submit(self._load)
        return self._loaded

    @property
    def loaded(self) -> bool:
        return self._decoder is not None

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
        decoder = self._decoder = Decoder(model)
        loaded = time.monotonic()
        silence = np.zeros(16000, dtype=np.float32)
        list(decoder.segments(Request(silence, language="en"), threading.Event()))
        list(decoder.segments(Request(silence, language="en", draft=True), threading.Event()))
        logger.info(
            "model %s loaded in %.1f s (warm-up %.1f s) on %s, %s, %d threads",
            s.name,
            loaded - started,
            time.monotonic() - loaded,
            device,
            compute_type,
            threads,
        )

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
            if self._decoder is None:
                put("error", ModelUnavailableError(self.load_error or "the model is not loaded"))
                return
            try:
                for piece in self._decoder.segments(request, abandoned):
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

        Only the short-window path is tried (:meth:`~sttd.engine.decoding.Decoder.short_final`); a turn it
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
            if self._decoder is not None:
                try:
                    result = self._decoder.short_final(request)
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
