"""The test Realtime server's turns: from appended audio to committed, transcribed items.

Three ways audio becomes turns (the session's effective config decides):

* **service VAD** (``turn_detection`` set): the energy VAD of
  :mod:`tests.realtime_vad` sends ``speech_started``/``speech_stopped`` and
  commits each utterance itself; between utterances only the prefix padding
  stays in the buffer;
* **live models** (``gpt-live-transcribe``, ``gpt-realtime-whisper`` with
  ``turn_detection`` null): the VAD runs inside, sends no speech events, and
  while it hears speech streams the upcoming item's scripted text, one word
  per ``live_word_ms`` of speech, as ``delta`` events for an ``item_id``
  assigned at the onset (before any commit); the client's commit then sends
  ``committed``, ``conversation.item.added``, the words not yet sent,
  ``completed`` (the whole text) and ``conversation.item.done``. The text is
  taken from the script at the onset; if the item is never committed (clear,
  close) it goes back to the front of the script;
* **manual** (other models, ``turn_detection`` null): the buffer grows until
  the client commits; the text follows the commit.

A commit of under 100 ms is refused ("buffer too small"); a committed turn
with no window above the threshold gets ``silence_transcript`` without
consuming the script (forced turns always use the script).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from sttd.protocol import BYTES_PER_MS, MIN_COMMIT_MS, SAMPLE_RATE, ServerEvents

from .realtime_faults import ServerOptions
from .realtime_records import _Live, _Session, _Turn
from .realtime_rules import completed_languages, is_live, split_deltas, words
from .realtime_vad import VadParams, has_speech, vad_params

logger = logging.getLogger(__name__)


class Turns:
    """The turn-making part of :class:`~tests.realtime_server.FakeRealtimeServer` (see the module docstring)."""

    _cond: threading.Condition
    _options: ServerOptions
    _events: ServerEvents
    _script: deque[str]
    _turns: list[_Turn]
    _call: Callable[..., Any]
    _send: Callable[..., Any]
    _target: Callable[[int | None], _Session]
    _take: Callable[[str, str], Any]
    _drop: Callable[..., Any]
    _error: Callable[..., Any]
    _commit_echo: Callable[..., Any]

    # ------------------------------------------------------------ on demand

    def force_turn(self, text: str | None = None, *, session: int | None = None) -> str:
        """Commit what the open session has buffered as a turn now, as the VAD would.

        Emits ``speech_started`` (unless speech is in progress) and
        ``speech_stopped`` when turn detection is on, then ``committed`` and the
        rest. ``text`` overrides the script for this turn. Returns the item id.
        """

        async def go() -> str:
            s = self._target(session)
            td = s.turn_detection()
            streamed, forced_text = "", text
            if td is not None:
                if s.speech_item is None:
                    item = self._events.new_item_id()
                    s.speech_start = s.buffer_start
                    await self._send(s, self._events.speech_started(item, s.buffer_start // BYTES_PER_MS))
                else:
                    item = s.speech_item
                s.speech_item = None
                await self._send(s, self._events.speech_stopped(item, s.total // BYTES_PER_MS))
            elif s.live is not None:
                live = self._end_live(s)
                item = live.item_id
                if forced_text is None:
                    forced_text, streamed = live.text, "".join(words(live.text)[: live.sent])
                else:
                    self._unreserve(live)
            else:
                item = self._events.new_item_id()
            await self._commit(s, item, kind="forced", text=forced_text, streamed=streamed)
            return item

        result: str = self._call(go)
        return result

    def force_speech_started(self, *, session: int | None = None) -> str:
        """Declare speech in progress now (``speech_started``, or a live model's upcoming item); returns its item id."""

        async def go() -> str:
            s = self._target(session)
            if s.turn_detection() is None:
                if not is_live(s.config):
                    raise RuntimeError("force_speech_started needs turn detection or a live model (not manual mode)")
                if s.live is None:
                    self._begin_live(s)
                if not s.utterance.speaking:  # speech from now on, as if a loud window began here
                    s.utterance.speaking = True
                    s.utterance.segment_start = s.utterance.last_loud_end = s.total
                assert s.live is not None
                return s.live.item_id
            if s.speech_item is None:
                await self._start_speech(s, s.buffer_start, s.total)
            assert s.speech_item is not None
            return s.speech_item

        result: str = self._call(go)
        return result

    # ------------------------------------------------------------ audio

    async def _on_append(self, s: _Session, pcm: bytes) -> None:
        with self._cond:
            s.audio.extend(pcm)
            self._cond.notify_all()
            opts = self._options
            never, energy, override = opts.never_commit, opts.energy_vad, opts.vad_rms_threshold
        s.total += len(pcm)
        if never:  # nothing will ever be committed: keep no buffer
            s.buffer.clear()
            s.buffer_start = s.total
            s.windows.reset(s.total)
            return
        s.buffer.extend(pcm)
        td = s.turn_detection()
        if energy and td is not None:
            await self._run_vad(s, pcm, vad_params(td, override))
        elif energy and is_live(s.config):
            await self._run_live(s, pcm, vad_params(None, override))
        else:
            s.windows.reset(s.total)
        if s.drop_at is not None and s.total >= s.drop_at:
            s.drop_at = None
            await self._drop(s, s.drop_mode)

    async def _run_vad(self, s: _Session, pcm: bytes, params: VadParams) -> None:
        for w in s.windows.feed(pcm, params):
            if s.speech_item is None:
                if w.loud:
                    await self._start_speech(s, max(s.buffer_start, w.start - params.prefix_bytes), w.end)
                else:
                    # Not speech: keep only the prefix padding in the buffer.
                    keep_from = max(s.buffer_start, w.end - params.prefix_bytes)
                    del s.buffer[: keep_from - s.buffer_start]
                    s.buffer_start = keep_from
            elif w.loud:
                s.last_speech_end = w.end
            elif w.end - s.last_speech_end >= params.silence_bytes:
                item = s.speech_item
                s.speech_item = None
                s.drop_at = None
                await self._send(s, self._events.speech_stopped(item, w.end // BYTES_PER_MS))
                await self._commit(s, item, kind="vad", upto=w.end)
            if s.ended:
                return

    async def _start_speech(self, s: _Session, audio_start: int, speech_end: int) -> None:
        del s.buffer[: audio_start - s.buffer_start]
        s.buffer_start = audio_start
        item = self._events.new_item_id()
        s.speech_item = item
        s.speech_start = audio_start
        s.last_speech_end = speech_end
        await self._send(s, self._events.speech_started(item, audio_start // BYTES_PER_MS))
        self._arm_drop(s)

    def _arm_drop(self, s: _Session) -> None:
        mode = self._take("drop_mid_utterance", "drop_times")
        if mode is not None:
            s.drop_mode = mode
            s.drop_at = s.total + self._options.drop_after_ms * BYTES_PER_MS

    # ------------------------------------------------------------ live models

    async def _run_live(self, s: _Session, pcm: bytes, params: VadParams) -> None:
        with self._cond:
            word_bytes = max(1, self._options.live_word_ms) * BYTES_PER_MS
        for w in s.windows.feed(pcm, params):
            if s.utterance.step(w, params) and s.live is None:
                self._begin_live(s)
            live = s.live
            if live is not None:
                pieces = words(live.text)
                due = min(len(pieces), s.utterance.heard // word_bytes)
                while live.sent < due and not s.ended:
                    await self._send(s, self._events.delta(live.item_id, pieces[live.sent]))
                    live.sent += 1
            if s.ended:
                return

    def _begin_live(self, s: _Session) -> None:
        """Speech began: the upcoming item gets its id and (from the script) its text."""
        with self._cond:
            if self._script:
                text, from_script = self._script.popleft(), True
            else:
                text, from_script = self._options.default_transcript.format(n=len(self._turns) + 1), False
        s.live = _Live(self._events.new_item_id(), text, from_script)
        logger.info("session %d: speech heard, upcoming item %s", s.index, s.live.item_id)
        self._arm_drop(s)

    def _end_live(self, s: _Session) -> _Live:
        live = s.live
        assert live is not None
        s.live = None
        s.utterance.reset()
        return live

    def _unreserve(self, live: _Live) -> None:
        if live.from_script:
            with self._cond:
                self._script.appendleft(live.text)

    def _abandon_live(self, s: _Session) -> None:
        """The upcoming item will never be committed (clear, close): its text goes back to the script."""
        if s.live is not None:
            self._unreserve(self._end_live(s))

    # ------------------------------------------------------------ commits

    async def _on_commit(self, s: _Session, event_id: str | None) -> None:
        with self._cond:
            never = self._options.never_commit
        if never:
            return
        await self._commit_echo(s, event_id)
        buffered_ms = len(s.buffer) / BYTES_PER_MS
        if buffered_ms < MIN_COMMIT_MS:
            await self._error(
                s,
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {buffered_ms:.2f}ms of audio.",
                event_id,
            )
            return
        if s.live is not None:
            live = self._end_live(s)
            streamed = "".join(words(live.text)[: live.sent])
            await self._commit(s, live.item_id, kind="client", text=live.text, streamed=streamed)
            return
        item = s.speech_item or self._events.new_item_id()
        s.speech_item = None
        await self._commit(s, item, kind="client")

    def _has_speech(self, s: _Session, pcm: bytes) -> bool:
        return has_speech(pcm, vad_params(s.turn_detection(), self._options.vad_rms_threshold))

    async def _commit(
        self,
        s: _Session,
        item_id: str,
        *,
        kind: str,
        upto: int | None = None,
        text: str | None = None,
        streamed: str = "",
    ) -> None:
        upto = s.total if upto is None else upto
        n_bytes = max(0, upto - s.buffer_start)
        pcm = bytes(s.buffer[:n_bytes])
        del s.buffer[:n_bytes]
        start_ms, end_ms = s.buffer_start // BYTES_PER_MS, upto // BYTES_PER_MS
        s.buffer_start = upto
        if upto > s.windows.pos:  # the unanalysed audio was committed too
            s.windows.reset(upto)
        s.drop_at = None
        previous, s.last_item_id = s.last_item_id, item_id
        turn = self._new_turn(s, item_id, previous, kind, text, pcm, start_ms, end_ms)
        turn.streamed = streamed
        self._order(s, turn)
        logger.info("session %d turn %d (%s) %s", s.index, turn.number, kind, item_id)
        logger.debug("turn %d transcript: %r", turn.number, turn.transcript)
        await self._send(s, self._events.committed(item_id, previous))
        await self._send(s, self._events.item_added(item_id, previous))
        s.spawn(self._transcribe(s, turn, self._options.out_of_order_hold_s))

    def _new_turn(
        self,
        s: _Session,
        item_id: str,
        previous: str | None,
        kind: str,
        text: str | None,
        pcm: bytes,
        start_ms: int,
        end_ms: int,
    ) -> _Turn:
        with self._cond:
            opts = self._options
            number = len(self._turns) + 1
            silent_text = opts.silence_transcript
            if text is not None:
                transcript = text
            elif kind != "forced" and silent_text is not None and not self._has_speech(s, pcm):
                transcript = silent_text
            elif self._script:
                transcript = self._script.popleft()
            else:
                transcript = opts.default_transcript.format(n=number)
            turn = _Turn(
                number=number,
                session=s.index,
                item_id=item_id,
                previous_item_id=previous,
                kind=kind,
                transcript=transcript,
                pcm=pcm,
                audio_start_ms=start_ms,
                audio_end_ms=end_ms,
                failed=number in opts.fail_turns,
                languages=completed_languages(s.config),
            )
            self._turns.append(turn)
            self._cond.notify_all()
            return turn

    def _order(self, s: _Session, turn: _Turn) -> None:
        """Completion order: commit order, except that a turn in
        ``out_of_order_turns`` completes right after its successor."""
        with self._cond:
            swap = turn.number in self._options.out_of_order_turns
        held = s.held
        if held is not None:
            turn.gate = held.pending_gate
            turn.gate_ready.set()
            held.gate = turn
            held.gate_ready.set()
            s.tail, s.held = held, None
        elif swap:
            turn.pending_gate = s.tail
            s.held = turn
        else:
            turn.gate = s.tail
            turn.gate_ready.set()
            s.tail = turn

    async def _transcribe(self, s: _Session, turn: _Turn, hold_s: float) -> None:
        try:
            try:
                await asyncio.wait_for(turn.gate_ready.wait(), hold_s)
            except TimeoutError:
                logger.info("turn %d: no successor within %s s, completing anyway", turn.number, hold_s)
                if s.held is turn:
                    s.held = None
                    turn.gate = turn.pending_gate
                    s.tail = turn
            if turn.gate is not None:
                await turn.gate.done.wait()
            with self._cond:
                delay = self._options.completion_delay_s + self._options.turn_delays.get(turn.number, 0.0)
                interval = self._options.delta_interval_s
                pieces = self._options.delta_pieces
                fail_code, fail_message = self._options.fail_code, self._options.fail_message
            if delay > 0:
                await asyncio.sleep(delay)
            if turn.failed:
                await self._send(s, self._events.failed(turn.item_id, fail_code, fail_message))
            else:
                await self._send_text(s, turn, pieces, interval)
            with self._cond:
                turn.completed = True
                self._cond.notify_all()
        finally:
            turn.done.set()

    async def _send_text(self, s: _Session, turn: _Turn, pieces: int, interval: float) -> None:
        """The deltas not yet streamed, ``completed`` and ``conversation.item.done``."""
        streamed = turn.streamed if turn.transcript.startswith(turn.streamed) else ""
        for piece in split_deltas(turn.transcript[len(streamed) :], pieces):
            await self._send(s, self._events.delta(turn.item_id, piece))
            if interval > 0:
                await asyncio.sleep(interval)
        seconds = len(turn.pcm) / (SAMPLE_RATE * 2)
        completed = self._events.completed(turn.item_id, turn.transcript, seconds)
        if turn.languages is not None:
            completed["languages"] = turn.languages
        await self._send(s, completed)
        await self._send(s, self._events.item_done(turn.item_id, turn.previous_item_id, turn.transcript))
