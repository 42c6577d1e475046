"""The XDG GlobalShortcuts portal client: desktop-wide keys for sttd (a boundary, like audio).

sttd asks ``org.freedesktop.portal.Desktop`` (``xdg-desktop-portal``) on the
session bus for its shortcuts (:data:`sttd.shortcuts_core.SHORTCUTS`):
``CreateSession``, then ``BindShortcuts`` with a description and the
configured preferred trigger each; the desktop lets the user confirm or
change the keys and then emits ``Activated`` / ``Deactivated`` for them,
which :class:`~sttd.shortcuts_core.PushToTalk` turns into Start, Stop, ...

Portal requests answer through a ``Request`` object: the call returns its
path and the result comes as its ``Response`` signal. The path is known in
advance (``/org/freedesktop/portal/desktop/request/SENDER/TOKEN``), and the
signal match is in place before any call, so no answer can be missed.

The connection is sttd's own (not the one ``io.github.sttd.Sttd1`` is
served on), watched for ``NameOwnerChanged`` of the portal: when the portal
restarts, sttd binds again in a new session; when its connection to the
bus is lost, it connects again. Where the portal has no GlobalShortcuts
(GNOME 47 and older, Sway, i3) it says once, at INFO, what to use instead,
and :attr:`Shortcuts.status` reads ``unavailable (<reason>)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

from dbus_next import DBusError, Message, MessageType, Variant
from dbus_next.aio import MessageBus

from . import core
from . import shortcuts_core as sc
from .bus import Bus
from .config import ShortcutsConfig
from .errors import SttdError
from .redact import excerpt

logger = logging.getLogger(__name__)

PORTAL = "org.freedesktop.portal.Desktop"
PORTAL_PATH = "/org/freedesktop/portal/desktop"
GLOBAL_SHORTCUTS = "org.freedesktop.portal.GlobalShortcuts"
REQUEST = "org.freedesktop.portal.Request"
SESSION = "org.freedesktop.portal.Session"
DBUS = "org.freedesktop.DBus"
CALL_TIMEOUT_S = 30.0
"""How long a portal call (and its Response) may take; BindShortcuts waits longer (a dialog may be open)."""
BIND_TIMEOUT_S = 600.0
RETRY_S = (1.0, 2.0, 5.0, 10.0)
"""Pauses before connecting to the session bus again, the last one repeated."""
INSTEAD = (
    "bind a key to `sttctl toggle` in the desktop's keyboard settings, or hold-to-talk with "
    "`sttctl hold` behind a binding that sees the release (Sway: bindsym --release, Hyprland: bindr); "
    "see docs/desktop.md"
)

STATUS_DISABLED = "disabled"
STATUS_BINDING = "binding"
STATUS_BOUND = "bound"


def unavailable(reason: str) -> str:
    return f"unavailable ({reason})"


class ShortcutController(Protocol):
    """What the shortcuts need from the daemon."""

    @property
    def dictation(self) -> core.Dictation: ...

    async def start(self) -> None: ...

    def stop(self) -> None: ...

    async def toggle(self) -> None: ...

    def cancel(self) -> None: ...

    def send(self) -> None: ...


class _PortalGone(Exception):
    """The portal left the bus (or never was there) while sttd waited for it."""


class Shortcuts:
    """Binds sttd's shortcuts with the portal and acts on them; :meth:`run` is the task."""

    def __init__(
        self, config: ShortcutsConfig, controller: ShortcutController, on_status: Callable[[str], None]
    ) -> None:
        self._config = config
        self._controller = controller
        self._on_status = on_status
        self._status = STATUS_DISABLED if not config.enabled else STATUS_BINDING
        self._core = sc.PushToTalk(config.hold_threshold_ms / 1000, config.max_hold_s)
        self._bus: MessageBus | None = None
        self._portal_owner = ""
        self._session = ""
        self._responses: dict[str, asyncio.Future[tuple[int, dict[str, Any]]]] = {}
        self._tokens = itertools.count(1)
        self._actions: asyncio.Queue[sc.Action] = asyncio.Queue()
        self._timer: asyncio.TimerHandle | None = None
        self._owner_changed = asyncio.Event()
        self._said_unavailable = False

    @property
    def status(self) -> str:
        """``bound``, ``binding``, ``disabled`` or ``unavailable (<reason>)``."""
        return self._status

    def _set_status(self, status: str) -> None:
        if status != self._status:
            self._status = status
            self._on_status(status)

    def _unavailable(self, reason: str) -> None:
        level = logging.DEBUG if self._said_unavailable else logging.INFO
        self._said_unavailable = True
        logger.log(level, "desktop shortcuts unavailable (%s): %s", reason, INSTEAD)
        self._set_status(unavailable(reason))

    def reconfigure(self, config: ShortcutsConfig) -> None:
        """Take a new ``[shortcuts]``: the threshold and bound at once; triggers at the next bind."""
        self._config = config
        self._core.hold_threshold_s = config.hold_threshold_ms / 1000
        self._core.max_hold_s = config.max_hold_s

    # -- the task

    async def run(self) -> None:
        """Bind, and act on the shortcuts, until cancelled (which is safe at any point)."""
        if not self._config.enabled:
            logger.info("desktop shortcuts disabled ([shortcuts] enabled = false)")
            return
        worker = asyncio.ensure_future(self._perform())
        try:
            for attempt in itertools.count():
                try:
                    await self._connected()
                except (OSError, EOFError, ValueError, DBusError, SttdError) as exc:
                    reason = f"session bus: {excerpt(str(exc), limit=120)}"
                    logger.debug("shortcuts: %s", reason)
                    self._set_status(unavailable(reason))
                except Exception as exc:
                    # A bug here must cost the shortcuts, not the daemon (the task group would end it).
                    logger.exception("desktop shortcuts failed unexpectedly; trying again")
                    self._set_status(unavailable(f"internal error: {exc.__class__.__name__} (details in sttd's log)"))
                else:
                    self._set_status(unavailable("lost the session bus; connecting again"))
                self._lost()
                await asyncio.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])
        finally:
            worker.cancel()
            self._cancel_timer()
            if self._bus is not None:
                self._bus.disconnect()

    async def _connected(self) -> None:
        """One connection to the session bus: watch the portal, bind whenever it is (back) there."""
        # sttd's Bus: a connection closed with messages still queued leaves no unretrieved futures behind.
        bus = self._bus = await Bus().connect()
        try:
            bus.add_message_handler(self._on_message)
            await self._add_match(f"type='signal',sender='{DBUS}',member='NameOwnerChanged',arg0='{PORTAL}'")
            await self._add_match(f"type='signal',path_namespace='{PORTAL_PATH}'")
            disconnected = asyncio.ensure_future(bus.wait_for_disconnect())
            try:
                while not disconnected.done():
                    self._owner_changed.clear()
                    await self._bind_if_there()
                    changed = asyncio.ensure_future(self._owner_changed.wait())
                    try:
                        await asyncio.wait([changed, disconnected], return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        changed.cancel()
            finally:
                disconnected.cancel()
            with contextlib.suppress(Exception):
                disconnected.result()
        finally:
            bus.disconnect()
            self._bus = None

    async def _bind_if_there(self) -> None:
        self._lost()
        owner = await self._owner()
        self._portal_owner = owner
        if not owner:
            self._unavailable(f"no desktop portal ({PORTAL}) on the session bus")
            return
        self._set_status(STATUS_BINDING)
        try:
            version = await self._version()
        except _PortalGone:
            return
        if version is None:
            self._unavailable("the desktop portal has no GlobalShortcuts; GNOME 47 and older, Sway and i3 have none")
            return
        try:
            await self._bind()
        except _PortalGone:
            return
        except SttdError as exc:
            self._unavailable(str(exc))

    async def _owner(self) -> str:
        reply = await self._call_raw(DBUS, "/org/freedesktop/DBus", DBUS, "GetNameOwner", "s", [PORTAL])
        if reply.message_type == MessageType.ERROR:
            # Not running: may it be activated? (On a desktop the portal starts on demand.)
            started = await self._call_raw(DBUS, "/org/freedesktop/DBus", DBUS, "StartServiceByName", "su", [PORTAL, 0])
            if started.message_type == MessageType.ERROR:
                return ""
            reply = await self._call_raw(DBUS, "/org/freedesktop/DBus", DBUS, "GetNameOwner", "s", [PORTAL])
            if reply.message_type == MessageType.ERROR:
                return ""
        return str(reply.body[0])

    async def _version(self) -> int | None:
        """GlobalShortcuts' version, or None when the portal has no such interface."""
        reply = await self._call_raw(
            PORTAL, PORTAL_PATH, "org.freedesktop.DBus.Properties", "Get", "ss", [GLOBAL_SHORTCUTS, "version"]
        )
        if reply.message_type == MessageType.ERROR:
            if reply.error_name in (
                "org.freedesktop.DBus.Error.ServiceUnknown",
                "org.freedesktop.DBus.Error.NameHasNoOwner",
            ):
                raise _PortalGone()
            return None
        return int(reply.body[0].value)

    async def _bind(self) -> None:
        token = self._token()
        _, results = await self._request(
            "CreateSession",
            "a{sv}",
            [{"handle_token": Variant("s", token), "session_handle_token": Variant("s", self._token())}],
            token,
        )
        session = results.get("session_handle")
        if session is None:
            raise SttdError("the portal created no session")
        self._session = str(session.value)
        shortcuts = []
        for spec in sc.SHORTCUTS:
            props = {"description": Variant("s", spec.description)}
            trigger = getattr(self._config, spec.config_key)
            if trigger:
                props["preferred_trigger"] = Variant("s", trigger)
            shortcuts.append([spec.id, props])
        token = self._token()
        _, results = await self._request(
            "BindShortcuts",
            "oa(sa{sv})sa{sv}",
            [self._session, shortcuts, "", {"handle_token": Variant("s", token)}],
            token,
            timeout=BIND_TIMEOUT_S,
        )
        bound = _shortcut_list(results.get("shortcuts"))
        logger.info("desktop shortcuts bound: %s", _describe(bound))
        self._set_status(STATUS_BOUND)

    async def list_shortcuts(self) -> list[tuple[str, str, str]]:
        """``(id, description, trigger)`` of each bound shortcut, as the desktop reports them now."""
        if self._status != STATUS_BOUND or not self._session:
            raise sc.ShortcutsUnavailableError(f"desktop shortcuts are {self._status}")
        token = self._token()
        try:
            _, results = await self._request(
                "ListShortcuts", "oa{sv}", [self._session, {"handle_token": Variant("s", token)}], token
            )
        except _PortalGone:
            raise sc.ShortcutsUnavailableError("the desktop portal left the bus") from None
        except SttdError as exc:
            raise sc.ShortcutsUnavailableError(str(exc)) from None
        return _shortcut_list(results.get("shortcuts"))

    # -- portal requests

    def _token(self) -> str:
        # Unique per call and per sttd process: a restarted portal must not meet an old path.
        return f"sttd_{os.getpid()}_{next(self._tokens)}_{secrets.token_hex(4)}"

    def _request_path(self, token: str) -> str:
        assert self._bus is not None and self._bus.unique_name
        sender = self._bus.unique_name.lstrip(":").replace(".", "_")
        return f"{PORTAL_PATH}/request/{sender}/{token}"

    async def _request(
        self, member: str, signature: str, body: list[Any], token: str, timeout: float = CALL_TIMEOUT_S
    ) -> tuple[int, dict[str, Any]]:
        """Call ``member`` and wait for its Response; raises :class:`SttdError` unless it succeeded."""
        path = self._request_path(token)
        answer: asyncio.Future[tuple[int, dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._responses[path] = answer  # the match rule is already in place (see _connected)
        try:
            reply = await self._call_raw(PORTAL, PORTAL_PATH, GLOBAL_SHORTCUTS, member, signature, body)
            if reply.message_type == MessageType.ERROR:
                if reply.error_name in (
                    "org.freedesktop.DBus.Error.ServiceUnknown",
                    "org.freedesktop.DBus.Error.NoReply",
                ):
                    raise _PortalGone()
                why = reply.body[0] if reply.body else reply.error_name
                raise SttdError(f"the portal refused {member}: {excerpt(str(why), limit=200)}")
            returned = str(reply.body[0])
            if returned != path:  # portals older than the handle_token convention
                self._responses[returned] = self._responses.pop(path)
                path = returned
            try:
                code, results = await asyncio.wait_for(asyncio.shield(answer), timeout)
            except TimeoutError:
                raise SttdError(f"the portal did not answer {member} within {timeout:.0f} s") from None
        finally:
            self._responses.pop(path, None)
        if code != 0:
            raise SttdError(f"{member} was {'cancelled by the user' if code == 1 else 'refused by the desktop'}")
        return code, results

    async def _call_raw(
        self, destination: str, path: str, interface: str, member: str, signature: str, body: list[Any]
    ) -> Message:
        bus = self._bus
        assert bus is not None
        call = bus.call(
            Message(
                destination=destination, path=path, interface=interface, member=member, signature=signature, body=body
            )
        )
        owner = asyncio.ensure_future(self._owner_changed.wait()) if destination == PORTAL else None
        task = asyncio.ensure_future(call)
        try:
            waited = [task] if owner is None else [task, owner]
            done, _ = await asyncio.wait(waited, timeout=CALL_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if owner is not None:
                owner.cancel()
            if not task.done():  # given up, or cancelled: its failure when the bus closes is nobody's
                task.cancel()
        if task not in done:
            if owner is not None and owner in done:
                raise _PortalGone()
            raise SttdError(f"no answer to {member} within {CALL_TIMEOUT_S:.0f} s")
        reply: Message = task.result()
        return reply

    async def _add_match(self, rule: str) -> None:
        reply = await self._call_raw(DBUS, "/org/freedesktop/DBus", DBUS, "AddMatch", "s", [rule])
        if reply.message_type == MessageType.ERROR:
            raise DBusError(reply.error_name or "", "the bus refused a signal subscription")

    # -- signals

    def _on_message(self, message: Message) -> bool:
        if message.message_type != MessageType.SIGNAL:
            return False
        try:
            self._on_signal(message)
        except (TypeError, ValueError, IndexError, AttributeError) as exc:  # a signal not shaped as the spec says
            logger.warning("ignored a malformed %s.%s from the portal: %s", message.interface, message.member, exc)
        return False

    def _on_signal(self, message: Message) -> None:
        if message.interface == DBUS and message.member == "NameOwnerChanged" and message.body[:1] == [PORTAL]:
            logger.info(
                "desktop portal %s", "restarted: binding the shortcuts again" if message.body[2] else "left the bus"
            )
            self._owner_changed.set()
            return
        if not self._portal_owner or message.sender != self._portal_owner:
            return
        if message.interface == REQUEST and message.member == "Response":
            answer = self._responses.get(message.path or "")
            if answer is not None and not answer.done():
                answer.set_result((int(message.body[0]), dict(message.body[1])))
        elif message.interface == SESSION and message.member == "Closed" and message.path == self._session:
            logger.info("the desktop closed sttd's shortcut session: binding again")
            self._owner_changed.set()
        elif message.interface == GLOBAL_SHORTCUTS and message.body[:1] == [self._session]:
            if message.member == "Activated":
                self._key(True, str(message.body[1]), int(message.body[2]))
            elif message.member == "Deactivated":
                self._key(False, str(message.body[1]), int(message.body[2]))
            elif message.member == "ShortcutsChanged":
                logger.info(
                    "the desktop changed sttd's shortcuts: %s",
                    _describe(_shortcut_list(message.body[1])),
                )

    def _key(self, pressed: bool, shortcut_id: str, stamp: int) -> None:
        now = time.monotonic()
        logger.debug("shortcut %s %s (portal time %d)", shortcut_id, "pressed" if pressed else "released", stamp)
        if pressed:
            actions = self._core.pressed(shortcut_id, now, stamp, active=self._controller.dictation.active)
        else:
            actions = self._core.released(shortcut_id, now, stamp)
        self._queue(actions)

    def _queue(self, actions: list[sc.Action]) -> None:
        for action in actions:
            self._actions.put_nowait(action)
        self._arm_timer()

    def _arm_timer(self) -> None:
        self._cancel_timer()
        deadline = self._core.deadline
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + max(0.0, deadline - time.monotonic()), self._expire)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        self._queue(self._core.expire(time.monotonic()))

    def _lost(self) -> None:
        """The session is gone (portal restart, bus lost): a held key's release will not come."""
        self._session = ""
        self._portal_owner = ""
        for answer in self._responses.values():
            if not answer.done():
                answer.set_exception(_PortalGone())
                answer.exception()  # retrieved here too: its request may already have given up
        self._queue(self._core.lost())

    async def _perform(self) -> None:
        """Run the actions one after another, in order: a Stop waits for the Start before it."""
        while True:
            action = await self._actions.get()
            try:
                match action:
                    case sc.Action.START:
                        await self._controller.start()
                    case sc.Action.STOP:
                        self._controller.stop()
                    case sc.Action.TOGGLE:
                        await self._controller.toggle()
                    case sc.Action.CANCEL:
                        self._controller.cancel()
                    case sc.Action.SEND:
                        self._controller.send()
            except SttdError as exc:
                logger.info("shortcut %s refused: %s", action, exc)
            except Exception:
                logger.exception("shortcut %s failed", action)


def _shortcut_list(value: Any) -> list[tuple[str, str, str]]:
    """``a(sa{sv})`` from the portal as ``(id, description, trigger_description)``."""
    if value is None:
        return []
    items = value.value if isinstance(value, Variant) else value
    listed = []
    for shortcut_id, props in items:
        description = props.get("description")
        trigger = props.get("trigger_description")
        listed.append(
            (
                str(shortcut_id),
                str(description.value) if description is not None else "",
                str(trigger.value) if trigger is not None else "",
            )
        )
    return listed


def _describe(bound: list[tuple[str, str, str]]) -> str:
    return ", ".join(f"{sid} = {trigger or 'no key yet'}" for sid, _, trigger in bound) or "none"
