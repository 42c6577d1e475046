"""The composition root and the ``sttd`` entry point.

:class:`Daemon` wires the boundaries to the core and owns the asyncio
lifecycle: one TaskGroup holds every task; SIGTERM/SIGINT stop gracefully
(a running dictation is flushed, within a bound, so its words are not lost);
SIGHUP reloads the configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

from . import __version__, audio, config, core, logsetup
from . import state as persisted
from .credentials import CredentialSource, find_api_key
from .dbus_service import SttdInterface, export
from .errors import AudioError, ConfigError, CredentialsError, SessionError, SttdError
from .microphone import Microphone
from .protocol import ServerEvent
from .realtime import RealtimeSession, SessionOptions
from .systemd import Notifier

logger = logging.getLogger(__name__)

LEVEL_INTERVAL_S = 0.1
"""Level updates go out at most ten times a second."""
SHUTDOWN_FLUSH_S = 5.0
"""On SIGTERM, how long a running dictation may take to deliver its last words."""


class Daemon:
    """Implements the D-Bus :class:`~sttd.dbus_service.Controller` and the session listener."""

    def __init__(self, cfg: config.Config, config_path: Path | None, state_path: Path) -> None:
        self._config = cfg
        self._config_path = config_path
        self._state_path = state_path
        saved = persisted.load(state_path)
        language = saved.language if saved.language is not None else cfg.realtime.language
        self._dictation = core.Dictation(enabled=saved.enabled, language=language, triggers=_triggers(cfg))
        self._notifier = Notifier()
        self._interface: SttdInterface | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._shutdown = asyncio.Event()
        self._session: RealtimeSession | None = None
        self._microphone = Microphone(cfg.audio, on_problem=self._audio_problem, on_level=self._audio_level)
        self._dictation_task: asyncio.Task[None] | None = None
        self._discarding = False
        self._last_level_at = 0.0

    # -- lifecycle

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT. Raises :class:`SttdError` when the bus name is taken."""
        loop = asyncio.get_running_loop()
        bus, self._interface = await export(self)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tasks = tg
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, self._shutdown.set)
                loop.add_signal_handler(signal.SIGHUP, self.reload)
                watchdog = None
                if self._notifier.watchdog_interval_s:
                    watchdog = tg.create_task(self._watchdog(self._notifier.watchdog_interval_s))
                if self._microphone.keeps_open:
                    tg.create_task(self._open_for_preroll(), name="preroll")
                self._notifier.ready(self._status_line())
                logger.info("sttd %s ready on the session bus", __version__)
                await self._shutdown.wait()
                self._notifier.stopping()
                await self._stop_for_shutdown()
                self._tasks = None
                if watchdog is not None:
                    watchdog.cancel()
                await self._microphone.close()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            bus.disconnect()
        logger.info("stopped")

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
            await task

    async def _open_for_preroll(self) -> None:
        try:
            await self._microphone.open()
        except AudioError as exc:
            logger.warning("pre-roll: cannot open the microphone yet (%s); Start will try again", exc)

    async def _watchdog(self, interval: float) -> None:
        # Sent from the event loop itself: if the loop is stuck, systemd notices.
        while True:
            self._notifier.watchdog()
            await asyncio.sleep(interval)

    def reload(self) -> None:
        """SIGHUP: take a new config for the next dictation; keep the old one if it is invalid."""
        self._notifier.reloading()
        try:
            new = config.load(self._config_path)
        except ConfigError as exc:
            logger.error("reload refused, keeping the running configuration: %s", exc)
        else:
            self._config = new
            self._dictation.set_triggers(_triggers(new))
            if self._tasks is not None:
                self._tasks.create_task(self._microphone.reconfigure(new.audio), name="reconfigure-audio")
            logger.info("configuration reloaded (the Realtime settings apply from the next dictation)")
        self._notifier.ready(self._status_line())

    # -- Controller: what D-Bus calls

    @property
    def dictation(self) -> core.Dictation:
        return self._dictation

    @property
    def source(self) -> str:
        return self._microphone.source_name or self._config.audio.source

    def start(self) -> None:
        if self._tasks is None:
            raise SttdError("sttd is shutting down")
        if not self._dictation.start():
            return
        self._discarding = False
        self._publish()
        self._dictation_task = self._tasks.create_task(self._dictate(), name="dictation")

    def stop(self) -> None:
        if self._dictation.stop():
            self._publish()
            if self._tasks is not None:
                self._tasks.create_task(self._finish(), name="flush")

    def cancel(self) -> None:
        if self._dictation.stop():
            self._discarding = True
            self._publish()
            if self._session is not None:
                self._session.cancel()

    def toggle(self) -> None:
        if self._dictation.active:
            self.stop()
        else:
            self.start()

    def set_language(self, code: str) -> None:
        if not self._dictation.set_language(code):
            return
        self._save_state()
        self._publish()
        if self._session is not None and self._tasks is not None:
            settings = self._config.session_settings(self._dictation.language)
            self._tasks.create_task(self._session.update(settings), name="session-update")

    def set_enabled(self, enabled: bool) -> None:
        if not self._dictation.set_enabled(enabled):
            return
        self._save_state()
        if not enabled:
            self.stop()
        self._publish()

    def send(self) -> None:
        self._dictation.send()
        self._publish()

    def purge(self) -> None:
        self._dictation.purge()
        self._publish()

    async def list_sources(self) -> list[audio.SourceInfo]:
        return await asyncio.to_thread(audio.list_sources)

    # -- SessionListener: what the Realtime session reports

    def session_ready(self) -> None:
        self._dictation.session_ready()
        self._publish()

    def session_event(self, event: ServerEvent) -> None:
        if self._discarding:
            return
        self._dictation.server_event(event)
        self._publish()

    def session_reconnecting(self, reason: str) -> None:
        self._dictation.session_reconnecting(reason)
        self._publish()

    # -- one dictation

    async def _dictate(self) -> None:
        """Capture first, so nothing said while connecting is lost; then run the session."""
        cfg = self._config
        try:
            credentials = CredentialSource(find_api_key(cfg.realtime.api_key_file), cfg.realtime.token_url)
            options = SessionOptions(
                url=cfg.realtime.url,
                settings=cfg.session_settings(self._dictation.language),
                max_reconnect_attempts=cfg.realtime.max_reconnect_attempts,
            )
            self._session = RealtimeSession(options, credentials, listener=self)
            await self._microphone.open()
            self._microphone.attach(self._session.send_audio)
            self._source_changed()
            await self._session.run()
        except CredentialsError as exc:
            self._fail("credentials", str(exc))
        except AudioError as exc:
            self._fail("audio", str(exc))
        except SessionError as exc:
            self._fail(exc.code, str(exc))
        finally:
            await self._close_dictation()

    async def _finish(self) -> None:
        """Stop: every frame captured so far goes to the session, which then flushes."""
        await self._microphone.detach()
        if self._session is not None:
            self._session.finish()

    async def _close_dictation(self) -> None:
        await self._microphone.detach()
        if self._session is not None and self._session.dropped_audio_ms:
            logger.warning("%d ms of audio were dropped while disconnected", self._session.dropped_audio_ms)
        self._session = None
        self._dictation.finished(discard=self._discarding)
        self._discarding = False
        self._source_changed()
        self._publish()

    def _fail(self, code: str, message: str) -> None:
        logger.error("dictation failed: %s", message)
        self._dictation.session_failed(code, message)
        self._publish()

    def _audio_problem(self, message: str) -> None:
        if message:
            logger.warning("audio: %s", message)
        self._dictation.report_problem(message)
        self._source_changed()
        self._publish()

    def _audio_level(self, level: float) -> None:
        now = time.monotonic()
        if self._interface is None or now - self._last_level_at < LEVEL_INTERVAL_S:
            return
        if self._dictation.state in (core.State.LISTENING, core.State.SPEAKING, core.State.PROCESSING):
            self._last_level_at = now
            self._interface.set_level(round(level, 3))

    def _source_changed(self) -> None:
        if self._interface is not None:
            self._interface.source_changed(self.source)

    # -- outputs

    def _publish(self) -> None:
        for output in self._dictation.take_outputs():
            if self._interface is not None:
                self._interface.publish(output)
            if isinstance(output, core.StateChanged):
                self._notifier.status(self._status_line())

    def _status_line(self) -> str:
        state = self._dictation.state
        error = f": {self._dictation.last_error}" if state is core.State.ERROR else ""
        return f"{state}{error}" if self._dictation.enabled else f"disabled ({state})"

    def _save_state(self) -> None:
        saved = persisted.PersistedState(enabled=self._dictation.enabled, language=self._dictation.language)
        try:
            persisted.save(self._state_path, saved)
        except OSError as exc:
            logger.error("cannot save %s: %s", self._state_path, exc)


def _triggers(cfg: config.Config) -> core.Triggers:
    return core.Triggers(cfg.triggers.send, cfg.triggers.purge, cfg.triggers.position)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sttd", description="Speech-to-text daemon (D-Bus: io.github.sttd.Sttd1).")
    parser.add_argument(
        "--config", type=Path, metavar="PATH", help="config file (default: $XDG_CONFIG_HOME/sttd/config.toml)"
    )
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper, metavar="LEVEL"
    )
    parser.add_argument("--version", action="version", version=f"sttd {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        cfg = config.load(args.config)
    except ConfigError as exc:
        print(f"sttd: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"sttd: {args.config or config.default_path()}: configuration is valid")
        return 0
    logsetup.setup(args.log_level)
    daemon = Daemon(cfg, args.config, persisted.default_path())
    try:
        asyncio.run(daemon.run())
    except SttdError as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
