"""The Redis state store: several proxy instances sharing one truth.

Keys, all under `key_prefix` and all with an expiry, so nothing grows without bound:

    {prefix}challenge:{token hex}   a ChallengeContext as JSON (bytes as base64); GETDEL takes it
    {prefix}remember:{digest}       "1" for the remembered login's lifetime
    {prefix}pushes:{digest}         sorted set of push times (Redis's clock), PEXPIRE = window
    {prefix}claim:{digest}          the token of the instance running the push (SET NX PX)
    {prefix}outcome:{digest}        the finished push's outcome, for requests that joined it
    channel {prefix}push:{digest}   the same outcome, published when the push ends

`digest` is a BLAKE2b-128 hex digest of the pipeline's key (user, NAS, station): fixed
length, no NUL bytes and no glob characters in key or channel names. It keeps user names out
of key listings but is no secret: a user name can be hashed by anyone.

Round trips: every store operation is one command, so one round trip. Claim, count and
finish are Lua scripts (EVALSHA), which keeps each of them atomic and one command: the claim
also clears a previous outcome, the count prunes, adds, expires and counts on Redis's own clock
(no skew between instances), and the finish sets the outcome, publishes it and releases the
claim only if it is still ours. A push login thus costs 3 commands (5 with `remember_minutes`:
the check and the record); a challenge login 5 (7). Requires Redis 6.2 or later (GETDEL).

Claims are leases: `CLAIM_LEASE_SECONDS` in Redis, renewed every half of it while the push
runs (one more command per 10 s of push), so an instance that dies mid-push blocks the login
for at most that long; a waiting instance sees the claim gone without an outcome and stops.

Waiting: one pub/sub connection per store, subscribed to the pattern `{prefix}push:*`,
dispatches published outcomes to local futures. A waiter registers its future, makes sure the
subscription is live, then GETs the outcome key, which closes the race with a push that ended
just before. The listener pings when idle, reconnects after any error and then re-reads the
outcome of every local waiter, so a message lost during a reconnect is not waited for.

Failure: every call has `timeout_seconds` for connect and reply and an overall deadline of
three times that; a failing call raises `StateUnavailable` (a `BackendError`), logged as
`state_unavailable` (rate limited) and counted (`radius_proxy_backend_errors_total{backend=
"state"}`, and per operation in `unavailable_total`). The pipeline turns it into an
Access-Reject (`unavailable = "reject"`, the default) or no reply at all (`"drop"`, so the
NAS tries its next server); both fail closed. With `"memory"` the operation falls back to an
in-process `MemoryStore` instead: logins keep working on each instance alone, without the
sharing. redis-py reconnects on the next call, so recovery needs no restart.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import structlog
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from radius_proxy.errors import StateUnavailable
from radius_proxy.log import RateLimiter
from radius_proxy.metrics import METRICS
from radius_proxy.state import ChallengeContext
from radius_proxy.state.memory import MemoryStore
from radius_proxy.state.redis_support import (
    KeySpace,
    decode_context,
    encode_context,
    make_client,
    milliseconds,
    redact_url,
    setting,
    text,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: A user hammering logins adds one entry per push to the counter; keep at most this many.
MAX_COUNTED_PUSHES = 10_000
#: With no message for this long, the listener pings to find a connection that died silently.
LISTENER_PING_SECONDS = 10.0
#: The listener's longest pause between reconnect attempts.
LISTENER_MAX_BACKOFF = 2.0
#: A claim lives this long in Redis and is renewed every half of it while its push runs, so
#: the claim of an instance that died mid-push lapses within this time, not the push's budget.
CLAIM_LEASE_SECONDS = 20.0

_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""
_FINISH = """
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_COUNT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local cap = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[2])
local n = redis.call('ZCARD', KEYS[1])
if n > cap then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - cap - 1)
  n = cap
