# mypy: disable-error-code="misc"
# dbus-next is untyped (Any to mypy); subclassing its classes is what this module is for.
"""dbus-next's asyncio bus, fixed where a busy or hostile peer could end sttd's connection.

Two defects of dbus-next 0.2.3 (no release since 2021) are repaired here, at
the depth where they live, so the rest of sttd uses an ordinary
``MessageBus``:

* **A full socket buffer ended the connection.** The writer sends queued
  messages back to back; once the kernel's buffer is full, ``send`` raises
  ``BlockingIOError`` and dbus-next treats that as a lost connection
  (upstream issue #153; its fix, PR #154, was never merged). The maintained
  fork dbus-fast 5.2 has the same handler and, worse, also calls ``send``
  straight from ``schedule_write`` when its queue is empty, so it is no way
  out. Here ``EAGAIN`` keeps the unsent rest and waits for the socket to be
  writable again.
* **A cancelled or failing ``async`` method got no reply.** dbus-next's
  completion callback re-raises the handler's exception into the event loop
  (an ERROR traceback for every refused call) and answers nothing at all
  when the task was cancelled (at shutdown), so the caller waits for its
  timeout. Here every call gets exactly one reply: the result, the
  ``DBusError`` raised, or a plain error naming the method.

It also sends sttd's own signals marshalled by :mod:`sttd.dbus_wire`
(:meth:`Bus.send_marshalled`), in order with every other message.
"""

from __future__ import annotations

import array
import asyncio
import logging
import socket
from typing import Any

from dbus_next import DBusError, Message
from dbus_next.aio import MessageBus
from dbus_next.aio.message_bus import _MessageWriter
from dbus_next.constants import ErrorType
from dbus_next.service import ServiceInterface

from .dbus_wire import Body, SignalTemplate

logger = logging.getLogger(__name__)

_WOULD_BLOCK = (BlockingIOError, InterruptedError)


