"""Source following for the capture thread: which device to record, moving to a new default, health."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pulsectl

from .errors import AudioError
from .libpulse import RecordStream, pa_error

if TYPE_CHECKING:  # the worker imports this module
    from .capture_worker import Outlet, _Backoff

log = logging.getLogger(__name__)

_MOVE_CHECK_S = 1.0
_MOVE_ATTEMPTS = 3


@dataclass(frozen=True)
class _PendingMove:
    """A move of the stream asked of the server, to be checked at ``check_at``."""

    target: str
    check_at: float
    attempts: int


class SourceFollowing:
    """The capture worker's part that follows devices; runs on the capture thread only."""

    # set by the worker
    _source: str
    _pulse: Any
    _stream: RecordStream | None
    _started: bool
    _out: Outlet
    _reopen_after: float
    _stream_backoff: _Backoff
    _followed_default: str
    _move: _PendingMove | None
    _device: str
    _problem: str
    _fragment_bytes: int
    _stopping: threading.Event

    def _on_data(self, data: bytes) -> None:
        raise NotImplementedError

    def _on_stream_change(self) -> None:
        raise NotImplementedError

    def _reconcile(self) -> None:
        """Bring the stream in line with the wanted source; runs pulsectl calls, so never in a callback."""
        self._dirty = False
        self._reap_failed_stream()
        target = self._find_target()
        stream = self._stream
        # Without a default for a moment (it was just removed), a stream that still records is kept.
        if stream is not None and stream.ready and (target is not None or not self._source):
            self._follow(target)
        elif target is None:
            self._close_stream()
            self._report_missing()
        elif stream is None and time.monotonic() >= self._reopen_after:
            self._open_stream(target.name)

    def _find_target(self) -> Any:
        """The source we should be recording (pulsectl source info), or None when it does not exist."""
        return self._source_info(self._source or self._pulse.server_info().default_source_name)

    def _source_info(self, name: str) -> Any:
        if not name:
            return None
        try:
            return self._pulse.get_source_by_name(name)
        except pulsectl.PulseIndexError:
            return None

    def _report_missing(self) -> None:
        missing = f"source '{self._source}' is not available" if self._source else "no audio source is available"
        if not self._started:
            raise AudioError(missing)
        self._set_problem(f"{missing}; waiting for {'it' if self._source else 'one'}")

    def _reap_failed_stream(self) -> None:
        if self._stream is None or not self._stream.failed:
            return
        error = pa_error(self._pulse)
        if not self._started:
            if self._find_target() is None:  # the stream is opened before the source is looked up
                self._close_stream()
                self._report_missing()
            raise AudioError(f"cannot record from {self._source or 'the default source'}: {error}")
        log.warning("record stream from %s ended: %s", self._device or "the source", error)
        self._close_stream()
        self._reopen_after = time.monotonic() + self._stream_backoff.next()

    def _open_stream(self, name: str) -> None:
        log.debug("opening a record stream on %s", self._source or f"the default source ({name})")
        self._followed_default, self._move = "", None
        try:
            self._stream = RecordStream(
                self._pulse,
                device=self._source or None,
                fragment_bytes=self._fragment_bytes,
                on_data=self._on_data,
                on_change=self._on_stream_change,
            )
        except AudioError as exc:
            if not self._started:
                raise
            log.warning("%s", exc)
            self._reopen_after = time.monotonic() + self._stream_backoff.next()

    def _follow(self, target: Any) -> None:
        """The stream records: follow a changed default, then report where it records and how well."""
        assert self._stream is not None
        device = self._stream.device_name
        if not self._source and target is not None and self._moving(device, target):
            return  # the moved callback (or the move check) brings us back here
        self._stream_backoff.reset()
        self._set_device(device)
        if not self._started:
            self._started = True
            self._out.started(None)
        recorded = target if target is not None and device == target.name else self._source_info(device)
        self._set_problem(self._health(recorded))

    def _moving(self, device: str, target: Any) -> bool:
        """Move the stream when the default changed; True while that move is under way.

        Only a change of the default moves the stream: a move made by the user in a
        mixer in between is respected. A move the server acknowledged but did not
        carry out (PipeWire under load) is asked for again, a few times.
        """
        if target.name != self._followed_default:
            self._followed_default, self._move = target.name, None
            return device != target.name and self._request_move(target, attempt=1)
        move = self._move
        if move is None or device == move.target:
            self._move = None
            return False
        if time.monotonic() < move.check_at:
            return True
        if move.attempts < _MOVE_ATTEMPTS:
            return self._request_move(target, attempt=move.attempts + 1)
        log.warning("the sound server did not move the capture to %s; recording from %s", target.name, device)
        self._move = None
        return False

    def _request_move(self, target: Any, attempt: int) -> bool:
        assert self._stream is not None
        log.info("moving capture from %s to the default source %s", self._stream.device_name, target.name)
        try:
            self._pulse.source_output_move(self._stream.index, target.index)
        except pulsectl.PulseOperationFailed as exc:
            log.warning("cannot move capture to %s: %s", target.name, exc)
            self._move = None
            return False
        self._move = _PendingMove(target.name, time.monotonic() + _MOVE_CHECK_S, attempt)
        return True

    def _health(self, recorded: Any) -> str:
        """What keeps the recorded source from giving sound, or ""."""
        assert self._stream is not None
        if recorded is not None and recorded.mute:
            return f"source '{recorded.name}' is muted"
        if self._stream.suspended:
            return f"source '{self._stream.device_name}' is suspended"
        try:
            if self._pulse.source_output_info(self._stream.index).mute:
                return "the sttd recording stream is muted"
        except pulsectl.PulseIndexError:
            pass
        return ""

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._move = None
        if not self._stopping.is_set():
            self._set_device("")

    def _set_device(self, device: str) -> None:
        if device != self._device:
            if device:
                log.info("recording from %s", device)
            self._device = device
            self._out.source(device)

    def _set_problem(self, message: str) -> None:
        if message != self._problem:
            if message:
                log.warning("capture: %s", message)
            elif self._problem:
                log.info("capture: recovered from: %s", self._problem)
            self._problem = message
            self._out.problem(message)
