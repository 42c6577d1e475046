"""A flag one coroutine sleeps on, with a timeout, for the price of a future per wait.

``asyncio.wait_for(event.wait(), timeout)`` creates a task and a timer for
every wait; the Realtime sender waits once per frame, fifty times a second.
:class:`Wakeup` keeps one timer for as long as it fits the deadlines asked
for, and a wait is a bare future. No I/O.
"""

from __future__ import annotations

import asyncio
import math


class Wakeup:
    """``set()`` from the loop; ``await wait(timeout)`` in one coroutine at a time.

    A wait may return before its timeout when an earlier wait's timer fires:
    the waiter re-checks its conditions anyway, like after any wake-up.
    """

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def set(self) -> None:
        self._set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    async def wait(self, timeout: float) -> None:
        """Return once set, or after about ``timeout`` seconds. Safe to cancel."""
        if self._set:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at = loop.call_at(deadline, self._expire), deadline
        self._waiter = waiter = loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _expire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
