"""One timer for all waiting pushes: when each is polled next, and who polls it.

Ten thousand logins can wait on their phones at once. As one coroutine each, sleeping between
polls, every poll cost a timer handle, a future, two contexts and a task wake-up, and every
waiting login kept about 29 GC-tracked objects alive in the client alone
(docs/performance.md, "The wait at scale"). Here a waiting push is a heap entry and the
`Future` its coroutine awaits: one loop timer wakes when the earliest poll is due, and at most
`limit` worker tasks run the due polls, so a poll costs its HTTP exchange and little more.

The scheduler knows nothing of SecSign. It calls `poll(item)` for each item whose time has
come; that callback either resolves `item.future` or hands the item back to `schedule`. An
item whose future is already done (the push met its deadline, or its caller gave up) is
dropped when it comes up, so abandoning a push costs nothing here.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

#: Callbacks of the scheduler's own timer run here rather than in a copy of whatever
#: request's context armed it: they log nothing, and a copy per timer is one more object.
QUIET = contextvars.Context()


class Pollable(Protocol):
    """What the scheduler needs of an item: the future that says the item is finished."""

    @property
    def future(self) -> asyncio.Future[Any]: ...


W = TypeVar("W", bound=Pollable)


class PollScheduler(Generic[W]):
    """Polls items at the times given to `schedule`, at most `limit` at once.

    Polls due within `tick` seconds of each other go out on the same wake-up, so the timer
    fires at most once per tick however many pushes wait.
    """

    def __init__(self, poll: Callable[[W], Awaitable[None]], limit: int, tick: float) -> None:
        self._poll = poll
        self._limit = limit
        self._tick = tick
        self._heap: list[tuple[float, int, W]] = []
        self._order = itertools.count()  # ties never compare items
        self._ready: deque[W] = deque()
        self._workers: set[asyncio.Task[None]] = set()
        self._draining = 0  # workers still taking items; a finished task may linger in _workers
        self._timer: asyncio.TimerHandle | None = None
        self._wake_at = math.inf
        self._closed = False
        self._last: Callable[[W], None] = _leave

    def schedule(self, item: W, due: float) -> None:
        """Poll `item` at loop time `due` (or up to one tick earlier); after `close()`, the
        item gets its last word at once instead of waiting for its deadline."""
        if self._closed:
            self._last(item)
            return
        heapq.heappush(self._heap, (due, next(self._order), item))
        if due < self._wake_at:
            self._arm(due)

    async def close(self, last: Callable[[W], None]) -> None:
        """Stop polling; `last(item)` is called for every item still waiting or in flight."""
        self._closed = True
        self._last = last
        if self._timer is not None:
            self._timer.cancel()
        waiting = [entry[2] for entry in self._heap] + list(self._ready)
        self._heap.clear()
        self._ready.clear()
        for item in waiting:
            if not item.future.done():
                last(item)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._wake_at = when
        self._timer = asyncio.get_running_loop().call_at(when, self._wake, context=QUIET)

    def _wake(self) -> None:
        """Move every item that is due (within a tick) to the ready queue; start workers."""
        self._timer = None
        self._wake_at = math.inf
        heap = self._heap
        horizon = asyncio.get_running_loop().time() + self._tick
        while heap and heap[0][0] <= horizon:
            item = heapq.heappop(heap)[2]
            if not item.future.done():
                self._ready.append(item)
        if heap:
            self._arm(heap[0][0])
        loop = asyncio.get_running_loop()
        for _ in range(min(self._limit, len(self._ready)) - self._draining):
            self._draining += 1
            task = loop.create_task(self._work())
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    async def _work(self) -> None:
        """Poll ready items until none is left; a bug in one poll fails only that push."""
        try:
            await self._drain()
        finally:
            self._draining -= 1

    async def _drain(self) -> None:
        ready = self._ready
        while ready:
            item = ready.popleft()
            if item.future.done():
                continue
            try:
                await self._poll(item)
            except asyncio.CancelledError:  # close(): the item gets its last word too
                if not item.future.done():
                    self._last(item)
                raise
            except Exception as error:  # handed to the push, which re-raises it
                if not item.future.done():
                    item.future.set_exception(error)


def _leave(item: object) -> None:
    """Before `close()`, a cancelled worker (the loop shutting down) leaves its item be."""