end
redis.call('PEXPIRE', KEYS[1], window)
return n
"""


# --- the store ---------------------------------------------------------------------------

class RedisStore:
    """`StateStore` on redis-py's asyncio client; see the module docstring for the design."""

    def __init__(self, config: Any) -> None:
        self._keys = KeySpace(config.key_prefix)
        self.redis, self._sentinel = make_client(config)
        self._timeout = float(setting(config, "timeout_seconds", 1.0))
        self._deadline = 3 * self._timeout
        self._action = str(setting(config, "unavailable", "reject"))
        self._memory = MemoryStore() if self._action == "memory" else None
        self._where = (f"sentinel service {setting(config, 'sentinel_service', 'mymaster')}"
                       if self._sentinel else redact_url(config.redis_url))
        self._claim = self.redis.register_script(_CLAIM)
        self._finish = self.redis.register_script(_FINISH)
        self._count = self.redis.register_script(_COUNT)
        self._renew = self.redis.register_script(_RENEW)
        self._leases: dict[str, asyncio.Task[None]] = {}
        self._claim_tokens: dict[str, str | None] = {}  # None: claimed in the memory fallback
        self._waiters: dict[str, list[asyncio.Future[str]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False  # background loops also stop on this: redis-py can swallow a
        # cancellation that races with its own read timeout
        self._service = str(setting(config, "sentinel_service", "mymaster"))
        self._subscribed = asyncio.Event()
        self._quiet = RateLimiter(burst=1, period=10.0)
        self._down_since: float | None = None
        self.unavailable_total: collections.Counter[str] = collections.Counter()

    @property
    def available(self) -> bool:
        """False from a failed call until the next one that works."""
        return self._down_since is None

    # --- challenge contexts ---------------------------------------------------------------

    async def put_challenge(self, token: bytes, context: ChallengeContext, ttl: float) -> None:
        key, value = self._keys.challenge(token), encode_context(context)
        await self._guard("put_challenge",
                          lambda: self.redis.set(key, value, px=milliseconds(ttl)),
                          lambda m: m.put_challenge(token, context, ttl))

    async def take_challenge(self, token: bytes) -> ChallengeContext | None:
        key = self._keys.challenge(token)
        data: bytes | str | None = None
        try:
            data = await self._run("take_challenge", lambda: self.redis.getdel(key))
        except StateUnavailable:
            if self._memory is None:
                raise
        if data is None:
            return await self._memory.take_challenge(token) if self._memory else None
        try:
            return decode_context(data)
        except ValueError as exc:
            log.warning("state_corrupt", key=key, error=str(exc))
            return None

    # --- remembered logins ----------------------------------------------------------------

    async def remember(self, key: str, ttl: float) -> None:
        name = self._keys.remember(key)
        await self._guard("remember", lambda: self.redis.set(name, b"1", px=milliseconds(ttl)),
                          lambda m: m.remember(key, ttl))

    async def is_remembered(self, key: str) -> bool:
        name = self._keys.remember(key)
        try:
            if await self._run("is_remembered", lambda: self.redis.exists(name)):
                return True
        except StateUnavailable:
            if self._memory is None:
                raise
        return await self._memory.is_remembered(key) if self._memory else False

    # --- push counters --------------------------------------------------------------------

    async def count_push(self, user: str, window: float) -> int:
        keys = [self._keys.pushes(user)]
        args: list[str | int] = [milliseconds(window), secrets.token_hex(8),
                                 MAX_COUNTED_PUSHES]
        count = await self._guard("count_push", lambda: self._count(keys, args),
                                  lambda m: m.count_push(user, window))
        return int(count)

    # --- one push per login across instances ----------------------------------------------

    async def claim_push(self, key: str, ttl: float) -> bool:
        digest, token = self._keys.digest(key), secrets.token_hex(16)
        keys = [self._keys.claim(digest), self._keys.outcome(digest)]
        lease = min(ttl, CLAIM_LEASE_SECONDS)
        try:
            won = bool(await self._run("claim_push",
                                       lambda: self._claim(keys, [token, milliseconds(lease)])))
        except StateUnavailable:
            if self._memory is None:
                raise
            won = await self._memory.claim_push(key, ttl)
            if won:
                self._claim_tokens[key] = None
            return won
        if won:
            self._claim_tokens[key] = token
            if ttl > lease:
                self._leases[key] = asyncio.create_task(
                    self._keep_claim(key, keys[0], token, ttl), name="redis-state-claim-lease")
        return won

    async def finish_push(self, key: str, outcome: str, ttl: float) -> None:
        token = self._claim_tokens.pop(key, "")
        lease = self._leases.pop(key, None)
        if lease is not None:
            lease.cancel()
        if token is None and self._memory is not None:
            await self._memory.finish_push(key, outcome, ttl)
            return
        digest = self._keys.digest(key)
        keys = [self._keys.claim(digest), self._keys.outcome(digest)]
        args: list[str | int] = [token or "", outcome, milliseconds(ttl),
                                 self._keys.channel(digest)]
        try:
            await self._run("finish_push", lambda: self._finish(keys, args))
        except StateUnavailable:
            if self._memory is None:
                raise  # nobody else can hear the outcome: fail closed

    async def wait_push(self, key: str, wait_seconds: float) -> str | None:
        """The outcome, or None after wait_seconds or as soon as the claim is gone without
        one (the instance running the push died: its lease lapsed)."""
        digest = self._keys.digest(key)
        names = [self._keys.claim(digest), self._keys.outcome(digest)]
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[str] = loop.create_future()
        self._waiters.setdefault(digest, []).append(waiter)
        end = loop.time() + wait_seconds
        try:
            async with asyncio.timeout(wait_seconds):
                await self._ensure_listening()
                while (left := end - loop.time()) > 0:
                    claim, done = await self._run("wait_push", lambda: self.redis.mget(names))
                    if done is not None:
                        return text(done)
                    if claim is None:
                        return None
                    with contextlib.suppress(TimeoutError):
                        return await asyncio.wait_for(asyncio.shield(waiter),
                                                      min(CLAIM_LEASE_SECONDS / 2, left))
                return None
        except TimeoutError:
            return None
        except StateUnavailable:
            if self._memory is None:
                raise
            return None  # the instance running the push cannot reach us: no outcome
        finally:
            self._drop_waiter(digest, waiter)

    async def _keep_claim(self, key: str, claim: str, token: str, ttl: float) -> None:
        """Renew our claim every half lease until finish_push, never beyond ttl in all."""
        loop, me = asyncio.get_running_loop(), asyncio.current_task()
        end = loop.time() + ttl
        while (left := end - loop.time()) > 0:
            await asyncio.sleep(min(CLAIM_LEASE_SECONDS / 2, left))
            if self._closed or self._leases.get(key) is not me:
                return
            args: list[str | int] = [token, milliseconds(min(CLAIM_LEASE_SECONDS,
                                                             max(0.0, end - loop.time())))]
            try:
                held = await self._run("claim_push", partial(self._renew, [claim], args))
            except StateUnavailable:
                continue
            if not held:
                log.warning("push_claim_lost", claim=claim)
                return

    # --- readiness and shutdown -----------------------------------------------------------

    async def probe(self) -> bool:
        """PING, for /readyz: can this instance use Redis right now?"""
        try:
            return bool(await self._run("probe", self.redis.ping))
        except StateUnavailable:
            return False

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._watcher, self._listener, *self._leases.values()) if t]
        for task in tasks:
            task.cancel()
        if tasks:  # each loop also ends on _closed within a second
            await asyncio.wait(tasks, timeout=LISTENER_MAX_BACKOFF + 1)
        self._leases.clear()
        await self.redis.aclose()
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                await client.aclose()

    # --- calling Redis ----------------------------------------------------------------------

    async def _run(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        """One command within the deadline; any failure becomes StateUnavailable."""
        if self._sentinel is not None and self._watcher is None:
            self._watcher = asyncio.create_task(self._watch_failovers(),
                                                name="redis-state-sentinel-watch")
        try:
            async with asyncio.timeout(self._deadline):
                result = await call()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(op, exc)
            raise StateUnavailable(f"state store unavailable ({op}): "
                                   f"{type(exc).__name__}") from exc
        if self._down_since is not None:
            log.info("state_available", store=self._where,
                     down_seconds=round(time.monotonic() - self._down_since, 1))
            self._down_since = None
        return result

    async def _guard(self, op: str, call: Callable[[], Awaitable[T]],
                     fallback: Callable[[MemoryStore], Awaitable[T]]) -> T:
        """`_run`, or with `unavailable = "memory"` the in-process store when Redis fails."""
        try:
            return await self._run(op, call)
        except StateUnavailable:
            if self._memory is None:
                raise
            return await fallback(self._memory)

    def _failed(self, op: str, exc: BaseException) -> None:
        self.unavailable_total[op] += 1
        METRICS.backend_errors.labels("state").inc()
        if self._down_since is None:
            self._down_since = time.monotonic()
        allowed, suppressed = self._quiet.allow("unavailable")
        if allowed:
            log.warning("state_unavailable", store=self._where, op=op,
                        error=f"{type(exc).__name__}: {exc}"[:300],
                        action=self._action,
                        suppressed=suppressed)

    # --- the pub/sub listener ---------------------------------------------------------------

    async def _ensure_listening(self) -> None:
        if self._listener is None or self._listener.done():
            self._start_listener()
        if self._subscribed.is_set():
            return
        try:
            async with asyncio.timeout(self._deadline):
                await self._subscribed.wait()
        except TimeoutError as exc:
            self._failed("subscribe", exc)
            raise StateUnavailable("state store unavailable (subscribe): no subscription") \
                from exc

    def _start_listener(self) -> None:
        """A new listener; an old one sees it is no longer current and ends."""
        self._subscribed.clear()
        self._listener = asyncio.create_task(self._listen(), name="redis-state-listener")

    def _current(self, task: asyncio.Task[None] | None) -> bool:
        return not self._closed and asyncio.current_task() is task

    async def _listen(self) -> None:
        """Keep one pattern subscription alive; reconnect with a short backoff after errors."""
        backoff = 0.05
        while self._current(self._listener):
            pubsub = self.redis.pubsub()
            try:
                await pubsub.psubscribe(self._keys.pattern)
                await self._receive(pubsub, self._on_message, lambda: self._listener)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the listener must outlive any one failure
                if self._subscribed.is_set():
                    self._failed("listen", exc)
                    backoff = 0.05
                self._subscribed.clear()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, LISTENER_MAX_BACKOFF)

    async def _receive(self, pubsub: PubSub, handle: Callable[[dict[str, Any]], Awaitable[None]],
                       owner: Callable[[], asyncio.Task[None] | None]) -> None:
        """Hand every message to handle; PING when idle, give up when PING gets no answer.

        Returns when the calling task is no longer `owner()` or the store closes."""
        loop = asyncio.get_running_loop()
        heard, pinged = loop.time(), None
        while self._current(owner()):
            message = await pubsub.get_message(timeout=1.0)
            now = loop.time()
            if message is not None:
                heard, pinged = now, None
                await handle(message)
            elif pinged is not None and now - pinged > self._deadline:
                raise RedisConnectionError("no answer to PING on the subscription")
            elif pinged is None and now - heard > LISTENER_PING_SECONDS:
                await pubsub.ping()
                pinged = now

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "pmessage":
            digest = self._keys.digest_of_channel(message["channel"])
            if digest is not None:
                self._resolve(digest, text(message["data"]))
        elif kind == "psubscribe":
            self._subscribed.set()
            await self._reread_outcomes()

    async def _reread_outcomes(self) -> None:
        """After a (re)subscription: outcomes published while we were not listening."""
        digests = list(self._waiters)
        if not digests:
            return
        with contextlib.suppress(StateUnavailable):
            values = await self._run("wait_push", lambda: self.redis.mget(
                [self._keys.outcome(d) for d in digests]))
            for digest, value in zip(digests, values, strict=True):
                if value is not None:
                    self._resolve(digest, text(value))

    # --- Sentinel: follow a failover at once --------------------------------------------------

    async def _watch_failovers(self) -> None:
        """Drop every connection when a Sentinel announces a new primary for our service.

        Without this, pooled connections keep writing to a demoted primary that stays up
        (a manual failover, a partition) until Sentinel reconfigures it, about 10 s later,
        and those writes are lost when it resyncs. Sentinels are tried in turn.
        """
        assert self._sentinel is not None
        sentinels = self._sentinel.sentinels
        turn = 0
        while self._current(self._watcher):
            pubsub = sentinels[turn % len(sentinels)].pubsub()
            try:
                await pubsub.subscribe("+switch-master")
                await self._receive(pubsub, self._on_sentinel_message, lambda: self._watcher)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watcher must outlive any one sentinel
                log.debug("state_sentinel_unreachable", error=f"{type(exc).__name__}: {exc}")
                turn += 1
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(LISTENER_MAX_BACKOFF / 4)

    async def _on_sentinel_message(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        fields = text(message["data"]).split()
        if not fields or fields[0] != self._service:
            return
        log.warning("state_failover", service=self._service,
                    primary=":".join(fields[3:5]) if len(fields) >= 5 else "")
        await self.redis.connection_pool.disconnect()
        if self._listener is not None and not self._listener.done():
            old = self._listener
            self._start_listener()  # on the new primary; the old one ends by itself
            old.cancel()

    def _resolve(self, digest: str, outcome: str) -> None:
        for waiter in self._waiters.get(digest, ()):
            if not waiter.done():
                waiter.set_result(outcome)

    def _drop_waiter(self, digest: str, waiter: asyncio.Future[str]) -> None:
        waiters = self._waiters.get(digest)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[digest]
