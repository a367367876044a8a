"""The Redis state store against a real redis-server: every operation, across instances.

Two `RedisStore` objects on one server stand for two proxy instances. The outage tests stop
and start their own server on the same port and check the store fails fast (fail closed)
and recovers without being rebuilt; the others share one server, each test under its own
key prefix.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs

from radius_proxy.config import Secret, StateConfig
from radius_proxy.state import ChallengeContext
from radius_proxy.state import redis as redis_store
from radius_proxy.state.redis import RedisStore, StateUnavailable
from tests.servers.redis import RedisSentinel, RedisServer
from tests.servers.slapd import make_pki
from tests.support import wait_for

LOGIN = "alice\x00test\x00198.51.100.7"


def state_config(url: str, prefix: str | None = None, **fields: Any) -> Any:
    """A StateConfig, or a stand-in with the same fields while config.py lacks the new ones."""
    values = {"backend": "redis", "redis_url": url,
              "key_prefix": prefix or f"t-{uuid.uuid4().hex[:8]}:", **fields}
    known = {f.name for f in dataclasses.fields(StateConfig)}
    if set(values) <= known:
        return StateConfig(**values)
    defaults = {name: getattr(StateConfig(), name) for name in known}
    return SimpleNamespace(**{**defaults, **values})


@asynccontextmanager
async def opened(*configs: Any) -> AsyncIterator[list[RedisStore]]:
    stores = [RedisStore(c) for c in configs]
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()


async def eventually(check: Any, within: float = 10.0) -> Any:
    """Await check() until it stops raising StateUnavailable (a failover in progress)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await check()
        except StateUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


# --- challenge contexts, remembered logins, counters ------------------------------------------

def test_a_challenge_is_taken_once_on_any_instance(redis_server: RedisServer) -> None:
    config = state_config(redis_server.url)
    context = ChallengeContext("upstream", "vpn", "bob", None, b"\x00otp-state",
                               (("Class", b"\x01"), ("Session-Timeout", 60)))

    async def scenario() -> None:
        async with opened(config, config) as (a, b):
            await a.put_challenge(b"\x11" * 16, context, 30)
            assert await b.take_challenge(b"\x11" * 16) == context
            assert await a.take_challenge(b"\x11" * 16) is None
            assert await b.take_challenge(b"\x22" * 16) is None

    asyncio.run(scenario())


def test_challenges_and_remembered_logins_expire(redis_server: RedisServer) -> None:
    config = state_config(redis_server.url)
    context = ChallengeContext("secsign", "test", "alice", "alice.test")

    async def scenario() -> None:
        async with opened(config, config) as (a, b):
            await a.put_challenge(b"\x33" * 16, context, 0.2)
            await a.remember(LOGIN, 0.2)
            assert await b.is_remembered(LOGIN)
            assert not await b.is_remembered(LOGIN + "x")
            await asyncio.sleep(0.35)
            assert not await b.is_remembered(LOGIN)
            assert await b.take_challenge(b"\x33" * 16) is None

    asyncio.run(scenario())


def test_push_counts_are_shared_and_slide(redis_server: RedisServer) -> None:
    config = state_config(redis_server.url)

    async def scenario() -> None:
        async with opened(config, config) as (a, b):
            counts = [await s.count_push("alice", 0.5) for s in (a, b, a)]
            assert counts == [1, 2, 3]
            assert await b.count_push("bob", 0.5) == 1
            await asyncio.sleep(0.6)
            assert await b.count_push("alice", 0.5) == 1

    asyncio.run(scenario())


def test_a_push_counter_is_bounded(redis_server: RedisServer,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_store, "MAX_COUNTED_PUSHES", 5)
    config = state_config(redis_server.url)

    async def scenario() -> None:
        async with opened(config) as (a,):
            counts = [await a.count_push("mallory", 60) for _ in range(8)]
            assert counts == [1, 2, 3, 4, 5, 5, 5, 5]

    asyncio.run(scenario())
    [key] = redis_server.cli("KEYS", f"{config.key_prefix}pushes:*").split()
    assert redis_server.cli("ZCARD", key).strip() == "5"