class _PatientWriter(_MessageWriter):
    """The writer, waiting for writability instead of giving up when the kernel's buffer is full."""

    buf: memoryview | None
    """The message being written (None: take the next from the queue)."""
    offset: int
    """How much of ``buf`` is written."""
    fut: asyncio.Future[None] | None

    def __init__(self, bus: MessageBus) -> None:
        super().__init__(bus)
        self.drained = asyncio.Event()
        """Set while nothing is queued or half written (or the connection is gone)."""
        self.drained.set()

    def buffer_message(self, msg: Message, future: asyncio.Future[None] | None = None) -> None:
        self.drained.clear()
        super().buffer_message(msg, future)

    def write_callback(self) -> None:
        try:
            self._write_queued()
        except _WOULD_BLOCK:
            # Keep self.buf and self.offset: the writer stays registered and resumes when writable.
            return
        except Exception as exc:
            self._fail(exc)

    def _write_queued(self) -> None:
        while True:
            if self.buf is None:
                if self.messages.qsize() == 0:
                    self.loop.remove_writer(self.fd)
                    self.drained.set()
                    return
                buf, unix_fds, fut = self.messages.get_nowait()
                self.buf, self.unix_fds, self.fut, self.offset = memoryview(buf), unix_fds, fut, 0
            if self.unix_fds and self.negotiate_unix_fd:
                # Not used by sttd; kept so the writer stays a drop-in replacement.
                fds = array.array("i", self.unix_fds)
                sent = self.sock.sendmsg([self.buf[self.offset :]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                self.unix_fds = None
            else:
                sent = self.sock.send(self.buf[self.offset :])
            self.offset += sent
            if self.offset < len(self.buf):
                return  # partly written: the rest when the socket is writable again
            self.buf = None
            _resolve(self.fut)

    def _fail(self, exc: Exception) -> None:
        # The connection is gone: every message still queued fails with it. Their
        # futures are nobody's to await (replies, signals), so mark them retrieved:
        # asyncio would otherwise log "Future exception was never retrieved".
        _reject(self.fut, exc)
        self.buf = None
        while self.messages.qsize():
            _reject(self.messages.get_nowait()[2], exc)
        self.drained.set()
        self.bus._finalize(exc)


def _resolve(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


def _reject(fut: asyncio.Future[None] | None, exc: Exception) -> None:
    if fut is not None and not fut.done():
        fut.set_exception(exc)
        fut.exception()  # retrieved: see _PatientWriter._fail


class Bus(MessageBus):
    """A dbus-next ``MessageBus`` that survives a full socket buffer and answers every call once.

    ``cancelled_error`` is the D-Bus error name a call gets when its task is
    cancelled (which happens when the event loop ends with calls in flight).
    """

    def __init__(self, *args: Any, cancelled_error: str = ErrorType.FAILED.value, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writer = _PatientWriter(self)
        self._cancelled_error = cancelled_error

    async def flush(self, timeout: float) -> bool:
        """Wait, at most ``timeout`` seconds, until everything queued is written; whether it was."""
        writer: _PatientWriter = self._writer
        if self._disconnected:
            return True
        try:
            await asyncio.wait_for(writer.drained.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def write_now(self) -> None:
        """Write what is queued to the socket now, instead of when the event loop next polls it.

        Whatever the loop runs next (a hook's fork and exec, which block it for
        a millisecond or more) then comes after the signals already sent.
        A full socket buffer keeps the rest queued for the loop, as usual.
        """
        if not self._disconnected and self.unique_name:  # before Hello, dbus-next holds messages back
            self._writer.write_callback()

    def send_marshalled(self, template: SignalTemplate, body: Body) -> bool:
        """Send ``template`` with ``body`` (:mod:`sttd.dbus_wire`); False (nothing sent) before Hello.

        With nothing queued before it, the message is written to the socket here: no
        message object, no future, no writer callback added and removed. Otherwise (or
        for the rest of a partial write) it waits behind the others, in order, through
        the same writer as every message.
        """
        if self._disconnected:
            return True  # nobody can receive it, as with send()
        if not self.unique_name:
            return False  # before Hello, dbus-next holds messages back: the caller sends it the ordinary way
        writer: _PatientWriter = self._writer
        writer.drained.clear()
        writer.messages.put_nowait((template.message(self.next_serial(), body), None, None))
        if writer.buf is None and writer.messages.qsize() == 1:
            writer.write_callback()  # nothing before it: written now, as write_now() does
        if not writer.drained.is_set():  # a full socket buffer: the rest when it is writable
            self._loop.add_writer(writer.fd, writer.write_callback)
        return True

    def send(self, msg: Message) -> asyncio.Future[None]:
        if self._disconnected:
            # Nobody can receive it; a reply or signal to a gone bus is not an error worth a traceback.
            future: asyncio.Future[None] = self._loop.create_future()
            _reject(future, EOFError("the bus connection is closed"))
            return future
        sent: asyncio.Future[None] = super().send(msg)
        return sent

    def _make_method_handler(self, interface: ServiceInterface, method: Any) -> Any:
        if not asyncio.iscoroutinefunction(method.fn):
            return super()._make_method_handler(interface, method)

        def handler(msg: Message, send_reply: Any) -> None:
            task = asyncio.ensure_future(method.fn(interface, *ServiceInterface._msg_body_to_args(msg)))
            task.add_done_callback(lambda done: self._answer(msg, method, done, send_reply))

        return handler

    def _answer(self, msg: Message, method: Any, task: asyncio.Future[Any], send_reply: Any) -> None:
        """Exactly one reply to a call whose task is done, whatever became of it."""
        if task.cancelled():
            reply = Message.new_error(msg, self._cancelled_error, f"{msg.member} was cancelled: sttd is shutting down")
        elif isinstance(task.exception(), DBusError):
            error: DBusError = task.exception()
            reply = error._as_message(msg)
        elif task.exception() is not None:
            logger.error("%s failed", msg.member, exc_info=task.exception())
            reply = Message.new_error(msg, ErrorType.FAILED, f"{msg.member} failed (details in sttd's log)")
        else:
            try:
                body, fds = ServiceInterface._fn_result_to_body(task.result(), method.out_signature_tree)
                reply = Message.new_method_return(msg, method.out_signature, body, fds)
            except Exception as exc:  # a result of the wrong shape: a bug, but the caller still gets an answer
                logger.error("%s returned an invalid result", msg.member, exc_info=exc)
                reply = Message.new_error(msg, ErrorType.FAILED, f"{msg.member} failed (details in sttd's log)")
        send_reply(reply)
