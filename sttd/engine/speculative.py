"""Speculative finals: a turn's final decoded when its pause begins, used if the commit finds no speech since.

A final used to be decoded only after the commit, which comes
``silence_duration_ms`` into the pause (the engine's server VAD, or sttd's
own voice detection for the live models): the decode (0.2-0.35 s on 2 cores
with Whisper base) came on top of that wait. A :class:`Lookahead` (one per
session) starts the final's decode :data:`SPECULATE_AFTER_S` into a pause
instead, over the turn's audio so far and with the final's own settings
(:meth:`~sttd.engine.transcriber.Transcriber.speculate`). At the commit it
is the final when

* its audio is the committed audio's beginning (same first sample, same samples),
* the voice detection heard no speech after its last sample (only the
  pause's silence came since), and
* the request is the same but for the audio (language, prompt, keywords, VAD filter);

and when its decode has at least started (one that is still waiting is
dropped, and the final is decoded at a committed turn's priority as before).
Otherwise, or when it gives no sound result, the final is decoded as usual.
Speech resuming after the cut drops a speculation that has not started.
No I/O beyond the transcriber it is given.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .decoding import DRAFT_MAX_S, Request
from .transcriber import Speculation, Transcriber
from .vad import RATE

SPECULATE_AFTER_S = 0.1
"""How far into a pause the final is decoded ahead: before the drafts stop (0.15 s), so it is queued ahead of
them; 0.06 s was faster still but decoded ahead at more pauses inside sentences (more CPU)."""


@dataclass(frozen=True)
class _Ahead:
    speculation: Speculation
    cut: int
    """Stream position after its audio's last sample (the coordinates of whoever started it)."""
    mark: int | None
    """Server VAD: where the pause it was taken in began (a new pause is a new mark); None for client commits."""


def _same_request(a: Request, b: Request) -> bool:
    """The same but for the audio (compared field by field: dataclass equality would compare arrays)."""
    return all(getattr(a, f.name) == getattr(b, f.name) for f in fields(Request) if f.name != "audio")


class Lookahead:
    """One session's speculative final, if any."""

    def __init__(self, transcriber: Transcriber) -> None:
        self._transcriber = transcriber
        self._ahead: _Ahead | None = None

    @property
    def cut(self) -> int | None:
        """Where the current speculation's audio ends, None when there is none."""
        return None if self._ahead is None else self._ahead.cut

    @property
    def mark(self) -> int | None:
        return None if self._ahead is None else self._ahead.mark

    def due(self, pause_begun: int | None, scored: int, mark: int | None = None) -> bool:
        """Whether to start one now: a pause since ``pause_begun`` has lasted long enough, none for it yet."""
        if pause_begun is None or scored - pause_begun < SPECULATE_AFTER_S * RATE:
            return False
        if self._ahead is None:
            return True
        return self._ahead.mark != mark or self._ahead.cut < pause_begun

    def start(self, request: Request, cut: int, mark: int | None = None) -> None:
        """Decode ``request`` (the turn's audio up to stream position ``cut``) ahead; replaces any older one."""
        self.drop()
        if request.audio.size > DRAFT_MAX_S * RATE:
            return  # a final of that length takes the full path: nothing to gain ahead
        self._ahead = _Ahead(self._transcriber.speculate(request), cut, mark)

    def heard(self, last_speech: int | None) -> None:
        """Speech was heard up to ``last_speech``: a speculation cut before it is out of date."""
        if self._ahead is not None and last_speech is not None and last_speech > self._ahead.cut:
            self.drop()

    def drop(self) -> None:
        """Forget the current speculation (its decode is skipped if it has not started)."""
        if self._ahead is not None:
            self._ahead.speculation.abandon()
            self._ahead = None

    def take(self, request: Request, mark: int | None = None) -> Speculation | None:
        """At a commit of ``request``: the speculation to use as its final, or None to decode it as usual.

        The caller has already told :meth:`heard` of all speech up to the commit;
        ``mark`` is the server VAD's pause that ended the turn (None for a client commit).
        """
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        spec = ahead.speculation
        audio = spec.request.audio
        usable = (
            ahead.mark == mark
            and audio.size <= request.audio.size
            and _same_request(spec.request, request)
            and np.array_equal(request.audio[: audio.size], audio)
        )
        if not usable:
            spec.abandon()
            return None
        # abandon() is False when its decode had not started (and now never will): decode the final as usual.
        return spec if spec.abandon() else None