def test_every_key_has_an_expiry(redis_server: RedisServer) -> None:
    config = state_config(redis_server.url)

    async def scenario() -> None:
        async with opened(config) as (a,):
            await a.put_challenge(b"\x44" * 16, ChallengeContext("secsign", "t", "u"), 300)
            await a.remember(LOGIN, 600)
            await a.count_push("alice", 600)
            assert await a.claim_push(LOGIN, 65)
            await a.claim_push("other", 65)
            await a.finish_push(LOGIN, "approved", 30)

    asyncio.run(scenario())
    keys = redis_server.cli("KEYS", f"{config.key_prefix}*").split()
    kinds = sorted(k.split(":")[1] for k in keys)
    assert kinds == ["challenge", "claim", "outcome", "pushes", "remember"]
    for key in keys:
        ttl = int(redis_server.cli("PTTL", key))
        assert 0 < ttl <= 600_000, key


# --- one push per login across instances --------------------------------------------------------

def test_the_outcome_reaches_the_instance_that_joined(redis_server: RedisServer) -> None:
    config = state_config(redis_server.url)

    async def scenario() -> None:
        async with opened(config, config) as (a, b):
            assert await a.claim_push(LOGIN, 60)
            assert not await b.claim_push(LOGIN, 60)
            waiting = asyncio.create_task(b.wait_push(LOGIN, 10))
            await asyncio.sleep(0.2)
            await a.finish_push(LOGIN, "approved", 30)
            t0 = time.monotonic()
            assert await waiting == "approved"
            assert time.monotonic() - t0 < 0.5
            assert await b.claim_push(LOGIN, 60)  # released: the next login starts a push

    asyncio.run(scenario())


def test_an_outcome_published_before_the_wait_is_read(redis_server: RedisServer) -> None:
    config = state_config(redis_server.url)

    async def scenario() -> None:
        async with opened(config, config) as (a, b):
            assert await a.claim_push(LOGIN, 60)
            await a.finish_push(LOGIN, "denied", 30)
            assert await b.wait_push(LOGIN, 5) == "denied"

    asyncio.run(scenario())


def test_a_new_claim_clears_the_last_outcome(redis_server: RedisServer) -> None:
    config = state_config(redis_server.url)

    async def scenario() -> None:
        async with opened(config, config) as (a, b):
            assert await a.claim_push(LOGIN, 60)
            await a.finish_push(LOGIN, "denied", 30)
            assert await a.claim_push(LOGIN, 60)  # the user tries again
            assert not await b.claim_push(LOGIN, 60)
            t0 = time.monotonic()
            assert await b.wait_push(LOGIN, 0.3) is None  # not the stale "denied"
            assert 0.25 < time.monotonic() - t0 < 1.0

    asyncio.run(scenario())


def test_a_late_finish_keeps_the_next_claim(redis_server: RedisServer) -> None:
    config = state_config(redis_server.url)

    async def scenario() -> None:
        async with opened(config, config, config) as (a, b, c):
            assert await a.claim_push(LOGIN, 0.2)
            await asyncio.sleep(0.3)  # A's claim expired; B runs the next push
            assert await b.claim_push(LOGIN, 60)
            await a.finish_push(LOGIN, "timeout", 30)
            assert not await c.claim_push(LOGIN, 60)

    asyncio.run(scenario())


