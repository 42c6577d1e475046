"""The composition root and the ``sttd`` entry point.

:class:`Daemon` wires the boundaries to the core and owns the asyncio
lifecycle: one TaskGroup holds every task; SIGTERM/SIGINT stop gracefully
(a running dictation is flushed, within a bound, so its words are not lost);
SIGHUP reloads the configuration. One dictation's run (Start, Stop, Cancel)
is in :mod:`sttd.dictation_runner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from pathlib import Path

from . import __version__, audio, config, core, ibus_link, logsetup, models, shaping
from . import state as persisted
from .credentials import CredentialSource
from .dbus_service import SttdInterface, export, stay_exported
from .dictation_runner import DictationRunner
from .engines import NO_ENGINE, LocalEngine, choose_engine, connection_target
from .errors import (
    AudioError,
    ConfigError,
    NothingToUndoError,
    StateNotSavedError,
    SttdError,
)
from .fanout import Fanout
from .hooks import HookRunner
from .microphone import Microphone
from .realtime import RealtimeSession
from .shortcuts import Shortcuts
from .systemd import Notifier

__all__ = ["Daemon", "choose_engine"]

logger = logging.getLogger(__name__)

SHUTDOWN_FLUSH_S = 5.0
"""On SIGTERM, how long a running dictation may take to deliver its last words."""
WEDGED_AFTER_S = 60.0
"""A Stop still flushing this long after it began (the flush is bounded at 10 s) means sttd is wedged:
the watchdog stops pinging, so systemd restarts it."""

WINDOWLESS_OUTPUTS = frozenset({"none", "stdout", "clipboard"})
"""Outputs that insert nothing into a window: Undo takes the text back from PendingText only."""


def freeze_start_up_objects() -> None:
    """Move what start-up made (modules, config, the bus and its introspection) out of the collector's sight.

    Those ~40k objects live as long as the daemon; gc.freeze() puts them in the permanent
    generation, so the collections that streaming's per-frame garbage triggers never walk
    them again (a full collection would visit each). Garbage made during start-up is
    collected first so that it is not frozen with them.
    """
    gc.collect()
    gc.freeze()
    logger.debug("froze %d start-up objects", gc.get_freeze_count())


class Daemon(DictationRunner):
    """Implements the D-Bus :class:`~sttd.dbus_service.Controller` and the session listener.

    Start, Stop, Cancel, the dictation task and the session listener are in
    :class:`~sttd.dictation_runner.DictationRunner`; the rest is wiring.
    """

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
        self._run = None  # typed by DictationRunner
        self._queued = None
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
                freeze_start_up_objects()
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
