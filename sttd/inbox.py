"""Frames from the capture thread to the event loop: a queue and an eventfd, one wake-up per batch.

``loop.call_soon_threadsafe`` per batch made a handle and copied the context
on the capture thread, and cost the loop two ``recv`` calls on its self-pipe
(the second to find it empty). Here the capture thread appends to a deque and
writes the eventfd only when the loop has not been told yet; the loop reads
it once and takes everything queued. No asyncio objects per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    """``put`` from any thread; ``take`` runs on the loop for each item, in order.

    :meth:`drain` delivers what is queued now (loop thread), so that a message
    posted after some items by another way can make sure they came first.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, take: Callable[[T], None]) -> None:
        self._loop = loop
        self._take = take
        self._items: deque[T] = deque()
        self._told = False
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        loop.add_reader(self._fd, self._ready)

    def put(self, item: T) -> None:
        """Any thread. Never blocks; an item put after :meth:`close` is dropped."""
        self._items.append(item)
        if not self._told:
            # The loop clears _told before it takes the items: an item appended while the flag
            # still reads True is taken by that pass, one appended after it writes again.
            self._told = True
            with contextlib.suppress(OSError):  # closed: nobody is listening any more
                os.eventfd_write(self._fd, 1)

    def _ready(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._fd)
        self._told = False
        self.drain()

    def drain(self) -> None:
        """Loop thread: deliver everything queued so far."""
        items, take = self._items, self._take
        while items:
            take(items.popleft())

    def close(self) -> None:
        """Loop thread: stop listening; what is still queued is dropped."""
        if self._fd < 0:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed already
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._items.clear()