def test_a_live_claim_is_renewed_and_a_dead_one_lapses(redis_server: RedisServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim is a lease: renewed while the push runs, gone soon after its instance."""
    monkeypatch.setattr(redis_store, "CLAIM_LEASE_SECONDS", 0.6)
    config = state_config(redis_server.url)

    async def scenario() -> None:
        async with opened(config, config) as (b, c):
            a = RedisStore(config)
            assert await a.claim_push(LOGIN, 60)
            await asyncio.sleep(1.5)  # over two leases: renewed
            assert not await b.claim_push(LOGIN, 60)
            waiting = asyncio.create_task(b.wait_push(LOGIN, 30))
            await asyncio.sleep(0.1)
            await a.close()  # the instance dies mid-push: no finish, no renewal
            t0 = time.monotonic()
            assert await waiting is None  # not after 30 s: when the lease lapsed
            assert time.monotonic() - t0 < 1.5
            assert await c.claim_push(LOGIN, 60)  # the next login runs its own push
            await c.finish_push(LOGIN, "approved", 30)

    asyncio.run(scenario())


def test_many_waits_share_one_subscription(redis_server: RedisServer) -> None:
    config = state_config(redis_server.url)
    keys = [f"user{i}\x00test\x00" for i in range(20)]

    async def scenario() -> None:
        async with opened(config, config) as (a, b):
            for key in keys:
                assert await a.claim_push(key, 60)
            waits = [asyncio.create_task(b.wait_push(key, 10)) for key in keys]
            await asyncio.sleep(0.3)
            clients = redis_server.cli("CLIENT", "LIST")
            assert sum(" psub=1 " in line for line in clients.splitlines()) == 1
            for i, key in enumerate(keys):
                await a.finish_push(key, f"outcome-{i}", 30)
            assert await asyncio.gather(*waits) == [f"outcome-{i}" for i in range(20)]

    asyncio.run(scenario())


def test_prefixes_keep_deployments_apart(redis_server: RedisServer) -> None:
    """Glob characters in a prefix are escaped in the pattern: no cross-talk."""
    first = state_config(redis_server.url, "rp[1]*:")
    second = state_config(redis_server.url, "rp1x:")

    async def scenario() -> None:
        async with opened(first, first, second) as (a, b, other):
            assert await a.claim_push(LOGIN, 60)
            assert await other.claim_push(LOGIN, 60)  # another deployment, its own claim
            mine = asyncio.create_task(b.wait_push(LOGIN, 3))
            theirs = asyncio.create_task(other.wait_push(LOGIN, 0.5))
            await asyncio.sleep(0.2)
            await a.finish_push(LOGIN, "approved", 30)
            assert await mine == "approved"
            assert await theirs is None

    asyncio.run(scenario())


def test_a_wait_ends_after_its_time(redis_server: RedisServer) -> None:
    config = state_config(redis_server.url)

    async def scenario() -> None:
        async with opened(config, config) as (a, b):
            assert await a.claim_push(LOGIN, 60)
            t0 = time.monotonic()
            assert await b.wait_push(LOGIN, 0.4) is None
            assert 0.35 < time.monotonic() - t0 < 1.0
            assert b._waiters == {}

    asyncio.run(scenario())


# --- Redis away and back --------------------------------------------------------------------

async def every_operation(store: RedisStore) -> None:
    """Each call must raise StateUnavailable."""
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.put_challenge(b"\x55" * 16, ChallengeContext("secsign", "t", "u"), 30),
        lambda: store.take_challenge(b"\x55" * 16),
        lambda: store.remember(LOGIN, 60),
        lambda: store.is_remembered(LOGIN),
        lambda: store.count_push("alice", 60),
        lambda: store.claim_push(LOGIN, 60),
        lambda: store.finish_push(LOGIN, "approved", 30),
        lambda: store.wait_push(LOGIN, 30),
    ]
    for call in calls:
        with pytest.raises(StateUnavailable):
            await call()


def test_redis_stopped_fails_closed_fast_and_recovers(redis: RedisServer) -> None:
    config = state_config(redis.url, timeout_seconds=0.5)

    async def scenario() -> None:
        async with opened(config, config) as (a, b):
            assert await a.probe()
            await a.remember(LOGIN, 60)
            assert await b.count_push("alice", 60) == 1
            redis.stop()
            with capture_logs() as logs:
                t0 = time.monotonic()
                await every_operation(a)
                assert time.monotonic() - t0 < 2.0  # refused connections fail at once
                assert not await a.probe()
            assert not a.available
            assert a.unavailable_total["is_remembered"] == 1
            [line] = [e for e in logs if e["event"] == "state_unavailable"]  # rate limited
            assert line["log_level"] == "warning"
            assert line["action"] == "reject"
            redis.start()  # empty: no persistence, as after a crash
            with capture_logs() as logs:
                assert await a.probe()
            assert a.available
            assert [e["event"] for e in logs] == ["state_available"]
            assert not await a.is_remembered(LOGIN)
            assert await b.count_push("alice", 60) == 1
            assert await a.claim_push(LOGIN, 60)
            waiting = asyncio.create_task(b.wait_push(LOGIN, 10))
            await asyncio.sleep(0.3)
            await a.finish_push(LOGIN, "approved", 30)
            assert await waiting == "approved"

    asyncio.run(scenario())


def test_a_redis_that_does_not_answer_times_out(redis: RedisServer) -> None:
    config = state_config(redis.url, timeout_seconds=0.3)

    async def scenario() -> None:
        async with opened(config) as (a,):
            assert await a.claim_push(LOGIN, 60)
            redis.pause()
            try:
                t0 = time.monotonic()
                with pytest.raises(StateUnavailable):
                    await a.is_remembered(LOGIN)
                assert time.monotonic() - t0 < 3 * 0.3 + 0.3
                t0 = time.monotonic()
                with pytest.raises(StateUnavailable):
                    await a.wait_push(LOGIN, 30)
                assert time.monotonic() - t0 < 2 * 3 * 0.3 + 0.3
            finally:
                redis.resume()
            assert await eventually(a.probe)

    asyncio.run(scenario())


def test_a_waiter_hears_the_outcome_across_a_restart(redis: RedisServer) -> None:
    """The listener reconnects and re-reads outcomes it may have missed."""
    config = state_config(redis.url, timeout_seconds=0.5)

    async def scenario() -> None:
        async with opened(config, config) as (a, b):
            assert await a.claim_push(LOGIN, 60)
            waiting = asyncio.create_task(b.wait_push(LOGIN, 15))
            await asyncio.sleep(0.3)
            redis.stop()
            await asyncio.sleep(0.5)
            redis.start()
            await eventually(lambda: a.finish_push(LOGIN, "approved", 30))
            assert await asyncio.wait_for(waiting, 5) == "approved"

    asyncio.run(scenario())


def test_memory_fallback_keeps_logins_working(redis: RedisServer) -> None:
    config = state_config(redis.url, timeout_seconds=0.5, unavailable="memory")
    context = ChallengeContext("secsign", "t", "alice", "alice.test")

    async def scenario() -> None:
        async with opened(config) as (a,):
            redis.stop()
            with capture_logs() as logs:
                await a.put_challenge(b"\x66" * 16, context, 30)
                assert await a.take_challenge(b"\x66" * 16) == context
                await a.remember(LOGIN, 60)
                assert await a.is_remembered(LOGIN)
                assert [await a.count_push("alice", 60) for _ in range(2)] == [1, 2]
                assert await a.claim_push(LOGIN, 60)
                await a.finish_push(LOGIN, "approved", 30)
            assert logs[0]["event"] == "state_unavailable"
            assert logs[0]["action"] == "memory"
            redis.start()
            await a.put_challenge(b"\x77" * 16, context, 30)  # back in Redis
            assert redis.cli("KEYS", f"{config.key_prefix}challenge:*").strip()
            assert await a.is_remembered(LOGIN)  # remembered during the outage, still honoured

    asyncio.run(scenario())


# --- authentication, TLS, Sentinel ----------------------------------------------------------

def test_password_from_the_field_or_the_url(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", password="redis-pass-8d1f")
    try:
        good = state_config(server.url, "pw:", redis_password=Secret("redis-pass-8d1f"))
        in_url = state_config(server.url.replace("//", "//:redis-pass-8d1f@"), "pw:")
        missing = state_config(server.url, timeout_seconds=0.5)
        wrong = state_config(server.url.replace("//", "//:wrong-pass-77@"), timeout_seconds=0.5)

        async def scenario() -> None:
            async with opened(good, in_url, missing, wrong) as (a, b, c, d):
                await a.remember(LOGIN, 60)
                assert await b.is_remembered(LOGIN)
                with capture_logs() as logs:
                    with pytest.raises(StateUnavailable):
                        await c.is_remembered(LOGIN)
                    with pytest.raises(StateUnavailable):
                        await d.is_remembered(LOGIN)
                assert "wrong-pass-77" not in repr(logs)
                assert any(":***@" in str(e.get("store")) for e in logs)

        asyncio.run(scenario())
    finally:
        server.stop()


#: The ACL docs/ha.md recommends: the prefix's keys and channels, the commands used, no more.
ACL = ("~radius-proxy:* &radius-proxy:push:* -@all +get +set +getdel +exists +mget +evalsha "
       "+script|load +ping +psubscribe +punsubscribe +del +publish +time +zremrangebyscore "
       "+zadd +zcard +zremrangebyrank +pexpire")


def test_the_documented_acl_user_is_enough(redis: RedisServer) -> None:
    redis.cli("ACL", "SETUSER", "radius-proxy", "reset", "on", ">acl-pass-5c2e",
                  *ACL.split())
    config = state_config(redis.url, "radius-proxy:", redis_username="radius-proxy",
                          redis_password=Secret("acl-pass-5c2e"))

    async def scenario() -> None:
        async with opened(config, config) as (a, b):
            await a.put_challenge(b"\x88" * 16, ChallengeContext("secsign", "t", "u"), 30)
            assert await b.take_challenge(b"\x88" * 16) is not None
            await a.remember(LOGIN, 30)
            assert await b.is_remembered(LOGIN)
            assert await a.count_push("alice", 60) == 1
            assert await a.claim_push(LOGIN, 60)
            assert not await b.claim_push(LOGIN, 60)
            waiting = asyncio.create_task(b.wait_push(LOGIN, 5))
            await asyncio.sleep(0.2)
            await a.finish_push(LOGIN, "approved", 30)
            assert await waiting == "approved"
            assert await a.probe()
        other = state_config(redis.url, "other:", redis_username="radius-proxy",
                             redis_password=Secret("acl-pass-5c2e"), timeout_seconds=0.5)
        async with opened(other) as (c,):
            with pytest.raises(StateUnavailable):  # NOPERM: keys outside the prefix
                await c.remember(LOGIN, 30)

    asyncio.run(scenario())
    denied = redis.cli("ACL", "LOG").split()
    assert "other:remember:" in " ".join(denied)
    assert "radius-proxy:" not in " ".join(denied)


def test_tls_with_the_ca_file(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    server = RedisServer(tmp_path / "redis", tls=pki)
    try:
        trusted = state_config(server.url, ca_file=str(pki.ca_file))
        untrusted = state_config(server.url, timeout_seconds=0.5)
        assert server.url.startswith("rediss://")

        async def scenario() -> None:
            async with opened(trusted, untrusted) as (a, b):
                assert await a.claim_push(LOGIN, 60)
                waiting = asyncio.create_task(a.wait_push("x", 0.2))
                assert await waiting is None
                assert not await b.probe()  # the system CAs do not know the test CA

        asyncio.run(scenario())
    finally:
        server.stop()


@pytest.mark.slow
def test_sentinel_finds_the_primary_and_follows_a_failover(tmp_path: Path) -> None:
    """A manual failover: the old primary stays up, yet writes move at once (+switch-master)."""
    primary = RedisServer(tmp_path / "primary")
    replica = RedisServer(tmp_path / "replica", replica_of=primary)
    sentinel = RedisSentinel(tmp_path / "sentinel", primary)
    try:
        config = state_config("redis://ignored:1/0", sentinels=[sentinel.address],
                              sentinel_service="mymaster", timeout_seconds=0.5)
        remembered = f"{config.key_prefix}remember:*"

        async def scenario() -> None:
            async with opened(config, config) as (a, b):
                await a.remember(LOGIN, 600)
                assert await b.is_remembered(LOGIN)
                assert await a.claim_push("before", 60)
                wait_for(lambda: bool(replica.cli("KEYS", remembered).strip()), 5,
                         "replication")
                with capture_logs() as logs:
                    sentinel.failover()
                    wait_for(lambda: sentinel.primary_port() == replica.port, 20, "failover")
                    await asyncio.sleep(0.5)  # the +switch-master event reaches the stores
                assert "state_failover" in [e["event"] for e in logs]
                assert primary.cli("ROLE").split()[0] == "master"  # not yet demoted
                await a.remember("after\x00failover\x00", 600)
                assert len(replica.cli("KEYS", remembered).split()) == 2
                assert len(primary.cli("KEYS", remembered).split()) == 1
                assert await b.is_remembered("after\x00failover\x00")
                assert await b.claim_push(LOGIN, 60)
                assert not await a.claim_push(LOGIN, 60)
                waiting = asyncio.create_task(a.wait_push(LOGIN, 10))
                await asyncio.sleep(0.3)
                await b.finish_push(LOGIN, "approved", 30)
                assert await waiting == "approved"

        asyncio.run(scenario())
    finally:
        sentinel.stop()
        replica.stop()
        primary.stop()
