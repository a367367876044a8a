"""The RFC 5080 section 2.2.2 duplicate detection and reply cache, as a state machine.

Rules of this module:
1. A request is identified by (receiving socket, client address, client port, Identifier);
   its Request Authenticator tells a retransmit (same) from a new request (different).
2. A retransmit while the first is in flight is dropped: this is what keeps a NAS that
   retransmits during a 50-second push from starting a second push.
3. After the reply, a retransmit gets the identical bytes again for `ttl` seconds.
4. The clock is passed in; nothing here does I/O.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

Key = tuple[Hashable, str, int, int]


class Seen(enum.Enum):
    NEW = "new"
    IN_FLIGHT = "in_flight"
    ANSWERED = "answered"


@dataclass(slots=True)
class _Entry:
    authenticator: bytes
    reply: bytes | None = None
    expires: float = 0.0


@dataclass(frozen=True, slots=True)
class Lookup:
    """The cache's verdict on an arriving request; `reply` is set for ANSWERED."""

    seen: Seen
    reply: bytes | None = None


#: The two verdicts without a reply, made once: `arrive` runs for every request.
_NEW = Lookup(Seen.NEW)
_IN_FLIGHT = Lookup(Seen.IN_FLIGHT)


class DuplicateCache:
    """Tracks requests in flight and replies sent, bounded by the reply TTL."""

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[Key, _Entry] = {}
        self._expiry: deque[tuple[float, Key, bytes]] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    def arrive(self, key: Key, authenticator: bytes) -> Lookup:
        """Classify a valid request, and register it as in flight when it is new.

        Only requests that passed every check may come here: an invalid one must not
        touch the cache (RFC 5080 section 2.2.2).
        """
        self.purge()
        entry = self._entries.get(key)
        if entry is not None and entry.authenticator == authenticator:
            if entry.reply is None:
                return _IN_FLIGHT
            return Lookup(Seen.ANSWERED, entry.reply)
        self._entries[key] = _Entry(authenticator)
        return _NEW

    def answered(self, key: Key, authenticator: bytes, reply: bytes) -> None:
        """Store the reply of the request, unless a newer request took the key meanwhile."""
        entry = self._entries.get(key)
        if entry is None or entry.authenticator != authenticator:
            return
        entry.reply = reply
        entry.expires = self._clock() + self._ttl
        self._expiry.append((entry.expires, key, authenticator))

    def abandon(self, key: Key, authenticator: bytes) -> None:
        """Forget a request that got no reply (dropped for overload), so a retry is new."""
        entry = self._entries.get(key)
        if entry is not None and entry.authenticator == authenticator and entry.reply is None:
            del self._entries[key]

    def purge(self) -> None:
        """Drop replies older than the TTL; expiry times are in order since the TTL is fixed."""
        now = self._clock()
        while self._expiry and self._expiry[0][0] <= now:
            expires, key, authenticator = self._expiry.popleft()
            entry = self._entries.get(key)
            if entry is not None and entry.authenticator == authenticator and \
                    entry.expires == expires:
                del self._entries[key]
