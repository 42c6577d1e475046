"""The composition root and the ``sttd`` entry point.

:class:`Daemon` wires the boundaries to the core and owns the asyncio
lifecycle: one TaskGroup holds every task; SIGTERM/SIGINT stop gracefully
(a running dictation is flushed, within a bound, so its words are not lost);
SIGHUP reloads the configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from pathlib import Path

from . import __version__, audio, config, core, ibus_link, logsetup, models, options, shaping
from . import protocol as p
from . import state as persisted
from .credentials import CredentialSource
from .dbus_service import SttdInterface, export, stay_exported
from .engines import NO_ENGINE, LocalEngine, choose_engine, connection_target
from .errors import (
    AudioError,
    ConfigError,
    CredentialsError,
    NothingToUndoError,
    SessionError,
    ShuttingDownError,
    StateNotSavedError,
    SttdError,
)
from .fanout import Fanout
from .hooks import HookRunner
from .microphone import Microphone
from .realtime import RealtimeSession, SessionOptions
from .shortcuts import Shortcuts
from .systemd import Notifier
from .turns import turns_for

__all__ = ["Daemon", "choose_engine"]

logger = logging.getLogger(__name__)

SHUTDOWN_FLUSH_S = 5.0
"""On SIGTERM, how long a running dictation may take to deliver its last words."""
WEDGED_AFTER_S = 60.0
"""A Stop still flushing this long after it began (the flush is bounded at 10 s) means sttd is wedged:
the watchdog stops pinging, so systemd restarts it."""

WINDOWLESS_OUTPUTS = frozenset({"none", "stdout", "clipboard"})
"""Outputs that insert nothing into a window: Undo takes the text back from PendingText only."""


class Daemon:
    """Implements the D-Bus :class:`~sttd.dbus_service.Controller` and the session listener."""

    def __init__(self, cfg: config.Config, config_path: Path | None, state_path: Path, log_level: str = "INFO") -> None:
        self._config = cfg
        self._log_level = log_level
        self._engine = choose_engine(cfg)
        self._local = LocalEngine(log_level)
        self._engine_task: asyncio.Task[None] | None = None
        self._config_path = config_path
        self._state_path = state_path
        saved = persisted.load(state_path)
        language = saved.language if saved.language is not None else cfg.realtime.language
        self._dictation = core.Dictation(
            enabled=saved.enabled, language=language, shaper=shaping.shaper_for(cfg, language)
        )
        self._dictation_config: config.Config | None = None
        """The config of the running dictation (its profile and options applied); None: the defaults."""
        self._notifier = Notifier()
        self._hooks = HookRunner(cfg.hooks, cfg.output, on_error=self._hook_failed)
        self._fanout = Fanout(self._dictation, self._hooks, self._notifier, on_action=self._voice_command)
        self._interface: SttdInterface | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._shutdown = asyncio.Event()
        self._closing = False
        self._session: RealtimeSession | None = None
        self._microphone = Microphone(
            cfg.audio, on_problem=self._audio_problem, on_level=self._fanout.level, on_source=self._audio_source
        )
        self._dictation_task: asyncio.Task[None] | None = None
        self._discarding = False
        self._stop_began: float | None = None
        self._run: _DictationRun | None = None
        self._queued: _DictationRun | None = None
        """A Start during the previous dictation's flush: recording, waiting for that one to close."""
        self._fatal: SttdError | None = None
        self._shortcuts = Shortcuts(cfg.shortcuts, self, on_status=self._shortcuts_changed)

    # -- lifecycle

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT. Raises :class:`SttdError` when the bus name is taken, or the bus
        was lost and could not be got back."""
        loop = asyncio.get_running_loop()
        self._interface = self._fanout.interface = SttdInterface(self)
        # Calls (including the one that activated us) wait until serve(): by
        # then the task group that runs dictations exists.
        await export(self._interface)
        await ibus_link.watch(self._interface.bus, self._ibus_changed)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tasks = tg
                self._interface.serve()
                bus_watch = tg.create_task(self._stay_on_bus(), name="bus-watch")
                hooks = tg.create_task(self._hooks.run(), name="hooks")
                shortcuts = tg.create_task(self._shortcuts.run(), name="shortcuts")
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, self._shutdown.set)
                loop.add_signal_handler(signal.SIGHUP, self.reload)
                self._apply_engine()
                self._microphone.warm()  # so that a Start only opens a stream
                watchdog = None
                if self._notifier.watchdog_interval_s:
                    watchdog = tg.create_task(self._watchdog(self._notifier.watchdog_interval_s))
                if self._microphone.keeps_open:
                    tg.create_task(self._open_for_preroll(), name="preroll")
                self._notifier.ready(self._fanout.status_line())
                logger.info("sttd %s ready on the session bus", __version__, extra=logsetup.event("ready"))
                models.warn_if_deprecated(models.model_info(self._config.realtime.model))
                for note in config.legacy_notes(self._config):
                    logger.info("config: %s", note)
                await self._shutdown.wait()
                self._closing = True
                shortcuts.cancel()  # no key press starts a dictation from here on
                self._notifier.stopping()
                await self._interface.shutting_down()
                await self._stop_for_shutdown()
                if self._engine_task is not None:
                    self._engine_task.cancel()
                await self._finish_hooks()
                hooks.cancel()
                self._tasks = None
                bus_watch.cancel()
                if watchdog is not None:
                    watchdog.cancel()
                await self._microphone.close()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self._interface.disconnect()
        if self._fatal is not None:
            raise self._fatal
        logger.info("stopped", extra=logsetup.event("stopped"))

    async def _stay_on_bus(self) -> None:
        # A lost connection is made again (a running dictation goes on); only if that fails does sttd exit.
        assert self._interface is not None
        try:
            await stay_exported(self._interface)
        except SttdError as exc:
            self._fatal = exc  # exit 1: systemd's Restart=on-failure brings sttd back
            self._shutdown.set()

    async def _stop_for_shutdown(self) -> None:
        task = self._dictation_task
        if task is None or task.done():
            return
        self.stop()
        try:
            await asyncio.wait_for(asyncio.shield(task), SHUTDOWN_FLUSH_S)
        except TimeoutError:
            logger.warning("dictation did not finish within %.0f s of SIGTERM; cancelling it", SHUTDOWN_FLUSH_S)
            self.cancel()
            task.cancel()  # also when it is still connecting or waiting for the engine
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _open_for_preroll(self) -> None:
        try:
            await self._microphone.open()
        except AudioError as exc:
            logger.warning("pre-roll: cannot open the microphone yet (%s); Start will try again", exc)

    async def _reconfigure_audio(self, audio_config: config.AudioConfig) -> None:
        try:
            await self._microphone.reconfigure(audio_config)
        except AudioError as exc:
            logger.warning("pre-roll: cannot reopen the microphone (%s); Start will try again", exc)

    def _update_live_session(self, old: config.Config, new: config.Config) -> None:
        """Model, prompt, turn detection and noise reduction reach a running dictation at once."""
        if self._dictation_config is not None:
            return  # a dictation with a profile or options keeps its settings until it ends
        language = self._dictation.language
        settings = new.session_settings(language)
        if self._session is not None and self._tasks is not None and settings != old.session_settings(language):
            self._tasks.create_task(self._session.update(settings), name="session-update")

    async def _finish_hooks(self) -> None:
        # The last words of a dictation are typed and their hooks run before sttd exits, within a bound.
        try:
            await asyncio.wait_for(self._hooks.join(), SHUTDOWN_FLUSH_S)
        except TimeoutError:
            logger.warning("hooks still running %.0f s after SIGTERM; stopping them", SHUTDOWN_FLUSH_S)

    async def _watchdog(self, interval: float) -> None:
        # Sent from the event loop itself: if the loop is stuck, systemd notices;
        # and not while a Stop has been flushing for far longer than any flush may take.
        while True:
            if not self._wedged():
                self._notifier.watchdog()
            await asyncio.sleep(interval)

    def _wedged(self) -> bool:
        began = self._stop_began
        if began is not None and time.monotonic() - began > WEDGED_AFTER_S:
            logger.error(
                "a Stop has not finished after %.0f s: no watchdog ping, so systemd restarts sttd", WEDGED_AFTER_S
            )
            return True
        return False

    def reload(self) -> None:
        """SIGHUP: take a new config for the next dictation; keep the old one if it is invalid.

        systemd hears READY=1 after RELOADING=1 whatever happens, or it would
        consider the service stuck in its reload.
        """
        self._notifier.reloading()
        try:
            new = config.load(self._config_path)
        except ConfigError as exc:
            logger.error(
                "reload refused, keeping the running configuration: %s", exc, extra=logsetup.event("reload-refused")
            )
        else:
            self._take_config(new)
            logger.info("configuration reloaded", extra=logsetup.event("reloaded"))
            for note in config.legacy_notes(new):
                logger.info("config: %s", note)
        finally:
            self._notifier.ready(self._fanout.status_line())

    def _take_config(self, new: config.Config) -> None:
        restart = new.local != self._config.local
        old_model = self.model
        old, self._config = self._config, new
        if new.realtime.model != old.realtime.model:
            models.warn_if_deprecated(models.model_info(new.realtime.model))
        self._update_live_session(old, new)
        self._refresh_shaper()
        self._engine = choose_engine(new)
        if self.model != old_model and self._interface is not None:
            self._interface.model_changed(self.model)
        self._apply_engine(restart=restart)
        if self._interface is not None:
            self._interface.engine_changed(self._engine)
        self._hooks.reconfigure(new.hooks, new.output)
        if self._interface is not None:
            self._interface.output_changed(*self.output())
        self._shortcuts.reconfigure(new.shortcuts)
        if self._tasks is not None:
            self._tasks.create_task(self._reconfigure_audio(new.audio), name="reconfigure-audio")

    # -- the transcription engine

    @property
    def engine(self) -> str:
        """The transcription engine in use: ``openai``, ``local`` or ``""`` (none usable)."""
        return self._engine

    def _apply_engine(self, restart: bool = False) -> None:
        """Run the local engine exactly when it is the chosen one (at start-up and on reload)."""
        logger.info("transcription engine: %s", self._engine or "none (" + NO_ENGINE + ")")
        running = self._engine_task is not None and not self._engine_task.done()
        if running and (self._engine != "local" or restart):
            assert self._engine_task is not None
            self._engine_task.cancel()
            running = False
        if self._engine == "local" and not running and self._tasks is not None:
            self._engine_task = self._tasks.create_task(self._local.run(self._config.local), name="local-engine")

    async def _connection(self, cfg: config.Config) -> tuple[str, CredentialSource]:
        return await connection_target(self._engine, self._local, cfg)

    # -- Controller: what D-Bus calls

    @property
    def dictation(self) -> core.Dictation:
        return self._dictation

    @property
    def source(self) -> str:
        return self._microphone.source_name or self._config.audio.source

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

    def set_language(self, code: str) -> None:
        """Take a language now; raises :class:`StateNotSavedError` (the change stays in effect) if not persisted."""
        if not self._dictation.set_language(code):
            return
        self._refresh_shaper()
        self._publish()
        if self._session is not None and self._tasks is not None:
            settings = self._active_config.session_settings(self._dictation.language)
            self._tasks.create_task(self._session.update(settings), name="session-update")
        self._save_state()

    def set_enabled(self, enabled: bool) -> None:
        """Like :meth:`set_language`: in effect at once, an error if it cannot be persisted."""
        if not self._dictation.set_enabled(enabled):
            return
        if not enabled:
            self.stop()
        self._publish()
        self._save_state()

    @property
    def model(self) -> str:
        """The transcription model the next (or running) dictation uses: the offline engine's own when it is local."""
        if self._engine == "local":
            return f"local:{self._config.local.model}"
        return self._config.realtime.model

    def output(self) -> tuple[str, str]:
        """The window output in use and why."""
        choice = self._hooks.output_choice()
        return choice.output, choice.why

    def _ibus_changed(self, enabled: bool) -> None:
        logger.info("the sttd IBus input method is %s", "enabled" if enabled else "not enabled")
        self._hooks.ibus_active = enabled
        if self._interface is not None:
            self._interface.output_changed(*self.output())

    async def undo(self) -> str:
        """Take back the text sttd last inserted into a window (the entry point for a voice command too).

        In the IBus output the engine does it (it alone sees the user's keys);
        else the typing / paste output presses BackSpace. Announces
        ``Triggered("undo", text)``. Raises NothingToUndoError / UserTypedError.
        """
        inserts = self.output()[0] not in WINDOWLESS_OUTPUTS
        removed = await self._remove_from_window() if inserts else ""
        # The pending text loses it too; without a window output that is all there is to undo.
        text = self._dictation.take_back() or removed
        if not text:
            self._publish()
            raise NothingToUndoError("nothing that sttd inserted is left to undo")
        self._dictation.undone(text)
        self._publish()
        return text

    async def _remove_from_window(self) -> str:
        """Take back what the output inserted last: the IBus engine, else BackSpaces. NothingToUndo / UserTyped."""
        if self.output()[0] == "ibus":
            assert self._interface is not None and self._interface.bus is not None
            return await ibus_link.undo(self._interface.bus)
        return await self._hooks.undo()

    async def _undo_in_window(self) -> None:
        """The voice command's part in the window; a refusal is told, never raised (nobody awaits it)."""
        if self.output()[0] in WINDOWLESS_OUTPUTS:
            return
        try:
            await self._remove_from_window()
        except NothingToUndoError:
            pass
        except SttdError as exc:
            logger.info("undo: %s", exc)
            self._fanout.problem("output", str(exc))

    def send(self) -> None:
        self._dictation.send()
        self._publish()

    def purge(self) -> None:
        self._dictation.purge()
        self._publish()

    async def list_sources(self) -> list[audio.SourceInfo]:
        return await asyncio.to_thread(audio.list_sources)

    @property
    def shortcuts_status(self) -> str:
        """The desktop shortcuts: ``bound``, ``binding``, ``disabled`` or ``unavailable (<reason>)``."""
        return self._shortcuts.status

    async def list_shortcuts(self) -> list[tuple[str, str, str]]:
        return await self._shortcuts.list_shortcuts()

    def _shortcuts_changed(self, status: str) -> None:
        if self._interface is not None:
            self._interface.shortcuts_changed(status)

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
        """Record into a hold buffer until the session exists; tell Start how that went."""
        try:
            self._microphone.hold()
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

    def _audio_problem(self, message: str) -> None:
        if message:
            logger.warning("audio: %s", message)
        self._dictation.report_problem(message)
        self._source_changed()
        self._publish()

    def _audio_source(self, name: str) -> None:
        self._source_changed()

    def _source_changed(self) -> None:
        self._fanout.source(self.source)

    def _publish(self) -> None:
        self._fanout.publish()

    @property
    def _active_config(self) -> config.Config:
        """The config the running dictation uses (its profile's), else the main one."""
        return self._dictation_config or self._config

    @property
    def profile(self) -> str:
        """The profile of the running dictation ("" for the defaults)."""
        return self._dictation.profile

    def _refresh_shaper(self) -> None:
        """The shaping step follows the config and the language in use."""
        self._dictation.set_shaper(shaping.shaper_for(self._active_config, self._dictation.language))

    def _voice_command(self, action: str, text: str) -> None:
        """A voice command only the daemon can carry out (stop, cancel: after the outputs being published),
        or a command hook, queued behind the hooks of what was said before it."""
        if action == "undo":
            if self._tasks is not None:
                self._tasks.create_task(self._undo_in_window(), name="undo")
            return
        handlers = {"stop": self.stop, "cancel": self.cancel}
        handler = handlers.get(action)
        if handler is not None:
            asyncio.get_running_loop().call_soon(handler)
            return
        hooks = {shaping.phrase_key(phrase): argv for phrase, argv in self._active_config.commands.hooks.items()}
        if action in hooks:
            self._hooks.submit_command(action, hooks[action], text, language=self._dictation.language)

    def _hook_failed(self, code: str, message: str) -> None:
        self._fanout.problem(code, message)

    def _save_state(self) -> None:
        saved = persisted.PersistedState(enabled=self._dictation.enabled, language=self._dictation.persisted_language)
        try:
            persisted.save(self._state_path, saved)
        except StateNotSavedError as exc:
            logger.error("%s (the change holds until sttd restarts)", exc)
            raise


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
