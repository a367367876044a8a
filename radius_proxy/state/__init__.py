"""Shared state: challenge contexts, remembered logins and push counters.

One interface, two stores: `memory` (one instance, the default) and `redis` (several
instances sharing one truth). Every entry has an expiry, so nothing grows without bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ChallengeContext:
    """What an Access-Challenge's State stands for, until the NAS answers it.

    `kind` is "secsign" (our own challenge: the answer is Enter or a passcode) or
    "upstream" (an upstream's challenge we relay: `upstream_state` is their State).
    `reply_attributes` are the password check's pass-through attributes, kept for the
    Access-Accept that ends the challenge.
    """

    kind: str
    client: str
    username: str
    secsign_id: str | None = None
    upstream_state: bytes | None = None
    reply_attributes: tuple[tuple[str, str | int | bytes], ...] = ()


class StateStore(Protocol):
    async def put_challenge(self, token: bytes, context: ChallengeContext, ttl: float) -> None:
        """Keep a challenge context for ttl seconds."""
        ...

    async def take_challenge(self, token: bytes) -> ChallengeContext | None:
        """Return and delete a context: a State is good for one answer only."""
        ...

    async def remember(self, key: str, ttl: float) -> None:
        """Record a passed second factor for ttl seconds."""
        ...

    async def is_remembered(self, key: str) -> bool: ...

    async def count_push(self, user: str, window: float) -> int:
        """Record one push for user and return how many fall in the last window seconds."""
        ...

    async def claim_push(self, key: str, ttl: float) -> bool:
        """Become the one instance that runs the push for key (user, NAS, station).

        False when another instance holds the claim: then `wait_push` waits for its outcome
        instead of starting a second push (the ID server would suspend the first).
        """
        ...

    async def finish_push(self, key: str, outcome: str, ttl: float) -> None:
        """Publish the outcome of the claimed push and release the claim."""
        ...

    async def wait_push(self, key: str, wait_seconds: float) -> str | None:
        """The outcome another instance publishes for key, or None after wait_seconds."""
        ...

    async def close(self) -> None: ...
