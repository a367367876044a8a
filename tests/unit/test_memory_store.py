"""The in-process state store: challenge States, remembered logins and push counters.

Every entry expires by the injected clock; a State is good for one answer only. The store is
async (one interface with the redis store), so each step runs through `asyncio.run`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from radius_proxy.state import ChallengeContext
from radius_proxy.state.memory import MemoryStore

T = TypeVar("T")
CTX = ChallengeContext("secsign", "ssh-hosts", "alice", "alice.example")
UPSTREAM = ChallengeContext("upstream", "vpn", "bob", upstream_state=b"their-state")


class Clock:
    def __init__(self, now: float = 5000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> MemoryStore:
    return MemoryStore(clock)


# -- challenges -------------------------------------------------------------------------------
def test_challenge_is_returned_once(store: MemoryStore) -> None:
    run(store.put_challenge(b"token-1", CTX, 300))
    assert run(store.take_challenge(b"token-1")) == CTX
    assert run(store.take_challenge(b"token-1")) is None


def test_unknown_token(store: MemoryStore) -> None:
    run(store.put_challenge(b"token-1", CTX, 300))
    assert run(store.take_challenge(b"token-2")) is None
    assert run(store.take_challenge(b"")) is None
    assert run(store.take_challenge(b"token-1")) == CTX


def test_contexts_are_kept_apart(store: MemoryStore) -> None:
    run(store.put_challenge(b"a", CTX, 300))
    run(store.put_challenge(b"b", UPSTREAM, 300))
    assert run(store.take_challenge(b"b")) == UPSTREAM
    assert run(store.take_challenge(b"a")) == CTX


@pytest.mark.parametrize(("after", "alive"), [(0, True), (299.9, True), (300, False),
                                              (301, False)])
def test_challenge_expires(store: MemoryStore, clock: Clock, after: float, alive: bool) -> None:
    run(store.put_challenge(b"t", CTX, 300))
    clock.now += after
    assert (run(store.take_challenge(b"t")) == CTX) is alive


def test_expired_challenge_is_gone_even_if_the_clock_went_back(store: MemoryStore,
                                                               clock: Clock) -> None:
    run(store.put_challenge(b"t", CTX, 10))
    clock.now += 11
    assert run(store.take_challenge(b"t")) is None
    clock.now -= 11
    assert run(store.take_challenge(b"t")) is None  # taking it consumed it


def test_putting_a_token_again_replaces_it(store: MemoryStore, clock: Clock) -> None:
    run(store.put_challenge(b"t", CTX, 10))
    run(store.put_challenge(b"t", UPSTREAM, 100))
    clock.now += 50
    assert run(store.take_challenge(b"t")) == UPSTREAM


# -- remembered logins ------------------------------------------------------------------------
@pytest.mark.parametrize(("after", "remembered"), [(0, True), (599.9, True), (600, False),
                                                   (10_000, False)])
def test_remembered_until_ttl(store: MemoryStore, clock: Clock, after: float,
                              remembered: bool) -> None:
    run(store.remember("alice\x00ssh\x00198.51.100.7", 600))
    clock.now += after
    assert run(store.is_remembered("alice\x00ssh\x00198.51.100.7")) is remembered


def test_remembering_is_per_key(store: MemoryStore) -> None:
    run(store.remember("alice\x00ssh\x00a", 600))
    assert run(store.is_remembered("alice\x00ssh\x00a"))
    assert not run(store.is_remembered("alice\x00ssh\x00b"))
    assert not run(store.is_remembered("bob\x00ssh\x00a"))
    assert not run(store.is_remembered(""))


def test_remembering_again_extends(store: MemoryStore, clock: Clock) -> None:
    run(store.remember("k", 100))
    clock.now += 90
    run(store.remember("k", 100))
    clock.now += 90
    assert run(store.is_remembered("k"))


# -- push counters ------------------------------------------------------------------------------
def test_push_count_within_the_window(store: MemoryStore, clock: Clock) -> None:
    counts = []
    for _ in range(4):
        counts.append(run(store.count_push("alice", 600)))
        clock.now += 60
    assert counts == [1, 2, 3, 4]


def test_push_count_slides(store: MemoryStore, clock: Clock) -> None:
    # pushes at t=0, 100, 200; a window of 250 s
    for _ in range(3):
        run(store.count_push("alice", 250))
        clock.now += 100
    # now t=300: the push at t=0 is outside (0 <= 300-250), 100 and 200 inside, plus this one
    assert run(store.count_push("alice", 250)) == 3
    clock.now += 1000
    assert run(store.count_push("alice", 250)) == 1


def test_push_exactly_window_old_no_longer_counts(store: MemoryStore, clock: Clock) -> None:
    run(store.count_push("alice", 600))
    clock.now += 600
    assert run(store.count_push("alice", 600)) == 1


def test_push_counts_are_per_user(store: MemoryStore) -> None:
    assert run(store.count_push("alice", 600)) == 1
    assert run(store.count_push("alice", 600)) == 2
    assert run(store.count_push("bob", 600)) == 1
    assert run(store.count_push("Alice", 600)) == 1


# -- push claims: one push per user, NAS and station ----------------------------------------
KEY = "alice\x00ssh-hosts\x00198.51.100.7"


def test_claim_is_exclusive_until_finished(store: MemoryStore) -> None:
    assert run(store.claim_push(KEY, 60))
    assert not run(store.claim_push(KEY, 60))
    assert run(store.claim_push("bob\x00ssh-hosts\x00x", 60))
    run(store.finish_push(KEY, "approved", 30))
    assert run(store.claim_push(KEY, 60))


def test_claim_expires(store: MemoryStore, clock: Clock) -> None:
    assert run(store.claim_push(KEY, 60))
    clock.now += 59
    assert not run(store.claim_push(KEY, 60))
    clock.now += 1
    assert run(store.claim_push(KEY, 60))


def test_wait_gets_the_published_outcome(store: MemoryStore) -> None:
    run(store.claim_push(KEY, 60))
    run(store.finish_push(KEY, "denied", 30))
    assert run(store.wait_push(KEY, 0.01)) == "denied"


def test_wait_is_woken_by_finish(store: MemoryStore) -> None:
    async def scenario() -> str | None:
        await store.claim_push(KEY, 60)
        waiter = asyncio.create_task(store.wait_push(KEY, 5))
        await asyncio.sleep(0)
        await store.finish_push(KEY, "approved", 30)
        return await waiter

    assert run(scenario()) == "approved"


def test_wait_gives_up_after_its_time(store: MemoryStore) -> None:
    run(store.claim_push(KEY, 60))
    assert run(store.wait_push(KEY, 0.02)) is None


def test_published_outcome_expires_and_a_new_claim_clears_it(store: MemoryStore,
                                                             clock: Clock) -> None:
    run(store.claim_push(KEY, 60))
    run(store.finish_push(KEY, "approved", 30))
    clock.now += 30
    assert run(store.wait_push(KEY, 0.01)) is None
    run(store.finish_push(KEY, "approved", 30))
    run(store.claim_push(KEY, 60))  # a new push: the old outcome must not answer for it
    assert run(store.wait_push(KEY, 0.01)) is None


# -- memory stays bounded -------------------------------------------------------------------
def test_sweep_drops_expired_entries(store: MemoryStore, clock: Clock) -> None:
    async def scenario() -> None:
        for i in range(400):  # 800 writes, all alive now
            await store.put_challenge(b"old-%d" % i, CTX, 10)
            await store.remember(f"old-{i}", 10)
        clock.now += 25 * 3600
        await store.put_challenge(b"live", CTX, 300)
        for i in range(198):  # writes 802..999: no sweep yet
            await store.count_push(f"user-{i % 3}", 600)
        assert len(store._challenges) == 401
        await store.count_push("user-0", 600)  # the 1000th write sweeps

    run(scenario())
    # private state, but "memory bounded" is exactly what this test is about
    assert set(store._challenges) == {b"live"}
    assert store._remembered == {}
    assert run(store.take_challenge(b"live")) == CTX


def test_sweep_keeps_recent_push_counters(store: MemoryStore, clock: Clock) -> None:
    async def scenario() -> None:
        await store.count_push("old", 600)
        clock.now += 25 * 3600
        for _ in range(999):
            await store.count_push("new", 600)

    run(scenario())
    assert set(store._pushes) == {"new"}


def test_close() -> None:
    assert run(MemoryStore().close()) is None
