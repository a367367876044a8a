"""The in-process state store: the default for a single instance.

Entries expire lazily on access and in a periodic sweep bounded by the number of entries
written, so an idle proxy and a busy one both stay small.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from radius_proxy.state import ChallengeContext


class MemoryStore:
    """Dictionaries with expiry times; single event loop, so no locks are needed."""

    #: Nothing here needs a current Task (`wait_for` makes its own): see pipeline/ports.py.
    runs_without_task = True

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._challenges: dict[bytes, tuple[float, ChallengeContext]] = {}
        self._remembered: dict[str, float] = {}
        self._pushes: dict[str, deque[float]] = {}
        self._claims: dict[str, float] = {}
        self._outcomes: dict[str, tuple[float, str]] = {}
        self._waiters: dict[str, list[asyncio.Future[str]]] = {}
        self._writes = 0

    async def put_challenge(self, token: bytes, context: ChallengeContext, ttl: float) -> None:
        self._challenges[token] = (self._clock() + ttl, context)
        self._wrote()

    async def take_challenge(self, token: bytes) -> ChallengeContext | None:
        item = self._challenges.pop(token, None)
        if item is None or item[0] <= self._clock():
            return None
        return item[1]

    async def remember(self, key: str, ttl: float) -> None:
        self._remembered[key] = self._clock() + ttl
        self._wrote()

    async def is_remembered(self, key: str) -> bool:
        expires = self._remembered.get(key)
        return expires is not None and expires > self._clock()

    async def count_push(self, user: str, window: float) -> int:
        now = self._clock()
        times = self._pushes.setdefault(user, deque())
        while times and times[0] <= now - window:
            times.popleft()
        times.append(now)
        self._wrote()
        return len(times)

    async def claim_push(self, key: str, ttl: float) -> bool:
        now = self._clock()
        if self._claims.get(key, 0.0) > now:
            return False
        self._claims[key] = now + ttl
        self._outcomes.pop(key, None)
        self._wrote()
        return True

    async def finish_push(self, key: str, outcome: str, ttl: float) -> None:
        self._claims.pop(key, None)
        self._outcomes[key] = (self._clock() + ttl, outcome)
        for waiter in self._waiters.pop(key, []):
            if not waiter.done():
                waiter.set_result(outcome)
        self._wrote()

    async def wait_push(self, key: str, wait_seconds: float) -> str | None:
        done = self._outcomes.get(key)
        if done is not None and done[0] > self._clock():
            return done[1]
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(waiter)
        try:
            return await asyncio.wait_for(waiter, wait_seconds)
        except TimeoutError:
            return None
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[key]

    async def close(self) -> None:
        return None

    def _wrote(self) -> None:
        """Sweep expired entries once per 1000 writes: amortised O(1), memory bounded."""
        self._writes += 1
        if self._writes % 1000:
            return
        now = self._clock()
        self._challenges = {k: v for k, v in self._challenges.items() if v[0] > now}
        self._remembered = {k: v for k, v in self._remembered.items() if v > now}
        self._claims = {k: v for k, v in self._claims.items() if v > now}
        self._outcomes = {k: v for k, v in self._outcomes.items() if v[0] > now}
        horizon = 24 * 3600.0
        self._pushes = {k: v for k, v in self._pushes.items() if v and v[-1] > now - horizon}
