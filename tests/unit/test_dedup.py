"""The duplicate cache as a state machine (RFC 5080 section 2.2.2), driven by a fake clock.

NEW -> IN_FLIGHT (retransmit dropped) -> ANSWERED (retransmit gets the same bytes) -> gone
after the TTL; a different Request Authenticator under the same key is a new request.
"""

from __future__ import annotations

import pytest

from radius_proxy.protocol.dedup import DuplicateCache, Key, Lookup, Seen

TTL = 30.0
KEY: Key = (0, "192.0.2.1", 40000, 7)
A = b"A" * 16
B = b"B" * 16


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> DuplicateCache:
    return DuplicateCache(TTL, clock)


def test_first_arrival_is_new_and_retransmit_in_flight_is_dropped(cache: DuplicateCache) -> None:
    assert cache.arrive(KEY, A) == Lookup(Seen.NEW)
    assert cache.arrive(KEY, A) == Lookup(Seen.IN_FLIGHT)
    assert cache.arrive(KEY, A) == Lookup(Seen.IN_FLIGHT)
    assert len(cache) == 1


def test_answered_retransmit_gets_identical_bytes(cache: DuplicateCache, clock: Clock) -> None:
    cache.arrive(KEY, A)
    cache.answered(KEY, A, b"reply-bytes")
    clock.now += TTL - 0.001
    assert cache.arrive(KEY, A) == Lookup(Seen.ANSWERED, b"reply-bytes")
    assert cache.arrive(KEY, A) == Lookup(Seen.ANSWERED, b"reply-bytes")


@pytest.mark.parametrize("after", [TTL, TTL + 0.5, 10 * TTL])
def test_reply_expires_after_ttl(cache: DuplicateCache, clock: Clock, after: float) -> None:
    cache.arrive(KEY, A)
    cache.answered(KEY, A, b"reply")
    clock.now += after
    assert cache.arrive(KEY, A) == Lookup(Seen.NEW)


def test_ttl_counts_from_the_reply_not_the_arrival(cache: DuplicateCache, clock: Clock) -> None:
    cache.arrive(KEY, A)
    clock.now += 50  # a long push
    cache.answered(KEY, A, b"reply")
    clock.now += TTL - 1
    assert cache.arrive(KEY, A).seen is Seen.ANSWERED


def test_purge_empties_the_cache(cache: DuplicateCache, clock: Clock) -> None:
    for i in range(5):
        key: Key = (0, "192.0.2.1", 40000, i)
        cache.arrive(key, A)
        cache.answered(key, A, b"r")
    assert len(cache) == 5
    clock.now += TTL
    cache.purge()
    assert len(cache) == 0


def test_in_flight_requests_do_not_expire(cache: DuplicateCache, clock: Clock) -> None:
    cache.arrive(KEY, A)
    clock.now += 100 * TTL
    assert cache.arrive(KEY, A).seen is Seen.IN_FLIGHT


def test_new_authenticator_under_same_key_is_a_new_request(cache: DuplicateCache) -> None:
    cache.arrive(KEY, A)
    cache.answered(KEY, A, b"reply-a")
    assert cache.arrive(KEY, B) == Lookup(Seen.NEW)
    assert cache.arrive(KEY, B) == Lookup(Seen.IN_FLIGHT)
    assert len(cache) == 1


def test_new_authenticator_while_first_in_flight_replaces_it(cache: DuplicateCache) -> None:
    cache.arrive(KEY, A)
    assert cache.arrive(KEY, B).seen is Seen.NEW
    # the late reply to A must not be stored as the answer to B
    cache.answered(KEY, A, b"reply-a")
    assert cache.arrive(KEY, B).seen is Seen.IN_FLIGHT
    cache.answered(KEY, B, b"reply-b")
    assert cache.arrive(KEY, B) == Lookup(Seen.ANSWERED, b"reply-b")


def test_old_expiry_does_not_purge_a_newer_request(cache: DuplicateCache, clock: Clock) -> None:
    cache.arrive(KEY, A)
    cache.answered(KEY, A, b"reply-a")  # expiry record for A at now + TTL
    clock.now += 1
    cache.arrive(KEY, B)
    clock.now += TTL
    assert cache.arrive(KEY, B).seen is Seen.IN_FLIGHT


def test_old_expiry_does_not_purge_same_authenticator_seen_again(cache: DuplicateCache,
                                                                 clock: Clock) -> None:
    cache.arrive(KEY, A)
    cache.answered(KEY, A, b"reply-a1")
    clock.now += 1
    cache.arrive(KEY, B)
    clock.now += 1
    assert cache.arrive(KEY, A).seen is Seen.NEW  # A again, after B took the key
    clock.now += TTL  # the first A's expiry record is due
    assert cache.arrive(KEY, A).seen is Seen.IN_FLIGHT
    cache.answered(KEY, A, b"reply-a2")
    assert cache.arrive(KEY, A) == Lookup(Seen.ANSWERED, b"reply-a2")


@pytest.mark.parametrize(
    "other",
    [(1, "192.0.2.1", 40000, 7), (0, "192.0.2.2", 40000, 7), (0, "192.0.2.1", 40001, 7),
     (0, "192.0.2.1", 40000, 8)],
    ids=["socket", "address", "port", "identifier"],
)
def test_every_key_part_separates_requests(cache: DuplicateCache, other: Key) -> None:
    cache.arrive(KEY, A)
    cache.answered(KEY, A, b"reply")
    assert cache.arrive(other, A).seen is Seen.NEW
    assert cache.arrive(KEY, A).seen is Seen.ANSWERED
    assert len(cache) == 2


def test_abandon_makes_a_retry_new(cache: DuplicateCache) -> None:
    cache.arrive(KEY, A)
    cache.abandon(KEY, A)
    assert len(cache) == 0
    assert cache.arrive(KEY, A).seen is Seen.NEW


@pytest.mark.parametrize("case", ["answered", "other-authenticator", "unknown-key"])
def test_abandon_leaves_other_entries_alone(cache: DuplicateCache, case: str) -> None:
    cache.arrive(KEY, A)
    if case == "answered":
        cache.answered(KEY, A, b"reply")
        cache.abandon(KEY, A)
        assert cache.arrive(KEY, A) == Lookup(Seen.ANSWERED, b"reply")
    elif case == "other-authenticator":
        cache.abandon(KEY, B)
        assert cache.arrive(KEY, A).seen is Seen.IN_FLIGHT
    else:
        cache.abandon((9, "x", 1, 1), A)
        assert len(cache) == 1


def test_answered_for_unknown_key_is_ignored(cache: DuplicateCache, clock: Clock) -> None:
    cache.answered(KEY, A, b"reply")
    assert len(cache) == 0
    clock.now += TTL
    cache.purge()
    assert cache.arrive(KEY, A).seen is Seen.NEW


def test_many_answers_expire_in_order(cache: DuplicateCache, clock: Clock) -> None:
    keys: list[Key] = [(0, "192.0.2.1", 40000, i) for i in range(10)]
    for key in keys:
        cache.arrive(key, A)
        cache.answered(key, A, b"r%d" % key[3])
        clock.now += 1
    # now = start + 10: replies given at start+0..start+9 expire at +30..+39
    clock.now += TTL - 10 + 4.5
    cache.purge()
    assert len(cache) == 5
    assert cache.arrive(keys[4], A).seen is Seen.NEW
    assert cache.arrive(keys[5], A) == Lookup(Seen.ANSWERED, b"r5")
