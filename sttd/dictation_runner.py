"""One dictation's lifecycle, as the daemon runs it: Start, Stop, Cancel and the task between them.

:class:`DictationRunner` is a part of :class:`sttd.daemon.Daemon` (a mixin:
it uses the daemon's microphone, core, task group and session, and the
daemon initialises them). Start opens the microphone before the session so
nothing said while connecting is lost; Stop flushes; Cancel discards; a Start
during the previous dictation's flush (push-to-talk pressed again at once)
records at once and begins once that one is closed. It is also the Realtime
session's listener. The daemon keeps the wiring, configuration, engine, undo
and voice commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import TYPE_CHECKING

from . import config, core, logsetup, options
from . import protocol as p
from .credentials import CredentialSource
from .errors import AudioError, CredentialsError, SessionError, ShuttingDownError, SttdError
from .microphone import Microphone
from .realtime import RealtimeSession, SessionOptions
from .turns import turns_for

logger = logging.getLogger(__name__)


class DictationRunner:
    """Start/Stop/Cancel and the dictation task; the Realtime session's ``SessionListener``."""

    # Set up by Daemon.__init__ (and run()): shared with the rest of the daemon.
    _config: config.Config
    _dictation: core.Dictation
    _dictation_config: config.Config | None
    _microphone: Microphone
    _tasks: asyncio.TaskGroup | None
    _closing: bool
    _session: RealtimeSession | None
    _dictation_task: asyncio.Task[None] | None
    _discarding: bool
    _stop_began: float | None
    _run: _DictationRun | None
    _queued: _DictationRun | None

    if TYPE_CHECKING:
        # Provided by Daemon.

        @property
        def _active_config(self) -> config.Config: ...

        async def _connection(self, cfg: config.Config) -> tuple[str, CredentialSource]: ...

        def _publish(self) -> None: ...

        def _refresh_shaper(self) -> None: ...

        def _source_changed(self) -> None: ...

    async def start(self) -> None:
        """Begin a dictation; returns once the microphone is recording (or failed to)."""
        await self.start_with({})

    async def start_with(self, values: dict[str, object]) -> None:
        """Start with per-dictation options (checked by :func:`sttd.options.check_types`).

        Raises :class:`~sttd.errors.InvalidOptionError` naming a bad option. Cancelling the caller is
        safe: the dictation, once begun, goes on (Start only waits for the microphone).
        """
        if self._tasks is None or self._closing:
            raise ShuttingDownError("sttd is shutting down")
        resolved = options.resolve(values, self._config)
        if self._queued is not None or (self._dictation.stopping and self._dictation.enabled):
            await self._start_after_flush(resolved if values else None)
            return
        if self._dictation.active:
            if values:
                logger.info("already dictating: the options of this start do not apply")
            return
        if not self._dictation.start(resolved.options):
            return
        # The stream first, before any other work of Start's: every moment until the sound
        # server has it is speech lost when the user talks as they press the key.
        self._microphone.hold()
        self._microphone.begin()
        self._take_options(resolved if values else None)
        run = self._begin(asyncio.get_running_loop().create_future())
        # Whoever pressed the hotkey may start talking as soon as Start returns.
        await asyncio.shield(run.recording)

    def _take_options(self, resolved: options.Resolved | None) -> None:
        """The dictation the core has just started uses ``resolved`` (None: the defaults)."""
        self._dictation_config = resolved.config if resolved is not None else None
        if resolved is not None and resolved.options.profile:
            logger.info("dictating with profile %s", resolved.options.profile)
        self._refresh_shaper()

    def _begin(self, recording: asyncio.Future[None], held: bool = False) -> _DictationRun:
        """Run a dictation the core has just started; ``held``: its audio is already being recorded."""
        assert self._tasks is not None
        self._discarding = False
        self._publish()
        run = self._run = _DictationRun(recording, held=held)
        task = self._tasks.create_task(self._dictate(run), name="dictation")
        task.add_done_callback(functools.partial(self._dictation_ended, run))
        self._dictation_task = task
        return run

    # -- a Start during the previous dictation's flush (push-to-talk pressed again at once)

    async def _start_after_flush(self, resolved: options.Resolved | None = None) -> None:
        """Record from now on, so nothing said is lost; the dictation begins once the previous one is closed.

        ``resolved``: its options (those of the first Start to queue it).
        """
        assert self._tasks is not None
        queued = self._queued
        if queued is None:
            previous = self._dictation_task
            queued = self._queued = _DictationRun(asyncio.get_running_loop().create_future(), held=True)
            queued.resolved = resolved
            self._tasks.create_task(self._run_after_flush(queued, previous), name="start-after-flush")
        await asyncio.shield(queued.recording)

    async def _run_after_flush(self, run: _DictationRun, previous: asyncio.Task[None] | None) -> None:
        """Begin ``run`` once ``previous`` is closed; the microphone is let go of when it does not begin.

        Cancelled only with the task group (sttd exiting), whose end closes the microphone.
        """
        try:
            await self._microphone.detach()  # the previous dictation has every frame captured until now
            self._microphone.hold()
            await self._microphone.open()
        except AudioError as exc:
            if self._queued is run:
                self._queued = None
            run.recording.set_exception(AudioError(str(exc)))
            return
        finally:
            if not run.recording.done():
                run.recording.set_result(None)
        if previous is not None:
            await asyncio.wait([previous])
        if self._queued is not run or self._closing or self._tasks is None:
            await self._microphone.detach()  # cancelled meanwhile, or sttd is stopping
            return
        self._queued = None
        try:
            started = self._dictation.start(run.resolved.options if run.resolved is not None else None)
        except SttdError as exc:  # disabled meanwhile
            logger.info("the Start during the previous flush is dropped: %s", exc)
            started = False
        if not started:
            await self._microphone.detach()
            return
        self._take_options(run.resolved)
        self._begin(run.recording, held=True)
        if run.stopped:
            self.stop()  # released before the previous flush was over: what was held is transcribed

    async def _let_go_of_queued(self, run: _DictationRun) -> None:
        """Stop or Cancel before the queued dictation began: nothing said from now on belongs to it."""
        with contextlib.suppress(AudioError):
            await asyncio.shield(run.recording)
        await self._microphone.detach()

    def stop(self) -> None:
        queued = self._queued
        if queued is not None and self._tasks is not None and not queued.stopped:
            queued.stopped = True
            self._tasks.create_task(self._let_go_of_queued(queued), name="stop-queued")
            return
        if self._dictation.stop() and self._tasks is not None:
            self._stop_began = time.monotonic()
            self._tasks.create_task(self._finish(), name="flush")
        self._publish()  # also Stop acknowledging an error: back to idle

    def cancel(self) -> None:
        queued, self._queued = self._queued, None
        if queued is not None and self._tasks is not None:
            queued.stopped = True
            self._tasks.create_task(self._let_go_of_queued(queued), name="cancel-queued")
        if self._dictation.stop():
            self._discarding = True
            if self._session is not None:
                self._session.cancel()
            if self._dictation_task is not None and not (self._run is not None and self._run.closing):
                # Also when it is still in a handshake or waiting for the engine: nothing is kept.
                # Not once it is closing: its cleanup must run to the end.
                self._dictation_task.cancel()
        self._publish()

    async def toggle(self) -> None:
        if self._dictation.active:
            self.stop()
        else:
            await self.start()

    # -- SessionListener: what the Realtime session reports

    def session_ready(self) -> None:
        self._dictation.session_ready()
        self._publish()

    def session_event(self, event: p.ServerEvent) -> None:
        if self._discarding:
            return
        self._dictation.server_event(event)
        self._publish()

    def session_reconnecting(self, reason: str) -> None:
        self._dictation.session_reconnecting(reason)
        self._publish()

    # -- one dictation

    async def _dictate(self, run: _DictationRun) -> None:
        """Capture first, so nothing said while connecting is lost; then run the session.

        Cancelling is safe at any point: the dictation is closed all the same
        (by :meth:`_dictation_ended` when it is cancelled before its first step).
        """
        cfg = self._active_config
        failure: tuple[str, str] | None = None
        try:
            if run.held:  # recording since a Start during the previous flush
                self._source_changed()
            else:
                await self._open_microphone(run.recording)
            url, credentials = await self._connection(cfg)
            settings, detector = await turns_for(
                cfg.turn_detection.type, cfg.session_settings(self._dictation.language)
            )
            options = SessionOptions(
                url=url, settings=settings, max_reconnect_attempts=cfg.realtime.max_reconnect_attempts
            )
            # Asked again on every reconnect: a restarted local engine has a new port and key.
            target = functools.partial(self._connection, cfg)
            session = RealtimeSession(options, credentials, listener=self, target=target, detector=detector)
            self._session = session
            self._microphone.attach(session.send_audio)
            if self._discarding:  # Cancel while connecting
                session.cancel()
            elif self._dictation.stopping:  # Stop while connecting: what was held is still transcribed
                session.finish()
            await session.run()
        except CredentialsError as exc:
            failure = ("credentials", str(exc))
        except AudioError as exc:
            failure = ("audio", str(exc))
        except SessionError as exc:
            failure = (exc.code, str(exc))
        except Exception as exc:
            # A bug must end this dictation, not the daemon (the task group would take it down).
            logger.exception("dictation failed unexpectedly")
            failure = ("internal", f"internal error: {exc.__class__.__name__} (details in sttd's log)")
        finally:
            run.closing = True
            await self._close_dictation(failure)

    def _dictation_ended(self, run: _DictationRun, task: asyncio.Task[None]) -> None:
        """Whatever happened to the task: Start gets its reply, and the dictation is closed."""
        if not run.recording.done():
            run.recording.set_result(None)  # cancelled before the microphone opened: nothing to say
        if not run.closing and self._tasks is not None:
            # Cancelled before its first step, its body (and its cleanup) never ran.
            self._tasks.create_task(self._close_dictation(None), name="close-dictation")
        elif not run.closing:
            self._dictation.finished(discard=True)
            self._publish()

    async def _open_microphone(self, recording: asyncio.Future[None]) -> None:
        """Wait until the microphone Start asked for records (into the hold buffer); tell Start how that went."""
        try:
            await self._microphone.open()
        except AudioError as exc:
            recording.set_exception(AudioError(str(exc)))
            raise
        finally:
            if not recording.done():
                recording.set_result(None)
        self._source_changed()

    async def _finish(self) -> None:
        """Stop: every frame captured so far goes to the session, which then flushes."""
        session = self._session  # the one being stopped, even if another starts meanwhile
        await self._microphone.detach()
        if session is not None:
            session.finish()

    async def _close_dictation(self, failure: tuple[str, str] | None) -> None:
        # The dictation stays "active" until the microphone is detached, so a Start
        # arriving meanwhile cannot begin a dictation that this close would then end.
        # A Start during the flush records already: that audio is the next dictation's.
        if self._queued is None:
            await self._microphone.detach()
        session, self._session = self._session, None
        if session is not None and session.dropped_audio_ms:
            logger.warning("%d ms of audio were dropped while disconnected", session.dropped_audio_ms)
        if session is not None and session.trimmed_audio_ms:
            logger.info("%d ms of audio no turn could use were not kept for replay", session.trimmed_audio_ms)
        self._stop_began = None
        if failure is not None:
            self._fail(*failure)
        self._dictation.finished(discard=self._discarding)
        self._dictation_config = None
        self._refresh_shaper()
        self._discarding = False
        self._source_changed()
        self._publish()

    def _fail(self, code: str, message: str) -> None:
        logger.error("dictation failed: %s", message, extra=logsetup.event("dictation-failed", code=code))
        self._dictation.session_failed(code, message)
        self._publish()


class _DictationRun:
    """One Start's dictation task, as its cleanup sees it."""

    def __init__(self, recording: asyncio.Future[None], held: bool = False) -> None:
        self.recording = recording
        """Resolved once the microphone records (or failed to): Start replies then."""
        self.closing = False
        """The task's own cleanup has begun; else the done callback closes the dictation."""
        self.held = held
        """Its audio was recorded before it began (a Start during the previous flush)."""
        self.stopped = False
        """Stop (or Cancel) came before it began."""
        self.resolved: options.Resolved | None = None
        """A queued Start's options (StartWith); None: the defaults."""
