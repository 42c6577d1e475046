"""How one turn is decoded by a loaded Whisper model: short windows first, the full 30 s window when needed.

A :class:`Decoder` wraps the faster-whisper model the
:class:`~sttd.engine.transcriber.Transcriber` loaded and is used only on its
worker thread; it knows nothing of threads, priorities or the event loop.

A draft (:attr:`Request.draft`, the audio of a turn still in progress) with a
known language encodes only the audio it has plus a second of padding (at
least :data:`DRAFT_MIN_S`) instead of a 30 s window, and decodes greedily
with a length limit and no repeated trigrams (a short window makes Whisper
loop more readily): ≈ 0.3 s of CPU for 3 s of audio instead of ≈ 2 s.
Drafts are only ever compared with each other (:mod:`sttd.engine.partials`);
the committed turn's final is the full decode.

Finals of turns up to :data:`DRAFT_MAX_S` take the same short window, with
beam search (:meth:`Decoder.short_final`): faster-whisper's own path
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
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

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
TEMPERATURES = (0.0, 0.4, 0.8)
"""Fallback temperatures when a decode looks like a failure (repetition, low probability)."""


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


def _compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


class Decoder:
    """A loaded faster-whisper model, and how it decodes one :class:`Request`. Not thread-safe: one thread uses it."""

    def __init__(self, model: Any) -> None:
        self._model = model

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

    def short_final(self, request: Request) -> tuple[str, str] | None:
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

    def segments(self, request: Request, abandoned: threading.Event) -> Any:
        """The pieces of ``request``'s transcript, as decoded; stops after the segment it is on once ``abandoned``."""
        model = self._model
        short = self._draft_text(request) if request.draft else self.short_final(request)
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
