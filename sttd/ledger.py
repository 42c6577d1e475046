"""Audio bookkeeping for one dictation: what is queued, what the service still owes. No I/O.

The :class:`AudioLedger` keeps two pieces of audio so that no word is lost:

* the *backlog*: audio captured but not yet sent (while connecting, while
  reconnecting, or simply not yet written), bounded in bytes; the oldest
  audio beyond the bound is dropped and counted;
* the *replay log*: audio already sent on the current connection that the
  service has not turned into finished transcripts yet. When the connection
  drops, that audio goes back in front of the backlog, so an utterance cut in
  half by a drop is transcribed whole. It is bounded like the backlog: audio
  older than the bound is trimmed and counted (no turn could be resent whole
  from it anyway).

When sttd finds the turns itself (its own voice detection, or manual mode),
each client commit is queued as a :data:`COMMIT` mark *between* the frames,
exactly where the turn ended, and the replay after a drop puts the marks of
unfinished turns back in the same places: the turns of the new connection
are the turns of the old one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

from . import protocol as p

IDLE_REPLAY_BYTES = 2000 * p.BYTES_PER_MS
"""After a drop with no turn owed, the audio resent before what the service may not have heard yet:
2 s (a word its VAD had not flagged yet)."""
UNCONFIRMED_S = 2.0
"""Audio sent this recently before a drop may not have reached the service's VAD: it is always resent
(after a reconnect the backlog goes out in a burst, and the drop may come before any speech_started)."""
REPLAY_FRAME_BYTES = 100 * p.BYTES_PER_MS
"""Resent audio goes out in 100 ms appends, not one event the size of the whole log."""


class CommitMark:
    """A client commit queued among the frames: commit everything sent before it."""

    def __repr__(self) -> str:
        return "COMMIT"


COMMIT: Final = CommitMark()
Frame = bytes | CommitMark


@dataclass
class _Turn:
    item_id: str
    end: int
    """Byte offset on the connection's timeline where its audio ends."""
    done: bool = False


class AudioLedger:
    """Backlog, replay log and turns of one dictation.

    Positions are byte offsets on the *current connection's* audio timeline,
    which is what the service's ``audio_end_ms`` refers to.
    ``client_turns`` says that sttd, not the service, commits each turn.
    """

    def __init__(self, limit_bytes: int, *, client_turns: bool = False) -> None:
        self.client_turns = client_turns
        self._limit = limit_bytes
        self._backlog: deque[Frame] = deque()
        self._backlog_bytes = 0
        self.dropped_bytes = 0
        """Captured audio never sent: the backlog overflowed while disconnected."""
        self.trimmed_bytes = 0
        """Sent audio cut from the replay log because it grew past the limit (no turn finished for that long)."""
        self._in_flight = False
        # The frames as sent, not one bytearray: trimming the front of a bytearray keeps its
        # allocation, and a log at its bound would hold about twice the audio it keeps.
        self._log: deque[bytes] = deque()
        self._log_bytes = 0
        self._log_start = 0  # offset of the first byte of _log[0]
        self._sent = 0
        self._recent: deque[tuple[float, int]] = deque()  # (sent at, offset before it) of recent frames
        self._turns: deque[_Turn] = deque()
        self._committed_at = 0
        self._speech_end: dict[str, int] = {}  # the service's own turns: where speech_stopped put the end
        self._commits: deque[int] = deque()  # client commits sent, not yet answered by committed
        self._service_speech = False
        self.client_speech = False
        """sttd's own voice detection hears speech (set by the session)."""

    # -- capture side

    def add(self, pcm: bytes) -> None:
        self._backlog.append(pcm)
        self._backlog_bytes += len(pcm)
        self._drop_oldest()

    def add_commit(self) -> None:
        """The turn ends here: commit it once the audio before it is sent."""
        self._backlog.append(COMMIT)

    def _drop_oldest(self) -> None:
        # Never the frame being written right now; commit marks stay (what they end is still worth committing).
        index = 1 if self._in_flight else 0
        while self._backlog_bytes > self._limit and index < len(self._backlog) - 1:
            old = self._backlog[index]
            if isinstance(old, CommitMark):
                index += 1
                continue
            del self._backlog[index]
            self._backlog_bytes -= len(old)
            self.dropped_bytes += len(old)

    @property
    def backlog_ms(self) -> int:
        """Captured audio waiting to be sent."""
        return self._backlog_bytes // p.BYTES_PER_MS

    @property
    def backlog_empty(self) -> bool:
        return not self._backlog

    def next_frame(self) -> Frame | None:
        """The oldest frame (or commit mark) not yet sent; it stays queued until :meth:`sent`."""
        if not self._backlog:
            return None
        self._in_flight = True
        return self._backlog[0]

    def sent(self, now: float) -> None:
        """What :meth:`next_frame` returned was written to the connection (or skipped, for a mark) at ``now``."""
        self._in_flight = False
        frame = self._backlog.popleft()
        if isinstance(frame, CommitMark):
            return
        self._recent.append((now, self._sent))
        while len(self._recent) > 1 and self._recent[1][0] < now - UNCONFIRMED_S:
            self._recent.popleft()
        self._backlog_bytes -= len(frame)
        self._log.append(frame)
        self._log_bytes += len(frame)
        self._sent += len(frame)
        if self._log_bytes > self._limit:
            excess = self._log_bytes - self._limit
            self._trim(self._log_start + excess)
            self.trimmed_bytes += excess

    # -- service side

    @property
    def in_speech(self) -> bool:
        return self._service_speech or self.client_speech

    @property
    def awaiting_commit(self) -> bool:
        """A turn has ended (speech_stopped, or a client commit sent) but its ``committed`` has not come."""
        return bool(self._speech_end or self._commits)

    @property
    def uncommitted_ms(self) -> int:
        return (self._sent - self._committed_at) // p.BYTES_PER_MS

    @property
    def outstanding(self) -> int:
        return sum(1 for turn in self._turns if not turn.done)

    def commit_sent(self) -> None:
        """A client commit went out: everything sent so far is its turn."""
        self._commits.append(self._sent)

    def commit_refused(self) -> None:
        """The service refused the oldest unanswered client commit (nothing left to commit)."""
        if self._commits:
            self._commits.popleft()

    def event(self, event: p.ServerEvent) -> None:
        match event:
            case p.SpeechStarted():
                self._service_speech = True
            case p.SpeechStopped(item_id, audio_end_ms):
                self._service_speech = False
                self._speech_end[item_id] = audio_end_ms * p.BYTES_PER_MS
            case p.Committed(item_id):
                self._service_speech = False
                end = self._speech_end.pop(item_id, None)
                if end is None:
                    end = self._commits.popleft() if self._commits else self._sent
                self._committed_at = max(self._committed_at, min(end, self._sent))
                self._turns.append(_Turn(item_id, self._committed_at))
            case p.TranscriptionCompleted(item_id) | p.TranscriptionFailed(item_id):
                self._finish_turn(item_id)

    def _finish_turn(self, item_id: str) -> None:
        for turn in self._turns:
            if turn.item_id == item_id:
                turn.done = True
        # Audio up to the end of the leading finished turns will never be needed again.
        while self._turns and self._turns[0].done:
            self._trim(self._turns.popleft().end)

    def _trim(self, upto: int) -> None:
        cut = max(0, min(upto - self._log_start, self._log_bytes))
        self._log_bytes -= cut
        self._log_start += cut
        while cut and cut >= len(self._log[0]):
            cut -= len(self._log.popleft())
        if cut:
            self._log[0] = self._log[0][cut:]

    def connection_lost(self, now: float) -> int:
        """Put the unconfirmed audio back in front of the backlog; returns its length in ms."""
        self._in_flight = False  # that frame was not confirmed written: it goes again
        end = self._log_start + self._log_bytes
        owed = bool(self._turns or self.in_speech or self.awaiting_commit)
        start = self._log_start if owed else max(self._log_start, self._unconfirmed_from(now) - IDLE_REPLAY_BYTES)
        keep = end - start
        ends = self._unfinished_ends() if self.client_turns else []
        frames = _frames(b"".join(self._log)[self._log_bytes - keep :], start, ends)
        self._backlog.extendleft(reversed(frames))
        self._backlog_bytes += keep
        self._log.clear()
        self._log_bytes = 0
        self._log_start = self._sent = self._committed_at = 0
        self._recent.clear()
        self._turns.clear()
        self._speech_end.clear()
        self._commits.clear()
        self._service_speech = False
        self._drop_oldest()
        return keep // p.BYTES_PER_MS

    def _unconfirmed_from(self, now: float) -> int:
        """The offset of the oldest audio sent within :data:`UNCONFIRMED_S` of ``now``."""
        recent = [offset for at, offset in self._recent if at >= now - UNCONFIRMED_S]
        return recent[0] if recent else self._sent

    def _unfinished_ends(self) -> list[int]:
        """Where the client committed turns whose transcripts never came."""
        ends = {turn.end for turn in self._turns if not turn.done} | set(self._commits)
        return sorted(ends)


def _frames(audio: bytes, start: int, commit_at: list[int]) -> list[Frame]:
    """``audio`` (beginning at offset ``start``) in replay-sized frames, with a mark at each commit offset."""
    frames: list[Frame] = []
    position = 0
    for cut in [end - start for end in commit_at if 0 < end - start <= len(audio)]:
        frames.extend(_pieces(audio, position, cut))
        frames.append(COMMIT)
        position = cut
    frames.extend(_pieces(audio, position, len(audio)))
    return frames


def _pieces(audio: bytes, begin: int, end: int) -> list[Frame]:
    return [audio[at : min(at + REPLAY_FRAME_BYTES, end)] for at in range(begin, end, REPLAY_FRAME_BYTES)]
